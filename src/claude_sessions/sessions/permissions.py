"""A session's asked tool calls: each one a request its user allows or denies while the turn waits.

:class:`Approvals` is the one owner of a session's requests on the node running it: the pending
ones (each with its timer), the ids already answered (for 409 and 410), and the grants "for this
session". A turn opens it (its events then join the turn's stream) and closes it; whatever is
still pending then is denied. Nothing of it is given to the CLI: a pooled worker keeps no answer.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import structlog
from claude_agent_sdk import (
    PermissionResult,
    PermissionResultAllow,
    PermissionResultDeny,
    ToolPermissionContext,
)

from claude_sessions.errors import PermissionDecidedError, PermissionExpiredError, PermissionNotFoundError
from claude_sessions.observability.telemetry import Telemetry
from claude_sessions.sessions.grants import Grants

log = structlog.get_logger("claude_sessions.permissions")

Behavior = Literal["allow", "deny"]
Scope = Literal["once", "session"]
DecidedBy = Literal["user", "timeout", "interrupt"]

#: Inputs naming a file or folder a tool works on: it must lie inside the session's workspace to be asked.
FILE_INPUTS = ("file_path", "notebook_path", "path")
#: A request expires this long before its turn's deadline at the latest: the model still reads the denial.
DEADLINE_MARGIN = 2.0
#: Answered ids remembered per session (for 409 and 410 rather than 404).
REMEMBERED = 256


@dataclass(frozen=True)
class PermissionRequest:
    """A tool call waiting for its user's answer (``decide_permission``); ``session_id`` is the public id."""

    session_id: str
    request_id: str
    tool: str
    input: dict[str, Any]
    title: str
    display_name: str | None
    description: str | None
    suggestions: list[dict[str, Any]]
    expires_at: str
    #: What ``scope: "session"`` would let run unasked, in words.
    session_grant: str = ""

    def as_json(self) -> dict[str, Any]:
        return {"type": "permission_request", **asdict(self)}


@dataclass(frozen=True)
class PermissionResolved:
    """How a request ended: ``by`` the user, the timeout, or an interrupt (the turn's end included)."""

    session_id: str
    request_id: str
    tool: str
    behavior: Behavior
    by: DecidedBy
    scope: Scope

    def as_json(self) -> dict[str, Any]:
        return {"type": "permission_resolved", **asdict(self)}


PermissionEvent = PermissionRequest | PermissionResolved


@dataclass(eq=False)
class _Pending:
    request: PermissionRequest
    answer: asyncio.Future[PermissionResult]
    asked_at: float = field(default_factory=time.monotonic)
    timer: asyncio.TimerHandle | None = None


def _title(tool: str, context: ToolPermissionContext) -> str:
    """The prompt's sentence: the CLI's own when it gives one, else the tool and what it is about."""
    if context.title:
        return context.title
    about = context.description or ""
    return f"{context.display_name or tool}: {about}" if about else f"Claude wants to use {tool}"


def _inside(path: object, cwd: Path) -> bool:
    if not isinstance(path, str) or "\x00" in path or path.startswith("~"):  # the CLI expands ~ to a home
        return False
    return (cwd / path).resolve().is_relative_to(cwd)


