"""The session registry: limits, activity, cleanup, orphans, metrics and health.

The seed's ``ClaudeCodeSessionManager``. It owns each session's record and, through
the pool, the release of the worker a session holds.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from claude_agent_sdk import project_key_for_directory

from .cli_options import session_cwd
from .config import SessionConfig, SystemConfig
from .conversations import Turn, write_transcript
from .errors import SessionNotFoundError
from .metrics import SessionMetrics
from .pool import WorkerPool
from .store import SessionRecord, SessionStore
from .telemetry import DEFAULT_TENANT, Telemetry
from .worker import Worker

log = structlog.get_logger("claude_sessions.manager")

#: A session active within this many seconds counts as "recent" in the health report.
RECENT_SECONDS = 300.0


def session_key(public_id: str, owner: str | None = None) -> str:
    """The registry key: tenants' ids live in their own namespace ("/" is not allowed in ids)."""
    return public_id if owner is None else f"{owner}/{public_id}"


def public_id(key: str) -> str:
    """The id a caller knows for a registry key (the tenant's prefix removed)."""
    return key.rpartition("/")[2]


@dataclass(eq=False)
class Session:
    """One logical conversation: options, metrics, and the worker it holds, if any."""

    id: str  # the registry key, see session_key()
    config: SessionConfig
    metadata: dict[str, Any] = field(default_factory=dict)
    owner: str | None = None
    metrics: SessionMetrics = field(default_factory=SessionMetrics)
    worker: Worker | None = None
    #: The CLI's own conversation id, learned when a turn starts.
    claude_session_id: str | None = None
    #: The CLI has written that conversation's transcript (a reply was seen): from
    #: now on a missing transcript means the conversation was lost (an orphan).
    recorded: bool = False
    #: Unregistered; a running turn releases the worker when it ends.
    closed: bool = False
    #: Its transcript vanished: it answers an error instead of starting afresh.
    orphaned: bool = False
    turn_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def is_busy(self) -> bool:
        return self.turn_lock.locked()

    @property
    def public_id(self) -> str:
        return public_id(self.id)

    @property
    def tenant(self) -> str:
        return self.owner or DEFAULT_TENANT

    @property
    def state(self) -> str:
        if self.orphaned:
            return "orphaned"
        if self.is_busy:
            return "busy"
        return "active" if self.worker is not None else "idle"

    def record(self) -> SessionRecord:
        return SessionRecord(
            self.id,
            self.owner,
            self.config,
            self.metadata,
            self.metrics,
            self.claude_session_id,
            self.orphaned,
            self.recorded,
        )

    @classmethod
    def restore(cls, record: SessionRecord) -> Session:
        return cls(
            id=record.key,
            config=record.config,
            metadata=record.metadata,
            owner=record.owner,
            metrics=record.metrics,
            claude_session_id=record.claude_session_id,
            recorded=record.recorded,
            orphaned=record.orphaned,
        )

    def has_expired(self, timeout_seconds: float, now: float) -> bool:
        # Cheapest test first: maintenance runs this over every registered session.
        return self.metrics.last_activity < now - timeout_seconds and not self.is_busy


