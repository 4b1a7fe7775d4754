"""The handler end to end on the real CLI: sessions, turns, timeouts, dead workers."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest
from claude_agent_sdk import AssistantMessage, StreamEvent

from claude_sessions import (
    ClaudeHandler,
    ClaudeSessionsError,
    InvalidContentError,
    InvalidImageError,
    SessionBusyError,
    SessionConfig,
    SessionExistsError,
    SessionNotFoundError,
    SystemConfig,
    TurnTimeoutError,
    WorkerDiedError,
)
from claude_sessions.offline_model import OfflineModel
from claude_sessions.sessions.turn_events import INTERRUPT_GRACE_SECONDS
from claude_sessions.workers.workspaces import session_cwd
from conftest import MakeHandler
from helpers import (
    failed_turn,
    image_block,
    images_seen,
    pids_of,
    png,
    reply_text,
    result_of,
    transcript_file,
    turn,
    wait_no_cli,
    worker_pid,
)


async def test_create_send_destroy_round_trip(make_handler: MakeHandler) -> None:
    handler = await make_handler()
    session_id = await handler.create_session("round-trip")
    messages = await turn(handler, session_id, "hello there")
    assert "You said: hello there" in reply_text(messages)
    assert not result_of(messages).is_error
    metrics = handler.session_manager.get_session_metrics(session_id)
    assert metrics is not None and metrics.message_count == 1
    await handler.destroy_session(session_id)
    assert handler.session_manager.get_session_metrics(session_id) is None


async def test_generated_id_and_bad_ids(make_handler: MakeHandler) -> None:
    handler = await make_handler(connection_pool={"MIN_SIZE": 1})
    generated = await handler.create_session()
    assert len(generated) == 32
    with pytest.raises(SessionExistsError):
        await handler.create_session(generated)
    for bad in ["", "a/b", "x" * 129, "sp ace", "../etc"]:
        with pytest.raises(ValueError, match="session_id"):
            await handler.create_session(bad)
    with pytest.raises(ValueError, match="outside the workspace"):
        await handler.create_session("escape", SessionConfig(cwd="../.."))


async def test_unknown_session_and_empty_prompt_are_typed_errors(make_handler: MakeHandler) -> None:
    handler = await make_handler(connection_pool={"MIN_SIZE": 1})
    with pytest.raises(SessionNotFoundError):
        await turn(handler, "nope", "hi")
    with pytest.raises(SessionNotFoundError):
        await handler.destroy_session("nope")
    with pytest.raises(SessionNotFoundError):
        await handler.interrupt("nope")
    session_id = await handler.create_session("s")
    with pytest.raises(InvalidContentError, match="the message is empty"):
        await turn(handler, session_id, "   ")
    assert isinstance(InvalidContentError("x", "content"), ValueError)


async def test_second_turn_while_one_runs_is_busy(make_handler: MakeHandler) -> None:
    handler = await make_handler(connection_pool={"MIN_SIZE": 1})
    session_id = await handler.create_session("busy")
    first = asyncio.create_task(turn(handler, session_id, "[[slow:1]] slow one"))
    await asyncio.sleep(0.3)
    with pytest.raises(SessionBusyError):
        await turn(handler, session_id, "second")
    assert "slow one" in reply_text(await first)
    assert "again" in reply_text(await turn(handler, session_id, "again"))


async def test_interrupt_stops_the_running_turn(make_handler: MakeHandler) -> None:
    handler = await make_handler(connection_pool={"MIN_SIZE": 1})
    session_id = await handler.create_session("interrupt")
    running = asyncio.create_task(turn(handler, session_id, "[[hang]] forever"))
    await asyncio.sleep(0.5)
    began = time.monotonic()
    await handler.interrupt(session_id)
    result = result_of(await asyncio.wait_for(running, 5))
    assert result.terminal_reason == "aborted_streaming"
    assert time.monotonic() - began < 2
    metrics = handler.session_manager.get_session_metrics(session_id)
    assert metrics is not None and metrics.api_errors == 0  # an interrupt is not an API error
    assert "still here" in reply_text(await turn(handler, session_id, "still here"))


async def test_turn_timeout_interrupts_and_session_stays_usable(make_handler: MakeHandler) -> None:
    handler = await make_handler(connection_pool={"MIN_SIZE": 1}, optimization={"MESSAGE_TIMEOUT": 1.5})
    session_id = await handler.create_session("timeout")
    began = time.monotonic()
    with pytest.raises(TurnTimeoutError):
        await turn(handler, session_id, "[[hang]] never answers")
    assert time.monotonic() - began < 1.5 + 2
    metrics = handler.session_manager.get_session_metrics(session_id)
    assert metrics is not None and metrics.timeouts == 1
    assert handler.session_manager.get(session_id).state == "active"
    assert "after timeout" in reply_text(await turn(handler, session_id, "after timeout"))


async def test_abandoned_stream_winds_down_and_frees_the_session(make_handler: MakeHandler) -> None:
    handler = await make_handler(connection_pool={"MIN_SIZE": 1})
    session_id = await handler.create_session("abandon")
    stream = handler.send_message(session_id, "[[slow:30]] long answer")
    first = await anext(stream)  # the turn is running
    assert first is not None
    await stream.aclose()
    session = handler.session_manager.get(session_id)
    assert not session.is_busy
    assert "next" in reply_text(await turn(handler, session_id, "next"))


async def test_api_error_is_counted_and_session_still_usable(make_handler: MakeHandler, model: OfflineModel) -> None:
    handler = await make_handler(connection_pool={"MIN_SIZE": 1})
    session_id = await handler.create_session("api-error")
    messages, failed = await failed_turn(handler, session_id, "[[fail:500]] boom")
    assert result_of(messages).is_error  # the turn's messages first, then the typed error
    assert failed.status == 500 and isinstance(failed, ClaudeSessionsError)
    metrics = handler.session_manager.get_session_metrics(session_id)
    assert metrics is not None and metrics.api_errors == 1
    # CLAUDE_CODE_MAX_RETRIES bounds the CLI's retries: 1 try + 2 retries, not minutes of them.
    assert len([r for r in model.message_requests() if "boom" in r.last_user_text]) == 3
    assert "recovered" in reply_text(await turn(handler, session_id, "recovered"))
    assert metrics.api_errors == 1 and metrics.message_count == 2


async def test_killed_worker_fails_fast_then_next_message_resumes_with_history(
    make_handler: MakeHandler, model: OfflineModel
) -> None:
    handler = await make_handler(connection_pool={"MIN_SIZE": 1})
    session_id = await handler.create_session("phoenix")
    await turn(handler, session_id, "remember the word avocado")
    session = handler.session_manager.get(session_id)
    assert session.worker is not None
    old_pid, claude_id = session.worker.pid, session.claude_session_id

    stream = handler.send_message(session_id, "[[slow:30]] this turn dies")
    await anext(stream)
    os.kill(old_pid, signal.SIGKILL)
    began = time.monotonic()
    with pytest.raises(WorkerDiedError):
        async for _ in stream:
            pass
    assert time.monotonic() - began < 1.0
    metrics = handler.session_manager.get_session_metrics(session_id)
    assert metrics is not None and metrics.connection_errors == 1

    messages = await turn(handler, session_id, "what was the word?")
    assert "what was the word?" in reply_text(messages)
    assert session.worker is not None and session.worker.pid != old_pid
    assert session.claude_session_id == claude_id  # the same conversation, resumed
    seen = model.message_requests()[-1].user_texts
    assert any("avocado" in text for text in seen), seen


async def test_worker_dead_between_turns_is_replaced_transparently(make_handler: MakeHandler) -> None:
    handler = await make_handler(connection_pool={"MIN_SIZE": 1})
    session_id = await handler.create_session("quiet-death")
    await turn(handler, session_id, "first")
    session = handler.session_manager.get(session_id)
    assert session.worker is not None
    dead = session.worker
    os.kill(dead.pid, signal.SIGKILL)
    began = time.monotonic()
    while session.worker is not None and time.monotonic() - began < 5:  # noticed at once, not at the next turn
        await asyncio.sleep(0.02)
    assert session.worker is None and time.monotonic() - began < 1.0
    assert handler.gateway.grant_of({"x-api-key": dead.grant.token}) is None  # its token answers 401
    messages = await turn(handler, session_id, "second")
    assert any(isinstance(m, AssistantMessage) for m in messages)
    metrics = handler.session_manager.get_session_metrics(session_id)
    assert metrics is not None and metrics.connection_errors == 0  # no turn met the dead CLI


async def test_destroy_during_a_turn_interrupts_it(make_handler: MakeHandler) -> None:
    handler = await make_handler(connection_pool={"MIN_SIZE": 1})
    session_id = await handler.create_session("doomed")
    running = asyncio.create_task(turn(handler, session_id, "[[hang]] wait"))
    await asyncio.sleep(0.5)
    await handler.destroy_session(session_id)
    assert result_of(await asyncio.wait_for(running, 5)).terminal_reason == "aborted_streaming"
    assert session_id not in handler.session_manager


async def test_async_context_manager_closes_everything(cli_env: dict[str, str]) -> None:
    from claude_sessions import ClaudeHandler
    from helpers import pids_of, wait_no_cli

    async with ClaudeHandler() as handler:
        session_id = await handler.create_session()
        await turn(handler, session_id, "hi")
        pids = pids_of(handler)
        assert pids
    assert wait_no_cli(pids) == []


async def test_a_users_own_clear_starts_afresh_and_is_no_orphan(make_handler: MakeHandler) -> None:
    handler = await make_handler(connection_pool={"MIN_SIZE": 0}, server={"SLASH_COMMANDS_ALLOWED": "clear"})
    session_id = await handler.create_session("clearing")
    await turn(handler, session_id, "before the clear")
    session = handler.session_manager.get(session_id)
    before = session.claude_session_id
    await turn(handler, session_id, "/clear")
    assert await handler.session_manager.detect_orphaned_sessions() == []
    assert session.state == "active"
    reply = reply_text(await turn(handler, session_id, "after the clear"))
    assert "[user message 1 of this conversation]" in reply
    assert session.claude_session_id != before
    path = transcript_file(handler, session_id)
    assert path is not None and path.exists()


async def test_destroy_while_the_turn_binds_its_worker_stops_the_turn(
    make_handler: MakeHandler, model: OfflineModel
) -> None:
    handler = await make_handler(connection_pool={"MIN_SIZE": 0})
    session_id = await handler.create_session("binding")
    await turn(handler, session_id, "first")
    await handler.shutdown_pool()  # the next turn must start a CLI (about half a second)
    session = handler.session_manager.get(session_id)
    model.requests.clear()
    running = asyncio.create_task(turn(handler, session_id, "never billed"))
    await asyncio.sleep(0.1)
    assert session.is_busy and session.worker is None  # still binding
    await handler.destroy_session(session_id)
    with pytest.raises(SessionNotFoundError):
        await running
    assert model.message_requests() == []
    assert handler.get_pool_status()["pool_size"] <= 1 and session.worker is None


async def test_the_deadline_covers_writing_the_prompt(make_handler: MakeHandler) -> None:
    handler = await make_handler(connection_pool={"MIN_SIZE": 0}, optimization={"MESSAGE_TIMEOUT": 1.0})
    session_id = await handler.create_session("stuck-write")
    pid = worker_pid(handler, session_id)
    os.kill(pid, signal.SIGSTOP)  # it reads nothing: a large prompt fills the pipe and the write blocks
    began = time.monotonic()
    with pytest.raises(TurnTimeoutError):
        await turn(handler, session_id, "x" * 400_000)
    assert time.monotonic() - began < 1.0 + INTERRUPT_GRACE_SECONDS + 2
    assert wait_no_cli({pid}) == []
    assert "unstuck" in reply_text(await turn(handler, session_id, "unstuck"))


async def test_a_worn_out_worker_is_replaced_between_turns_of_a_long_session(
    make_handler: MakeHandler, model: OfflineModel
) -> None:
    handler = await make_handler(connection_pool={"MIN_SIZE": 0, "MAX_USES": 2})
    session_id = await handler.create_session("long")
    await turn(handler, session_id, "one")
    first = worker_pid(handler, session_id)
    await turn(handler, session_id, "two")
    reply = reply_text(await turn(handler, session_id, "three"))
    assert worker_pid(handler, session_id) != first
    assert "[user message 3 of this conversation]" in reply  # resumed, not restarted
    assert wait_no_cli({first}) == []


async def test_an_old_worker_is_replaced_between_turns_of_a_long_session(make_handler: MakeHandler) -> None:
    handler = await make_handler(connection_pool={"MIN_SIZE": 0, "MAX_AGE_MINUTES": 0.02})
    session_id = await handler.create_session("aging")
    await turn(handler, session_id, "one")
    first = worker_pid(handler, session_id)
    await asyncio.sleep(1.3)
    reply = reply_text(await turn(handler, session_id, "two"))
    assert worker_pid(handler, session_id) != first
    assert "[user message 2 of this conversation]" in reply
    assert wait_no_cli({first}) == []


def test_a_cwd_is_read_part_by_part_so_no_spelling_reaches_another_workspace(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    config = SystemConfig.from_env()
    root = config.runtime.workspace_root
    (root / "alice" / "a" / "b").mkdir(parents=True)
    (root / "bob").mkdir()
    (root / "alice" / "deep").symlink_to(root / "alice" / "a" / "b")
    alias = tmp_path / "alias"  # the root under another name
    alias.symlink_to(root)
    assert session_cwd(SessionConfig(cwd=str(alias / "alice" / "a")), config) == root / "alice" / "a"
    assert session_cwd(SessionConfig(cwd="alice/deep/.."), config) == root / "alice" / "a"
    # Each resolves to bob's workspace, while its spelling starts in alice's.
    for cwd in ("alice/deep/../../../bob", str(alias / "alice" / "deep" / ".." / ".." / ".." / "bob")):
        with pytest.raises(ValueError, match="another workspace"):
            session_cwd(SessionConfig(cwd=cwd), config)


def test_an_end_users_cwd_stays_in_that_users_folder_whatever_is_swapped_in(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    config = SystemConfig.from_env()
    root = config.runtime.workspace_root
    (root / "acme" / "ana" / "work").mkdir(parents=True)
    (root / "acme" / "bob").mkdir()
    assert session_cwd(SessionConfig(cwd="acme/ana/work", user="ana"), config) == root / "acme" / "ana" / "work"
    (root / "acme" / "ana" / "swapped").symlink_to(root / "acme" / "bob")  # as ana's Bash could
    for cwd in ("acme/ana/swapped", "acme/ana/../bob", "acme/bob", "acme"):
        with pytest.raises(ValueError, match=r"another workspace|workspace of user"):
            session_cwd(SessionConfig(cwd=cwd, user="ana"), config)
    with pytest.raises(ValueError, match="name it"):
        session_cwd(SessionConfig(user="ana"), config)
    for user in ("..", ".", "a/b", ""):
        with pytest.raises(ValueError):
            SessionConfig(cwd="acme/x", user=user)


async def test_a_cwd_naming_a_file_a_loop_or_too_long_a_name_is_a_value_error(make_handler: MakeHandler) -> None:
    handler = await make_handler(connection_pool={"MIN_SIZE": 0})
    root = handler.config.runtime.workspace_root
    (root / "notes.txt").write_text("a file, not a folder")
    (root / "loop").symlink_to("loop")
    for cwd, reason in (
        ("notes.txt", "names a file"),
        ("notes.txt/below", "names a file"),
        ("loop", "symlink loop"),
        ("x" * 300, "longer than"),
    ):
        with pytest.raises(ValueError, match=reason):
            await handler.create_session(config=SessionConfig(cwd=cwd))
    assert len(handler.session_manager) == 0 and handler.get_pool_status()["pool_size"] == 0


async def test_a_turn_streams_text_deltas_on_a_pooled_worker_too(make_handler: MakeHandler) -> None:
    handler = await make_handler(connection_pool={"MIN_SIZE": 1})
    (spare,) = pids_of(handler)
    session_id = await handler.create_session()
    assert worker_pid(handler, session_id) == spare  # a warmed-up spare, not a CLI started for it
    messages = await turn(handler, session_id, "one two three four")
    deltas = [
        (index, m.event["delta"]["text"])
        for index, m in enumerate(messages)
        if isinstance(m, StreamEvent) and m.event["type"] == "content_block_delta"
    ]
    assert len(deltas) > 1 and "".join(text for _, text in deltas) == reply_text(messages)
    first_whole = next(i for i, m in enumerate(messages) if isinstance(m, AssistantMessage))
    assert deltas[0][0] < first_whole


@pytest.mark.slow  # a real CLI, on the offline model the handler starts itself
async def test_without_credentials_the_library_answers_from_the_offline_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("ANTHROPIC_BASE_URL", "ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CLAUDE_SESSIONS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CLAUDE_CONFIG_DIR", str(tmp_path / "claude"))
    monkeypatch.setenv("WORKSPACE_ROOT", str(tmp_path / "workspaces"))
    monkeypatch.setenv("CP_MIN_SIZE", "0")
    async with ClaudeHandler() as handler:  # as the README's example: nothing configured
        session_id = await handler.create_session("offline")
        pid = worker_pid(handler, session_id)
        assert "(offline model) You said: Hello" in reply_text(await turn(handler, session_id, "Hello"))
    logged = capsys.readouterr().out
    assert logged.count("offline_model_answers") == 1 and "no Anthropic credentials" in logged
    assert wait_no_cli({pid}) == []


async def test_a_message_with_an_image_reaches_the_model_as_an_image_block(
    make_handler: MakeHandler, model: OfflineModel
) -> None:
    handler = await make_handler(connection_pool={"MIN_SIZE": 1})
    session_id = await handler.create_session("look")
    content = [{"type": "text", "text": "What is in this picture?"}, image_block(png(3, 3))]
    messages = [m async for m in handler.send_message(session_id, content)]
    assert "[images seen: image/png]" in reply_text(messages) and not result_of(messages).is_error
    (seen,) = images_seen(model.message_requests()[-1])
    assert seen["source"] == content[1]["source"]
    assert handler.session_manager.get(session_id).title == "What is in this picture?"
    with pytest.raises(InvalidImageError) as refused:  # before any model call: nothing is billed
        await turn(handler, session_id, [image_block(png(), "image/jpeg")])
    assert refused.value.param == "content.0.source.data"
