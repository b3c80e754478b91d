"""Checkpoint stores on every backend: every rule of cqrs.checkpoints.CheckpointStore."""

from __future__ import annotations

import asyncio
import uuid

import msgspec
import pytest

from cqrs import ConfigurationError, LeaseLost, NotOpenError, ParkedEvent
from cqrs_conformance.support import event

LONG = 30.0  # a ttl no test outlives
SHORT = 0.2  # a ttl tests wait out


@pytest.fixture
async def checkpoints(backend, repository):
    store = repository.checkpoint_store(backend.name("projections"))
    await store.create_schema()
    return store


def at(position: int):
    """A stored event at ``position`` (what a runner parks)."""
    return msgspec.structs.replace(event("a", 1), position=position)


async def test_a_new_projection_is_at_zero_and_its_free_lease_is_taken(checkpoints):
    assert await checkpoints.position("totals") == 0
    assert await checkpoints.parked("totals") == []
    lease = await checkpoints.acquire("totals", "one", LONG)
    assert lease is not None
    assert (lease.name, lease.owner, lease.position) == ("totals", "one", 0)
    assert lease.token >= 1


async def test_a_held_lease_is_refused_to_others_and_taken_again_by_its_owner(checkpoints):
    first = await checkpoints.acquire("totals", "one", LONG)
    assert first is not None
    assert await checkpoints.acquire("totals", "two", LONG) is None
    again = await checkpoints.acquire("totals", "one", LONG)
    assert again is not None
    assert again.token > first.token
    # taking it again fences the owner's older lease too
    with pytest.raises(LeaseLost):
        await checkpoints.save(first, 3)
    assert await checkpoints.acquire("other", "two", LONG) is not None  # names are separate


async def test_an_expired_lease_is_taken_over_and_its_holder_is_fenced(checkpoints):
    first = await checkpoints.acquire("totals", "one", SHORT)
    assert first is not None
    await checkpoints.save(first, 4)
    assert await checkpoints.acquire("totals", "two", LONG) is None
    await asyncio.sleep(SHORT * 2)
    second = await checkpoints.acquire("totals", "two", LONG)
    assert second is not None
    assert second.token > first.token
    assert second.position == 4
    with pytest.raises(LeaseLost):
        await checkpoints.save(first, 9)
    assert not await checkpoints.renew(first, LONG)
    assert await checkpoints.position("totals") == 4


async def test_an_expired_lease_nobody_took_is_still_current(checkpoints):
    lease = await checkpoints.acquire("totals", "one", SHORT)
    assert lease is not None
    await asyncio.sleep(SHORT * 2)
    await checkpoints.save(lease, 5)  # expiry alone does not move the token
    assert await checkpoints.renew(lease, LONG)
    assert await checkpoints.acquire("totals", "two", LONG) is None  # renewed: held again
    assert await checkpoints.position("totals") == 5


async def test_tokens_grow_with_every_acquire_and_reset(checkpoints):
    tokens = []
    for round_ in range(3):
        lease = await checkpoints.acquire("totals", f"owner-{round_}", LONG)
        assert lease is not None
        tokens.append(lease.token)
        await checkpoints.release(lease)
        lease = await checkpoints.acquire("totals", f"owner-{round_}", LONG)
        assert lease is not None
        tokens.append(lease.token)
        await checkpoints.reset("totals", round_)
    lease = await checkpoints.acquire("totals", "last", LONG)
    assert lease is not None
    tokens.append(lease.token)
    assert tokens == sorted(set(tokens))  # strictly growing
    assert tokens[-1] > tokens[-2] + 1  # the reset in between moved it too


async def test_a_save_under_a_stale_token_raises_and_changes_nothing(checkpoints):
    first = await checkpoints.acquire("totals", "one", LONG)
    assert first is not None
    await checkpoints.save(first, 5)
    await checkpoints.release(first)
    second = await checkpoints.acquire("totals", "two", LONG)
    assert second is not None
    with pytest.raises(LeaseLost, match="totals"):
        await checkpoints.save(first, 9)
    with pytest.raises(LeaseLost):
        await checkpoints.park(first, at(7), "boom")
    assert await checkpoints.position("totals") == 5
    assert await checkpoints.parked("totals") == []
    await checkpoints.save(second, 6)
    assert await checkpoints.position("totals") == 6


