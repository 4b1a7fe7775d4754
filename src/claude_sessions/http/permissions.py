"""Tool approval over HTTP: a session's pending requests, and the user's answer to one.

The requests also arrive on the turn's stream (``permission_request``); these routes let a client
that lost its stream, or sent the turn with ``?stream=false``, find them and answer from another
connection. A session held by another node is answered there (the app forwards).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, ConfigDict, Field, JsonValue

from claude_sessions.http.common import Caller, ServiceDep, error_responses, is_forwarded
from claude_sessions.http.sessions import SessionIdPath

router = APIRouter(tags=["permissions"])

#: Any id is looked up (an unknown one answers 404, as another tenant's does).
RequestIdPath = Annotated[str, Path(max_length=200, description="the request's id")]


class PermissionRequestObject(BaseModel):
    """A tool call waiting for its user's answer, as the ``permission_request`` event has it."""

    type: Literal["permission_request"]
    session_id: str
    request_id: str
    tool: str
    input: dict[str, JsonValue] = Field(description="the call's input: the command, or the file and its new text")
    title: str = Field(description="one line saying what the call would do")
    display_name: str | None
    description: str | None
    suggestions: list[dict[str, JsonValue]] = Field(description="what Claude Code itself would offer to allow")
    expires_at: str = Field(json_schema_extra={"format": "date-time"}, description="denied then if unanswered")
    session_grant: str = Field(description='what an allow with scope "session" would let run unasked, in words')


class PendingRequests(BaseModel):
    requests: list[PermissionRequestObject]


class DecisionBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    behavior: Literal["allow", "deny"]
    message: str | None = Field(None, max_length=10_000, description="a deny's reason: the model reads it")
    scope: Literal["once", "session"] = Field(
        "once",
        description="session: the tool (for Bash, the command's prefix) runs unasked for the rest of the session",
    )


class Decision(BaseModel):
    request_id: str
    behavior: Literal["allow", "deny"]
    scope: Literal["once", "session"]


@router.get(
    "/v1/sessions/{session_id}/permissions",
    response_model=None,
    responses={
        200: {"model": PendingRequests, "description": "The session's requests waiting for an answer."},
        **error_responses(401, 404, 422),
    },
)
async def pending_requests(
    request: Request, session_id: SessionIdPath, principal: Caller, service: ServiceDep
) -> dict[str, Any]:
    session = await service.own_session(request, principal, session_id)
    pending = await service.handler.permission_requests(session, forwarded=is_forwarded(request))
    return {"requests": [item.as_json() for item in pending]}


@router.post(
    "/v1/sessions/{session_id}/permissions/{request_id}",
    response_model=None,
    responses={
        200: {"model": Decision, "description": "The answer was given; the turn goes on."},
        **error_responses(401, 404, 409, 410, 422),
    },
)
async def decide(
    request: Request,
    session_id: SessionIdPath,
    request_id: RequestIdPath,
    body: DecisionBody,
    principal: Caller,
    service: ServiceDep,
) -> dict[str, Any]:
    session = await service.own_session(request, principal, session_id, running_here=True)
    await service.handler.decide_permission(
        session, request_id, body.behavior, body.message, body.scope, forwarded=is_forwarded(request)
    )
    scope = body.scope if body.behavior == "allow" else "once"
    return {"request_id": request_id, "behavior": body.behavior, "scope": scope}
