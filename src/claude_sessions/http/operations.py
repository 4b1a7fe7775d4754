"""The service surface of the HTTP API: health, pool, usage over time, metrics, admin views.

``/v1/health``, ``/v1/pool`` and ``/v1/usage/timeseries`` answer a tenant with its own
sessions, workers and totals only (and no pids, nor a worker's memory); the admin and the
keyless operator see everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from fastapi import APIRouter, Query, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field

from claude_sessions.config import END_USER
from claude_sessions.errors import DatabaseUnavailableError
from claude_sessions.http.auth import Principal
from claude_sessions.http.common import Admin, Caller, ServiceDep, acting_for, error_responses, user_limits
from claude_sessions.http.sessions import SessionObject
from claude_sessions.http.streaming import session_json
from claude_sessions.observability.telemetry import DEFAULT_TENANT
from claude_sessions.observability.usage_series import BUCKET_SECONDS, WINDOW_MINUTES
from claude_sessions.sessions.handler import ClaudeHandler
from claude_sessions.workers.memory import add_pss

router = APIRouter()


class Connection(BaseModel):
    id: str
    pid: int | None = Field(None, description="the admin's view only")
    pss_bytes: int | None = Field(
        None,
        description="the admin's view only: the proportional set size (PSS) of the worker's CLI and the processes "
        "it started, shared pages divided among their sharers, so these add up across workers; null when it "
        "cannot be read",
    )
    state: str
    age_seconds: float
    uses: int
    healthy: bool


class PoolStatus(BaseModel):
    pool_size: int
    idle: int
    healthy_connections: int
    max_size: int
    min_size: int
    connections: list[Connection]


class NodeInfo(BaseModel):
    node_id: str
    url: str
    last_seen: float = Field(description="seconds since the epoch of its last heartbeat")
    live_workers: int
    status: Literal["up", "draining", "down"]


class LimitsReport(BaseModel):
    mode: Literal["v2", "v1", "off"] = Field(description="the cgroup version holding memory, processes and CPU")
    reason: str | None = Field(None, description="why the limits are off, when they are")
    memory_mb: int
    pids_max: int
    workspace_max_mb: int
    workspace: Literal["loop", "quota", "off"] = Field(description="how a workspace's size is held")


class HealthReport(BaseModel):
    status: Literal["ok", "degraded"]
    reasons: list[str]
    sessions: dict[str, int]
    pool: dict[str, int]
    totals: dict[str, float]
    errors: dict[str, int]
    nodes: list[NodeInfo] | None = Field(None, description="the admin's view only: every node of the deployment")
    limits: LimitsReport | None = Field(None, description="the admin's view only: what a session's tools may take")


class CleanupAnswer(BaseModel):
    inactive: list[str]
    orphaned: list[str]


class UsagePoint(BaseModel):
    start: int = Field(description="the minute's start, in seconds since the epoch")
    turns: int = Field(description="turns that ended in this minute")
    tokens: int = Field(description="tokens of every kind the model was billed")
    cost: float = Field(description="spend in US dollars")
    errors: int = Field(description="turns the model call failed")


class UsageSeriesAnswer(BaseModel):
    """Per-minute usage over the last hour on every node, oldest minute first, empty minutes included."""

    bucket_seconds: int
    minutes: int
    points: list[UsagePoint]


class OwnedSession(SessionObject):
    owner: str | None = Field(description="the tenant; null for the operator of a keyless server")


class AllSessions(BaseModel):
    sessions: list[OwnedSession]


class Limits(BaseModel):
    max_sessions: int | None = Field(description="sessions held at once (TENANT_MAX_SESSIONS); null: unset")
    daily_usd: float | None = Field(description="spend per UTC day (TENANT_DAILY_USD); null: unset")
    turns_per_minute: int | None = Field(description="turns started per minute (TENANT_TURNS_PER_MINUTE); null: unset")


class Me(BaseModel):
    tenant: str | None = Field(description="the key's tenant; null for the operator of a keyless server")
    user: str | None = Field(description="the end user the caller acts for (a bound key, X-End-User); null: none")
    admin: bool
    limits: Limits


_TENANT_VIEW = " A tenant sees its own sessions and workers only; the admin sees everything."


def _view(principal: Principal) -> str | None:
    """Whose view: None for the admin and the operator (everything), else the tenant's."""
    return None if principal.is_admin else principal.tenant


