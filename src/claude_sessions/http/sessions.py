"""The sessions surface of the HTTP API: create, list, read, delete, interrupt, history, turns.

A turn streams as Server-Sent Events, one event per SDK message, and always ends
with a ``result`` or an ``error`` event. A turn the model call failed (the CLI's
``ResultMessage(is_error=True)`` after its retries) ends with ``error``
``model_error``, 502 with ``?stream=false``.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Annotated, Any, Literal

import structlog
from fastapi import APIRouter, Header, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, JsonValue, WithJsonSchema, model_validator
from starlette.background import BackgroundTask

from claude_sessions.config import _ASKED_TOOL, _TOOL_NAME, SessionConfig
from claude_sessions.content import MAX_IMAGES, MEDIA_TYPES
from claude_sessions.errors import DatabaseUnavailableError
from claude_sessions.http.auth import Principal
from claude_sessions.http.common import (
    PUBLIC_ID,
    ApiError,
    Caller,
    ServiceDep,
    acting_for,
    error_responses,
    is_forwarded,
    is_theirs,
    resolve_options,
    user_limits,
)
from claude_sessions.http.redaction import SESSION_KEY_STATE
from claude_sessions.http.streaming import (
    TurnRecord,
    TurnStream,
    as_json,
    replayed,
    session_json,
    sse_events,
    turn_json,
)
from claude_sessions.sessions.conversations import chat_messages
from claude_sessions.sessions.replies import Reply
from claude_sessions.sessions.session import session_key
from claude_sessions.sessions.turn_options import TurnOptions
from claude_sessions.workers.workspaces import resolve_folder

log = structlog.get_logger("claude_sessions.api")

#: A folder below a tenant's workspace as a session may name it: relative, never ``.`` or ``..``.
_NAME = r"[A-Za-z0-9._-]*[A-Za-z0-9_-][A-Za-z0-9._-]*"
WORKSPACE_PATH = rf"^{_NAME}(?:/{_NAME})*$"

#: A tool name or rule as ``SessionConfig`` accepts it (``Read``, ``Bash(git log:*)``, ...).
ToolName = Annotated[str, Field(pattern=rf"^{_TOOL_NAME.pattern}$")]

#: A tool whose calls a session's user approves: a tool's name, never a rule.
AskedTool = Annotated[str, Field(pattern=rf"^{_ASKED_TOOL.pattern}$")]

SessionIdPath = Annotated[str, Path(pattern=PUBLIC_ID, max_length=128, description="the session's public id")]

# -- request bodies -------------------------------------------------------------


class CreateSessionBody(SessionConfig):
    """A new session: its options (``SessionConfig``), plus an id and free metadata.

    Strict (no "5" for 5), except that JSON arrays are what the tool lists are.
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=False)

    session_id: str | None = Field(None, pattern=PUBLIC_ID, max_length=128)
    allowed_tools: tuple[ToolName, ...] = Field((), max_length=100, strict=False)
    disallowed_tools: tuple[ToolName, ...] = Field((), max_length=100, strict=False)
    ask_tools: tuple[AskedTool, ...] = Field((), max_length=100, strict=False)
    cwd: str | None = Field(
        None,
        max_length=255,
        pattern=WORKSPACE_PATH,
        description="A folder inside the tenant's workspace, relative to it: names of letters, digits and ._- "
        "separated by /, none made of dots only. It must not be a file or a symlink leading out.",
    )
    metadata: dict[str, JsonValue] | None = None
    origin: Literal["sessions", "console"] = Field(
        "sessions", description="the client that makes the session, as listings show it (the console sends its own)"
    )

    @model_validator(mode="after")
    def _no_output_schema(self) -> CreateSessionBody:
        if self.output_schema is not None:
            raise ValueError("output_schema is a turn's (the OpenAI endpoint's response_format), not a session's")
        return self

    def options(self, cwd: str | None) -> SessionConfig:
        return SessionConfig(**self.model_dump(include=set(SessionConfig.model_fields), exclude={"cwd"}), cwd=cwd)


