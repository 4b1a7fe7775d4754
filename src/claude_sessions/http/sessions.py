"""The sessions surface of the HTTP API: create, list, read, delete, interrupt, history, turns.

A turn streams as Server-Sent Events, one event per SDK message, and always ends
with a ``result`` or an ``error`` event. A turn the model call failed (the CLI's
``ResultMessage(is_error=True)`` after its retries) ends with ``error``
``model_error``, 502 with ``?stream=false``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import pathlib
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import structlog
from claude_agent_sdk import AssistantMessage, Message, ResultMessage, StreamEvent, UserMessage
from fastapi import APIRouter, Header, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, JsonValue
from sse_starlette import EventSourceResponse
from sse_starlette.sse import SendTimeoutError
from starlette.background import BackgroundTask
from starlette.types import Receive, Scope, Send

from claude_sessions.config import _TOOL_NAME, SessionConfig
from claude_sessions.errors import ClaudeSessionsError
from claude_sessions.http.auth import Principal
from claude_sessions.http.common import (
    PUBLIC_ID,
    ApiError,
    Caller,
    ServiceDep,
    api_error,
    error_responses,
    is_forwarded,
    resolve_options,
)
from claude_sessions.http.redaction import SESSION_KEY_STATE
from claude_sessions.observability.metrics import is_api_error
from claude_sessions.sessions.session import Session, session_key
from claude_sessions.workers.options import resolve_folder

log = structlog.get_logger("claude_sessions.api")

#: A folder below a tenant's workspace as a session may name it: relative, never ``.`` or ``..``.
_NAME = r"[A-Za-z0-9._-]*[A-Za-z0-9_-][A-Za-z0-9._-]*"
WORKSPACE_PATH = rf"^{_NAME}(?:/{_NAME})*$"

#: A tool name or rule as ``SessionConfig`` accepts it (``Read``, ``Bash(git log:*)``, ...).
ToolName = Annotated[str, Field(pattern=rf"^{_TOOL_NAME.pattern}$")]

SessionIdPath = Annotated[str, Path(pattern=PUBLIC_ID, max_length=128, description="the session's public id")]

#: However late in a turn, a send may take this long (the last event of a turn that
#: ran to its deadline still reaches a client that reads).
MIN_SEND_SECONDS = 1.0


# -- request bodies -------------------------------------------------------------


class CreateSessionBody(SessionConfig):
    """A new session: its options (``SessionConfig``), plus an id and free metadata.

    Strict (no "5" for 5), except that JSON arrays are what the tool lists are.
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=False)

    session_id: str | None = Field(None, pattern=PUBLIC_ID, max_length=128)
    allowed_tools: tuple[ToolName, ...] = Field((), max_length=100, strict=False)
    disallowed_tools: tuple[ToolName, ...] = Field((), max_length=100, strict=False)
    cwd: str | None = Field(
        None,
        max_length=255,
        pattern=WORKSPACE_PATH,
        description="A folder inside the tenant's workspace, relative to it: names of letters, digits and ._- "
        "separated by /, none made of dots only. It must not be a file or a symlink leading out.",
    )
    metadata: dict[str, JsonValue] | None = None

    def options(self, cwd: str | None) -> SessionConfig:
        return SessionConfig(**self.model_dump(include=set(SessionConfig.model_fields), exclude={"cwd"}), cwd=cwd)


class MessageBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    content: str = Field(
        min_length=1,
        max_length=500_000,
        description="The user's message. One starting with a CLI command (`/name`) outside "
        "SLASH_COMMANDS_ALLOWED answers 422 slash_command_refused.",
    )


# -- answers (documented in the schema; the routes build plain dicts) ----------------


class SessionObject(BaseModel):
    session_id: str
    state: Literal["active", "idle", "busy", "orphaned"]
    created_at: str = Field(json_schema_extra={"format": "date-time"})
    last_activity: str = Field(json_schema_extra={"format": "date-time"})
    metadata: dict[str, JsonValue]
    options: dict[str, JsonValue] = Field(description="the options the session runs with, defaults left out")
    metrics: dict[str, JsonValue] | None = Field(None, description="what the session used so far")


class SessionList(BaseModel):
    sessions: list[SessionObject]


class TurnAnswer(BaseModel):
    """``?stream=false``: the reply's text, the turn's result and every message."""

    session_id: str
    text: str
    result: dict[str, JsonValue] | None
    messages: list[dict[str, JsonValue]]


class Interrupted(BaseModel):
    session_id: str
    interrupted: bool


class History(BaseModel):
    messages: list[dict[str, JsonValue]]


