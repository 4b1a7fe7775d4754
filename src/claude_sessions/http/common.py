"""What every route of the HTTP API shares: the service it serves, who calls, the error shape."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

import structlog
from fastapi import Depends, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

from claude_sessions.config import END_USER, ServerConfig, SessionConfig, SystemConfig, is_end_user
from claude_sessions.errors import (
    CapacityError,
    ClaudeSessionsError,
    DatabaseUnavailableError,
    HandlerClosedError,
    ImageTooLargeError,
    InvalidContentError,
    LeaseLostError,
    ModelError,
    PermissionDecidedError,
    PermissionExpiredError,
    PermissionNotFoundError,
    SessionBusyError,
    SessionExistsError,
    SessionLimitError,
    SessionNotFoundError,
    SessionOrphanedError,
    SlashCommandRefusedError,
    ToolCallNotFoundError,
    TurnRefusedError,
    TurnTimeoutError,
    WorkerDiedError,
    WorkerStartError,
)
from claude_sessions.http.auth import Authenticator, Principal
from claude_sessions.http.problems import problems
from claude_sessions.http.redaction import PRINCIPAL_STATE, SESSION_KEY_STATE
from claude_sessions.sessions.handler import ClaudeHandler
from claude_sessions.sessions.parked_turns import ParkedTurns
from claude_sessions.sessions.session import Session, session_key
from claude_sessions.sessions.turn_events import INTERRUPT_GRACE_SECONDS
from claude_sessions.sessions.view import SessionView
from claude_sessions.store.keys import KeyStore
from claude_sessions.store.records import UserLimits

log = structlog.get_logger("claude_sessions.api")

#: A public session id: the library's ``[A-Za-z0-9._-]{1,128}``, anchored, and not
#: made of dots only (``.`` and ``..`` read as folders to every path-handling tool).
PUBLIC_ID = r"^[A-Za-z0-9._-]*[A-Za-z0-9_-][A-Za-z0-9._-]*$"


# -- the service ------------------------------------------------------------------


class Lifecycle:
    """Draining at shutdown: new requests answer 503, the running ones end first.

    ``in_flight`` counts the requests being answered (a stream until its last event).
    """

    def __init__(self, handler: ClaudeHandler) -> None:
        self.handler = handler
        #: A signal came: readiness fails from now on, while the sessions are handed over.
        self.stopping = False
        self.draining = False
        self.in_flight = 0

    def not_ready(self) -> list[str]:
        """Why this node should get no new requests (``/readyz``): empty when it should."""
        reasons = ["draining"] if self.stopping else []
        if not self.handler.node.database_ok:
            reasons.append("registry_unavailable")
        if self.handler.warming:
            reasons.append("pool_warming")
        return reasons

    async def drain(self, timeout: float) -> None:
        """Refuse new requests; let running ones end within ``timeout``, then stop their turns.

        Sessions not mid-turn are handed to the other nodes at once, the others as their
        turns end. A turn still running is interrupted (its stream ends with the CLI's ``result``);
        one whose CLI does not answer the interrupt loses its worker (its stream ends
        with an ``error`` event).
        """
        # The other nodes take this node's idle sessions at once. Only then does the gate
        # close: a peer that read this node as the holder a moment ago still gets its answer.
        self.stopping = True
        try:
            await self.handler.hand_over()
        finally:
            self.draining = True
        log.info("drain_started", requests=self.in_flight, timeout=timeout)
        if await self._settled(timeout):
            return
        busy = self.handler.busy_sessions()
        log.warning("drain_interrupting_turns", sessions=[s.id for s in busy])
        await asyncio.gather(*(self.handler.interrupt(s) for s in busy), return_exceptions=True)
        if await self._settled(INTERRUPT_GRACE_SECONDS):
            return
        await self.handler.end_stuck_turns(busy)
        await self._settled(1.0)

    async def _settled(self, timeout: float) -> bool:
        """Whether every request in flight ended within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while self.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return not self.in_flight


@dataclass
class Service:
    """What the routes serve; kept on ``app.state.service``."""

    handler: ClaudeHandler
    authenticator: Authenticator
    lifecycle: Lifecycle
    #: Turns waiting for their OpenAI client's tool results, on this node.
    parked: ParkedTurns
    #: Seconds a client should wait before retrying a 429 or a 503.
    retry_after: int = field(default=1)

    @property
    def config(self) -> SystemConfig:
        return self.handler.config

    @property
    def manager(self) -> SessionView:
        return self.handler.session_manager

    @property
    def keys(self) -> KeyStore:
        """The keys made at run time (the admin's routes)."""
        return self.handler.registry.keys

    async def own_session(
        self, request: Request, principal: Principal, session_id: str, *, running_here: bool = False
    ) -> Session:
        """The caller's session, as the registry has it; another tenant's answers exactly like an unknown id.

        ``running_here``: a session whose turn runs on this node is taken as this node holds it (its
        lease is held: the registry has nothing newer), sparing an answer to that turn a read.
        """
        key = session_key(session_id, principal.tenant)
        request.scope.setdefault("state", {})[SESSION_KEY_STATE] = (key, session_id)
        session = self.manager.running(key) if running_here else None
        try:
            session = session or await self.manager.fetch(key)
        except SessionNotFoundError:
            session = None
        if session is None or not is_theirs(session, principal):
            raise ApiError(404, "not_found", f"session {session_id!r} not found")
        return session


#: The request scope's flag for a request another node forwarded here (set by the app's middleware).
FORWARDED_STATE = "forwarded"


def is_forwarded(request: Request) -> bool:
    """Whether another node of this cluster sent the request here (its mark checked by the app's middleware)."""
    return bool(request.scope.get("state", {}).get(FORWARDED_STATE, False))


def get_service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


ServiceDep = Annotated[Service, Depends(get_service)]


def resolve_options(options: SessionConfig, server: ServerConfig) -> SessionConfig:
    """The options a session runs with: an omitted permission mode is the operator's default.

    Stored explicitly, so every CLI of the session starts with it pinned; spares are
    warmed with options resolved the same way, so they still match.
    """
    if options.permission_mode is not None:
        return options
    return options.model_copy(update={"permission_mode": server.default_permission_mode})


# -- who calls --------------------------------------------------------------------

bearer = HTTPBearer(
    auto_error=False,
    description="A tenant's key from API_KEYS, or ADMIN_API_KEY (none needed on a keyless loopback server).",
)


async def caller(
    request: Request,
    service: ServiceDep,
    _: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    x_end_user: Annotated[
        str | None,
        Header(
            pattern=rf"^{END_USER.pattern}$",
            description="the tenant's end user the call is for (a tenant's key; the admin's calls ignore it)",
        ),
    ] = None,
) -> Principal:
    principal = await service.authenticator.authenticate(request.headers.get("authorization"))
    if principal is None:
        raise ApiError(401, "unauthorized", "missing or unknown API key", {"WWW-Authenticate": "Bearer"})
    if x_end_user is not None:
        principal = acting_for(principal, x_end_user, "X-End-User")
    state = request.scope.setdefault("state", {})
    state["tenant"] = principal.tenant
    state[PRINCIPAL_STATE] = principal
    return principal


def is_theirs(session: Session, principal: Principal) -> bool:
    """An end user's sessions are its own; the tenant's own key (no user) sees every one of the tenant's."""
    return principal.user is None or session.config.user == principal.user


def user_limits(principal: Principal, server: ServerConfig) -> UserLimits:
    """The limits of the end user the caller acts for: its key's own, over ``USER_*``."""
    return UserLimits.of_user(principal.limits, server) if principal.user is not None else UserLimits()


def acting_for(principal: Principal, user: str, param: str) -> Principal:
    """The caller as ``user`` of its tenant: 422 for a bad id, 403 for a key bound to another user.

    The admin and a keyless server's operator belong to no tenant: they act for no end user.
    """
    if principal.is_admin or principal.tenant is None:
        return principal
    if not is_end_user(user):
        message = f"{param}: must match {END_USER.pattern} (a folder name, no leading dot)"
        raise ApiError(422, "invalid_request", message, extra={"param": param})
    if principal.bound and principal.user != user:
        raise ApiError(403, "forbidden", f"{param}: this key is bound to another user")
    return dataclasses.replace(principal, user=user)


def admin(principal: Annotated[Principal, Depends(caller)]) -> Principal:
    if not principal.is_admin:
        raise ApiError(403, "forbidden", "this endpoint needs the admin key")
    return principal


Caller = Annotated[Principal, Depends(caller)]
Admin = Annotated[Principal, Depends(admin)]


# -- errors -------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    type: str = Field(description="a stable name: not_found, session_busy, model_error, ...")
    message: str
    status: int | None = Field(None, description="model_error only: the model API's HTTP status, when known")


class ErrorBody(BaseModel):
    """Every error answer: ``{"error": {"type", "message"}}``."""

    error: ErrorDetail


_DESCRIPTIONS = {
    401: "Missing or unknown API key.",
    403: "The admin key is needed, or the key is bound to another end user than X-End-User names.",
    404: "No such session or permission request (another tenant's answers the same).",
    409: "The id is taken, the session is running a turn, or the request was already answered.",
    410: "The session lost its transcript (delete it), or the request expired unanswered.",
    413: "The request body is too large.",
    422: "Invalid request: body, parameters or the server's policy.",
    429: "A session limit, the tenant's daily budget or its turn rate is reached; see Retry-After.",
    502: "The session's CLI process died, or the model call failed after the CLI's retries.",
    503: "At capacity, no worker could start, or the server is shutting down; see Retry-After.",
    504: "The turn ran past OPT_MESSAGE_TIMEOUT and was interrupted.",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the error statuses a route can answer (503: any, while draining; a
    route asking for a key (401) also checks ``X-End-User``: 422 for a bad one, 403 for another user)."""
    known = sorted({*statuses, 503, *((403, 422) if 401 in statuses else ())})
    return {status: {"model": ErrorBody, "description": _DESCRIPTIONS[status]} for status in known}


class ApiError(Exception):
    """An answer other than success, with the contract's error shape."""

    def __init__(
        self,
        status: int,
        kind: str,
        message: str,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.kind, self.message, self.headers = status, kind, message, headers
        self.extra = extra or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"type": self.kind, "message": self.message, **self.extra}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def validation_problems(error: RequestValidationError) -> ApiError:
    """A body or parameter that failed validation: up to five problems in words; ``param``, the first field."""
    found = problems(error.errors())[:5]
    param = found[0].param
    return ApiError(422, "invalid_request", "; ".join(map(str, found)), extra={"param": param} if param else None)


@dataclass(frozen=True)
class Surface:
    """How one surface of the API answers errors: its JSON shape, and its words for a bad request."""

    render: Callable[[ApiError], JSONResponse]
    invalid: Callable[[RequestValidationError], ApiError]


#: This API's own error shape (the OpenAI-compatible endpoint has its own surface).
OURS = Surface(ApiError.response, validation_problems)


def error_response(status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return ApiError(status, kind, message, headers).response()


def api_error(error: ClaudeSessionsError, retry_after: int) -> ApiError:
    """Map a typed library error to its HTTP answer."""
    if isinstance(error, TurnRefusedError):
        return ApiError(429, error.kind, str(error), {"Retry-After": str(error.retry_after)})
    if isinstance(error, ModelError):  # the model API's status, when known, beside its message
        return ApiError(502, "model_error", error.message, extra={"status": error.status} if error.status else None)
    if isinstance(error, InvalidContentError):
        status = 413 if isinstance(error, ImageTooLargeError) else 422
        return ApiError(status, error.kind, str(error), extra={"param": error.param})
    retry = {"Retry-After": str(retry_after)}
    table: list[tuple[type[Exception], int, str, dict[str, str] | None]] = [
        (SessionNotFoundError, 404, "not_found", None),
        (PermissionNotFoundError, 404, "not_found", None),
        (ToolCallNotFoundError, 404, "not_found", None),
        (PermissionDecidedError, 409, "permission_decided", None),
        (PermissionExpiredError, 410, "permission_expired", None),
        (SessionExistsError, 409, "session_exists", None),
        (SessionBusyError, 409, "session_busy", None),
        (SessionOrphanedError, 410, "session_orphaned", None),
        (SlashCommandRefusedError, 422, "slash_command_refused", None),
        (SessionLimitError, 429, "session_limit", retry),
        (TurnTimeoutError, 504, "turn_timeout", None),
        (WorkerDiedError, 502, "worker_died", None),
        (WorkerStartError, 503, "worker_unavailable", retry),
        (CapacityError, 503, "at_capacity", retry),
        (HandlerClosedError, 503, "shutting_down", retry),
        (DatabaseUnavailableError, 503, "database_unavailable", retry),
        (LeaseLostError, 503, "session_moved", retry),
    ]
    for kind, status, name, headers in table:
        if isinstance(error, kind):
            return ApiError(status, name, str(error), headers)
    return ApiError(503, "unavailable", str(error), retry)


def shutting_down(retry_after: int) -> ApiError:
    return ApiError(503, "shutting_down", "the server is shutting down", {"Retry-After": str(retry_after)})
