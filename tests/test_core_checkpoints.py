"""MemoryCheckpoints, the reference checkpoint store, on a clock the test moves: when a lease
expires to the second, how tokens count, what is shared, and the errors that name the culprit
(the rules every backend keeps are in the conformance suite's test_checkpoints)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from cqrs import AggregateConflict, LeaseLost, SerializedEvent
from cqrs.checkpoints import (
    Lease,
    MemoryCheckpoints,
    ParkedEvent,
    ViewWrite,
    check_lease_name,
    lease_lost,
    view_conflict,
)


class Clock:
    """Seconds that move only when the test says so; monotonic clocks have no fixed origin,
    so it may start below zero."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def stored(position: int) -> SerializedEvent:
    return SerializedEvent(
        "T", "a", 1, "E", "1.0", b"{}", b"{}", datetime.now(UTC), uuid.uuid4(), position
    )


def test_the_default_table_is_projections_and_a_bad_table_is_refused():
    assert MemoryCheckpoints().table == "projections"
    assert MemoryCheckpoints("totals_2").table == "totals_2"
    with pytest.raises(ValueError, match="bad name"):
        MemoryCheckpoints("bad name")


async def test_a_lease_expires_exactly_ttl_seconds_after_it_was_taken():
    clock = Clock(100.0)
    store = MemoryCheckpoints(clock=clock)
    first = await store.acquire("totals", "one", 10)
    assert first == Lease("totals", "one", 1, 0)
    clock.now = 109.999
    assert await store.acquire("totals", "two", 10) is None
    clock.now = 110.0
    assert await store.acquire("totals", "two", 10) == Lease("totals", "two", 2, 0)


async def test_renew_counts_the_ttl_from_the_renewal():
    clock = Clock()
    store = MemoryCheckpoints(clock=clock)
    lease = await store.acquire("totals", "one", 10)
    assert lease is not None
    clock.now = 8.0
    assert await store.renew(lease, 10)
    clock.now = 17.0
    assert await store.acquire("totals", "two", 10) is None
    clock.now = 18.0
    assert await store.acquire("totals", "two", 10) is not None


async def test_renew_refuses_a_lease_released_taken_over_or_never_taken():
    clock = Clock()
    store = MemoryCheckpoints(clock=clock)
    assert not await store.renew(Lease("never", "one", 1, 0), 10)
    lease = await store.acquire("totals", "one", 10)
    assert lease is not None
    await store.release(lease)
    assert not await store.renew(lease, 10)  # released, though its token is still current
    assert await store.acquire("totals", "two", 10) is not None
    lease = await store.acquire("taken", "one", 10)
    assert lease is not None
    clock.now = 11.0
    assert await store.acquire("taken", "two", 10) is not None
    assert not await store.renew(lease, 10)  # taken over after it expired


async def test_releasing_a_lease_taken_over_leaves_the_new_holder_alone():
    clock = Clock()
    store = MemoryCheckpoints(clock=clock)
    await store.release(Lease("never", "one", 1, 0))  # nothing to release: nothing happens
    assert await store.position("never") == 0
    stale = await store.acquire("totals", "one", 10)
    assert stale is not None
    clock.now = 11.0
    holder = await store.acquire("totals", "two", 10)
    assert holder is not None
    await store.release(stale)
    assert await store.acquire("totals", "three", 10) is None
    assert await store.renew(holder, 10)


async def test_tokens_count_one_per_acquire_and_reset():
    store = MemoryCheckpoints(clock=Clock())
    tokens = []
    for _ in range(3):
        lease = await store.acquire("totals", "one", 10)
        assert lease is not None
        tokens.append(lease.token)
    await store.reset("totals", 7)
    after = await store.acquire("totals", "one", 10)
    assert after is not None
    assert (tokens, after.token, after.position) == ([1, 2, 3], 5, 7)


async def test_a_released_or_reset_lease_is_free_at_once_whatever_the_clock_reads():
    clock = Clock(-1000.0)
    store = MemoryCheckpoints(clock=clock)
    lease = await store.acquire("totals", "one", 10)
    assert lease is not None
    await store.release(lease)
    taken = await store.acquire("totals", "two", 10)
    assert taken is not None
    await store.reset("totals")
    assert await store.acquire("totals", "three", 10) is not None
    await store.reset("other", 4)
    assert await store.acquire("other", "four", 10) == Lease("other", "four", 2, 4)


async def test_reset_defaults_to_position_zero():
    store = MemoryCheckpoints(clock=Clock())
    lease = await store.acquire("totals", "one", 10)
    assert lease is not None
    await store.save(lease, 9)
    await store.reset("totals")
    assert await store.position("totals") == 0


