"""A caller's functions as tools of a pooled CLI (the library's ``TurnOptions.functions``): the real CLI and
the offline model, which calls a function by its name (``[[tool:lookup:{...}]]``)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from claude_sessions import ToolCallNotFoundError, TurnOptions
from claude_sessions.config import SessionConfig
from claude_sessions.offline_model import OfflineModel
from claude_sessions.sessions.client_calls import ClientToolCall
from claude_sessions.sessions.handler import ClaudeHandler
from claude_sessions.sessions.replies import Reply
from claude_sessions.workers.client_tools import ClientFunction
from conftest import MakeHandler
from helpers import reply_text, result_of, tool, turn, worker_pid

LOOKUP = ClientFunction(
    "lookup", "Looks a word up", json.dumps({"type": "object", "properties": {"word": {"type": "string"}}})
)
WITH_LOOKUP = TurnOptions(functions=(LOOKUP,))


def offered(model: OfflineModel) -> list[str]:
    """The client functions the CLI offered the model in its last call."""
    return [
        t["name"] for t in model.message_requests()[-1].body.get("tools") or [] if t["name"].startswith("mcp__client")
    ]


async def answering(handler: ClaudeHandler, session_id: str, prompt: str, result: str) -> list[Reply]:
    """One turn offering ``lookup``, each call answered with ``result`` as it comes."""
    session = await handler.session_manager.fetch(session_id)
    replies: list[Reply] = []
    async for reply in handler.send_message(session, prompt, options=WITH_LOOKUP):
        replies.append(reply)
        if isinstance(reply, ClientToolCall):
            handler.answer_tool_call(session, reply.call_id, result)
    return replies


async def test_a_call_is_an_event_of_the_turn_which_waits_for_its_result(
    make_handler: MakeHandler, model: OfflineModel
) -> None:
    handler = await make_handler()
    session_id = await handler.create_session("s", SessionConfig(cwd="alice"))
    replies = await answering(handler, session_id, tool("lookup", word="ephemeral"), "lasting a very short time")
    (made,) = [r for r in replies if isinstance(r, ClientToolCall)]
    assert made.name == "lookup" and made.input == {"word": "ephemeral"} and made.session_id == session_id
    assert "lasting a very short time" in reply_text(replies) and not result_of(replies).is_error
    assert offered(model) == ["mcp__client__lookup"]
    session = await handler.session_manager.fetch(session_id)
    with pytest.raises(ToolCallNotFoundError):  # answered, and its turn is over
        handler.answer_tool_call(session, made.call_id, "again")


async def test_a_pooled_worker_offers_the_next_session_none_of_the_last_ones_functions(
    make_handler: MakeHandler, model: OfflineModel
) -> None:
    """The attack: a tenant's functions (names and schemas) stay on the CLI after its session ends."""
    handler = await make_handler(connection_pool={"MIN_SIZE": 0, "MAX_SIZE": 1})
    first = await handler.create_session("first", SessionConfig(cwd="alice"))
    pid = worker_pid(handler, first)
    await answering(handler, first, tool("lookup", word="x"), "y")
    await handler.destroy_session(first)
    second = await handler.create_session("second", SessionConfig(cwd="alice"))
    assert worker_pid(handler, second) == pid  # the same pooled CLI
    model.requests.clear()
    replies = await turn(handler, second, tool("mcp__client__lookup", word="stolen"))
    assert offered(model) == []  # the model is shown no function of the first session
    results = [
        b for b in model.message_requests()[-1].body["messages"][-1]["content"] if b.get("type") == "tool_result"
    ]
    assert results and results[0]["is_error"] and not any(isinstance(r, ClientToolCall) for r in replies)


async def test_a_turn_that_ends_while_a_call_waits_fails_the_call_and_the_session_goes_on(
    make_handler: MakeHandler, model: OfflineModel
) -> None:
    handler = await make_handler()
    session_id = await handler.create_session("s", SessionConfig(cwd="alice"))
    session = await handler.session_manager.fetch(session_id)
    turn_of: Any = handler.send_message(session, tool("lookup", word="x"), options=WITH_LOOKUP)
    async for reply in turn_of:
        if isinstance(reply, ClientToolCall):
            break
    await asyncio.wait_for(turn_of.aclose(), 30)  # the caller leaves: the turn is wound down
    assert session.client_calls is None and not session.is_busy
    assert "You said: next" in reply_text(await turn(handler, session_id, "next"))
