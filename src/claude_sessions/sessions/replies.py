"""A turn's replies: the CLI's messages, and, for a session with asked tools, its permission events.

While a call waits for its user the CLI sends nothing; the request reaches the caller from the
session's :class:`Approvals` queue instead. With no queue (no ``ask_tools``) the CLI's stream is
read directly, as cheap as before; with one, a single pending read of the CLI's stream is kept
across events, so no message is lost to a read abandoned for an event.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from claude_agent_sdk import Message

from claude_sessions.sessions.permissions import PermissionEvent


class Replies:
    """The next thing a turn has to pass on; :meth:`aclose` before anyone else reads the CLI."""

    def __init__(self, messages: AsyncIterator[Message], events: asyncio.Queue[PermissionEvent] | None) -> None:
        self._messages, self._events = messages, events
        self._reading: asyncio.Task[Message] | None = None
        #: A message read but not passed on when the reading stopped: the next reader's first.
        self.leftover: Message | None = None

    async def next(self) -> Message | PermissionEvent:
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
