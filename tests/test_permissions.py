"""Tool approval through the library: the real CLI asks, the session's user answers, the disk shows it.

The offline model answers ``[[tool:Name:{input}]]`` with a ``tool_use`` block; the real CLI then
asks through its worker's gate, and the test reads what happened in the workspace.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from pathlib import Path

import pytest
from claude_agent_sdk import PermissionResultDeny, ToolPermissionContext

from claude_sessions import (
    ClaudeHandler,
    PermissionDecidedError,
    PermissionExpiredError,
    PermissionNotFoundError,
    PermissionRequest,
    PermissionResolved,
    SessionConfig,
)
from claude_sessions.observability.telemetry import Telemetry
from claude_sessions.offline_model import OfflineModel
from claude_sessions.sessions.permissions import Approvals
from claude_sessions.sessions.replies import Reply
from conftest import MakeHandler
from helpers import reply_text, result_of, tool, turn, worker_pid

ASKING = SessionConfig(cwd="alice", ask_tools=("Write", "Edit"))


def workspace(handler: ClaudeHandler, name: str = "alice") -> Path:
    return handler.config.runtime.workspace_root / name


def write(handler: ClaudeHandler, name: str, text: str = "hello") -> str:
    return tool("Write", file_path=str(workspace(handler) / name), content=text)


async def answered(
    handler: ClaudeHandler, session_id: str, prompt: str, behavior: str = "allow", **answer: str
) -> list[Reply]:
    """One turn, each request answered with ``behavior`` as soon as it arrives."""
    replies: list[Reply] = []
    async for reply in handler.send_message(session_id, prompt):
        replies.append(reply)
        if isinstance(reply, PermissionRequest):
            await handler.decide_permission(session_id, reply.request_id, behavior, **answer)  # type: ignore[arg-type]
    return replies


def requests(replies: list[Reply]) -> list[PermissionRequest]:
    return [r for r in replies if isinstance(r, PermissionRequest)]


def resolved(replies: list[Reply]) -> list[PermissionResolved]:
    return [r for r in replies if isinstance(r, PermissionResolved)]


async def until_request(turn_: AsyncGenerator[Reply, None]) -> PermissionRequest:
    async for reply in turn_:
        if isinstance(reply, PermissionRequest):
            return reply
    raise AssertionError("the turn asked nothing")


async def test_an_allowed_call_runs_and_the_request_says_what_it_is(
    make_handler: MakeHandler, model: OfflineModel
) -> None:
    handler = await make_handler()
    session_id = await handler.create_session("a", ASKING)
    replies = await answered(handler, session_id, write(handler, "a.txt"))
    (request,) = requests(replies)
    assert request.tool == "Write" and request.session_id == "a" and request.display_name == "Write"
    assert request.input["file_path"].endswith("a.txt") and request.title and request.expires_at
    assert [(r.behavior, r.by, r.scope) for r in resolved(replies)] == [("allow", "user", "once")]
    assert (workspace(handler) / "a.txt").read_text() == "hello"
    assert "File created successfully" in reply_text(replies) and not result_of(replies).is_error


async def test_a_denied_call_does_not_run_and_the_model_reads_why(
    make_handler: MakeHandler, model: OfflineModel
) -> None:
    handler = await make_handler()
    session_id = await handler.create_session("a", ASKING)
    replies = await answered(handler, session_id, write(handler, "no.txt"), "deny", message="not that file, please")
    assert [(r.behavior, r.by) for r in resolved(replies)] == [("deny", "user")]
    assert not (workspace(handler) / "no.txt").exists()
    assert "not that file, please" in reply_text(replies)


async def test_a_tool_neither_allowed_nor_asked_is_refused_without_asking(
    make_handler: MakeHandler, model: OfflineModel
) -> None:
    handler = await make_handler()
    session_id = await handler.create_session("a", SessionConfig(cwd="alice", ask_tools=("Edit",)))
    replies = await answered(handler, session_id, write(handler, "unasked.txt"))
    assert requests(replies) == [] and not (workspace(handler) / "unasked.txt").exists()
    assert "has not been granted" in reply_text(replies)


async def test_a_file_outside_the_workspace_is_refused_without_asking(
    make_handler: MakeHandler, model: OfflineModel, tmp_path: Path
) -> None:
    handler = await make_handler()
    session_id = await handler.create_session("a", ASKING)
    outside = tmp_path / "outside.txt"
    replies = await answered(handler, session_id, tool("Write", file_path=str(outside), content="x"))
    assert requests(replies) == [] and not outside.exists()
    assert "inside the session's workspace" in reply_text(replies)
    (workspace(handler) / "escape").symlink_to(tmp_path)  # a folder of the workspace leading out
    replies = await answered(handler, session_id, write(handler, "escape/through.txt"))
    assert requests(replies) == [] and not (tmp_path / "through.txt").exists()


async def test_unanswered_requests_expire_and_answers_are_taken_once(
    make_handler: MakeHandler, model: OfflineModel
) -> None:
    handler = await make_handler(server={"PERMISSION_TIMEOUT_SECONDS": 0.5})
    session_id = await handler.create_session("a", ASKING)
    replies = await turn(handler, session_id, write(handler, "late.txt"))
    (request,) = requests(replies)
    assert [(r.behavior, r.by) for r in resolved(replies)] == [("deny", "timeout")]
    assert not (workspace(handler) / "late.txt").exists() and "No answer in time" in reply_text(replies)
    with pytest.raises(PermissionExpiredError):
        await handler.decide_permission(session_id, request.request_id, "allow")
    (allowed,) = requests(await answered(handler, session_id, write(handler, "b.txt")))
    with pytest.raises(PermissionDecidedError):
        await handler.decide_permission(session_id, allowed.request_id, "deny")
    with pytest.raises(PermissionNotFoundError):
        await handler.decide_permission(session_id, "perm_unknown", "allow")
    with pytest.raises(ValueError):
        await handler.decide_permission(session_id, allowed.request_id, "maybe")  # type: ignore[arg-type]


async def test_an_interrupt_denies_what_waits(make_handler: MakeHandler, model: OfflineModel) -> None:
    handler = await make_handler()
    session_id = await handler.create_session("a", ASKING)
    replies = handler.send_message(session_id, write(handler, "stopped.txt"))
    request = await until_request(replies)
    assert await handler.permission_requests(session_id) == [request]
    await handler.interrupt(session_id)
    rest = [r async for r in replies]
    assert [(r.behavior, r.by) for r in resolved(rest)] == [("deny", "interrupt")]
    assert not (workspace(handler) / "stopped.txt").exists() and await handler.permission_requests(session_id) == []
    with pytest.raises(PermissionDecidedError):
        await handler.decide_permission(session_id, request.request_id, "allow")


async def test_the_turn_deadline_keeps_running_while_a_call_waits(
    make_handler: MakeHandler, model: OfflineModel
) -> None:
    handler = await make_handler(optimization={"MESSAGE_TIMEOUT": 6.0})  # PERMISSION_TIMEOUT_SECONDS: 300
    session_id = await handler.create_session("a", ASKING)
    began = time.monotonic()
    replies = await turn(handler, session_id, write(handler, "never.txt"))
    assert len(requests(replies)) == 1  # it expires 2 s before the turn's deadline: the turn ends as a turn
    assert [(r.behavior, r.by) for r in resolved(replies)] == [("deny", "timeout")]
    assert 3.5 < time.monotonic() - began < 6.0 and not (workspace(handler) / "never.txt").exists()
    assert "You said: next" in reply_text(await turn(handler, session_id, "next"))


async def test_a_caller_that_leaves_lets_the_user_answer_from_elsewhere(
    make_handler: MakeHandler, model: OfflineModel
) -> None:
    handler = await make_handler()
    session_id = await handler.create_session("a", ASKING)
    replies = handler.send_message(session_id, write(handler, "later.txt"))
    request = await until_request(replies)
    closing = asyncio.ensure_future(replies.aclose())  # the caller is gone; the turn waits on
    await asyncio.sleep(0.3)
    assert not closing.done() and await handler.permission_requests(session_id) == [request]
    await handler.decide_permission(session_id, request.request_id, "allow")
    await asyncio.wait_for(closing, 30)
    assert (workspace(handler) / "later.txt").read_text() == "hello"
    assert "You said: again" in reply_text(await turn(handler, session_id, "again"))


async def test_allowed_for_the_session_runs_unasked_until_the_session_ends_not_on_the_next(
    make_handler: MakeHandler, model: OfflineModel
) -> None:
    handler = await make_handler(connection_pool={"MIN_SIZE": 0, "MAX_SIZE": 1})
    first = await handler.create_session("first", ASKING)
    pid = worker_pid(handler, first)
    replies = await answered(handler, first, write(handler, "one.txt"), scope="session")
    assert [(r.behavior, r.scope) for r in resolved(replies)] == [("allow", "session")]
    again = await answered(handler, first, write(handler, "two.txt"), "deny")
    assert requests(again) == [] and (workspace(handler) / "two.txt").exists()
    assert (
        requests(
            await answered(
                handler,
                first,
                tool("Edit", file_path=str(workspace(handler) / "two.txt"), old_string="hello", new_string="bye"),
            )
        )
        != []
    )
    await handler.destroy_session(first)
    second = await handler.create_session("second", ASKING)
    assert worker_pid(handler, second) == pid  # the same pooled CLI
    replies = await answered(handler, second, write(handler, "three.txt"), "deny")
    assert len(requests(replies)) == 1 and not (workspace(handler) / "three.txt").exists()


async def test_sessions_without_ask_tools_see_no_permission_events(
    make_handler: MakeHandler, model: OfflineModel
) -> None:
    handler = await make_handler()
    session_id = await handler.create_session("plain", SessionConfig(cwd="alice"))
    replies = await turn(handler, session_id, write(handler, "plain.txt"))
    assert not requests(replies) and not resolved(replies) and not (workspace(handler) / "plain.txt").exists()
    assert await handler.permission_requests(session_id) == []


async def test_any_tool_naming_a_path_outside_the_workspace_is_refused_without_asking(tmp_path: Path) -> None:
    (tmp_path / "ws").mkdir()
    approvals = Approvals("s", "t", frozenset({"LS"}), tmp_path / "ws", 60, Telemetry())
    approvals.open_turn(asyncio.Queue(), True, asyncio.get_running_loop().time() + 60)
    for outside in (str(tmp_path), "~/notes", "../x"):
        refused = await approvals.ask("LS", {"path": outside}, ToolPermissionContext(tool_use_id="t"))
        assert isinstance(refused, PermissionResultDeny) and "inside the session's workspace" in refused.message
    assert not approvals.pending
    asking = asyncio.ensure_future(approvals.ask("LS", {"path": "sub"}, ToolPermissionContext(tool_use_id="u")))
    await asyncio.sleep(0)
    assert [r.tool for r in approvals.requests()] == ["LS"]
    asking.cancel()  # the CLI withdrew it: denied as interrupted, nothing left pending
    with pytest.raises(asyncio.CancelledError):
        await asking
    assert not approvals.pending
