"""The pool's and the handler's bookkeeping on fake workers (no CLI): spares, reuse, limits, failures.

The same rules are proved on the real CLI in test_pool.py and test_handler.py; these run in
milliseconds, so a change to the logic shows at once (``make test-fast``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from claude_sessions import CapacityError, ClaudeHandler, SessionConfig, SystemConfig, WorkerStartError
from claude_sessions.workers.worker import WorkerState
from fakes import Clock, FakeStarts, FakeWorker

FastHandler = Callable[..., Awaitable[ClaudeHandler]]


@pytest.fixture
def starts() -> FakeStarts:
    return FakeStarts()


@pytest.fixture
async def fast_handler(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, starts: FakeStarts
) -> AsyncIterator[FastHandler]:
    for name, folder in {"CLAUDE_SESSIONS_DATA_DIR": "data", "CLAUDE_CONFIG_DIR": "claude"}.items():
        monkeypatch.setenv(name, str(tmp_path / folder))
    monkeypatch.setenv("WORKSPACE_ROOT", str(tmp_path / "workspaces"))
    handlers: list[ClaudeHandler] = []

    async def make(**pool: Any) -> ClaudeHandler:
        config = SystemConfig.from_env()
        for key, value in pool.items():
            setattr(config.connection_pool, key, value)
        handler = ClaudeHandler(config, start_worker=starts)
        handlers.append(handler)
        await handler.start()
        return handler

    yield make
    for handler in handlers:
        await handler.close()
    assert starts.alive() == [], "a fake worker was left open"


def worker_of(handler: ClaudeHandler, session_id: str) -> FakeWorker:
    worker = handler.session_manager.get(session_id).worker
    assert isinstance(worker, FakeWorker)
    return worker


async def test_spares_are_started_and_warmed_up_to_the_minimum(fast_handler: FastHandler, starts: FakeStarts) -> None:
    handler = await fast_handler(MIN_SIZE=2)
    assert len(starts.started) == 2 and all(w.resets == 1 for w in starts.started)  # warm-up ends with /clear
    assert {w.state for w in starts.started} == {WorkerState.IDLE}
    assert handler.get_pool_status()["idle"] == 2


async def test_a_destroyed_sessions_worker_is_reset_and_serves_the_next_session(
    fast_handler: FastHandler, starts: FakeStarts
) -> None:
    handler = await fast_handler(MIN_SIZE=0)
    first = await handler.create_session("first")
    worker = worker_of(handler, first)
    await handler.destroy_session(first)
    assert worker.state is WorkerState.IDLE and worker.resets == 1
    second = await handler.create_session("second")
    assert worker_of(handler, second) is worker and len(starts.started) == 1


async def test_a_worker_whose_reset_fails_is_closed_not_kept(fast_handler: FastHandler, starts: FakeStarts) -> None:
    handler = await fast_handler(MIN_SIZE=0)
    session_id = await handler.create_session("s")
    worker = worker_of(handler, session_id)
    worker.reset_works = False
    await handler.destroy_session(session_id)
    assert worker.state is WorkerState.CLOSED and not worker.is_alive()
    assert handler.get_pool_status()["pool_size"] == 0


async def test_past_max_live_the_least_recently_used_idle_session_gives_up_its_worker(
    fast_handler: FastHandler, starts: FakeStarts
) -> None:
    handler = await fast_handler(MIN_SIZE=0, MAX_LIVE=2, MAX_SIZE=0)
    oldest, newer = await handler.create_session("oldest"), await handler.create_session("newer")
    given_up = worker_of(handler, oldest)
    handler.session_manager.get(newer).metrics.touch()
    third = await handler.create_session("third")
    assert handler.session_manager.get(oldest).worker is None and not given_up.is_alive()
    assert worker_of(handler, third) is not given_up and len(starts.alive()) == 2


async def test_a_failed_start_registers_no_session(fast_handler: FastHandler, starts: FakeStarts) -> None:
    handler = await fast_handler(MIN_SIZE=0)
    starts.fail = True
    with pytest.raises(WorkerStartError):
        await handler.create_session("never")
    assert len(handler.session_manager) == 0 and handler.get_pool_status()["pool_size"] == 0
    starts.fail = False
    assert await handler.create_session("never") == "never"  # the id is free again


def accepted(handler: ClaudeHandler, worker: FakeWorker) -> bool:
    """Whether the model gateway still takes the worker's token."""
    return handler.gateway.grant_of({"x-api-key": worker.grant.token}) is not None


async def test_a_dead_spare_is_noticed_at_once_its_token_revoked_and_the_pool_refilled(
    fast_handler: FastHandler, starts: FakeStarts
) -> None:
    handler = await fast_handler(MIN_SIZE=1)
    (spare,) = starts.started
    spare.die()
    for _ in range(100):  # no health check: the process's end wakes the pool
        if len(starts.started) == 2 and starts.started[1].state is WorkerState.IDLE:
            break
        await asyncio.sleep(0.01)
    (fresh,) = starts.alive()
    assert fresh is not spare and fresh.state is WorkerState.IDLE
    assert not accepted(handler, spare) and spare.state is WorkerState.CLOSED
    report = await handler.run_maintenance()
    assert report["retired"] == 0 and report["spawned"] == 0


async def test_a_dead_cli_a_session_holds_between_turns_is_let_go_at_once(
    fast_handler: FastHandler, starts: FakeStarts
) -> None:
    handler = await fast_handler(MIN_SIZE=0)
    await handler.create_session("holder")
    session = handler.session_manager.get("holder")
    held = session.worker
    assert isinstance(held, FakeWorker)
    held.die()
    for _ in range(100):
        if session.worker is None and held.state is WorkerState.CLOSED:
            break
        await asyncio.sleep(0.01)
    assert session.worker is None and held.state is WorkerState.CLOSED and not accepted(handler, held)


