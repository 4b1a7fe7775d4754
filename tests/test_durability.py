"""Durable sessions on the real CLI: idle release, bounded live workers, restarts."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest

from claude_sessions import CapacityError, ClaudeHandler, SystemConfig
from claude_sessions.offline_model import OfflineModel, OfflineModelServer
from claude_sessions.store.sqlite import SqliteRegistry
from claude_sessions.workers.processes import data_dir_mark, end_stray_processes, process_started_at
from conftest import MakeHandler
from helpers import cli_processes, reply_text, turn, wait_no_cli, worker_pid
from server_process import sse, start_server


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
    # "busy" holds the only worker, so the wait covers its 1 s turn, not a CLI's start (up to 4 s on a
    # loaded CI machine); the freed worker's replacement is spawned after the wait.
    handler = await make_handler(connection_pool={"MIN_SIZE": 0, "MAX_LIVE": 1}, optimization={"CREATE_TIMEOUT": 5})
    waiting = await handler.create_session("waiting")
    busy = await handler.create_session("busy")  # takes the only worker from "waiting"
    first = asyncio.create_task(turn(handler, busy, "[[slow:1]] hold the worker"))
    await asyncio.sleep(0.3)
    second = await turn(handler, waiting, "after you")  # waits, then gets the freed worker
    assert "after you" in reply_text(second)
    assert "hold the worker" in reply_text(await first)
    hog = asyncio.create_task(turn(handler, busy, "[[slow:7]] hog"))
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


async def test_purge_deletes_the_transcript_and_retention_purges_later(
    transcripts_in: dict[str, Any], make_handler: MakeHandler
) -> None:
    handler = await make_handler(
        connection_pool={"MIN_SIZE": 0}, session_manager={"TRANSCRIPT_RETENTION_DAYS": 0}, **transcripts_in
    )
    purged = await handler.create_session("purged")
    kept = await handler.create_session("kept")
    manager = handler.session_manager
    for session_id in (purged, kept):
        await turn(handler, session_id, "leave a transcript")
    purged_one, kept_one = (manager.get(s) for s in (purged, kept))
    conversations = [
        (manager.conversations.project_of(s.config), s.claude_session_id or "") for s in (purged_one, kept_one)
    ]
    assert [await handler.archive.exists(c) for c in conversations] == [True, True]
    await handler.destroy_session(purged, purge=True)
    assert not await handler.archive.exists(conversations[0])
    await handler.destroy_session(kept)
    assert await handler.archive.exists(conversations[1])  # kept until the retention period passes
    await handler.run_maintenance()  # retention 0 days: due now
    assert not await handler.archive.exists(conversations[1])


def test_kill_9_during_the_first_turn_leaves_no_half_turn_and_its_retry_runs_once(
    offline_server: OfflineModelServer, model: OfflineModel, tmp_path: Path
) -> None:
    server = start_server(tmp_path, offline_server.base_url)
    with server.client("alice") as alice:
        assert alice.post("/v1/sessions", json={"session_id": "early"}).status_code == 201
        body = {"content": "[[slow:30]] remember the word kiwi"}
        with alice.stream("POST", "/v1/sessions/early/messages", json=body) as stream:
            events = sse(stream)  # kept: the stream stays open (a dropped reader would end the turn)
            kind, _ = next(events)
            assert kind == "system"
            deadline = time.monotonic() + 10  # the CLI writes the transcript as it calls the model
            while not any("kiwi" in t.read_text() for t in (tmp_path / "claude" / "projects").glob("*/*.jsonl")):
                assert time.monotonic() < deadline, "no transcript"
                time.sleep(0.05)
            strays = server.cli_pids()
            server.stop(signal.SIGKILL)  # mid-turn: no reply, no result

    restarted = start_server(tmp_path, offline_server.base_url)
    try:
        with restarted.client("alice") as alice:
            assert alice.get("/v1/sessions/early").json()["metrics"]["message_count"] == 1  # as saved at its start
            model.requests.clear()
            # The caller never had an answer and sends the message again: it runs once, the cut try is gone.
            again = alice.post("/v1/sessions/early/messages?stream=false", json={"content": "remember the word kiwi"})
            assert again.status_code == 200 and "You said: remember the word kiwi" in again.json()["text"]
            reply = alice.post("/v1/sessions/early/messages?stream=false", json={"content": "which word?"})
            assert reply.status_code == 200, reply.text
            assert "You said: which word?" in reply.json()["text"]
            seen = model.message_requests()[-1].user_texts
            assert sum(t.count("kiwi") for t in seen) == 1 and not any("slow" in t for t in seen)
            assert alice.get("/v1/sessions/early").json()["metrics"]["message_count"] == 2
            assert alice.get("/v1/sessions/early").json()["state"] != "orphaned"
        workers = restarted.cli_pids()
    finally:
        restarted.stop()
    assert wait_no_cli(strays | workers) == []


def test_a_turn_answered_before_its_node_died_is_given_to_its_retry_not_run_again(
    offline_server: OfflineModelServer, model: OfflineModel, tmp_path: Path
) -> None:
    """Killed after the answer reached the transcript but before the turn's end was saved: the row
    still says busy. The retry with the same Idempotency-Key is answered from the transcript."""
    said = {"content": "remember the word kiwi"}
    server = start_server(tmp_path, offline_server.base_url, CP_MIN_SIZE="0")
    with server.client("alice") as alice:
        assert alice.post("/v1/sessions", json={"session_id": "kept"}).status_code == 201
        first = alice.post("/v1/sessions/kept/messages?stream=false", json=said, headers={"Idempotency-Key": "k1"})
        assert first.status_code == 200
        strays = server.cli_pids()
        server.stop(signal.SIGKILL)
    with sqlite3.connect(tmp_path / "data" / "sessions.db") as db:  # what a kill -9 before the end's save leaves
        db.execute("UPDATE sessions SET busy = 1")
        db.execute("DELETE FROM replies")  # and before its reply was kept

    restarted = start_server(tmp_path, offline_server.base_url, CP_MIN_SIZE="0")
    try:
        with restarted.client("alice") as alice:
            model.requests.clear()
            headers = {"Idempotency-Key": "k1"}
            with alice.stream("POST", "/v1/sessions/kept/messages", json=said, headers=headers) as stream:
                events = list(sse(stream))  # recovered from the transcript
            assert [kind for kind, _ in events][-2:] == ["assistant", "result"]
            assert events[-2][1]["content"][0]["text"] == first.json()["text"]
            again = alice.post("/v1/sessions/kept/messages?stream=false", json=said, headers=headers)
            assert again.status_code == 200 and again.json()["text"] == first.json()["text"]  # kept for the key
            assert again.json()["result"]["type"] == "result" and model.message_requests() == []
            assert alice.get("/v1/sessions/kept").json()["metrics"]["message_count"] == 1
            reply = alice.post("/v1/sessions/kept/messages?stream=false", json={"content": "which word?"})
            assert reply.status_code == 200 and "You said: which word?" in reply.json()["text"]
            assert sum(t.count("kiwi") for t in model.message_requests()[-1].user_texts) == 1
            assert alice.get("/v1/sessions/kept").json()["metrics"]["message_count"] == 2
        workers = restarted.cli_pids()
    finally:
        restarted.stop()
    assert wait_no_cli(strays | workers) == []


async def test_a_conversation_never_recorded_starts_afresh_and_is_no_orphan(make_handler: MakeHandler) -> None:
    handler = await make_handler(connection_pool={"MIN_SIZE": 0})
    session_id = await handler.create_session("unwritten")
    session = handler.session_manager.get(session_id)
    session.claude_session_id = str(uuid.uuid4())  # seen at a turn's start; the CLI died before writing
    await handler.shutdown_pool()
    assert await handler.session_manager.detect_orphaned_sessions() == []
    reply = reply_text(await turn(handler, session_id, "hello again"))
    assert "[user message 1 of this conversation]" in reply and session.state == "active"


async def test_an_earlier_runs_stray_is_ended_before_this_run_spawns(
    cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CP_MIN_SIZE", "0")
    first = ClaudeHandler(SystemConfig.from_env())
    session_id = await first.create_session("kept")
    await first.close()
    stray = await asyncio.create_subprocess_exec("sleep", "60")
    data_dir = SystemConfig.from_env().runtime.DATA_DIR.resolve()
    registry = SqliteRegistry(data_dir / "sessions.db", "earlier-node", 15.0)
    await registry.pids.add(
        data_dir_mark(data_dir), stray.pid, process_started_at(stray.pid)
    )  # as a crashed run left it
    await registry.close()
    sweeps: list[threading.Thread] = []

    def sweep(recorded: list[tuple[int, float]], owner: str) -> list[int]:
        sweeps.append(threading.current_thread())
        return end_stray_processes(recorded, owner)

    monkeypatch.setattr("claude_sessions.sessions.handler.end_stray_processes", sweep)
    second = ClaudeHandler(SystemConfig.from_env())
    try:
        await turn(second, session_id, "a turn before anything else starts the handler")
        pid = worker_pid(second, session_id)
        await second.create_session("another")
        assert await asyncio.wait_for(stray.wait(), 5) is not None and psutil.pid_exists(pid)
        assert "same worker" in reply_text(await turn(second, session_id, "same worker"))
        assert worker_pid(second, session_id) == pid
        assert len(sweeps) == 1 and sweeps[0] is not threading.main_thread()  # never on the event loop
    finally:
        await second.close()
        if stray.returncode is None:
            stray.kill()
        await stray.wait()
    assert wait_no_cli() == []