#: A content block of a user message, as the Messages API has it.
CONTENT_BLOCK_SCHEMA = {
    "oneOf": [
        {
            "type": "object",
            "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
            "required": ["type", "text"],
            "additionalProperties": False,
        },
        {
            "type": "object",
            "properties": {
                "type": {"const": "image"},
                "source": {
                    "type": "object",
                    "properties": {
                        "type": {"const": "base64"},
                        "media_type": {"enum": list(MEDIA_TYPES)},
                        "data": {"type": "string", "contentEncoding": "base64"},
                    },
                    "required": ["type", "media_type", "data"],
                    "additionalProperties": False,
                },
            },
            "required": ["type", "source"],
            "additionalProperties": False,
        },
    ]
}


#: Content blocks as the schema documents them (``content.check_content`` holds them to it).
Blocks = Annotated[list[dict[str, JsonValue]], WithJsonSchema({"type": "array", "items": CONTENT_BLOCK_SCHEMA})]


class MessageBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    content: str | Blocks = Field(
        min_length=1,
        max_length=500_000,
        description="The user's message: text, or text and image blocks (base64; an image past IMAGE_MAX_BYTES "
        f"or more than {MAX_IMAGES} answer 413 image_too_large, a bad one 422 invalid_image). Text starting "
        "with a CLI command (`/name`) outside SLASH_COMMANDS_ALLOWED answers 422 slash_command_refused.",
    )


# -- answers (documented in the schema; the routes build plain dicts) ----------------


class SessionObject(BaseModel):
    session_id: str
    state: Literal["active", "idle", "busy", "orphaned"]
    title: str | None = Field(description="the first user message, at most 80 characters; null before it")
    origin: Literal["sessions", "openai", "console"] = Field(description="the way in that made the session")
    user: str | None = Field(description="the tenant's end user the session belongs to (null: the tenant's own)")
    model: str = Field(description="the model the session runs (the first of MODELS_ALLOWED when it named none)")
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
        "event": {
            "type": "string",
            "enum": [
                "system",
                "assistant",
                "user",
                "result",
                "stream_event",
                "permission_request",
                "permission_resolved",
                "error",
            ],
        },
        "data": {"type": "string", "contentMediaType": "application/json"},
    },
    "required": ["event", "data"],
}


router = APIRouter(tags=["sessions"])


def request_key(content: str | list[dict[str, JsonValue]]) -> str:
    """What an Idempotency-Key remembers of a message: its text, or the digest of its blocks (images are large)."""
    if isinstance(content, str):
        return content
    return "blocks:" + hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def workspace_of(root: pathlib.Path, principal: Principal, requested: str | None) -> str | None:
    """A tenant's sessions run in ``WORKSPACE_ROOT/<tenant>``, its end user's in ``<tenant>/<user>``;
    ``cwd`` may only go deeper."""
    if principal.tenant is None:
        return requested
    home = root / principal.tenant if principal.user is None else root / principal.tenant / principal.user
    target = resolve_folder(home / requested, requested) if requested else home
    if not target.is_relative_to(home):
        raise ApiError(422, "invalid_request", "cwd: must stay inside the caller's workspace", extra={"param": "cwd"})
    return str(target)


