"""Turns waiting, parked, for their caller's next request: a completion ended with its client's calls.

An OpenAI client gets the calls in one response and sends their results in the next, so the turn's
generator outlives the first request. :class:`ParkedTurns` is its one owner meanwhile, on the node
running it: the next request takes it and goes on iterating it. A turn no one takes within its
timeout gets error results for its calls and runs to its end unread; its session stays usable.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field

import structlog

from claude_sessions.sessions.client_calls import ClientToolCall
from claude_sessions.sessions.handler import ClaudeHandler
from claude_sessions.sessions.replies import Reply
from claude_sessions.sessions.session import Session

log = structlog.get_logger("claude_sessions.parked_turns")


@dataclass(eq=False)
class Parked:
    """A turn whose completion ended with ``tool_calls``: its generator, waiting for those calls' results."""

    session: Session
    turn: AsyncGenerator[Reply, None]
    calls: frozenset[str]
    expiry: asyncio.Task[None] | None = field(default=None, repr=False)


class ParkedTurns:
    """This node's turns waiting for their client's tool results, by session: the one owner of each."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._parked: dict[str, Parked] = {}

    def park(self, session: Session, turn: AsyncGenerator[Reply, None], calls: frozenset[str]) -> None:
        parked = Parked(session, turn, calls)
        parked.expiry = asyncio.get_running_loop().create_task(self._expire(parked))
        self._parked[session.id] = parked

    def is_parked(self, turn: AsyncGenerator[Reply, None]) -> bool:
        return any(parked.turn is turn for parked in self._parked.values())

    def waiting(self, session: Session) -> frozenset[str] | None:
        """The calls the session's parked turn waits for, if one is parked here."""
        parked = self._parked.get(session.id)
        return None if parked is None else parked.calls

    def take(self, session: Session) -> Parked | None:
        """The session's parked turn, no longer parked: its caller continues it."""
        parked = self._parked.pop(session.id, None)
        if parked is None:
            return None
        if parked.expiry is not None:
            parked.expiry.cancel()
        return parked

    async def _expire(self, parked: Parked) -> None:
        await asyncio.sleep(self.timeout)
        if self._parked.get(parked.session.id) is parked:
            del self._parked[parked.session.id]
            message = f"The client did not return this call's result within {self.timeout:g} s."
            await _run_out(parked, message)

    async def close(self) -> None:
        """Shutting down: every waiting turn gets error results and ends."""
        parked, self._parked = list(self._parked.values()), {}
        for each in parked:
            if each.expiry is not None:
                each.expiry.cancel()
            await _run_out(each, "The server shut down before the client returned this call's result.")


async def _run_out(parked: Parked, message: str) -> None:
    """End a turn its client left: its calls (and any it makes still) fail with ``message``; it runs to its end."""
    session = parked.session
    log.info("tool_calls_expired", session_id=session.id, calls=sorted(parked.calls))
    try:
        async with contextlib.aclosing(parked.turn) as turn:
            for call_id in parked.calls:
                with contextlib.suppress(Exception):
                    ClaudeHandler.answer_tool_call(session, call_id, message, is_error=True)
            async for reply in turn:
                if isinstance(reply, ClientToolCall):
                    ClaudeHandler.answer_tool_call(session, reply.call_id, message, is_error=True)
    except Exception as error:  # the turn's own failure (a timeout, a model error): it is over either way
        log.info("tool_turn_ended", session_id=session.id, error=repr(error))