async def test_a_shared_store_sees_the_same_leases_checkpoints_and_parked_events():
    clock = Clock()
    first = MemoryCheckpoints(clock=clock)
    second = MemoryCheckpoints("other_table", clock=clock, shared=first)
    lease = await first.acquire("totals", "one", 10)
    assert lease is not None
    await first.save(lease, 5)
    event = stored(3)
    await first.park(lease, event, "ValueError('bad')")
    assert await second.acquire("totals", "two", 10) is None
    assert await second.position("totals") == 5
    assert await second.parked("totals") == [
        ParkedEvent("totals", 3, str(event.event_id), "ValueError('bad')")
    ]
    unshared = MemoryCheckpoints(clock=clock)
    assert await unshared.parked("totals") == []
    assert await unshared.position("totals") == 0


async def test_a_parked_event_keeps_its_position_event_id_and_error():
    store = MemoryCheckpoints(clock=Clock())
    lease = await store.acquire("totals", "one", 10)
    assert lease is not None
    event = stored(12)
    await store.park(lease, event, "KeyError('x')")
    assert await store.parked("totals") == [
        ParkedEvent("totals", 12, str(event.event_id), "KeyError('x')")
    ]


async def test_parked_events_are_listed_by_position():
    store = MemoryCheckpoints(clock=Clock())
    lease = await store.acquire("totals", "one", 10)
    assert lease is not None
    for position in (30, 10, 20):
        await store.park(lease, stored(position), f"error at {position}")
    parked = await store.parked("totals")
    assert [(p.position, p.error) for p in parked] == [
        (10, "error at 10"),
        (20, "error at 20"),
        (30, "error at 30"),
    ]


async def test_a_refused_write_names_the_projection_the_runner_and_both_tokens():
    store = MemoryCheckpoints(clock=Clock())
    first = await store.acquire("totals", "one", 10)
    assert first is not None
    await store.acquire("totals", "one", 10)
    message = (
        "projection 'totals': the lease of 'one' (token 1) was taken over (token 2); "
        "this runner must stop"
    )
    with pytest.raises(LeaseLost) as raised:
        await store.save(first, 3)
    assert str(raised.value) == message
    with pytest.raises(LeaseLost) as raised:
        await store.park(first, stored(3), "error")
    assert str(raised.value) == message
    never = Lease("never", "one", 1, 0)
    with pytest.raises(LeaseLost) as raised:
        await store.save(never, 3)
    assert str(raised.value) == (
        "projection 'never': the lease of 'one' (token 1) was taken over (no lease); "
        "this runner must stop"
    )


def test_lease_lost_says_which_token_is_current_or_that_there_is_no_lease():
    lease = Lease("p", "me", 4, 0)
    assert str(lease_lost(lease, 6)) == (
        "projection 'p': the lease of 'me' (token 4) was taken over (token 6); "
        "this runner must stop"
    )
    assert "(no lease)" in str(lease_lost(lease, None))
    assert isinstance(lease_lost(lease, 0), LeaseLost)
    assert "(token 0)" in str(lease_lost(lease, 0))


@pytest.mark.parametrize("name", ["", "x" * 201, "a\x00b", None, 7])
async def test_bad_names_and_owners_are_refused_by_what_they_are(name):
    with pytest.raises(ValueError, match=r"^projection name must be") as raised:
        check_lease_name(name)
    assert str(raised.value) == (
        f"projection name must be a non-empty string of at most 200 characters, not {name!r}"
    )
    store = MemoryCheckpoints(clock=Clock())
    with pytest.raises(ValueError, match=r"^owner must be a non-empty string"):
        await store.acquire("totals", name, 10)
    with pytest.raises(ValueError, match=r"^projection name must be"):
        await store.acquire(name, "one", 10)


def test_names_up_to_200_characters_are_kept():
    assert check_lease_name("x" * 200) == "x" * 200
    assert check_lease_name("rebuild:v2 ü", "owner") == "rebuild:v2 ü"


class Views:
    table = "account_views"


def test_view_conflict_names_the_view_its_table_and_the_version_expected():
    loaded = ViewWrite("acc-1", b"{}", 9, 4)
    new = ViewWrite("acc-2", b"{}", 9, 0)
    error = view_conflict(Views(), loaded)  # type: ignore[arg-type]
    assert isinstance(error, AggregateConflict)
    assert str(error) == "view 'acc-1' in account_views is no longer at version 4"
    assert str(view_conflict(Views(), new)) == (  # type: ignore[arg-type]
        "view 'acc-2' in account_views was stored by another writer first (none was loaded)"
    )


def test_view_conflict_names_views_without_a_table_by_themselves():
    class Unnamed:
        def __str__(self) -> str:
            return "<views>"

    error = view_conflict(Unnamed(), ViewWrite("v", b"{}", 2, 1))  # type: ignore[arg-type]
    assert str(error) == "view 'v' in <views> is no longer at version 1"