def _workspace(handler: ClaudeHandler, principal: Principal) -> Path | None:
    """The workspace whose workers the caller sees: none for the admin, a tenant's, an end user's folder."""
    tenant = _view(principal)
    if tenant is None:
        return None
    home = handler.config.runtime.workspace_root / tenant
    return home if principal.user is None else home / principal.user


@router.get(
    "/v1/me",
    tags=["service"],
    response_model=None,
    responses={
        200: {"model": Me, "description": "Who the caller is, and the limits that apply."},
        **error_responses(401),
    },
)
async def me(principal: Caller, service: ServiceDep) -> dict[str, Any]:
    """What a console or a client needs to know of itself before it starts."""
    server, budgeted = service.config.server, principal.tenant or DEFAULT_TENANT
    limits = {
        "max_sessions": server.TENANT_MAX_SESSIONS if principal.tenant is not None else None,
        "daily_usd": server.daily_usd(budgeted),
        "turns_per_minute": server.turns_per_minute(budgeted),
    }
    if principal.user is not None:  # an end user's own: its key's, over USER_*
        limits = dataclasses.asdict(user_limits(principal, server))
    return {"tenant": principal.tenant, "user": principal.user, "admin": principal.is_admin, "limits": limits}


@router.get(
    "/v1/health",
    tags=["service"],
    response_model=None,
    responses={
        200: {"model": HealthReport, "description": "The health report." + _TENANT_VIEW},
        **error_responses(401),
    },
)
async def health(principal: Caller, service: ServiceDep) -> dict[str, Any]:
    """Sessions across the deployment (this node's last view if the database is away)."""
    view, nodes, reasons = _view(principal), None, []
    try:
        await (service.manager.refresh() if view is None else service.manager.listing(view))
        nodes = [dataclasses.asdict(n) for n in await service.handler.nodes()] if view is None else None
    except DatabaseUnavailableError:
        reasons.append("database unavailable")
    report = service.manager.get_session_health_report(view, principal.user)
    reasons += await _degradations(service.handler)
    extra = {} if view is not None else {"nodes": nodes or [], "limits": service.handler.containment.report()}
    return {"status": "degraded" if reasons else "ok", "reasons": reasons, **report, **extra}


@router.get(
    "/v1/pool",
    tags=["service"],
    response_model=None,
    responses={200: {"model": PoolStatus, "description": "The worker pool." + _TENANT_VIEW}, **error_responses(401)},
)
async def pool(principal: Caller, service: ServiceDep) -> dict[str, Any]:
    status = service.handler.get_pool_status(_workspace(service.handler, principal))
    # Each worker's memory, in the views that show pids: read here only (a millisecond or so a
    # worker, off the event loop), never for a scrape or the health report.
    if any(connection.get("pid") is not None for connection in status["connections"]):
        await asyncio.to_thread(add_pss, status["connections"])
    return status


@router.get(
    "/v1/usage/timeseries",
    tags=["service"],
    response_model=None,
    responses={
        200: {"model": UsageSeriesAnswer, "description": "Turns, tokens and cost per minute." + _TENANT_VIEW},
        **error_responses(401),
    },
)
async def usage_timeseries(principal: Caller, service: ServiceDep) -> dict[str, Any]:
    """What the console charts: the last hour, minute by minute, as every node counted it."""
    view = _view(principal)
    return {
        "bucket_seconds": BUCKET_SECONDS,
        "minutes": WINDOW_MINUTES,
        "points": await service.handler.usage_series(view, principal.user if view is not None else None),
    }


class SpendFigures(BaseModel):
    cost_usd: float
    tokens: int
    turns: int = Field(description="turns finished")


class TenantLimits(BaseModel):
    daily_usd: float | None = Field(description="TENANT_DAILY_USD for this tenant; null: none")
    turns_per_minute: int | None = Field(description="TENANT_TURNS_PER_MINUTE for this tenant; null: none")


class TenantUsageReport(BaseModel):
    tenant: str
    today: SpendFigures = Field(description="this UTC day")
    month: SpendFigures = Field(description="this UTC month")
    limits: TenantLimits


class UserLimitsReport(BaseModel):
    max_sessions: int | None = Field(description="the key's own, else USER_MAX_SESSIONS; null: none")
    daily_usd: float | None = Field(description="the key's own, else USER_DAILY_USD; null: none")
    turns_per_minute: int | None = Field(description="the key's own, else USER_TURNS_PER_MINUTE; null: none")


