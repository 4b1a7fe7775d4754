"""The chat API over HTTP: the seed's "Client API", on FastAPI.

Every error answers ``{"error": {"type", "message"}}`` with a 4xx/5xx status
chosen from the typed exception; a turn streams as Server-Sent Events, one event
per SDK message, and always ends with a ``result`` or an ``error`` event.

The routes live in :mod:`.sessions`, :mod:`.operations`, :mod:`.openai` and
:mod:`.console` (the web page at ``/console``); this module
builds the application around them: middleware (request ids, body cap, drain at
shutdown, redaction for tenants), the error handlers and the OpenAPI schema.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import re
import time
import uuid
from collections.abc import AsyncIterator
from importlib.metadata import version
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sse_starlette.sse import AppStatus
from starlette.exceptions import HTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.types import Message as AsgiMessage

from claude_sessions.config import ServerConfig, SessionConfig
from claude_sessions.errors import ClaudeSessionsError, SessionHeldElsewhereError
from claude_sessions.http import console, keys, openai, operations, permissions, probes, sessions
from claude_sessions.http.auth import Authenticator
from claude_sessions.http.common import (
    FORWARDED_STATE,
    OURS,
    ApiError,
    Lifecycle,
    Service,
    Surface,
    api_error,
    error_response,
    resolve_options,
    shutting_down,
)
from claude_sessions.http.forwarding import FORWARDED_HEADER, Forwarder, forwarding_mark
from claude_sessions.http.redaction import RedactingMiddleware, Redactor
from claude_sessions.http.sessions import workspace_of
from claude_sessions.sessions.handler import ClaudeHandler
from claude_sessions.sessions.parked_turns import ParkedTurns

__all__ = ["create_app"]

log = structlog.get_logger("claude_sessions.api")


# -- middleware -------------------------------------------------------------------

_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")


class RequestContext:
    """X-Request-ID on every response, a size cap on bodies, the drain gate, one access-log line.

    (FastAPI's own ``max_body_size`` answers plain text when Content-Length is too
    large; this keeps the contract's JSON error shape in both cases.) While the
    server drains, every new request answers 503 ``shutting_down``; the others are
    counted until their last byte, so the drain knows when they are done.
    """

    def __init__(self, app: ASGIApp, max_body: int, lifecycle: Lifecycle, retry_after: int, mark: str) -> None:
        self.app = app
        self.mark = mark.encode()
        self.max_body = max_body
        self.lifecycle = lifecycle
        self.retry_after = retry_after

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        incoming = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if _REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        state[FORWARDED_STATE] = hmac.compare_digest(headers.get(FORWARDED_HEADER.encode(), b""), self.mark)
        began = time.perf_counter()
        status = 0
        length = headers.get(b"content-length", b"")
        refusal: JSONResponse | None = None
        if self.lifecycle.draining and scope["path"] not in probes.PATHS:
            refusal = _surface(scope["path"]).render(shutting_down(self.retry_after))
        elif length.isdigit() and int(length) > self.max_body:
            too_large = ApiError(413, "body_too_large", f"request body exceeds {self.max_body} bytes")
            refusal = _surface(scope["path"]).render(too_large)
        if refusal is not None:
            refusal.headers["X-Request-ID"] = request_id
            await refusal(scope, receive, send)
            self._log(scope, request_id, refusal.status_code, began)
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

        self.lifecycle.in_flight += 1
        with structlog.contextvars.bound_contextvars(request_id=request_id):
            try:
                await self.app(scope, limited_receive, send_with_id)
            finally:
                self.lifecycle.in_flight -= 1
                self._log(scope, request_id, status, began)

    @staticmethod
    def _log(scope: Scope, request_id: str, status: int, began: float) -> None:
        """One line per request; a probe's (every few seconds, from every kubelet) only at debug level."""
        (log.debug if scope["path"] in probes.PATHS else log.info)(
            "http_request",
            method=scope["method"],
            path=scope["path"],
            status=status,
            duration_ms=round((time.perf_counter() - began) * 1000, 2),
            tenant=scope.get("state", {}).get("tenant"),
            request_id=request_id,
        )


# -- errors -------------------------------------------------------------------------


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _allowed_methods(app: FastAPI, scope: Scope) -> str:
    """Every method some route serves at this path (Starlette names only the first route's)."""
    allowed = [
        method
        for method in _METHODS
        if any(route.matches({**scope, "method": method})[0] is Match.FULL for route in app.router.routes)
    ]
    return ", ".join(allowed)


def _body_problem(error: BaseException | None) -> str | None:
    """Why FastAPI could not parse a body, when the client sent something unreadable."""
    if isinstance(error, UnicodeDecodeError):
        return "body: not valid UTF-8"
    if isinstance(error, RecursionError):
        return "body: JSON nested too deeply"
    if isinstance(error, ValueError):
        return "body: not valid JSON"
    return None


def _surface(path: str) -> Surface:
    """The surface a path is on, which decides how its errors read: ours, or OpenAI's on its endpoint."""
    return openai.SURFACE if path in openai.PATHS else OURS


def _render(request: Request, error: ApiError) -> JSONResponse:
    response: JSONResponse = _surface(request.url.path).render(error)
    return response


def _install_error_handlers(app: FastAPI, retry_after: int, forwarder: Forwarder) -> None:
    @app.exception_handler(SessionHeldElsewhereError)
    async def _on_held_elsewhere(request: Request, error: SessionHeldElsewhereError) -> Response:
        try:
            return await forwarder.forward(request, error)
        except ApiError as refusal:
            return _render(request, refusal)

    @app.exception_handler(ApiError)
    async def _on_api_error(request: Request, error: ApiError) -> JSONResponse:
        return _render(request, error)

    @app.exception_handler(ClaudeSessionsError)
    async def _on_library_error(request: Request, error: ClaudeSessionsError) -> JSONResponse:
        return _render(request, api_error(error, retry_after))

    @app.exception_handler(RequestValidationError)
    async def _on_invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        return _render(request, _surface(request.url.path).invalid(error))

    @app.exception_handler(ValueError)
    async def _on_value_error(request: Request, error: ValueError) -> JSONResponse:
        return _render(request, ApiError(422, "invalid_request", str(error)))

    @app.exception_handler(HTTPException)
    async def _on_http(request: Request, error: HTTPException) -> JSONResponse:
        headers = dict(getattr(error, "headers", None) or {})
        if error.status_code == 400 and (problem := _body_problem(error.__cause__)):
            return _render(request, ApiError(422, "invalid_request", problem))
        if error.status_code == 405:
            headers["Allow"] = _allowed_methods(app, request.scope)
        kind = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}.get(error.status_code, "http_error")
        return _render(request, ApiError(error.status_code, kind, str(error.detail), headers or None))

    @app.exception_handler(Exception)
    async def _on_unexpected(_: Request, error: Exception) -> JSONResponse:
        log.exception("http_error", error=repr(error))
        return error_response(500, "internal_error", "internal error; see the server log")


