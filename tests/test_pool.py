"""The warm pool on the real CLI: reuse, reset, limits, health and shutdown."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import time

import pytest

from claude_sessions import SessionConfig, WorkerStartError
from claude_sessions.offline_model import OfflineModel
from claude_sessions.workers.worker import WorkerState
from conftest import MakeHandler
from fakes import Clock
from helpers import pids_of, reply_text, turn, wait_no_cli, worker_pid


async def test_spares_are_ready_before_the_first_session(make_handler: MakeHandler) -> None:
    handler = await make_handler(connection_pool={"MIN_SIZE": 2})
    status = handler.get_pool_status()
    assert status["idle"] == 2 and status["healthy_connections"] == 2
    spare_pids = pids_of(handler)
    session_id = await handler.create_session()
    assert worker_pid(handler, session_id) in spare_pids


async def test_destroyed_sessions_worker_serves_the_next_session(make_handler: MakeHandler) -> None:
    handler = await make_handler(connection_pool={"MIN_SIZE": 1})
    first = await handler.create_session("first")
    await turn(handler, first, "hello")
    pid = worker_pid(handler, first)
    await handler.destroy_session(first)
    second = await handler.create_session("second")
    worker = handler.session_manager.get(second).worker
    assert worker is not None and worker.pid == pid and worker.uses == 1


async def test_reused_worker_carries_nothing_of_the_previous_conversation(
    make_handler: MakeHandler, model: OfflineModel
) -> None:
    handler = await make_handler(connection_pool={"MIN_SIZE": 1})
    first = await handler.create_session("alice")
    await turn(handler, first, "my secret is platypus-4471")
    pid = worker_pid(handler, first)
    await handler.destroy_session(first)
    second = await handler.create_session("bob")
    assert worker_pid(handler, second) == pid
    model.requests.clear()
    messages = await turn(handler, second, "what do you know?")
    assert "what do you know?" in reply_text(messages)
    bodies = [str(r.body) for r in model.message_requests()]
    assert bodies and not any("platypus-4471" in body for body in bodies)


async def test_different_options_never_share_a_worker(make_handler: MakeHandler) -> None:
    handler = await make_handler(connection_pool={"MIN_SIZE": 1})
    plain = await handler.create_session("plain")
    pid = worker_pid(handler, plain)
    await handler.destroy_session(plain)
    custom = await handler.create_session("custom", SessionConfig(system_prompt="You are terse."))
    assert worker_pid(handler, custom) != pid
    assert pid in pids_of(handler)  # still idle, kept for default-option sessions


async def test_dead_idle_worker_is_never_handed_out(make_handler: MakeHandler) -> None:
    handler = await make_handler(connection_pool={"MIN_SIZE": 1})
    (spare,) = pids_of(handler)
    os.kill(spare, signal.SIGKILL)
    await asyncio.sleep(0.2)
    session_id = await handler.create_session()
    worker = handler.session_manager.get(session_id).worker
    assert worker is not None and worker.pid != spare and worker.is_alive()
    assert "alive" in reply_text(await turn(handler, session_id, "alive?"))


async def test_worn_out_worker_is_closed_not_pooled(make_handler: MakeHandler) -> None:
    handler = await make_handler(connection_pool={"MIN_SIZE": 0, "MAX_USES": 2})
    session_id = await handler.create_session()
    await turn(handler, session_id, "one")
    await turn(handler, session_id, "two")
    pid = worker_pid(handler, session_id)
    await handler.destroy_session(session_id)
    assert handler.get_pool_status()["pool_size"] == 0
    assert wait_no_cli({pid}) == []


async def test_idle_workers_never_exceed_max_size(make_handler: MakeHandler) -> None:
    handler = await make_handler(connection_pool={"MIN_SIZE": 0, "MAX_SIZE": 1})
    ids = [await handler.create_session(f"s{i}") for i in range(3)]
    await asyncio.gather(*(handler.destroy_session(i) for i in ids))
    status = handler.get_pool_status()
    assert status["idle"] == 1 and status["pool_size"] == 1


async def test_expired_idle_workers_are_retired_by_health_check(make_handler: MakeHandler) -> None:
    handler = await make_handler(connection_pool={"MIN_SIZE": 1, "MAX_AGE_MINUTES": 0.01})
    (old,) = pids_of(handler)
    await asyncio.sleep(0.7)
    assert await handler.pool.health_check() == 1
    await handler.pool.fill()
    assert wait_no_cli({old}) == []
    status = handler.get_pool_status()
    assert status["idle"] == 1 and old not in pids_of(handler)


async def test_connect_timeout_is_a_typed_error_and_leaves_no_process(make_handler: MakeHandler) -> None:
    handler = await make_handler(connection_pool={"MIN_SIZE": 0}, optimization={"CREATE_TIMEOUT": 0.05})
    with pytest.raises(WorkerStartError, match="did not connect"):
        await handler.create_session("too-slow")
    assert "too-slow" not in handler.session_manager
    assert wait_no_cli() == []


async def test_shutdown_pool_ends_every_process_and_sessions_resume(make_handler: MakeHandler) -> None:
    handler = await make_handler(connection_pool={"MIN_SIZE": 2})
    session_id = await handler.create_session()
    await turn(handler, session_id, "before shutdown")
    pids = pids_of(handler)
    await handler.shutdown_pool()
    assert wait_no_cli(pids) == []
    assert handler.get_pool_status()["pool_size"] == 0
    assert "after shutdown" in reply_text(await turn(handler, session_id, "after shutdown"))


async def test_pool_status_has_the_contract_shape(make_handler: MakeHandler) -> None:
    handler = await make_handler(connection_pool={"MIN_SIZE": 1, "MAX_SIZE": 4})
    status = handler.get_pool_status()
    assert {"pool_size", "healthy_connections", "max_size", "min_size", "connections"} <= status.keys()
    assert status["max_size"] == 4 and status["min_size"] == 1
    (connection,) = status["connections"]
    assert set(connection) == {"id", "pid", "state", "age_seconds", "uses", "healthy"}
    assert connection["state"] == "idle" and connection["healthy"] is True


async def test_worker_that_will_not_close_in_time_is_killed(make_handler: MakeHandler) -> None:
    handler = await make_handler(connection_pool={"MIN_SIZE": 0}, optimization={"DESTROY_TIMEOUT": 0.5})
    session_id = await handler.create_session()
    worker = handler.session_manager.get(session_id).worker
    assert worker is not None
    os.kill(worker.pid, signal.SIGSTOP)  # frozen: neither /clear nor a clean exit can happen
    began = time.monotonic()
    await handler.destroy_session(session_id)
    assert time.monotonic() - began < 3
    assert wait_no_cli({worker.pid}) == []
    assert handler.get_pool_status()["pool_size"] == 0


async def test_close_while_a_cli_is_starting_leaves_no_process(make_handler: MakeHandler) -> None:
    handler = await make_handler(connection_pool={"MIN_SIZE": 0})
    creating = asyncio.create_task(handler.create_session("late"))
    await asyncio.sleep(0.15)
    assert handler.pool.live_count() == 1 and not handler.pool.workers()  # connecting
    await handler.close()
    with pytest.raises(WorkerStartError):
        await creating
    assert wait_no_cli(timeout=1) == []


async def test_a_registry_failure_after_spawn_leaks_no_cli_nor_its_slot(
    make_handler: MakeHandler, monkeypatch: pytest.MonkeyPatch
) -> None:
    handler = await make_handler(connection_pool={"MIN_SIZE": 0})

    async def broken(owner: str, pid: int, started_at: float) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(handler.registry.pids, "add", broken)
    with pytest.raises(WorkerStartError, match="disk I/O error"):
        await handler.create_session("s")
    assert handler.pool.live_count() == 0 and "s" not in handler.session_manager
    assert wait_no_cli(timeout=2) == []


async def test_filling_spares_never_counts_one_twice(make_handler: MakeHandler) -> None:
    handler = await make_handler(connection_pool={"MIN_SIZE": 0, "MAX_SIZE": 4})
    handler.pool.limits.MIN_SIZE = 3
    filling = asyncio.create_task(handler.pool.fill())
    peak = 0
    while not filling.done():
        peak = max(peak, handler.pool.live_count())
        await asyncio.sleep(0.002)
    assert await filling == 3
    assert peak == 3 and handler.pool.live_count() == 3


async def test_a_worker_closed_during_its_reset_is_not_pooled(make_handler: MakeHandler) -> None:
    handler = await make_handler(connection_pool={"MIN_SIZE": 0})
    session_id = await handler.create_session()
    await turn(handler, session_id, "hello")
    session = handler.session_manager.get(session_id)
    worker, session.worker = session.worker, None
    assert worker is not None
    releasing = asyncio.create_task(handler.pool.release(worker))
    await asyncio.sleep(0.01)
    assert worker.state is WorkerState.RESETTING
    await handler.pool.discard(worker)
    await releasing
    assert worker.state.value == "closed" and handler.pool.idle_count == 0
    assert wait_no_cli({worker.pid}) == []


async def test_spares_follow_only_the_option_sets_seen_within_the_minute(make_handler: MakeHandler) -> None:
    handler = await make_handler(connection_pool={"MIN_SIZE": 1, "MAX_SIZE": 4})
    pool = handler.pool
    clock = pool.demand.clock = Clock()
    custom = SessionConfig(system_prompt="a")
    await handler.create_session(config=custom)
    while pool._tasks:  # let the top-up finish
        await asyncio.gather(*list(pool._tasks))
    (spare,) = [w for w in pool.workers() if w.state is WorkerState.IDLE and w.fingerprint == custom.fingerprint]
    clock.now += 61
    await pool.fill()
    assert wait_no_cli({spare.pid}) == [] and spare.state is WorkerState.CLOSED
    fingerprints = [w.fingerprint for w in pool.workers() if w.state is WorkerState.IDLE]
    assert fingerprints == [SessionConfig().fingerprint]  # the default options keep CP_MIN_SIZE