#: One SSE event as a client parses it; ``data`` is the JSON of one SDK message, or of an error.
SSE_EVENT_SCHEMA = {
    "type": "object",
    "properties": {
        "event": {"type": "string", "enum": ["system", "assistant", "user", "result", "stream_event", "error"]},
        "data": {"type": "string", "contentMediaType": "application/json"},
    },
    "required": ["event", "data"],
}


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


def message_json(message: Message) -> dict[str, Any]:
    """An SDK message as JSON, its kind in ``type`` and each content block's kind in its own."""
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


def session_json(session: Session, with_metrics: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {
        "session_id": session.public_id,
        "state": session.state,
        "created_at": _iso(session.metrics.created_at),
        "last_activity": _iso(session.metrics.last_activity),
        "metadata": session.metadata,
        "options": session.config.model_dump(exclude_none=True, exclude_defaults=True),
    }
    if with_metrics:
        body["metrics"] = session.metrics.as_dict()
    return body


def turn_json(session_id: str, messages: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``?stream=false`` answer: the reply's text, its result and every message."""
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


class ModelError(ApiError):
    """A turn whose model call failed after the CLI's retries: 502 ``model_error``."""

    def __init__(self, result: ResultMessage) -> None:
        message = result.result or "; ".join(result.errors or []) or "the model call failed"
        extra = {"status": result.api_error_status} if result.api_error_status is not None else None
        super().__init__(502, "model_error", message, extra=extra)


async def _as_json(
    first: Message,
    turn: AsyncGenerator[Message, None],
    on_result: Callable[[list[dict[str, Any]]], Awaitable[None]],
) -> AsyncIterator[dict[str, Any]]:
    """A turn's messages as JSON; ``on_result`` keeps the whole turn before its result is sent.

    A model error ends it with :class:`ModelError` (never kept for replay); the CLI's
    synthetic assistant message that carries the API error's text is not content.
    """
    seen: list[dict[str, Any]] = []
    async with contextlib.aclosing(turn):
        message: Message | None = first
        while message is not None:
            if isinstance(message, ResultMessage) and is_api_error(message):
                raise ModelError(message)
            if not (isinstance(message, AssistantMessage) and message.error is not None):
                data = message_json(message)
                seen.append(data)
                if isinstance(message, ResultMessage):
                    await on_result(seen)
                yield data
            message = await anext(turn, None)


async def _replay(messages: list[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    for data in messages:
        yield data


async def _events(messages: AsyncIterator[dict[str, Any]]) -> AsyncIterator[dict[str, str]]:
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

router = APIRouter(tags=["sessions"])


def workspace_of(root: pathlib.Path, principal: Principal, requested: str | None) -> str | None:
    """A tenant's sessions run in ``WORKSPACE_ROOT/<tenant>``; ``cwd`` may only go deeper."""
    if principal.tenant is None:
        return requested
    home = root / principal.tenant
    target = resolve_folder(home / requested, requested) if requested else home
    if not target.is_relative_to(home):
        raise ApiError(422, "invalid_request", "cwd: must stay inside the tenant's workspace")
    return str(target)


def session_options(service: ServiceDep, body: CreateSessionBody, principal: Principal) -> SessionConfig:
    """Options within the operator's tool policy and the tenant's workspace."""
    server = service.config.server
    extra = sorted(set(body.allowed_tools) - server.tools_allowed)
    if extra:
        raise ApiError(422, "invalid_request", f"allowed_tools: not permitted on this server: {extra}")
    if body.model is not None and body.model not in server.models_allowed:
        raise ApiError(422, "invalid_request", f"model: {body.model!r} is not permitted on this server")
    mode = body.permission_mode
    if mode is not None and mode not in server.permission_modes_allowed:
        raise ApiError(422, "invalid_request", f"permission_mode: {mode!r} is not permitted on this server")
    options = body.options(cwd=workspace_of(service.config.runtime.workspace_root, principal, body.cwd))
    return resolve_options(options, server)


@router.post(
    "/v1/sessions",
    status_code=201,
    response_model=None,
    responses={
        201: {"model": SessionObject, "description": "The new session."},
        **error_responses(401, 409, 413, 422, 429),
    },
)
async def create_session(
    request: Request, body: CreateSessionBody, principal: Caller, service: ServiceDep
) -> dict[str, Any]:
    if body.session_id is not None:
        request.scope["state"][SESSION_KEY_STATE] = (session_key(body.session_id, principal.tenant), body.session_id)
    server = service.config.server
    key = await service.handler.create_session(
        body.session_id,
        session_options(service, body, principal),
        body.metadata,
        owner=principal.tenant,
        owner_limit=server.TENANT_MAX_SESSIONS if principal.tenant is not None else None,
    )
    session = service.manager.get(key)
    request.scope["state"][SESSION_KEY_STATE] = (key, session.public_id)
    return session_json(session, with_metrics=True)


@router.get(
    "/v1/sessions",
    response_model=None,
    responses={200: {"model": SessionList, "description": "The caller's own sessions."}, **error_responses(401)},
)
async def list_sessions(principal: Caller, service: ServiceDep) -> dict[str, Any]:
    sessions = await service.manager.listing(principal.tenant)
    return {"sessions": [session_json(s, with_metrics=True) for s in sessions]}


@router.get(
    "/v1/sessions/{session_id}",
    response_model=None,
    responses={
        200: {"model": SessionObject, "description": "The session, with metrics."},
        **error_responses(401, 404, 422),
    },
)
async def get_session(
    request: Request, session_id: SessionIdPath, principal: Caller, service: ServiceDep
) -> dict[str, Any]:
    return session_json(await service.own_session(request, principal, session_id), with_metrics=True)


@router.delete(
    "/v1/sessions/{session_id}", status_code=204, response_class=Response, responses=error_responses(401, 404, 422)
)
async def delete_session(
    request: Request,
    session_id: SessionIdPath,
    principal: Caller,
    service: ServiceDep,
    purge: Annotated[bool, Query(description="also delete the transcript now")] = False,
) -> Response:
    session = await service.own_session(request, principal, session_id)
    await service.handler.destroy_session(session.id, purge=purge, forwarded=is_forwarded(request))
    return Response(status_code=204)


@router.post(
    "/v1/sessions/{session_id}/interrupt",
    status_code=202,
    response_model=None,
    responses={
        202: {"model": Interrupted, "description": "The running turn, if any, is told to stop."},
        **error_responses(401, 404, 422),
    },
)
async def interrupt(
    request: Request, session_id: SessionIdPath, principal: Caller, service: ServiceDep
) -> dict[str, Any]:
    session = await service.own_session(request, principal, session_id)
    await service.handler.interrupt(session, forwarded=is_forwarded(request))
    return {"session_id": session.public_id, "interrupted": True}


@router.get(
    "/v1/sessions/{session_id}/history",
    response_model=None,
    responses={
        200: {"model": History, "description": "The conversation from the CLI's transcript."},
        **error_responses(401, 404, 422),
    },
)
async def history(
    request: Request, session_id: SessionIdPath, principal: Caller, service: ServiceDep
) -> dict[str, Any]:
    session = await service.own_session(request, principal, session_id)
    return {"messages": await service.manager.read_transcript(session)}


@router.post(
    "/v1/sessions/{session_id}/messages",
    response_model=None,
    responses={
        200: {
            "model": TurnAnswer,
            "description": "The turn: SSE events (default), ending with `result` or `error`; "
            "with ?stream=false, one JSON answer.",
            "content": {"text/event-stream": {"schema": SSE_EVENT_SCHEMA}},
        },
        **error_responses(401, 404, 409, 410, 413, 422, 502, 504),
    },
)
async def send_message(
    request: Request,
    session_id: SessionIdPath,
    body: MessageBody,
    principal: Caller,
    service: ServiceDep,
    stream: Annotated[bool, Query(description="false: one JSON answer instead of SSE")] = True,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=200)] = None,
) -> Response:
    handler = service.handler
    session = await service.own_session(request, principal, session_id)
    deadline = time.monotonic() + service.config.optimization.MESSAGE_TIMEOUT
    stored = await handler.registry.reply(session.id, idempotency_key) if idempotency_key else None
    turn: AsyncGenerator[Message, None] | None = None
    if stored is not None:  # already accepted: replay, never a second turn
        content, replies = stored
        if content != body.content:
            raise ApiError(422, "invalid_request", "Idempotency-Key was already used with another content")
        messages: AsyncIterator[dict[str, Any]] = _replay(replies)
    else:
        turn = handler.send_message(session, body.content, forwarded=is_forwarded(request))
        first = await anext(turn)  # errors before the first message keep their HTTP status

        async def keep(turn_messages: list[dict[str, Any]]) -> None:
            if idempotency_key:
                await handler.registry.save_reply(session.id, idempotency_key, body.content, turn_messages)

        messages = _as_json(first, turn, keep)
    if not stream:
        return JSONResponse(turn_json(session.public_id, [m async for m in messages]))
    return TurnStream(
        _events(messages),
        deadline=deadline,
        ping=15,
        shutdown_grace_period=service.config.optimization.DESTROY_TIMEOUT,
        # Frees the session even if the stream never starts (client gone at once).
        background=BackgroundTask(turn.aclose) if turn is not None else None,
    )
