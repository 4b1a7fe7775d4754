"""The maintenance task: periodic, resilient, stopped by close()."""

from __future__ import annotations

import asyncio

from structlog.testing import capture_logs

from claude_sessions.sessions.maintenance import Maintenance
from conftest import MakeHandler
from helpers import turn, wait_no_cli


async def test_a_failing_run_does_not_stop_the_schedule() -> None:
    calls = 0

    async def flaky() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("first run breaks")

    maintenance = Maintenance(0.02, flaky)
    with capture_logs() as logs:
        maintenance.start()
        await asyncio.sleep(0.15)
        await maintenance.stop()
    assert calls >= 3 and maintenance.failures == 1
    assert any(e["event"] == "maintenance_failed" for e in logs)
    stopped_at = calls
    await asyncio.sleep(0.05)
    assert calls == stopped_at and not maintenance.is_running


async def test_scheduled_runs_clean_up_and_refill_the_pool(make_handler: MakeHandler) -> None:
    handler = await make_handler(
        session_manager={"TIMEOUT_MINUTES": 0.01, "CLEANUP_INTERVAL": 0.01},
        connection_pool={"MIN_SIZE": 1, "MAX_SIZE": 2},
    )
    with capture_logs() as logs:
        session_id = await handler.create_session("forgotten")
        await turn(handler, session_id, "then silence")
        for _ in range(60):
            if any(e["event"] == "inactive_sessions_removed" for e in logs):
                break
            await asyncio.sleep(0.1)
    assert session_id not in handler.session_manager
    assert handler.get_pool_status()["idle"] >= 1
    events = {e["event"] for e in logs}
    assert {"session_created", "cleanup_run", "inactive_sessions_removed"} <= events
    run = next(e for e in logs if e["event"] == "cleanup_run")
    assert {"active_sessions", "pool_size", "orphans"} <= run.keys()
    created = next(e for e in logs if e["event"] == "session_created")
    assert created["session_id"] == "forgotten" and "pool_size" in created


async def test_close_stops_maintenance_and_every_process(make_handler: MakeHandler) -> None:
    handler = await make_handler(session_manager={"CLEANUP_INTERVAL": 0.01}, connection_pool={"MIN_SIZE": 2})
    await handler.create_session()
    assert handler.maintenance.is_running
    await handler.close()
    assert not handler.maintenance.is_running
    assert wait_no_cli() == []
