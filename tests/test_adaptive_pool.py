"""The adaptive pool on the real CLI: a burst of new sessions is met by spares made after the one before."""

from __future__ import annotations

import asyncio
import time

from claude_sessions import ClaudeHandler
from claude_sessions.workers.worker import WorkerState
from conftest import MakeHandler
from helpers import pids_of, reply_text, turn, wait_no_cli

#: Sessions per burst: small, for a 2-core machine (every spare is a CLI started and warmed up).
BURST = 4


async def spares_ready(handler: ClaudeHandler, count: int, timeout: float = 45.0) -> set[str]:
    """The ids of ``count`` idle spares, once no CLI is starting any more."""
    pool = handler.pool
    deadline = time.monotonic() + timeout
    while pool.idle_count < count or pool.live_count() != len(pool.workers()):
        assert time.monotonic() < deadline, f"{pool.idle_count} spares of {count} after {timeout:g}s"
        await asyncio.sleep(0.1)
    return {w.id for w in pool.workers() if w.state is WorkerState.IDLE}


async def test_a_second_burst_is_served_entirely_by_spares_made_after_the_first(make_handler: MakeHandler) -> None:
    handler = await make_handler(connection_pool={"MIN_SIZE": 1, "MAX_SIZE": BURST})
    began = time.monotonic()
    await asyncio.gather(*(handler.create_session(f"first-{i}") for i in range(BURST)))
    ready = await spares_ready(handler, BURST)  # one spare per session of the burst, not CP_MIN_SIZE
    assert time.monotonic() - began < 60, "the spares came too late for the next burst to find them"
    second = await asyncio.gather(*(handler.create_session(f"second-{i}") for i in range(BURST)))
    workers = [handler.session_manager.get(s).worker for s in second]
    assert {w.id for w in workers if w is not None} == ready  # no CLI started for this burst
    assert "served" in reply_text(await turn(handler, second[0], "served"))
    pids = pids_of(handler)  # both bursts' CLIs and the spares up so far
    assert len(pids) >= 2 * BURST
    await handler.close()
    assert wait_no_cli(pids) == [] and wait_no_cli() == []  # none left, those still starting included
