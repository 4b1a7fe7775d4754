"""A turn on the wire: SDK messages as JSON, a whole turn as one answer, and its SSE stream.

The sessions and OpenAI routes both stream through :class:`TurnStream`, whose every send is
bounded by the turn's deadline.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import structlog
from claude_agent_sdk import AssistantMessage, Message, ResultMessage, StreamEvent, SystemMessage, UserMessage
from sse_starlette import EventSourceResponse
from sse_starlette.sse import SendTimeoutError
from starlette.types import Receive, Scope, Send

from claude_sessions.config import ServerConfig
from claude_sessions.errors import ClaudeSessionsError
from claude_sessions.http.common import ApiError, api_error
from claude_sessions.observability.metrics import model_error
from claude_sessions.sessions.client_calls import ClientToolCall
from claude_sessions.sessions.permissions import PermissionRequest, PermissionResolved
from claude_sessions.sessions.replies import Reply
from claude_sessions.sessions.session import Session

log = structlog.get_logger("claude_sessions.api")

#: However late in a turn, a send may take this long (the last event of a turn that
#: ran to its deadline still reaches a client that reads).
MIN_SEND_SECONDS = 1.0


# -- serialisation ----------------------------------------------------------------


def message_kind(message: Message) -> str:
    """The SSE event name of an SDK message."""
    if isinstance(message, ResultMessage):
        return "result"
    if isinstance(message, AssistantMessage):
        return "assistant"
    if isinstance(message, UserMessage):
        return "user"
    if isinstance(message, StreamEvent):
        return "stream_event"
    return "system"


def _block_type(block: object) -> str:
    """``TextBlock`` -> ``text``, ``ToolUseBlock`` -> ``tool_use``: the Messages API's names."""
    name = type(block).__name__.removesuffix("Block")
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def message_json(message: Reply, session_id: str) -> dict[str, Any]:
    """An SDK message as JSON, its kind in ``type`` and each content block's kind in its own.

    A turn's ``init`` says only what a client needs (``session_id`` is ours): the CLI's own
    (paths, plugins, agents, MCP, capabilities) is the server's business. A permission event
    is its own (``permission_request``, ``permission_resolved``).
    """
    if isinstance(message, PermissionRequest | PermissionResolved | ClientToolCall):
        return message.as_json()
    if isinstance(message, SystemMessage) and message.subtype == "init":
        data = message.data
        summary = {"session_id": session_id, "model": data.get("model"), "tools": data.get("tools", [])}
        return {"type": "system", "subtype": "init", "data": {**summary, "permission_mode": data.get("permissionMode")}}
    payload = dataclasses.asdict(message)
    content = getattr(message, "content", None)
    if isinstance(content, list):
        payload["content"] = [
            {"type": _block_type(block), **item} if dataclasses.is_dataclass(block) else item
            for block, item in zip(content, payload["content"], strict=True)
        ]
    return {"type": message_kind(message), **payload}


def dumps(value: Any) -> str:
    return json.dumps(value, default=str, separators=(",", ":"))


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat()


def session_json(session: Session, server: ServerConfig, with_metrics: bool = False) -> dict[str, Any]:
    """A session as the API shows it; ``server`` says which model a session naming none runs."""
    body: dict[str, Any] = {
        "session_id": session.public_id,
        "state": session.state,
        "title": session.title,
        "origin": session.origin,
        "user": session.config.user,
        "model": session.config.model or server.default_model,
        "created_at": _iso(session.metrics.created_at),
        "last_activity": _iso(session.metrics.last_activity),
        "metadata": session.metadata,
        "options": session.config.model_dump(exclude_none=True, exclude_defaults=True, exclude={"user"}),
    }
    if with_metrics:
        body["metrics"] = session.metrics.as_dict()
    return body


