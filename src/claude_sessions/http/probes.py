"""Probes for a kubelet or a load balancer: no key, no tenant data, nothing but the node's own state.

``/livez`` says the process serves (a failing one is restarted); ``/readyz`` says it should
get new requests: not from its first SIGTERM on (it drains), not while its registry is
unreachable, not before the pool's first spares are up.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from claude_sessions.http.common import ServiceDep

router = APIRouter(tags=["probes"])

#: Answered while the server drains, when every other path is refused.
PATHS = frozenset({"/livez", "/readyz"})

Reason = Literal["draining", "registry_unavailable", "pool_warming"]


class Alive(BaseModel):
    status: Literal["ok"]


class Ready(BaseModel):
    status: Literal["ready"]


class NotReady(BaseModel):
    status: Literal["not_ready"]
    reasons: list[Reason]


@router.get("/livez", response_model=Alive)
async def livez() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=Ready,
    responses={503: {"model": NotReady, "description": "Not ready: the reasons, among those listed."}},
)
async def readyz(service: ServiceDep) -> JSONResponse:
    reasons = service.lifecycle.not_ready()
    if reasons:
        return JSONResponse({"status": "not_ready", "reasons": reasons}, status_code=503)
    return JSONResponse({"status": "ready"})