async def test_close_ends_every_worker_bound_or_idle(fast_handler: FastHandler, starts: FakeStarts) -> None:
    handler = await fast_handler(MIN_SIZE=1)
    await handler.create_session("bound")
    await handler.create_session("another")
    assert len(starts.alive()) >= 2
    await handler.close()
    assert starts.alive() == []


async def test_a_create_past_max_live_waits_queued_until_a_turn_ends(
    fast_handler: FastHandler, starts: FakeStarts
) -> None:
    handler = await fast_handler(MIN_SIZE=0, MAX_LIVE=1, MAX_SIZE=0)
    running = handler.session_manager.get(await handler.create_session("running"))
    await running.turn_lock.acquire()  # its turn runs: its worker cannot be given up
    waiting = asyncio.create_task(handler.create_session("waiting"))
    await asyncio.sleep(0.1)
    assert not waiting.done() and len(starts.started) == 1
    running.turn_lock.release()
    handler.pool.room_changed()  # as every turn's end does
    assert await asyncio.wait_for(waiting, 5) == "waiting"
    assert running.worker is None and len(starts.alive()) == 1


async def test_a_create_that_finds_no_room_in_time_is_refused(fast_handler: FastHandler, starts: FakeStarts) -> None:
    handler = await fast_handler(MIN_SIZE=0, MAX_LIVE=1, MAX_SIZE=0)
    handler.config.optimization.CREATE_TIMEOUT = 0.2
    running = handler.session_manager.get(await handler.create_session("running"))
    async with running.turn_lock:
        with pytest.raises(CapacityError, match="mid-turn"):
            await handler.create_session("refused")
    assert "refused" not in handler.session_manager and len(starts.started) == 1


async def settled(handler: ClaudeHandler) -> None:
    """Until the pool's background top-ups are done."""
    while handler.pool._tasks:
        await asyncio.gather(*list(handler.pool._tasks))


def spares_of(handler: ClaudeHandler, config: SessionConfig) -> set[str]:
    return {w.id for w in handler.pool.workers() if w.state is WorkerState.IDLE and w.fingerprint == config.fingerprint}


async def test_a_burst_is_met_by_as_many_spares_until_a_minute_passes(
    fast_handler: FastHandler, starts: FakeStarts
) -> None:
    handler = await fast_handler(MIN_SIZE=1, MAX_SIZE=6)
    clock = handler.pool.demand.clock = Clock()
    bursty = SessionConfig(system_prompt="bursty")
    await asyncio.gather(*(handler.create_session(f"a{i}", bursty) for i in range(5)))
    await settled(handler)
    ready = spares_of(handler, bursty)
    assert len(ready) == 5
    started, starts.gate = len(starts.started), asyncio.Event()  # a start now would hold its create
    clock.now += 10
    second = await asyncio.gather(*(handler.create_session(f"b{i}", bursty) for i in range(5)))
    assert {worker_of(handler, s).id for s in second} == ready and len(starts.started) == started
    starts.gate.set()  # the top-ups the second burst asked for
    await settled(handler)
    assert len(spares_of(handler, bursty)) == 5
    clock.now += 61  # the bursts are a minute old: their spares go, the default options keep theirs
    report = await handler.run_maintenance()
    assert spares_of(handler, bursty) == set() and len(spares_of(handler, SessionConfig())) == 1
    assert report["released"] == [] and report["spawned"] == 0


async def test_spares_stay_within_max_size_and_the_live_cap(fast_handler: FastHandler, starts: FakeStarts) -> None:
    handler = await fast_handler(MIN_SIZE=1, MAX_SIZE=3, MAX_LIVE=8)
    handler.pool.demand.clock = Clock()
    bursty = SessionConfig(system_prompt="bursty")
    await asyncio.gather(*(handler.create_session(f"a{i}", bursty) for i in range(5)))
    await settled(handler)
    assert handler.pool.idle_count == 3  # 1 default + 2 bursty: CP_MAX_SIZE
    await handler.create_session("c", bursty)
    await settled(handler)
    assert handler.pool.live_count() == 8 and handler.pool.idle_count == 2  # 6 sessions: the cap leaves 2


async def test_without_room_for_the_spares_the_least_recently_used_idle_session_lets_go(
    fast_handler: FastHandler, starts: FakeStarts
) -> None:
    handler = await fast_handler(MIN_SIZE=1, MAX_SIZE=2, MAX_LIVE=3)
    clock = handler.pool.demand.clock = Clock()
    older = await handler.create_session("older")
    await settled(handler)
    newer = await handler.create_session("newer")
    await settled(handler)
    handler.session_manager.get(older).metrics.last_activity -= 10
    assert handler.pool.live_count() == 3 and handler.pool.idle_count == 1  # 2 arrivals: 2 wanted, 1 fits
    given_up = worker_of(handler, older)
    report = await handler.run_maintenance()
    assert report["released"] == [older] and not given_up.is_alive()
    assert handler.session_manager.get(newer).worker is not None
    assert handler.pool.idle_count == 2 and handler.pool.live_count() == 3
    clock.now += 61  # the demand is gone: room again, and the clock's bound (5 minutes) is far
    report = await handler.run_maintenance()
    assert report["released"] == [] and handler.session_manager.get(newer).worker is not None
    assert handler.pool.idle_count == 1