def session_options(service: ServiceDep, body: CreateSessionBody, principal: Principal) -> SessionConfig:
    """Options within the operator's tool policy and the caller's workspace (its end user's, if any)."""
    server = service.config.server
    extra = sorted(set(body.allowed_tools) - server.tools_allowed)
    if extra:
        offered = ", ".join(sorted(server.tools_allowed)) or "none"
        message = f"allowed_tools: {', '.join(extra)} not permitted on this server; TOOLS_ALLOWED offers {offered}"
        raise ApiError(422, "invalid_request", message, extra={"param": "allowed_tools"})
    if asked := sorted(set(body.ask_tools) - server.tools_ask):
        offered = ", ".join(sorted(server.tools_ask)) or "none"
        message = f"ask_tools: {', '.join(asked)} cannot be asked on this server; TOOLS_ASK offers {offered}"
        raise ApiError(422, "invalid_request", message, extra={"param": "ask_tools"})
    model = None if body.model is None else server.resolve_model(body.model)
    if body.model is not None and model is None:
        names = ", ".join(server.model_names())
        message = f"model: {body.model!r} is not offered here; ask for one of {names}, or a full Claude id of those"
        raise ApiError(422, "invalid_request", message, extra={"param": "model"})
    mode = body.permission_mode
    if mode is not None and mode not in server.permission_modes_allowed:
        offered = ", ".join(sorted(server.permission_modes_allowed))
        message = f"permission_mode: {mode!r} is not permitted on this server; use one of {offered}"
        raise ApiError(422, "invalid_request", message, extra={"param": "permission_mode"})
    options = body.options(cwd=workspace_of(service.config.runtime.workspace_root, principal, body.cwd))
    options = options.model_copy(update={"user": principal.user})
    return resolve_options(options.model_copy(update={"model": model}) if model else options, server)


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
    if body.user is not None:  # as X-End-User says it
        principal = acting_for(principal, body.user, "user")
    server = service.config.server
    key = await service.handler.create_session(
        body.session_id,
        session_options(service, body, principal),
        body.metadata,
        owner=principal.tenant,
        owner_limit=server.TENANT_MAX_SESSIONS if principal.tenant is not None else None,
        origin=body.origin,
        user_limit=user_limits(principal, server).max_sessions,
    )
    session = service.manager.get(key)
    request.scope["state"][SESSION_KEY_STATE] = (key, session.public_id)
    return session_json(session, server, with_metrics=True)


@router.get(
    "/v1/sessions",
    response_model=None,
    responses={200: {"model": SessionList, "description": "The caller's own sessions."}, **error_responses(401)},
)
async def list_sessions(principal: Caller, service: ServiceDep) -> dict[str, Any]:
    sessions = [s for s in await service.manager.listing(principal.tenant) if is_theirs(s, principal)]
    return {"sessions": [session_json(s, service.config.server, with_metrics=True) for s in sessions]}


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
    session = await service.own_session(request, principal, session_id)
    return session_json(session, service.config.server, with_metrics=True)


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
    request: Request,
    session_id: SessionIdPath,
    principal: Caller,
    service: ServiceDep,
    shape: Annotated[
        Literal["raw", "messages"],
        Query(
            alias="format", description="raw: the CLI's transcript entries; messages: {role, content} as a chat shows"
        ),
    ] = "raw",
) -> dict[str, Any]:
    session = await service.own_session(request, principal, session_id)
    entries = await service.manager.conversations.read_transcript(session)
    return {"messages": chat_messages(entries) if shape == "messages" else entries}


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
    stored = await handler.stored_reply(session.id, idempotency_key) if idempotency_key else None
    turn: AsyncGenerator[Reply, None] | None = None
    if stored is not None:  # already accepted: replay, never a second turn
        request_kept, replies = stored
        if request_kept != request_key(body.content):
            message = "Idempotency-Key: this key was already used with another content; use a new key per message"
            raise ApiError(422, "invalid_request", message, extra={"param": "Idempotency-Key"})
        messages: AsyncIterator[dict[str, Any]] = replayed(replies)
    else:

        async def keep(turn_messages: list[dict[str, Any]]) -> None:
            if not idempotency_key:
                return
            try:
                await handler.keep_reply(session.id, idempotency_key, request_key(body.content), turn_messages)
            except DatabaseUnavailableError:  # the turn ran: its answer goes out, only a replay of it is lost
                log.warning("reply_not_kept", session_id=session.id, reason="database unavailable")

        record = TurnRecord(session, keep)
        # A turn its caller leaves while a request waits runs on: its answer is kept for the key all the same.
        limits = user_limits(principal, service.config.server)
        options = TurnOptions(limits=limits, unread=record.add_unread, idempotency_key=idempotency_key)
        turn = handler.send_message(session, body.content, forwarded=is_forwarded(request), options=options)
        first = await anext(turn)  # errors before the first message keep their HTTP status
        messages = as_json(first, turn, record)
    if not stream:
        return JSONResponse(turn_json(session.public_id, [m async for m in messages]))
    return TurnStream(
        sse_events(messages),
        deadline=deadline,
        ping=15,
        shutdown_grace_period=service.config.optimization.DESTROY_TIMEOUT,
        # Frees the session even if the stream never starts (client gone at once).
        background=BackgroundTask(turn.aclose) if turn is not None else None,
    )