class Approvals:
    """One session's asked calls, answered by its user (HTTP, the library) or by the clock."""

    def __init__(
        self, session_id: str, tenant: str, ask_tools: frozenset[str], cwd: Path, timeout: float, telemetry: Telemetry
    ) -> None:
        self.session_id, self.tenant, self.ask_tools = session_id, tenant, ask_tools
        self.cwd, self.timeout, self.telemetry = cwd.resolve(), timeout, telemetry
        self.grants = Grants()
        self.pending: dict[str, _Pending] = {}
        self._answered: OrderedDict[str, Literal["decided", "expired"]] = OrderedDict()
        self._events: asyncio.Queue[Any] | None = None
        self._can_ask = False
        self._deadline = 0.0

    # -- the turn ---------------------------------------------------------------------

    def open_turn(self, events: asyncio.Queue[Any], can_ask: bool, deadline: float) -> None:
        """A turn starts: its requests and their ends go to its ``events``; ``can_ask``: someone
        can answer (not so on the OpenAI endpoint, whose calls are denied at once); ``deadline``: the
        turn's, on the loop's clock (a request expires before it, so the turn ends as a turn)."""
        self._events, self._can_ask, self._deadline = events, can_ask, deadline

    def close_turn(self) -> None:
        """The turn ended: whatever still waits is denied, and no later question reaches anyone."""
        self.interrupt()
        self._events = None

    def interrupt(self) -> None:
        """Deny every pending request, and ask nothing more this turn (it is being stopped)."""
        self._can_ask = False
        for request_id in list(self.pending):
            self._resolve(request_id, "deny", "interrupt", "once", "The turn was interrupted: the call was denied.")

    def requests(self) -> list[PermissionRequest]:
        return [pending.request for pending in self.pending.values()]

    # -- the CLI's side ---------------------------------------------------------------

    async def ask(self, tool: str, tool_input: dict[str, Any], context: ToolPermissionContext) -> PermissionResult:
        """The gate's answer to one call the CLI's own rules left open."""
        if tool not in self.ask_tools:  # neither allowed nor asked: refused, as without approval
            return PermissionResultDeny(message=f"Permission to use {tool} has not been granted.")
        if not self._in_workspace(tool_input):
            return PermissionResultDeny(message=f"{tool} may only use files inside the session's workspace.")
        if self.grants.covers(tool, tool_input):
            return PermissionResultAllow()
        if self._events is None:
            return PermissionResultDeny(message="No turn is running: the call was denied.")
        if not self._can_ask:
            return PermissionResultDeny(message=f"{tool} needs its user's approval, which cannot be asked here.")
        pending = self._open(tool, tool_input, context)
        try:
            answer = await pending.answer
        except asyncio.CancelledError:  # the CLI withdrew the question (its turn was interrupted)
            self._resolve(pending.request.request_id, "deny", "interrupt", "once", "")
            raise
        if isinstance(answer, PermissionResultAllow) and not self._in_workspace(tool_input):
            return PermissionResultDeny(message=f"{tool}: the file moved out of the session's workspace.")
        return answer

    def _in_workspace(self, tool_input: dict[str, Any]) -> bool:
        """Whether every file the call names resolves inside the workspace (a symlink swapped in since: no)."""
        return all(_inside(tool_input[name], self.cwd) for name in FILE_INPUTS if name in tool_input)

    def _open(self, tool: str, tool_input: dict[str, Any], context: ToolPermissionContext) -> _Pending:
        loop = asyncio.get_running_loop()
        delay = max(0.0, min(self.timeout, self._deadline - DEADLINE_MARGIN - loop.time()))
        suggestions = [s.to_dict() for s in context.suggestions]
        request = PermissionRequest(
            session_id=self.session_id,
            request_id="perm_" + secrets.token_hex(12),
            tool=tool,
            input=tool_input,
            title=_title(tool, context),
            display_name=context.display_name,
            description=context.description,
            suggestions=suggestions,
            expires_at=datetime.fromtimestamp(time.time() + delay, UTC).isoformat(),
            session_grant=Grants.describe(tool, tool_input, suggestions),
        )
        pending = _Pending(request, loop.create_future())
        pending.timer = loop.call_later(delay, self._expire, request.request_id)
        self.pending[request.request_id] = pending
        if self._events is not None:
            self._events.put_nowait(request)
        return pending

    def _expire(self, request_id: str) -> None:
        message = "No answer in time: the call was denied."
        self._resolve(request_id, "deny", "timeout", "once", message)

    # -- the user's side --------------------------------------------------------------

    def decide(self, request_id: str, behavior: Behavior, message: str | None = None, scope: Scope = "once") -> None:
        """Answer a pending request; raises if it is unknown, answered or expired."""
        if request_id in self.pending:
            self._resolve(request_id, behavior, "user", scope, message or "The user denied this call.")
            return
        answered = self._answered.get(request_id)
        if answered == "expired":
            raise PermissionExpiredError(f"permission request {request_id!r} expired and was denied")
        if answered == "decided":
            raise PermissionDecidedError(f"permission request {request_id!r} was already answered")
        raise PermissionNotFoundError(f"permission request {request_id!r} not found")

    def _resolve(self, request_id: str, behavior: Behavior, by: DecidedBy, scope: Scope, message: str) -> None:
        pending = self.pending.pop(request_id, None)
        if pending is None:
            return
        if pending.timer is not None:
            pending.timer.cancel()
        request = pending.request
        scope = scope if behavior == "allow" else "once"
        if not pending.answer.done():  # first: the CLI waits for it, whatever else fails
            result = PermissionResultAllow() if behavior == "allow" else PermissionResultDeny(message=message)
            pending.answer.set_result(result)
        if scope == "session":
            self.grants.add(request.tool, request.input, request.suggestions)
        self._answered[request_id] = "expired" if by == "timeout" else "decided"
        while len(self._answered) > REMEMBERED:
            self._answered.popitem(last=False)
        if self._events is not None:
            self._events.put_nowait(PermissionResolved(self.session_id, request_id, request.tool, behavior, by, scope))
        waited = time.monotonic() - pending.asked_at
        self.telemetry.permission_decisions.labels(self.tenant, request.tool, behavior, by).inc()
        self.telemetry.permission_wait.labels(self.tenant).observe(waited)
        log.info(
            "permission_decided",
            tenant=self.tenant,
            session_id=self.session_id,
            tool=request.tool,
            behavior=behavior,
            by=by,
            waited_ms=round(waited * 1000, 1),
        )
