"""A turn's replies merged with its permission events: none lost, none reordered, the CLI left whole."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from claude_agent_sdk import SystemMessage

from claude_sessions.sessions.permissions import PermissionResolved
from claude_sessions.sessions.replies import Replies, TurnEvent


def note(name: str) -> SystemMessage:
    return SystemMessage(subtype=name, data={})


def event(request_id: str) -> PermissionResolved:
    return PermissionResolved("s", request_id, "Write", "allow", "user", "once")


def wired() -> tuple[asyncio.Queue[Any], asyncio.Queue[TurnEvent], Replies]:
    """A stand-in CLI (what is put in its queue, it says), an events queue, and the replies of both."""
    cli: asyncio.Queue[Any] = asyncio.Queue()
    events: asyncio.Queue[TurnEvent] = asyncio.Queue()

    async def messages() -> AsyncIterator[Any]:
        while True:
            yield await cli.get()

    return cli, events, Replies(messages(), events)


async def test_events_and_messages_arrive_in_the_order_they_came_and_nothing_is_lost() -> None:
    cli, events, replies = wired()
    cli.put_nowait(note("m1"))
    assert await replies.next() == note("m1")
    waiting = asyncio.ensure_future(replies.next())  # the CLI is silent: an event comes first
    await asyncio.sleep(0.01)
    events.put_nowait(event("r1"))
    assert await waiting == event("r1")
    cli.put_nowait(note("m2"))  # read by the pending read kept across the event
    assert await replies.next() == note("m2")
    await replies.aclose()


async def test_closing_stops_the_pending_read_so_another_reader_gets_the_next_message() -> None:
    cli, events, replies = wired()
    events.put_nowait(event("r1"))
    pending = asyncio.ensure_future(replies.next())
    assert await pending == event("r1")
    waiting = asyncio.ensure_future(replies.next())
    await asyncio.sleep(0.01)
    waiting.cancel()
    await replies.aclose()
    cli.put_nowait(note("m1"))
    assert await cli.get() == note("m1")  # still there for whoever reads next


async def test_without_events_the_cli_is_read_directly() -> None:
    async def messages() -> AsyncIterator[SystemMessage]:
        yield note("only")

    replies = Replies(messages(), None)
    assert await replies.next() == note("only")


async def test_a_message_read_when_the_reading_stops_is_kept_for_the_next_reader() -> None:
    cli, _, replies = wired()
    waiting = asyncio.ensure_future(replies.next())
    await asyncio.sleep(0.01)
    waiting.cancel()  # the turn's deadline, say
    cli.put_nowait(note("result"))
    await asyncio.sleep(0.01)  # the pending read takes it meanwhile
    await replies.aclose()
    assert replies.leftover == note("result")
