"""What a running turn waits on besides its CLI: permission questions for its user, calls for its client.

Both are routed to the turn while it runs and released when it stops: a call left waiting would
hold the CLI back from ever ending the turn.
"""

from __future__ import annotations

import asyncio

import structlog

from claude_sessions.config import SystemConfig
from claude_sessions.observability.telemetry import Telemetry
from claude_sessions.sessions.client_calls import ClientCalls
from claude_sessions.sessions.permissions import Approvals
from claude_sessions.sessions.replies import TurnEvent
from claude_sessions.sessions.session import Session
from claude_sessions.sessions.turn_options import TurnOptions
from claude_sessions.workers.worker import Worker
from claude_sessions.workers.workspaces import session_cwd

log = structlog.get_logger("claude_sessions.handler")

#: How long an interrupted turn may take to wind down before its worker is discarded.
INTERRUPT_GRACE_SECONDS = 5.0


def open_events(
    session: Session,
    worker: Worker,
    options: TurnOptions,
    deadline: float,
    config: SystemConfig,
    telemetry: Telemetry,
) -> asyncio.Queue[TurnEvent] | None:
    """Route the worker's permission questions (``ask_tools``) and its client's calls (``functions``)
    to this turn; None when there can be neither."""
    if worker.gate is None and not options.functions:
        return None
    events: asyncio.Queue[TurnEvent] = asyncio.Queue()
    if options.functions:
        session.client_calls = ClientCalls(session.public_id, events)
        worker.client_tools.open(session.client_calls.ask)
    if worker.gate is None:
        return events
    if session.approvals is None:
        session.approvals = Approvals(
            session.public_id,
            session.tenant,
            frozenset(session.config.ask_tools),
            session_cwd(session.config, config),
            config.server.PERMISSION_TIMEOUT_SECONDS,
            telemetry,
        )
    session.approvals.open_turn(events, options.can_ask, deadline)
    worker.gate.open(session.approvals.ask)
    return events


def close_events(session: Session, worker: Worker) -> None:
    worker.client_tools.close()
    if worker.gate is not None:
        worker.gate.close()
    if session.approvals is not None:
        session.approvals.close_turn()
    if session.client_calls is not None:
        session.client_calls.close()
        session.client_calls = None


async def stop_turn(session: Session, worker: Worker) -> None:
    """Interrupt a session's running turn: first end what waits for its user or client, so the CLI can stop."""
    release_waiting(session)
    try:
        async with asyncio.timeout(INTERRUPT_GRACE_SECONDS):
            await worker.client.interrupt()
    except Exception as error:
        log.info("interrupt_failed", worker=worker.id, error=repr(error))


def release_waiting(session: Session) -> None:
    """Deny the session's pending permission requests and fail its client's waiting calls (a turn stops)."""
    if session.approvals is not None:
        session.approvals.interrupt()
    if session.client_calls is not None:
        session.client_calls.close("The turn was interrupted before the client returned this call's result.")