class UserUsageReport(BaseModel):
    tenant: str
    user: str
    today: SpendFigures = Field(description="this UTC day")
    month: SpendFigures = Field(description="this UTC month")
    limits: UserLimitsReport


class UsageAnswer(BaseModel):
    tenants: list[TenantUsageReport] = Field([], description="the tenants' (no user asked for)")
    users: list[UserUsageReport] = Field([], description="the end user's (?user=, or a user's key)")


@router.get(
    "/v1/usage",
    tags=["service"],
    response_model=None,
    responses={
        200: {"model": UsageAnswer, "description": "Spend, tokens and turns, with the limits." + _TENANT_VIEW},
        **error_responses(401),
    },
)
async def usage(
    principal: Caller,
    service: ServiceDep,
    user: Annotated[
        str | None, Query(pattern=rf"^{END_USER.pattern}$", description="one end user of the caller's tenant")
    ] = None,
) -> dict[str, Any]:
    """A tenant's spend, tokens and turns today and this month, against its limits (every node's)."""
    if user is not None:  # the admin's view has no end users: it ignores the parameter
        principal = acting_for(principal, user, "user")
    if principal.user is not None:
        return await _user_usage(principal, service)
    handler, server, own = service.handler, service.config.server, principal.tenant or DEFAULT_TENANT
    mine = _view(principal) is not None
    found = {u.tenant: u for u in await handler.usage(own if mine else None)}

    def report(name: str) -> dict[str, Any]:
        used = found.get(name)
        return {
            "tenant": name,
            "today": dataclasses.asdict(used.today) if used else _NOTHING,
            "month": dataclasses.asdict(used.month) if used else _NOTHING,
            "limits": {"daily_usd": server.daily_usd(name), "turns_per_minute": server.turns_per_minute(name)},
        }

    return {"tenants": [report(name) for name in sorted({own} if mine else {own, *found})]}


_NOTHING = {"cost_usd": 0.0, "tokens": 0, "turns": 0}


async def _user_usage(principal: Principal, service: ServiceDep) -> dict[str, Any]:
    """An end user's spend, tokens and turns, against its limits (its key's own over ``USER_*``)."""
    assert principal.tenant is not None and principal.user is not None  # acting_for made it so
    found = await service.handler.usage(principal.tenant, principal.user)
    used = found[0] if found else None
    report = {
        "tenant": principal.tenant,
        "user": principal.user,
        "today": dataclasses.asdict(used.today) if used else _NOTHING,
        "month": dataclasses.asdict(used.month) if used else _NOTHING,
        "limits": dataclasses.asdict(user_limits(principal, service.config.server)),
    }
    return {"users": [report]}


@router.get(
    "/metrics",
    tags=["service"],
    response_class=Response,
    responses={
        200: {"description": "Prometheus text format", "content": {CONTENT_TYPE_LATEST: {}}},
        **error_responses(401, 403),
    },
)
async def metrics(_: Admin, service: ServiceDep) -> Response:
    return Response(service.handler.prometheus_text(), media_type=CONTENT_TYPE_LATEST)


@router.post(
    "/v1/admin/cleanup",
    tags=["admin"],
    response_model=None,
    responses={200: {"model": CleanupAnswer, "description": "What was removed."}, **error_responses(401, 403)},
)
async def cleanup(_: Admin, service: ServiceDep) -> dict[str, Any]:
    """A maintenance pass now, under the same leader lock as the scheduled ones: in a cluster, the
    sessions' cleanup runs on one node at a time (on another node than the leader, the lists are empty)."""
    report = await service.handler.run_maintenance()
    return {"inactive": report["inactive"], "orphaned": report["orphaned"]}


@router.get(
    "/v1/admin/sessions",
    tags=["admin"],
    response_model=None,
    responses={
        200: {"model": AllSessions, "description": "Every session of the deployment, with its owner."},
        **error_responses(401, 403),
    },
)
async def all_sessions(_: Admin, service: ServiceDep) -> dict[str, Any]:
    sessions = await service.manager.refresh()
    return {
        "sessions": [{**session_json(s, service.config.server, with_metrics=True), "owner": s.owner} for s in sessions]
    }


async def _degradations(handler: ClaudeHandler) -> list[str]:
    """Why the service is not fully healthy (empty when it is)."""
    reasons = handler.problems()
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
