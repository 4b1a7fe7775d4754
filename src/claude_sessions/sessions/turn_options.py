"""What one turn asks beyond its session's options: set per request by the HTTP routes, or by a library caller."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from claude_sessions.config import SessionConfig
from claude_sessions.sessions.replies import Reply
from claude_sessions.store.records import UserLimits
from claude_sessions.workers.client_tools import ClientFunction


@dataclass(frozen=True)
class TurnOptions:
    """What one turn asks beyond its session's options (the HTTP routes set them per request).

    ``can_ask``: someone can answer a permission request (not so on the OpenAI endpoint: an asked
    call is denied at once). ``limits``: the end user's (a key's own, over ``USER_*``).
    ``output_schema``: a JSON schema the answer must fit (``ResultMessage.structured_output``), on a
    CLI started with it. ``functions``: the caller's own functions, offered to the model beside the
    session's tools; each call is a :class:`ClientToolCall` of the turn, which waits for its result
    (``ClaudeHandler.answer_tool_call``). ``idempotency_key``: the caller's, saved as the turn starts:
    should its node die after the answer reached the transcript, the retry with it gets that answer.
    """

    can_ask: bool = True
    limits: UserLimits | None = None
    output_schema: str | None = None
    functions: tuple[ClientFunction, ...] = ()
    #: Told each message of the turn once its caller left it running unread (a request waited).
    unread: Callable[[Reply], Awaitable[None]] | None = None
    idempotency_key: str | None = None

    def worker_config(self, session: SessionConfig) -> SessionConfig:
        """The options this turn's worker must run with: the session's, with this turn's schema (checked)."""
        if self.output_schema is None:
            return session
        return SessionConfig.model_validate({**session.model_dump(), "output_schema": self.output_schema})