# -- the schema -----------------------------------------------------------------------


def _slash_pattern(allowed: set[str]) -> str:
    """Content that does not start with a CLI command, or starts with an allowed one."""
    if not allowed:
        return r"^(?!\s*/)"
    names = "|".join(re.escape(name) for name in sorted(allowed))
    return rf"^(?!\s*/(?!(?:{names})(?:\s|$)))"


def _offer(field: dict[str, Any], offered: set[str], what: str, variable: str) -> None:
    """A tool list's schema: only the tools ``variable`` offers, or none."""
    field["description"] = f"{what}: only those in {variable}."
    if offered:
        field["items"]["enum"] = sorted(offered)
    else:
        field["maxItems"] = 0


def _state_the_policy(app: FastAPI, server: ServerConfig) -> None:
    """Make ``/openapi.json`` state this server's policy, so what it calls valid is accepted.

    The permission modes, the tools a session may add, the slash commands a message
    may start with and the models are the operator's choice (``PERMISSION_MODES_ALLOWED``,
    ``TOOLS_ALLOWED``, ``SLASH_COMMANDS_ALLOWED``, ``MODELS_ALLOWED``), not constants of the code.
    """
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        bodies = schema["components"]["schemas"]
        fields = bodies["CreateSessionBody"]["properties"]
        for choice in fields["permission_mode"]["anyOf"]:
            if "enum" in choice:
                choice["enum"] = [mode for mode in choice["enum"] if mode in server.permission_modes_allowed]
        fields["permission_mode"]["description"] = (
            f"One of PERMISSION_MODES_ALLOWED; omitted: {server.default_permission_mode!r}."
        )
        _offer(
            fields["allowed_tools"], server.tools_allowed, "Tools added to Claude Code's default rules", "TOOLS_ALLOWED"
        )
        _offer(
            fields["ask_tools"],
            server.tools_ask,
            "Tools whose calls the session's user approves one by one",
            "TOOLS_ASK",
        )
        content = bodies["MessageBody"]["properties"]["content"]
        content["pattern"] = _slash_pattern(server.slash_commands_allowed)
        also = "Or a full Claude id of an allowed family (claude-sonnet-4-5 where sonnet is)."
        for choice in fields["model"]["anyOf"]:
            if choice.get("type") == "string":
                choice["enum"] = server.model_names()
        fields["model"]["description"] = f"One of MODELS_ALLOWED or MODEL_ALIASES. {also}"
        completion_model = bodies["ChatCompletionBody"]["properties"]["model"]
        completion_model |= {"enum": server.model_names(), "description": also}
        for path in openai.PATHS:  # its bad requests are OpenAI's 400, never FastAPI's 422
            for operation in schema["paths"][path].values():
                operation["responses"].pop("422", None)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


