"""A turn's calls of its client's functions: each one an event of the turn, waiting for the client's result.

:class:`ClientCalls` is the one owner of a turn's calls on the node running it. The worker's
``client`` server asks it (:meth:`ask`); the call joins the turn's stream as a
:class:`ClientToolCall`, and the CLI waits until the client answers (:meth:`answer`), or the
turn ends (every call still waiting then gets an error result).
"""

from __future__ import annotations

import asyncio
import json
import secrets
from dataclasses import asdict, dataclass
from typing import Any

from claude_sessions.errors import ToolCallNotFoundError


@dataclass(frozen=True)
class ClientToolCall:
    """The model called a function of the turn's client; ``arguments`` is its input as JSON text."""

    session_id: str
    call_id: str
    name: str
    arguments: str

    @property
    def input(self) -> dict[str, Any]:
        return dict(json.loads(self.arguments))

    def as_json(self) -> dict[str, Any]:
        return {"type": "client_tool_call", **asdict(self)}


#: The result the CLI reads for a call the turn ended without.
TURN_ENDED = "The turn ended before the client returned this call's result."


class ClientCalls:
    """One turn's calls of client functions, by id, each waiting for its result."""

    def __init__(self, session_id: str, events: asyncio.Queue[Any]) -> None:
        self.session_id, self._events = session_id, events
        self._waiting: dict[str, asyncio.Future[tuple[str, bool]]] = {}

    @property
    def pending(self) -> list[str]:
        return list(self._waiting)

    async def ask(self, name: str, arguments: dict[str, Any]) -> tuple[str, bool]:
        """The worker's side: pass the call on to the turn's caller and wait for its (result, is_error)."""
        call = ClientToolCall(self.session_id, "call_" + secrets.token_hex(12), name, json.dumps(arguments))
        answer: asyncio.Future[tuple[str, bool]] = asyncio.get_running_loop().create_future()
        self._waiting[call.call_id] = answer
        self._events.put_nowait(call)
        try:
            return await answer
        finally:
            self._waiting.pop(call.call_id, None)

    def answer(self, call_id: str, result: str, *, is_error: bool = False) -> None:
        """The client's result of a waiting call; raises :class:`ToolCallNotFoundError` for any other id."""
        answer = self._waiting.pop(call_id, None)
        if answer is None or answer.done():
            raise ToolCallNotFoundError(f"no call {call_id!r} waits for its result in this session")
        answer.set_result((result, is_error))

    def close(self, message: str = TURN_ENDED) -> None:
        """The turn ends: every call still waiting gets ``message`` as an error result."""
        for call_id in self.pending:
            self.answer(call_id, message, is_error=True)
