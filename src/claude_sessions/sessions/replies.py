"""A turn's replies: the CLI's messages, and its events: permission requests (asked tools) and calls
of its client's functions.

While a call waits for its user or its client the CLI sends nothing; the event reaches the caller
from the turn's queue instead. With no queue (no ``ask_tools``, no functions) the CLI's stream is
read directly, as cheap as before; with one, a single pending read of the CLI's stream is kept
across events, so no message is lost to a read abandoned for an event.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from claude_agent_sdk import Message

from claude_sessions.sessions.client_calls import ClientToolCall
from claude_sessions.sessions.permissions import PermissionEvent

#: What reaches a turn's caller from outside the CLI's stream.
TurnEvent = PermissionEvent | ClientToolCall
#: What a turn yields: the SDK's messages, and the turn's events among them.
Reply = Message | TurnEvent


class Replies:
    """The next thing a turn has to pass on; :meth:`aclose` before anyone else reads the CLI."""

    def __init__(self, messages: AsyncIterator[Message], events: asyncio.Queue[TurnEvent] | None) -> None:
        self._messages, self._events = messages, events
        self._reading: asyncio.Task[Message] | None = None
        #: A message read but not passed on when the reading stopped: the next reader's first.
        self.leftover: Message | None = None

    async def next(self) -> Reply:
        if self._events is None:
            return await anext(self._messages)
        if not self._events.empty():
            return self._events.get_nowait()
        if self._reading is None:
            self._reading = asyncio.ensure_future(anext(self._messages))
        waiting = asyncio.ensure_future(self._events.get())
        try:
            await asyncio.wait({self._reading, waiting}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not waiting.done():
                waiting.cancel()
        if waiting.done() and not waiting.cancelled():
            return waiting.result()
        reading, self._reading = self._reading, None
        return reading.result()

    async def aclose(self) -> None:
        """Stop the pending read (the CLI's stream stays whole for the next reader); a message it had
        already read is kept in ``leftover``."""
        reading, self._reading = self._reading, None
        if reading is None:
            return
        if not reading.done():
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reading
        if reading.done() and not reading.cancelled() and reading.exception() is None:
            self.leftover = reading.result()