async def test_a_lease_on_a_projection_never_stored_is_lost(checkpoints, backend, repository):
    lease = await checkpoints.acquire("totals", "one", LONG)
    assert lease is not None
    other = repository.checkpoint_store(backend.name("others"))
    await other.create_schema()
    with pytest.raises(LeaseLost):
        await other.save(lease, 1)
    with pytest.raises(LeaseLost):
        await other.park(lease, at(1), "boom")
    assert not await other.renew(lease, LONG)
    await other.release(lease)
    assert await other.position("totals") == 0


async def test_positions_never_go_back(checkpoints):
    lease = await checkpoints.acquire("totals", "one", LONG)
    assert lease is not None
    await checkpoints.save(lease, 10)
    await checkpoints.save(lease, 4)
    assert await checkpoints.position("totals") == 10
    await checkpoints.save(lease, 10)
    await checkpoints.save(lease, 12)
    assert await checkpoints.position("totals") == 12
    await checkpoints.release(lease)
    again = await checkpoints.acquire("totals", "two", LONG)
    assert again is not None
    assert again.position == 12


async def test_renew_extends_only_a_current_held_lease(checkpoints):
    lease = await checkpoints.acquire("totals", "one", SHORT)
    assert lease is not None
    assert await checkpoints.renew(lease, LONG)
    await asyncio.sleep(SHORT * 2)
    assert await checkpoints.acquire("totals", "two", LONG) is None  # the renewal holds
    await checkpoints.release(lease)
    assert not await checkpoints.renew(lease, LONG)  # released: nothing to extend
    second = await checkpoints.acquire("totals", "two", LONG)
    assert second is not None
    assert not await checkpoints.renew(lease, LONG)
    assert await checkpoints.renew(second, LONG)


async def test_release_lets_another_take_over_at_once_and_a_stale_release_does_nothing(
    checkpoints,
):
    first = await checkpoints.acquire("totals", "one", LONG)
    assert first is not None
    await checkpoints.release(first)
    second = await checkpoints.acquire("totals", "two", LONG)
    assert second is not None
    await checkpoints.release(first)  # stale: second keeps its lease
    assert await checkpoints.acquire("totals", "three", LONG) is None
    await checkpoints.save(second, 2)
    assert await checkpoints.position("totals") == 2


async def test_reset_fences_the_holder_and_sets_the_position(checkpoints):
    lease = await checkpoints.acquire("totals", "one", LONG)
    assert lease is not None
    await checkpoints.save(lease, 20)
    await checkpoints.reset("totals", 5)  # backwards: a rebuild from 5
    assert await checkpoints.position("totals") == 5
    with pytest.raises(LeaseLost):
        await checkpoints.save(lease, 30)
    with pytest.raises(LeaseLost):
        await checkpoints.park(lease, at(21), "boom")
    assert not await checkpoints.renew(lease, LONG)
    next_ = await checkpoints.acquire("totals", "two", LONG)  # the lease ended: free at once
    assert next_ is not None
    assert next_.token > lease.token
    assert next_.position == 5
    assert await checkpoints.position("totals") == 5
    await checkpoints.reset("fresh", 42)  # a projection that never ran
    fresh = await checkpoints.acquire("fresh", "one", LONG)
    assert fresh is not None
    assert fresh.position == 42
    await checkpoints.reset("totals")
    assert await checkpoints.position("totals") == 0


async def test_parked_events_are_listed_by_position_once_each(checkpoints):
    lease = await checkpoints.acquire("totals", "one", LONG)
    other = await checkpoints.acquire("balances", "one", LONG)
    assert lease is not None
    assert other is not None
    events = {position: at(position) for position in (30, 10, 20)}
    for position, row in events.items():
        await checkpoints.park(lease, row, f"failed at {position}")
    await checkpoints.park(other, at(15), "elsewhere")
    assert await checkpoints.parked("totals") == [
        ParkedEvent("totals", p, str(events[p].event_id), f"failed at {p}") for p in (10, 20, 30)
    ]
    # a runner that takes over and fails on the same event again replaces its record
    await checkpoints.release(lease)
    again = await checkpoints.acquire("totals", "two", LONG)
    assert again is not None
    await checkpoints.park(again, events[20], "failed again")
    parked = await checkpoints.parked("totals")
    assert [(p.position, p.error) for p in parked] == [
        (10, "failed at 10"),
        (20, "failed again"),
        (30, "failed at 30"),
    ]
    assert [p.position for p in await checkpoints.parked("balances")] == [15]
    assert await checkpoints.position("totals") == 0  # parking does not move the checkpoint


