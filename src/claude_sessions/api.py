"""The chat API over HTTP: the seed's "Client API", on FastAPI.

Every error answers ``{"error": {"type", "message"}}`` with a 4xx/5xx status
chosen from the typed exception; a turn streams as Server-Sent Events, one event
per SDK message, and always ends with a ``result`` or an ``error`` event.
"""

import asyncio
import contextlib
import dataclasses
import json
import pathlib
import re
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from datetime import UTC, datetime
from importlib.metadata import version
from typing import Annotated, Any
from urllib.parse import urlsplit

import structlog
from claude_agent_sdk import AssistantMessage, Message, ResultMessage, StreamEvent, UserMessage
from fastapi import Depends, FastAPI, Header, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, JsonValue
from sse_starlette import EventSourceResponse
from sse_starlette.sse import AppStatus
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.types import Message as AsgiMessage

from .auth import Authenticator, Principal
from .config import SessionConfig
from .errors import (
    CapacityError,
    ClaudeSessionsError,
    HandlerClosedError,
    SessionBusyError,
    SessionExistsError,
    SessionLimitError,
    SessionNotFoundError,
    SessionOrphanedError,
    TurnTimeoutError,
    WorkerDiedError,
    WorkerStartError,
)
from .handler import SESSION_ID, ClaudeHandler
from .manager import Session, session_key

log = structlog.get_logger("claude_sessions.api")

SessionIdPath = Annotated[str, Path(pattern=SESSION_ID.pattern, max_length=128)]


# -- request bodies -------------------------------------------------------------


class CreateSessionBody(SessionConfig):
    """A new session: its options (``SessionConfig``), plus an id and free metadata."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=False)

    session_id: str | None = Field(None, pattern=SESSION_ID.pattern, max_length=128)
    metadata: dict[str, JsonValue] | None = None

    def options(self, cwd: str | None) -> SessionConfig:
        return SessionConfig(**self.model_dump(include=set(SessionConfig.model_fields), exclude={"cwd"}), cwd=cwd)


class MessageBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    content: str = Field(min_length=1, max_length=500_000)


# -- errors -----------------------------------------------------------------------


class ApiError(Exception):
    """An answer other than success, with the contract's error shape."""

    def __init__(self, status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.kind, self.message, self.headers = status, kind, message, headers


def _error_response(status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"type": kind, "message": message}}, status_code=status, headers=headers)


def _api_error(error: ClaudeSessionsError, retry_after: int) -> ApiError:
    """Map a typed library error to its HTTP answer."""
    retry = {"Retry-After": str(retry_after)}
    table: list[tuple[type[Exception], int, str, dict[str, str] | None]] = [
        (SessionNotFoundError, 404, "not_found", None),
        (SessionExistsError, 409, "session_exists", None),
        (SessionBusyError, 409, "session_busy", None),
        (SessionOrphanedError, 410, "session_orphaned", None),
        (SessionLimitError, 429, "session_limit", retry),
        (TurnTimeoutError, 504, "turn_timeout", None),
        (WorkerDiedError, 502, "worker_died", None),
        (WorkerStartError, 503, "worker_unavailable", retry),
        (CapacityError, 503, "at_capacity", retry),
        (HandlerClosedError, 503, "shutting_down", retry),
    ]
    for kind, status, name, headers in table:
        if isinstance(error, kind):
            return ApiError(status, name, str(error), headers)
    return ApiError(503, "unavailable", str(error), retry)


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


def _dumps(value: Any) -> str:
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


async def _as_json(
    first: Message, turn: AsyncGenerator[Message, None], on_result: Callable[[list[dict[str, Any]]], None]
) -> AsyncIterator[dict[str, Any]]:
    """A turn's messages as JSON; ``on_result`` keeps the whole turn before its result is sent."""
    seen: list[dict[str, Any]] = []
    async with contextlib.aclosing(turn):
        message: Message | None = first
        while message is not None:
            data = message_json(message)
            seen.append(data)
            if isinstance(message, ResultMessage):
                on_result(seen)
            yield data
            message = await anext(turn, None)


