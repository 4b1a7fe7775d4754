"""A turn's calls of its client's functions: each one waits for its own result, once."""

from __future__ import annotations

import asyncio

import pytest

from claude_sessions import ToolCallNotFoundError
from claude_sessions.sessions.client_calls import TURN_ENDED, ClientCalls, ClientToolCall


async def test_each_call_is_an_event_and_waits_for_its_own_result() -> None:
    events: asyncio.Queue[ClientToolCall] = asyncio.Queue()
    calls = ClientCalls("s", events)
    first = asyncio.ensure_future(calls.ask("a", {"x": 1}))
    second = asyncio.ensure_future(calls.ask("b", {}))
    one, two = await events.get(), await events.get()
    assert (one.name, one.input, two.name) == ("a", {"x": 1}, "b") and one.call_id != two.call_id
    assert set(calls.pending) == {one.call_id, two.call_id}
    calls.answer(two.call_id, "B", is_error=True)
    assert await second == ("B", True) and not first.done()
    calls.answer(one.call_id, "A")
    assert await first == ("A", False) and calls.pending == []
    with pytest.raises(ToolCallNotFoundError):
        calls.answer(one.call_id, "again")


async def test_the_turns_end_fails_what_still_waits() -> None:
    calls = ClientCalls("s", asyncio.Queue())
    waiting = asyncio.ensure_future(calls.ask("a", {}))
    await asyncio.sleep(0)
    calls.close()
    assert await waiting == (TURN_ENDED, True)