async def test_clients_racing_for_a_lease_get_exactly_one(backend):
    clients = [await backend.open_repository() for _ in range(2)]
    stores = [client.checkpoint_store(backend.name("projections")) for client in clients]
    await asyncio.gather(*(store.create_schema() for store in stores))  # concurrently: fine
    for round_ in range(5):
        name = f"race-{round_}"
        if round_ % 2:  # a lease that expired, rather than a projection never seen
            first = await stores[0].acquire(name, "early", 0.05)
            assert first is not None
            await asyncio.sleep(0.15)
        owners = [(store, f"client-{i}-{n}") for n in range(4) for i, store in enumerate(stores)]
        leases = await asyncio.gather(
            *(store.acquire(name, owner, LONG) for store, owner in owners)
        )
        won = [lease for lease in leases if lease is not None]
        assert len(won) == 1, won
        winner = won[0]
        for store, owner in owners:
            if owner != winner.owner:
                assert await store.acquire(name, owner, LONG) is None
        await stores[1].save(winner, round_ + 1)
        assert await stores[0].position(name) == round_ + 1


async def test_the_store_is_shared_by_clients_of_one_database(backend, checkpoints):
    lease = await checkpoints.acquire("totals", "one", LONG)
    assert lease is not None
    await checkpoints.save(lease, 7)
    other = (await backend.open_repository()).checkpoint_store(backend.name("projections"))
    assert await other.position("totals") == 7
    assert await other.acquire("totals", "two", LONG) is None
    await other.reset("totals", 3)
    with pytest.raises(LeaseLost):
        await checkpoints.save(lease, 8)


async def test_checkpoints_outlive_the_repository(backend, checkpoints, repository):
    backend.requires("persistent")
    lease = await checkpoints.acquire("totals", "one", LONG)
    assert lease is not None
    await checkpoints.save(lease, 11)
    await repository.close()
    await repository.open()
    assert await checkpoints.position("totals") == 11
    assert await checkpoints.acquire("totals", "two", LONG) is None
    await checkpoints.save(lease, 12)  # the lease survives a reconnect
    assert await checkpoints.position("totals") == 12


async def test_checkpoint_store_create_schema_is_idempotent(checkpoints):
    lease = await checkpoints.acquire("totals", "one", LONG)
    assert lease is not None
    await checkpoints.save(lease, 3)
    await checkpoints.create_schema()
    assert await checkpoints.position("totals") == 3


async def test_not_open_before_open_and_after_close(backend):
    repository = backend.new_repository()
    store = repository.checkpoint_store(backend.name("projections"))  # no I/O
    lease_like = await _a_lease(backend)
    calls = [
        store.create_schema,
        lambda: store.acquire("totals", "one", LONG),
        lambda: store.renew(lease_like, LONG),
        lambda: store.release(lease_like),
        lambda: store.save(lease_like, 1),
        lambda: store.position("totals"),
        lambda: store.reset("totals"),
        lambda: store.park(lease_like, at(1), "boom"),
        lambda: store.parked("totals"),
    ]
    for call in calls:
        with pytest.raises(NotOpenError):
            await call()
    await repository.open()
    await store.create_schema()
    assert await store.position("totals") == 0
    await repository.close()
    for call in calls:
        with pytest.raises(NotOpenError):
            await call()


async def _a_lease(backend):
    repository = await backend.open_repository()
    store = repository.checkpoint_store(backend.name("projections"))
    await store.create_schema()
    lease = await store.acquire("totals", "one", LONG)
    assert lease is not None
    return lease


async def test_bad_names_are_refused_before_any_io(backend, checkpoints):
    repository = backend.new_repository()  # never opened: a name check comes first
    for table in ("", "no spaces", "1st", "x" * 64, "semi;colon"):
        with pytest.raises(ConfigurationError):
            repository.checkpoint_store(table)
    store = repository.checkpoint_store(backend.name("projections"))
    for name in ("", "x" * 201, "nul\x00", None):
        with pytest.raises(ValueError, match="name"):
            await store.acquire(name, "one", LONG)
        with pytest.raises(ValueError, match="name"):
            await store.position(name)
        with pytest.raises(ValueError, match="name"):
            await store.reset(name)
        with pytest.raises(ValueError, match="name"):
            await store.parked(name)
        with pytest.raises(ValueError, match="owner"):
            await checkpoints.acquire("totals", name, LONG)


async def test_names_are_stored_exactly(checkpoints):
    names = ["totals", "Totals", "tötäls ✓", "a" * 200, f"p-{uuid.uuid4()}"]
    for number, name in enumerate(names, 1):
        lease = await checkpoints.acquire(name, name, LONG)
        assert lease is not None
        assert lease.owner == name
        await checkpoints.save(lease, number)
    assert [await checkpoints.position(name) for name in names] == list(range(1, 6))
