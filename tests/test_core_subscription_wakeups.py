"""LocalSignal and SharedWakeUps with several waiters: a notify or a push reaches every
listener waiting at once, a wait that only ran into the poll bound wakes nobody, and a signal
that outlives its event loop works in the next one."""

from __future__ import annotations

import asyncio

from cqrs.subscription import LocalSignal, SharedWakeUps


class PushesOnce:
    """A listener whose first wait is answered by a push after 10 ms; later waits last their
    whole timeout, like a listener that hears nothing more."""

    def __init__(self) -> None:
        self.waits = 0

    async def wait(self, timeout: float) -> None:  # noqa: ASYNC109 - the poll bound itself
        self.waits += 1
        await asyncio.sleep(0.01 if self.waits == 1 else timeout)

    async def close(self) -> None:
        return None


class Silent:
    """A listener that never hears a push: each wait lasts its timeout."""

    async def wait(self, timeout: float) -> None:  # noqa: ASYNC109 - the poll bound itself
        await asyncio.sleep(timeout)

    async def close(self) -> None:
        return None


async def test_a_notify_wakes_every_listener_waiting_at_once():
    signal = LocalSignal()
    listeners = [signal.listen() for _ in range(3)]
    waiting = [asyncio.create_task(listener.wait(30)) for listener in listeners]
    await asyncio.sleep(0.01)
    assert not any(task.done() for task in waiting)
    signal.notify()
    async with asyncio.timeout(5):
        await asyncio.gather(*waiting)
    again = asyncio.create_task(listeners[0].wait(30))  # and the next notify too
    await asyncio.sleep(0.01)
    assert not again.done()
    signal.notify()
    async with asyncio.timeout(5):
        await again


def test_a_signal_that_outlives_its_event_loop_works_in_the_next_one():
    signal = LocalSignal()
    listener = signal.listen()
    asyncio.run(listener.wait(0.01))  # an event made on the first loop, never set

    async def notified_on_a_new_loop() -> None:
        waiting = asyncio.create_task(listener.wait(30))
        await asyncio.sleep(0.01)
        signal.notify()
        async with asyncio.timeout(5):
            await waiting

    asyncio.run(notified_on_a_new_loop())


async def test_a_push_reaches_every_listener_of_a_shared_source():
    shared = SharedWakeUps(PushesOnce(), poll_interval=30)
    listeners = [shared.listen() for _ in range(2)]
    try:
        async with asyncio.timeout(5):
            await asyncio.gather(*(listener.wait(30) for listener in listeners))
    finally:
        await shared.close()


async def test_a_shared_wait_that_ran_into_the_poll_bound_wakes_nobody():
    shared = SharedWakeUps(Silent(), poll_interval=0.02)
    listener = shared.listen()
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        await listener.wait(0.3)  # the shared task polls 15 times meanwhile
    finally:
        await shared.close()
    assert loop.time() - started >= 0.29
