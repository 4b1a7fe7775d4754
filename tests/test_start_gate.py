"""A caller's CLI start goes first; spares' wait for it (up to a bound), then start a few at a time."""

from __future__ import annotations

import asyncio

from claude_sessions.workers.start_gate import StartGate


async def test_a_spare_starts_once_no_callers_start_is_in_flight() -> None:
    gate = StartGate(parallel=2)
    order: list[str] = []
    caller_started = asyncio.Event()
    release_caller = asyncio.Event()

    async def caller() -> None:
        async with gate.caller():
            caller_started.set()
            await release_caller.wait()
            order.append("caller")

    async def spare() -> None:
        async with gate.spare():
            order.append("spare")

    running = asyncio.create_task(caller())
    await caller_started.wait()
    waiting = asyncio.create_task(spare())
    await asyncio.sleep(0.05)
    assert order == []  # the spare waits while the caller's CLI starts
    release_caller.set()
    await asyncio.gather(running, waiting)
    assert order == ["caller", "spare"]


async def test_spares_start_a_few_at_a_time_and_never_wait_past_the_bound() -> None:
    gate = StartGate(parallel=2, defer=0.1)
    inside = peak = 0

    async def spare() -> None:
        nonlocal inside, peak
        async with gate.spare():
            inside += 1
            peak = max(peak, inside)
            await asyncio.sleep(0.02)
            inside -= 1

    async with gate.caller():  # a caller's start that outlasts the bound: the spares go anyway
        async with asyncio.timeout(2):
            await asyncio.gather(*(spare() for _ in range(5)))
    assert peak == 2