async def _replay(messages: list[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    for data in messages:
        yield data


# -- middleware -------------------------------------------------------------------

_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")


class RequestContext:
    """X-Request-ID on every response, a size cap on bodies, one access-log line per request.

    (FastAPI's own ``max_body_size`` answers plain text when Content-Length is too
    large; this keeps the contract's JSON error shape in both cases.)
    """

    def __init__(self, app: ASGIApp, max_body: int) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        incoming = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if _REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        began = time.perf_counter()
        status = 0
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_body:
            response = _error_response(413, "body_too_large", f"request body exceeds {self.max_body} bytes")
            response.headers["X-Request-ID"] = request_id
            await response(scope, receive, send)
            self._log(scope, request_id, 413, began)
            return
        received = 0

        async def limited_receive() -> AsgiMessage:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body:  # an HTTPException passes FastAPI's body parsing as is
                raise HTTPException(413, f"request body exceeds {self.max_body} bytes")
            return message

        async def send_with_id(message: AsgiMessage) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", []).append((b"x-request-id", request_id.encode()))
            await send(message)

        with structlog.contextvars.bound_contextvars(request_id=request_id):
            try:
                await self.app(scope, limited_receive, send_with_id)
            finally:
                self._log(scope, request_id, status, began)

    @staticmethod
    def _log(scope: Scope, request_id: str, status: int, began: float) -> None:
        log.info(
            "http_request",
            method=scope["method"],
            path=scope["path"],
            status=status,
            duration_ms=round((time.perf_counter() - began) * 1000, 2),
            tenant=scope.get("state", {}).get("tenant"),
            request_id=request_id,
        )


# -- the application ----------------------------------------------------------------


def create_app(handler: ClaudeHandler) -> FastAPI:
    """The HTTP API serving ``handler``; the app starts and closes it."""
    config = handler.config
    server = config.server
    authenticator = Authenticator(server)
    manager = handler.session_manager
    retry_after = max(1, min(60, round(config.session_manager.CLEANUP_INTERVAL * 60)))

    if not authenticator.is_open:  # every session runs in a tenant's workspace: warm those
        root = config.runtime.workspace_root
        handler.pool.warm_configs = [SessionConfig(cwd=workspace_of(root, p, None)) for p in authenticator.principals()]

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        AppStatus.should_exit = False
        await handler.start()
        try:
            yield
        finally:
            await handler.close()

    app = FastAPI(
        title="claude-sessions",
        version=version("claude-sessions"),
        description="Concurrent Claude Code conversations over HTTP.",
        lifespan=lifespan,
    )
    app.add_middleware(RequestContext, max_body=server.MAX_BODY_BYTES)

    @app.exception_handler(ApiError)
    async def _on_api_error(_: Request, error: ApiError) -> JSONResponse:
        return _error_response(error.status, error.kind, error.message, error.headers)

    @app.exception_handler(ClaudeSessionsError)
    async def _on_library_error(_: Request, error: ClaudeSessionsError) -> JSONResponse:
        mapped = _api_error(error, retry_after)
        return _error_response(mapped.status, mapped.kind, mapped.message, mapped.headers)

    @app.exception_handler(RequestValidationError)
    async def _on_invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        problems = []
        for item in error.errors()[:5]:
            where = ".".join(str(p) for p in item["loc"] if p != "body") or "body"
            problems.append(f"{where}: {item['msg']}")
        return _error_response(422, "invalid_request", "; ".join(problems))

    @app.exception_handler(ValueError)
    async def _on_value_error(_: Request, error: ValueError) -> JSONResponse:
        return _error_response(422, "invalid_request", str(error))

    @app.exception_handler(HTTPException)
    async def _on_http(_: Request, error: HTTPException) -> JSONResponse:
        kind = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}.get(error.status_code, "http_error")
        return _error_response(error.status_code, kind, str(error.detail), getattr(error, "headers", None))

    @app.exception_handler(Exception)
    async def _on_unexpected(_: Request, error: Exception) -> JSONResponse:
        log.exception("http_error", error=repr(error))
        return _error_response(500, "internal_error", "internal error; see the server log")

    def caller(request: Request) -> Principal:
        principal = authenticator.authenticate(request.headers.get("authorization"))
        if principal is None:
            raise ApiError(401, "unauthorized", "missing or unknown API key", {"WWW-Authenticate": "Bearer"})
        request.scope.setdefault("state", {})["tenant"] = principal.tenant
        return principal

    def admin(principal: Annotated[Principal, Depends(caller)]) -> Principal:
        if not principal.is_admin:
            raise ApiError(403, "forbidden", "this endpoint needs the admin key")
        return principal

    Caller = Annotated[Principal, Depends(caller)]
    Admin = Annotated[Principal, Depends(admin)]

    def own_session(principal: Principal, session_id: str) -> Session:
        """The caller's session; another tenant's answers exactly like an unknown id."""
        try:
            return manager.get(session_key(session_id, principal.tenant))
        except SessionNotFoundError:
            raise ApiError(404, "not_found", f"session {session_id!r} not found") from None

    def session_options(body: CreateSessionBody, principal: Principal) -> SessionConfig:
        """Options within the operator's tool policy and the tenant's workspace."""
        extra = sorted(set(body.allowed_tools) - server.tools_allowed)
        if extra:
            raise ApiError(422, "invalid_request", f"allowed_tools: not permitted on this server: {extra}")
        mode = body.permission_mode
        if mode is not None and mode not in server.permission_modes_allowed:
            raise ApiError(422, "invalid_request", f"permission_mode: {mode!r} is not permitted on this server")
        return body.options(cwd=workspace_of(config.runtime.workspace_root, principal, body.cwd))

    @app.post("/v1/sessions", status_code=201, tags=["sessions"])
    async def create_session(body: CreateSessionBody, principal: Caller) -> dict[str, Any]:
        key = await handler.create_session(
            body.session_id,
            session_options(body, principal),
            body.metadata,
            owner=principal.tenant,
            owner_limit=server.TENANT_MAX_SESSIONS if principal.tenant is not None else None,
        )
        return session_json(manager.get(key), with_metrics=True)

    @app.get("/v1/sessions", tags=["sessions"])
    async def list_sessions(principal: Caller) -> dict[str, Any]:
        return {"sessions": [session_json(s) for s in manager.owned_by(principal.tenant)]}

    @app.get("/v1/sessions/{session_id}", tags=["sessions"])
    async def get_session(session_id: SessionIdPath, principal: Caller) -> dict[str, Any]:
        return session_json(own_session(principal, session_id), with_metrics=True)

    @app.delete("/v1/sessions/{session_id}", status_code=204, tags=["sessions"])
    async def delete_session(
        session_id: SessionIdPath, principal: Caller, purge: Annotated[bool, Query()] = False
    ) -> Response:
        await handler.destroy_session(own_session(principal, session_id).id, purge=purge)
        return Response(status_code=204)

    @app.post("/v1/sessions/{session_id}/interrupt", status_code=202, tags=["sessions"])
    async def interrupt(session_id: SessionIdPath, principal: Caller) -> dict[str, Any]:
        session = own_session(principal, session_id)
        await handler.interrupt(session.id)
        return {"session_id": session.public_id, "interrupted": True}

    @app.get("/v1/sessions/{session_id}/history", tags=["sessions"])
    async def history(session_id: SessionIdPath, principal: Caller) -> dict[str, Any]:
        session = own_session(principal, session_id)
        return {"messages": await asyncio.to_thread(manager.read_transcript, session)}

    @app.post(
        "/v1/sessions/{session_id}/messages",
        tags=["sessions"],
        responses={200: {"content": {"text/event-stream": {}, "application/json": {}}}},
    )
    async def send_message(
        session_id: SessionIdPath,
        body: MessageBody,
        principal: Caller,
        stream: Annotated[bool, Query()] = True,
        idempotency_key: Annotated[str | None, Header(min_length=1, max_length=200)] = None,
    ) -> Response:
        if AppStatus.should_exit:
            raise ApiError(503, "shutting_down", "the server is shutting down", {"Retry-After": str(retry_after)})
        session = own_session(principal, session_id)
        stored = handler.store.reply(session.id, idempotency_key) if idempotency_key else None
        if stored is not None:  # already accepted: replay, never a second turn
            request, replies = stored
            if request != body.content:
                raise ApiError(422, "invalid_request", "Idempotency-Key was already used with another content")
            messages: AsyncIterator[dict[str, Any]] = _replay(replies)
            turn = None
        else:
            turn = handler.send_message(session.id, body.content)
            first = await anext(turn)  # errors before the first message keep their HTTP status

            def keep(turn_messages: list[dict[str, Any]]) -> None:
                if idempotency_key:
                    handler.store.save_reply(session.id, idempotency_key, body.content, turn_messages)

            messages = _as_json(first, turn, keep)
        if not stream:
            return JSONResponse(turn_json(session.public_id, [m async for m in messages]))
        return EventSourceResponse(
            _events(messages),
            ping=15,
            shutdown_grace_period=config.optimization.DESTROY_TIMEOUT,
            # Frees the session even if the stream never starts (client gone at once).
            background=BackgroundTask(turn.aclose) if turn is not None else None,
        )

    @app.get("/v1/health", tags=["service"])
    async def health(_: Caller) -> dict[str, Any]:
        report = manager.get_session_health_report()
        reasons = await _degradations(handler)
        return {"status": "degraded" if reasons else "ok", "reasons": reasons, **report}

    @app.get("/v1/pool", tags=["service"])
    async def pool(_: Caller) -> dict[str, Any]:
        return handler.get_pool_status()

    @app.get("/metrics", tags=["service"], response_class=Response)
    async def metrics(_: Admin) -> Response:
        return Response(generate_latest(handler.telemetry.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/admin/cleanup", tags=["admin"])
    async def cleanup(_: Admin) -> dict[str, Any]:
        inactive = await manager.cleanup_inactive_sessions()
        orphaned = await manager.detect_orphaned_sessions()
        return {"inactive": inactive, "orphaned": orphaned}

    return app


async def _events(messages: AsyncIterator[dict[str, Any]]) -> AsyncIterator[dict[str, str]]:
    """SSE events of one turn; a failure ends the stream with an ``error`` event."""
    try:
        async for data in messages:
            yield {"event": data["type"], "data": _dumps(data)}
    except ClaudeSessionsError as error:
        mapped = _api_error(error, 1)
        yield {"event": "error", "data": _dumps({"error": {"type": mapped.kind, "message": mapped.message}})}


def workspace_of(root: pathlib.Path, principal: Principal, requested: str | None) -> str | None:
    """A tenant's sessions run in ``WORKSPACE_ROOT/<tenant>``; ``cwd`` may only go deeper."""
    if principal.tenant is None:
        return requested
    home = root / principal.tenant
    target = (home / requested).resolve() if requested else home
    if not target.is_relative_to(home):
        raise ApiError(422, "invalid_request", "cwd: must stay inside the tenant's workspace")
    return str(target)


async def _degradations(handler: ClaudeHandler) -> list[str]:
    """Why the service is not fully healthy (empty when it is)."""
    reasons = []
    pool = handler.get_pool_status()
    if handler.config.connection_pool.MIN_SIZE and not pool["healthy_connections"]:
        reasons.append("pool has no healthy worker")
    if handler.session_manager.is_full():
        reasons.append("session limit reached")
    if not handler.maintenance.is_running:
        reasons.append("maintenance task is not running")
    base_url = handler.config.runtime.ANTHROPIC_BASE_URL
    if base_url and not await _reachable(base_url):
        reasons.append(f"model endpoint {base_url} is unreachable")
    return reasons


async def _reachable(url: str, timeout: float = 1.0) -> bool:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(parts.hostname, port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True
