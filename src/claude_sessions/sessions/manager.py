"""The seed's ``ClaudeCodeSessionManager``: its names over :class:`SessionView`.

The seed's calls that answer synchronously (``register_session``, ``unregister_session``,
``update_session_activity``) run on the SQLite registry, whose calls never wait; the rest are
the view's own methods.
"""

from __future__ import annotations

from typing import Any

import structlog

from claude_sessions.config import SessionConfig
from claude_sessions.observability.metrics import SessionMetrics
from claude_sessions.sessions.session import Session, session_key
from claude_sessions.sessions.view import SessionView
from claude_sessions.store.registry import run_now

log = structlog.get_logger("claude_sessions.manager")


class ClaudeCodeSessionManager(SessionView):
    """The seed's session manager."""

    def load_now(self) -> None:
        """Fill the view at construction when the registry answers synchronously (SQLite), so the
        seed's synchronous calls see a restarted handler's sessions before its first await."""
        if self.registry.synchronous:
            run_now(self.registry, self.refresh())

    def register_session(
        self,
        session_id: str,
        config: SessionConfig | None = None,
        metadata: dict[str, Any] | None = None,
        owner: str | None = None,
        owner_limit: int | None = None,
    ) -> bool:
        """The seed's call: add a session; False at a limit or for a taken id (SQLite registry)."""
        session = Session(session_key(session_id, owner), config or SessionConfig(), dict(metadata or {}), owner)
        return run_now(self.registry, self._create(session, owner_limit, hold=False)) == "created"

    def persist(self, session: Session) -> None:
        """The synchronous ``save`` (SQLite registry)."""
        run_now(self.registry, self.save(session))

    def unregister_session(self, session_id: str) -> bool:
        """Remove a session; its worker goes back to the pool in the background (SQLite registry)."""
        session = self._sessions.get(session_id)
        return session is not None and run_now(self.registry, self.drop(session))

    def update_session_activity(self, session_id: str) -> None:
        session = self.get(session_id)
        session.metrics.touch()
        self.persist(session)

    def get_session_metrics(self, session_id: str) -> SessionMetrics | None:
        session = self._sessions.get(session_id)
        return session.metrics if session else None

    def get_all_session_metrics(self) -> dict[str, SessionMetrics]:
        return {s.id: s.metrics for s in self._sessions.values()}

    async def force_cleanup_all(self) -> int:
        """Emergency stop: delete every session (registry included) and close every CLI process."""
        await self.refresh()
        sessions = list(self._sessions.values())
        self._sessions.clear()
        for session in sessions:
            await self._forget(session)
            if session.worker is not None:
                session.worker.reusable = False
        await self.pool.shutdown()
        log.warning("force_cleanup_all", sessions=len(sessions))
        return len(sessions)