# -- the application ----------------------------------------------------------------


def _log_failed_start(warming: asyncio.Task[None]) -> None:
    """A pool that could not warm leaves the node unready, and says why."""
    if not warming.cancelled() and (error := warming.exception()) is not None:
        log.error("pool_warm_up_failed", error=repr(error))


def create_app(handler: ClaudeHandler) -> FastAPI:
    """The HTTP API serving ``handler``; the app starts and closes it.

    ``app.state.service.lifecycle.drain()`` is what a graceful shutdown awaits first.
    """
    config = handler.config
    server = config.server
    authenticator = Authenticator(server, handler.registry.keys)
    retry_after = max(1, min(60, round(config.session_manager.CLEANUP_INTERVAL * 60)))
    lifecycle = Lifecycle(handler)
    parked = ParkedTurns(server.OPENAI_TOOL_TIMEOUT_SECONDS)
    service = Service(handler, authenticator, lifecycle, parked, retry_after)
    mark = forwarding_mark(server)
    forwarder = Forwarder(
        handler.holder_of,
        handler.node_alive,
        lambda: handler.node.url,
        config.cluster.LEASE_SECONDS,
        config.optimization.MESSAGE_TIMEOUT,
        retry_after,
        mark,
    )

    # Spares are warmed with exactly the options sessions will ask for: each key
    # holder's workspace (or the operator's defaults), the permission mode resolved.
    root = config.runtime.workspace_root
    warm = [SessionConfig(cwd=workspace_of(root, p, None)) for p in authenticator.principals()] or [SessionConfig()]
    handler.warm([resolve_options(options, server) for options in warm])

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        AppStatus.should_exit = False
        await handler.open()
        warming = asyncio.get_running_loop().create_task(handler.start())  # /readyz: pool_warming until done
        warming.add_done_callback(_log_failed_start)
        try:
            yield
        finally:
            await parked.close()  # their turns end before the handler closes their sessions
            await handler.close()
            await forwarder.close()

    app = FastAPI(
        title="claude-sessions",
        version=version("claude-sessions"),
        description="Concurrent Claude Code conversations over HTTP.",
        lifespan=lifespan,
    )
    app.state.service = service
    app.add_middleware(RedactingMiddleware, redactor=Redactor(config, [handler.gateway_url]))
    app.add_middleware(
        RequestContext, max_body=server.MAX_BODY_BYTES, lifecycle=lifecycle, retry_after=retry_after, mark=mark
    )
    _install_error_handlers(app, retry_after, forwarder)
    app.include_router(sessions.router)
    app.include_router(permissions.router)
    app.include_router(keys.router)
    app.include_router(probes.router)
    app.include_router(operations.router)
    app.include_router(openai.router)
    app.include_router(console.router)
    _state_the_policy(app, server)
    return app
