"""Durable sessions on the real CLI: idle release, bounded live workers, restarts."""

from __future__ import annotations

import asyncio

import pytest

from claude_sessions import CapacityError, ClaudeHandler, SystemConfig
from claude_sessions.offline_model import OfflineModel
from conftest import MakeHandler
from helpers import cli_processes, reply_text, turn, wait_no_cli, worker_pid


async def test_idle_release_then_resume_with_history(make_handler: MakeHandler, model: OfflineModel) -> None:
    handler = await make_handler(session_manager={"IDLE_RELEASE_MINUTES": 0.005}, connection_pool={"MIN_SIZE": 0})
    session_id = await handler.create_session("sleeper")
    await turn(handler, session_id, "remember the fruit kiwi")
    session = handler.session_manager.get(session_id)
    first_pid = worker_pid(handler, session_id)
    await asyncio.sleep(0.5)
    assert await handler.session_manager.release_idle_workers() == [session_id]
    assert session.state == "idle" and session.worker is None
    assert session.metrics.message_count == 1  # still listed, metrics kept
    model.requests.clear()
    messages = await turn(handler, session_id, "which fruit?")
    assert "which fruit?" in reply_text(messages)
    assert session.worker is not None and session.worker.pid != first_pid
    texts = model.message_requests()[-1].user_texts
    assert any("kiwi" in text for text in texts), texts  # the model saw the history


async def test_more_sessions_than_live_workers_all_usable(make_handler: MakeHandler) -> None:
    handler = await make_handler(connection_pool={"MIN_SIZE": 0, "MAX_LIVE": 2})
    ids = [await handler.create_session(f"s{i}") for i in range(5)]
    peak = 0
    for round_ in range(2):
        for session_id in ids:
            messages = await turn(handler, session_id, f"round {round_} for {session_id}")
            assert f"round {round_} for {session_id}" in reply_text(messages)
            peak = max(peak, len(cli_processes()))
    assert peak <= 2
    assert len(handler.session_manager) == 5
    assert handler.session_manager.get("s0").metrics.message_count == 2


async def test_turns_wait_for_a_live_worker_then_give_up(make_handler: MakeHandler) -> None:
    handler = await make_handler(connection_pool={"MIN_SIZE": 0, "MAX_LIVE": 1}, optimization={"CREATE_TIMEOUT": 2})
    busy = await handler.create_session("busy")
    waiting = await handler.create_session("waiting")  # takes the only worker from "busy"
    first = asyncio.create_task(turn(handler, busy, "[[slow:1]] hold the worker"))
    await asyncio.sleep(0.3)
    second = await turn(handler, waiting, "after you")  # waits, then gets the freed worker
    assert "after you" in reply_text(second)
    assert "hold the worker" in reply_text(await first)
    hog = asyncio.create_task(turn(handler, busy, "[[slow:4]] hog"))
    await asyncio.sleep(0.5)
    with pytest.raises(CapacityError):
        await turn(handler, waiting, "no room")
    await hog
    assert len(cli_processes()) <= 1


async def test_restart_keeps_sessions_metrics_and_conversations(cli_env: dict[str, str], model: OfflineModel) -> None:
    first = ClaudeHandler(SystemConfig.from_env())
    session_id = await first.create_session("durable", metadata={"owner": "ana"})
    await turn(first, session_id, "the password is swordfish")
    before = first.session_manager.get(session_id).metrics
    await first.close()
    assert wait_no_cli() == []

    second = ClaudeHandler(SystemConfig.from_env())
    try:
        restored = second.session_manager.get(session_id)
        assert restored.state == "idle" and restored.metadata == {"owner": "ana"}
        assert restored.metrics.message_count == 1 and restored.metrics.total_tokens == before.total_tokens
        model.requests.clear()
        await turn(second, session_id, "what is the password?")
        assert any("swordfish" in t for t in model.message_requests()[-1].user_texts)
        assert restored.metrics.message_count == 2
    finally:
        await second.close()
    assert wait_no_cli() == []


async def test_purge_deletes_the_transcript_and_retention_purges_later(make_handler: MakeHandler) -> None:
    handler = await make_handler(connection_pool={"MIN_SIZE": 0}, session_manager={"TRANSCRIPT_RETENTION_DAYS": 0})
    manager = handler.session_manager
    purged = await handler.create_session("purged")
    kept = await handler.create_session("kept")
    for session_id in (purged, kept):
        await turn(handler, session_id, "leave a transcript")
    purged_path = manager.transcript_path(manager.get(purged))
    kept_path = manager.transcript_path(manager.get(kept))
    assert purged_path and kept_path and purged_path.exists() and kept_path.exists()
    await handler.destroy_session(purged, purge=True)
    assert not purged_path.exists()
    await handler.destroy_session(kept)
    assert kept_path.exists()  # kept until the retention period passes
    await handler.run_maintenance()  # retention 0 days: due now
    assert not kept_path.exists()
