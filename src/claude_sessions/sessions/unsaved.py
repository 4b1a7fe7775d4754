"""Session records a database outage kept from being saved, held in memory and on this node's disk.

A turn that ends while PostgreSQL is away has answered its caller; its record (the count,
the cost, that the turn ended) waits for the database. Kept only in memory, a ``kill -9``
of the node would lose it, and the next node would roll back a turn its caller saw answered.
A restart on the same data directory writes it, fenced, before it serves.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import structlog

from claude_sessions.observability.metrics import SessionMetrics
from claude_sessions.sessions.session import Session
from claude_sessions.store.records import RunningTurn, SessionRecord
from claude_sessions.store.registry import Registry
from claude_sessions.store.spill import Spill

log = structlog.get_logger("claude_sessions.manager")


class UnsavedRecords:
    """The sessions whose last save found the database away, each with the record it could not write."""

    def __init__(self, folder: Path) -> None:
        self._spill = Spill(folder)
        self._sessions: set[Session] = set()

    def __iter__(self) -> Iterator[Session]:
        return iter(list(self._sessions))

    def add(self, session: Session, record: SessionRecord) -> None:
        self._sessions.add(session)
        self._spill.keep(_file_name(session.id), [_state(record)])

    def discard(self, session: Session) -> None:
        """The session's record was saved: what waited for the database goes (nothing to do on most saves)."""
        if session in self._sessions:
            self._sessions.discard(session)
            self._spill.keep(_file_name(session.id), [])

    async def write_left(self, registry: Registry) -> int:
        """Save what a previous run of this node could not; how many were saved.

        Fenced as every save is: a session another node took since keeps that node's record.
        """
        saved = 0
        for name, items in self._spill.left().items():
            try:
                state = items[0]
                record = await registry.get(state["key"])
                if record is not None and await registry.save(_with_state(record, state)):
                    saved += 1
                    log.info("session_spill_saved", session_id=record.key)
            except (KeyError, TypeError, ValueError, IndexError):
                log.error("session_spill_unreadable", file=name)
            self._spill.keep(name, [])
        return saved


def _file_name(key: str) -> str:
    """A session key is partly a tenant's text: never a path."""
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def _state(record: SessionRecord) -> dict[str, Any]:
    """What :meth:`Registry.save` writes of a record, and the fence it writes under."""
    return {
        "key": record.key,
        "fence": record.fence,
        "metadata": record.metadata,
        "metrics": dataclasses.asdict(record.metrics),
        "claude_session_id": record.claude_session_id,
        "orphaned": record.orphaned,
        "recorded": record.recorded,
        "busy": record.busy,
        "title": record.title,
        "turn": dataclasses.asdict(record.turn) if record.turn else None,
    }


def _with_state(record: SessionRecord, state: dict[str, Any]) -> SessionRecord:
    return dataclasses.replace(
        record,
        fence=int(state["fence"]),
        metadata=dict(state["metadata"]),
        metrics=SessionMetrics(**state["metrics"]),
        claude_session_id=state["claude_session_id"],
        orphaned=bool(state["orphaned"]),
        recorded=bool(state["recorded"]),
        busy=bool(state["busy"]),
        title=state["title"],
        turn=RunningTurn(**state["turn"]) if state.get("turn") else None,
    )