class ClaudeCodeSessionManager:
    """Registers sessions up to ``SM_MAX_SESSIONS`` and keeps the registry clean."""

    def __init__(
        self, config: SystemConfig, pool: WorkerPool, store: SessionStore, telemetry: Telemetry | None = None
    ) -> None:
        self.config = config
        self.pool = pool
        self.store = store
        self.telemetry = telemetry or Telemetry()
        self._sessions: dict[str, Session] = {r.key: Session.restore(r) for r in store.load()}
        self._closing = False
        self._projects: dict[str, Path] = {}

    # -- registry ------------------------------------------------------------

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._sessions

    def __len__(self) -> int:
        return len(self._sessions)

    def is_full(self) -> bool:
        return len(self._sessions) >= self.config.session_manager.MAX_SESSIONS

    def owned_by(self, owner: str | None) -> list[Session]:
        return [s for s in self._sessions.values() if s.owner == owner]

    def register_session(
        self,
        session_id: str,
        config: SessionConfig | None = None,
        metadata: dict[str, Any] | None = None,
        owner: str | None = None,
        owner_limit: int | None = None,
    ) -> bool:
        """Add a session; False at a limit or for a taken id. Synchronous, so atomic.

        ``owner_limit`` caps the sessions of ``owner`` below the global limit.
        """
        key = session_key(session_id, owner)
        if key in self._sessions or self.is_full():
            return False
        if owner_limit is not None and len(self.owned_by(owner)) >= owner_limit:
            return False
        session = Session(key, config or SessionConfig(), dict(metadata or {}), owner)
        self.store.save(session.record())
        self._sessions[key] = session
        return True

    def persist(self, session: Session) -> None:
        """Commit a live session's state (metrics, conversation id) to the store."""
        if not (session.closed or self._closing):
            self.store.save(session.record())

    def unregister_session(self, session_id: str) -> bool:
        """Remove a session; its worker goes back to the pool in the background."""
        session = self._sessions.get(session_id)
        return session is not None and self.drop(session)

    def drop(self, session: Session) -> bool:
        """Remove exactly ``session``, never a newer one registered under the same key since."""
        if self._sessions.get(session.id) is not session:
            return False
        del self._sessions[session.id]
        worker = self._forget(session)
        if worker is not None:
            self.pool.release_soon(worker)
        return True

    async def remove_session(self, session_id: str, purge: bool = False) -> Session:
        """Remove a session and wait until its worker is back in the pool or closed.

        ``purge`` also deletes its transcript now; otherwise the transcript is kept
        for ``SM_TRANSCRIPT_RETENTION_DAYS``.
        """
        session = self._sessions.pop(session_id, None)
        if session is None:
            raise SessionNotFoundError(f"session {public_id(session_id)!r} not found")
        worker = self._forget(session, purge)
        if worker is not None:
            await self.pool.release(worker)
        path = self.transcript_path(session)
        if purge and path is not None and not session.is_busy:
            # Only now: the CLI writes the transcript until it lets go of the conversation.
            path.unlink(missing_ok=True)
            self.store.unretire_transcript(path)
        return session

    def _forget(self, session: Session, purge: bool = False) -> Worker | None:
        """Drop a session from the store and detach its worker.

        Its transcript is kept for the retention period; a purge marks it due at once
        (the caller deletes it after the worker let go; maintenance catches the rest).
        """
        self.store.delete(session.id)
        path = self.transcript_path(session)
        if path is not None:
            self.store.retire_transcript(path, at=0.0 if purge else None)
        session.closed = True
        return self._detach(session)

    @staticmethod
    def _detach(session: Session) -> Worker | None:
        """Take a session's worker, unless a turn still uses it (the turn hands it back)."""
        if session.is_busy or session.worker is None:
            return None
        worker, session.worker = session.worker, None
        return worker

    def get(self, session_id: str) -> Session:
        try:
            return self._sessions[session_id]
        except KeyError:
            raise SessionNotFoundError(f"session {public_id(session_id)!r} not found") from None

    def sessions(self) -> list[Session]:
        return list(self._sessions.values())

    def update_session_activity(self, session_id: str) -> None:
        session = self.get(session_id)
        session.metrics.touch()
        self.persist(session)

    # -- cleanup --------------------------------------------------------------

    async def cleanup_inactive_sessions(self) -> list[str]:
        """Remove sessions idle longer than ``SM_TIMEOUT_MINUTES``; release their workers."""
        timeout = self.config.session_manager.TIMEOUT_MINUTES * 60
        now = time.time()
        expired = [s.id for s in self._sessions.values() if s.has_expired(timeout, now)]
        for session_id in expired:
            self.telemetry.sessions_expired.labels(self._sessions[session_id].tenant).inc()
        await self._remove_all(expired)
        if expired:
            log.info("inactive_sessions_removed", count=len(expired), session_ids=expired)
        return expired

    def transcript_path(self, session: Session) -> Path | None:
        """Where the CLI writes this session's conversation (None before the first prompt)."""
        if session.claude_session_id is None:
            return None
        return self.project_dir(session.config) / f"{session.claude_session_id}.jsonl"

    def project_dir(self, options: SessionConfig) -> Path:
        """The CLI's folder for a working directory; resolved once per options (scans ask often)."""
        project = self._projects.get(options.fingerprint)
        if project is None:
            key = project_key_for_directory(session_cwd(options, self.config))
            project = self._projects[options.fingerprint] = self.config.runtime.config_dir / "projects" / key
        return project

    def import_conversation(self, session: Session, history: Sequence[Turn]) -> None:
        """Give a new session a conversation of earlier turns, as a transcript its first CLI resumes."""
        conversation = str(uuid.uuid4())
        write_transcript(
            self.project_dir(session.config) / f"{conversation}.jsonl",
            conversation,
            session_cwd(session.config, self.config),
            history,
        )
        session.claude_session_id, session.recorded = conversation, True
        self.persist(session)

    def read_transcript(self, session: Session) -> list[dict[str, Any]]:
        """The conversation as the CLI recorded it: user and assistant entries, oldest first."""
        path = self.transcript_path(session)
        if path is None or not path.exists():
            return []
        messages = []
        with path.open(encoding="utf-8") as lines:
            for line in lines:
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line being written right now
                if entry.get("type") in ("user", "assistant") and not entry.get("isMeta") and not _is_command(entry):
                    messages.append(
                        {
                            "type": entry["type"],
                            "uuid": entry.get("uuid"),
                            "timestamp": entry.get("timestamp"),
                            "message": entry.get("message"),
                        }
                    )
        return messages

    def is_orphaned(self, session: Session) -> bool:
        """The conversation was recorded, but its transcript is gone."""
        path = self.transcript_path(session)
        return session.recorded and path is not None and not path.exists()

    def conversation_to_resume(self, session: Session) -> str | None:
        """The conversation a new worker must continue, if any.

        A conversation id seen only at a turn's start, whose transcript never got
        written (the process died first), names nothing to continue: it is dropped.
        """
        path = self.transcript_path(session)
        if path is None or session.recorded or path.exists():
            return session.claude_session_id
        log.info("conversation_never_recorded", session_id=session.id, claude_session_id=session.claude_session_id)
        session.claude_session_id = None
        return None

    def mark_orphaned(self, session: Session) -> Worker | None:
        """Record that a session lost its transcript; returns the worker to release."""
        session.orphaned = True
        self.persist(session)
        self.telemetry.sessions_orphaned.labels(session.tenant).inc()
        return self._detach(session)

    async def detect_orphaned_sessions(self) -> list[str]:
        """Find sessions whose transcript vanished, and end CLI processes nobody owns.

        An orphan keeps its record (state ``orphaned``, its messages answer
        :class:`SessionOrphanedError`, never a silent new conversation) but gives
        back its worker; it goes when deleted or expired.
        """
        found = [
            s for s in self._sessions.values() if s.recorded and not (s.orphaned or s.is_busy) and self.is_orphaned(s)
        ]
        workers = [w for w in (self.mark_orphaned(s) for s in found) if w is not None]
        await asyncio.gather(*(self.pool.release(w) for w in workers))
        orphans = [s.id for s in found]
        owned = {s.worker.id for s in self._sessions.values() if s.worker is not None}
        stray_pids = await self.pool.reap_unowned(owned)
        if orphans or stray_pids:
            log.warning("orphans_detected", count=len(orphans), session_ids=orphans, stray_cli_pids=stray_pids)
        return orphans

    async def _remove_all(self, session_ids: list[str]) -> None:
        results = await asyncio.gather(*(self.remove_session(i) for i in session_ids), return_exceptions=True)
        for result in results:
            if isinstance(result, Exception) and not isinstance(result, SessionNotFoundError):
                log.error("session_remove_failed", error=repr(result))

    async def release_idle_workers(self) -> list[str]:
        """Give back the workers of sessions idle ``SM_IDLE_RELEASE_MINUTES``; they stay registered."""
        threshold = self.config.session_manager.IDLE_RELEASE_MINUTES * 60
        now = time.time()
        idle = [s for s in self._sessions.values() if s.worker is not None and s.has_expired(threshold, now)]
        workers = [w for w in (self._detach(s) for s in idle) if w is not None]
        await asyncio.gather(*(self.pool.release(w) for w in workers))
        if idle:
            log.info("idle_workers_released", count=len(idle), session_ids=[s.id for s in idle])
        return [s.id for s in idle]

    def least_recently_used_worker(self) -> Worker | None:
        """Detach the worker of the least recently active session not mid-turn (None if all are)."""
        candidates = [s for s in self._sessions.values() if s.worker is not None and not s.is_busy]
        if not candidates:
            return None
        return self._detach(min(candidates, key=lambda s: s.metrics.last_activity))

    async def force_cleanup_all(self) -> int:
        """Emergency stop: delete every session (store included) and close every CLI process."""
        sessions = list(self._sessions.values())
        self._sessions.clear()
        for session in sessions:
            self._forget(session)
            if session.worker is not None:
                session.worker.reusable = False
        await self.pool.shutdown()
        log.warning("force_cleanup_all", sessions=len(sessions))
        return len(sessions)

    async def close(self) -> int:
        """Shut down: close every CLI process; sessions stay in the store for the next start."""
        count = len(self._sessions)
        self._closing = True
        self._sessions.clear()
        await self.pool.shutdown()
        self.store.close()
        return count

    # -- metrics and health ----------------------------------------------------

    def get_session_metrics(self, session_id: str) -> SessionMetrics | None:
        session = self._sessions.get(session_id)
        return session.metrics if session else None

    def get_all_session_metrics(self) -> dict[str, SessionMetrics]:
        return {s.id: s.metrics for s in self._sessions.values()}

    def get_session_health_report(self, tenant: str | None = None) -> dict[str, Any]:
        """The seed's health report, plus states, errors and the pool's figures.

        With ``tenant``, that tenant's view: its own sessions, and the workers of its
        workspace (``WORKSPACE_ROOT/<tenant>``) only.
        """
        now = time.time()
        sessions = self.sessions() if tenant is None else self.owned_by(tenant)
        metrics = [s.metrics for s in sessions]
        half_timeout = self.config.session_manager.TIMEOUT_MINUTES * 30
        pool = self.pool.status(None if tenant is None else self.config.runtime.workspace_root / tenant)
        return {
            "sessions": {
                "active": len(sessions),
                "recent": sum(1 for m in metrics if m.idle_seconds(now) <= RECENT_SECONDS),
                "old": sum(1 for m in metrics if m.idle_seconds(now) > half_timeout),
                "busy": sum(1 for s in sessions if s.is_busy),
                "with_worker": sum(1 for s in sessions if s.worker is not None),
                "max": self.config.session_manager.MAX_SESSIONS,
            },
            "pool": {
                "size": pool["pool_size"],
                "idle": pool["idle"],
                "healthy": pool["healthy_connections"],
                "max_size": pool["max_size"],
                "min_size": pool["min_size"],
            },
            "totals": {
                "messages": sum(m.message_count for m in metrics),
                "tokens": sum(m.total_tokens for m in metrics),
                "cost": round(sum(m.total_cost for m in metrics), 6),
            },
            "errors": {
                "api": sum(m.api_errors for m in metrics),
                "connection": sum(m.connection_errors for m in metrics),
                "timeouts": sum(m.timeouts for m in metrics),
            },
        }


def _is_command(entry: dict[str, Any]) -> bool:
    """The CLI's record of a command it ran itself (the ``/clear`` that readied a pooled worker)."""
    content = (entry.get("message") or {}).get("content")
    return isinstance(content, str) and content.startswith(("<command-name>", "<local-command-stdout>"))