def turn_json(session_id: str, messages: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``?stream=false`` answer: the reply's text, its result and every whole message (no deltas)."""
    messages = [m for m in messages if m["type"] != "stream_event"]
    text = "".join(
        str(block.get("text", ""))
        for m in messages
        if m["type"] == "assistant"
        for block in m.get("content", [])
        if block.get("type") == "text"
    )
    result = messages[-1] if messages and messages[-1]["type"] == "result" else None
    return {"session_id": session_id, "text": text, "result": result, "messages": messages}


# -- model errors ---------------------------------------------------------------------


class TurnRecord:
    """A turn's messages as JSON, as its answer and an ``Idempotency-Key`` replay have them.

    ``on_result`` keeps the whole turn before its result is sent. The ``result`` adds
    ``turn_cost_usd``, this turn's spend, beside the SDK's ``total_cost_usd`` (the conversation's
    running total). A model error raises 502 ``model_error`` (never kept for replay); the CLI's
    synthetic assistant message that carries the API error's text is not content. Made before the
    turn starts: its spend counts from there.
    """

    def __init__(self, session: Session, on_result: Callable[[list[dict[str, Any]]], Awaitable[None]]) -> None:
        self.session, self.on_result = session, on_result
        self.spent = session.metrics.total_cost  # the turn is billed at its result, not before
        self.seen: list[dict[str, Any]] = []

    async def add(self, message: Reply) -> dict[str, Any] | None:
        """One message as JSON (None: none to send)."""
        if isinstance(message, ResultMessage) and (failed := model_error(message)) is not None:
            raise api_error(failed, 1)
        if isinstance(message, AssistantMessage) and message.error is not None:
            return None
        data = message_json(message, self.session.public_id)
        if isinstance(message, ResultMessage):
            data["turn_cost_usd"] = round(self.session.metrics.total_cost - self.spent, 8)
        # Deltas and permission events are for a live stream: a replay has nothing to answer.
        if not isinstance(message, StreamEvent | PermissionRequest | PermissionResolved):
            self.seen.append(data)
        if isinstance(message, ResultMessage):
            await self.on_result(self.seen)
        return data

    async def add_unread(self, message: Reply) -> None:
        """A message of a turn its caller left (it runs on while a request waits): kept all the same."""
        with contextlib.suppress(ApiError):  # a model error: nothing to keep
            await self.add(message)


async def as_json(first: Reply, turn: AsyncGenerator[Reply, None], record: TurnRecord) -> AsyncIterator[dict[str, Any]]:
    """A turn's messages as JSON, each added to ``record``."""
    async with contextlib.aclosing(turn):
        message: Reply | None = first
        while message is not None:
            if (data := await record.add(message)) is not None:
                yield data
            message = await anext(turn, None)


async def replayed(messages: list[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    for data in messages:
        yield data


async def sse_events(messages: AsyncIterator[dict[str, Any]]) -> AsyncIterator[dict[str, str]]:
    """SSE events of one turn; a failure ends the stream with an ``error`` event."""
    try:
        async for data in messages:
            yield {"event": data["type"], "data": dumps(data)}
    except ClaudeSessionsError as error:
        yield {"event": "error", "data": dumps(api_error(error, 1).body())}
    except ApiError as error:
        yield {"event": "error", "data": dumps(error.body())}


class TurnStream(EventSourceResponse):
    """A turn's SSE stream: every send is bounded by the time left until the turn's deadline.

    A client that stops reading fills the socket's buffers and blocks a send; that
    send gives up at the deadline, and closing the stream winds the turn down, so a
    stalled client never holds a worker past ``OPT_MESSAGE_TIMEOUT``.
    """

    def __init__(self, content: AsyncIterator[dict[str, str]], deadline: float, **kwargs: Any) -> None:
        self.deadline = deadline
        super().__init__(content, **kwargs)

    @property
    def send_timeout(self) -> float:
        return max(MIN_SEND_SECONDS, self.deadline - time.monotonic())

    @send_timeout.setter
    def send_timeout(self, _: float | None) -> None:
        """The deadline decides; EventSourceResponse's own value is ignored."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except SendTimeoutError:
            log.warning("sse_client_stalled", path=scope.get("path"))
            if self.background is not None:
                await self.background()


# -- routes -------------------------------------------------------------------------
