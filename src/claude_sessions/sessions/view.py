"""This node's view of the sessions: their limits, saves, cleanup and orphans.

The :class:`Registry` is the truth (shared by
every node in a cluster); this class keeps this node's view of it, with what only
this node knows: the worker a session holds here and its turn lock. Async callers
read through (``fetch``, ``listing``, ``refresh``); the seed's synchronous methods
answer from the view and write through on the SQLite registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import uuid
from collections.abc import Sequence
from typing import Any

import structlog

from claude_sessions.config import SessionConfig, SystemConfig
from claude_sessions.errors import (
    DatabaseUnavailableError,
    LeaseLostError,
    SessionExistsError,
    SessionLimitError,
    SessionNotFoundError,
)
from claude_sessions.observability.telemetry import Telemetry
from claude_sessions.sessions.conversations import Conversations
from claude_sessions.sessions.health import health_report
from claude_sessions.sessions.session import Session, public_id, session_key, tenant_of_key, title_of
from claude_sessions.sessions.unsaved import UnsavedRecords
from claude_sessions.store.archive import TranscriptArchive
from claude_sessions.store.history import Turn, transcript_entries
from claude_sessions.store.records import CreateOutcome, Origin, SessionRecord
from claude_sessions.store.registry import Registry
from claude_sessions.workers.demand import release_order
from claude_sessions.workers.pool import WorkerPool
from claude_sessions.workers.worker import Worker
from claude_sessions.workers.workspaces import session_cwd

log = structlog.get_logger("claude_sessions.manager")


class SessionView:
    """This node's view of the deployment's sessions: registers them up to ``SM_MAX_SESSIONS``,
    saves them fenced by their leases, and removes the inactive and the orphaned."""

    def __init__(
        self,
        config: SystemConfig,
        pool: WorkerPool,
        registry: Registry,
        archive: TranscriptArchive,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.config = config
        self.pool = pool
        self.registry = registry
        self.archive = archive
        self.telemetry = telemetry or Telemetry()
        self._sessions: dict[str, Session] = {}
        self._closing = False
        self.conversations = Conversations(config, archive)
        #: Sessions whose last write found the database away: written again when it is back.
        self.unsaved = UnsavedRecords(config.runtime.DATA_DIR.resolve() / "spill" / "sessions")

    # -- the view --------------------------------------------------------------------

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._sessions

    def __len__(self) -> int:
        return len(self._sessions)

    def _adopt(self, record: SessionRecord) -> Session:
        """This node's session for a record, updated from it unless a turn runs here (the turn writes)."""
        session = self._sessions.get(record.key)
        if session is None:
            session = self._sessions[record.key] = Session.restore(record)
        elif not session.is_busy:
            if session.worker is not None and record.fence != session.fence:
                self._lost(session)
            session.take(record)
        return session

    def _vanish(self, key: str) -> None:
        """A session deleted by another node (or by maintenance): drop it here and free its worker."""
        session = self._sessions.pop(key, None)
        if session is not None:
            session.closed = True
            worker = session.unbind()
            if worker is not None:
                self.give_back_soon(worker)

    def _lost(self, session: Session) -> None:
        """Another node took the conversation over: this node's CLI for it must not run again."""
        worker = session.unbind()
        if worker is not None:
            log.warning("session_lease_lost", session_id=session.id, worker=worker.id)
            worker.reusable = False
            self.give_back_soon(worker)

    async def give_back(self, worker: Worker, *, reuse: bool = True, graceful: bool = True) -> None:
        """Return a session's worker to the pool: reset and kept (``reuse``), or closed. The one
        way a worker a session held goes back; unbind it first (``Session.unbind``). What it writes from
        now on (its reset) is no session's: no longer fenced by the one it served."""
        self.archive.fence(worker.grant.token, None)
        if reuse:
            await self.pool.release(worker)
        else:
            await self.pool.discard(worker, graceful)

    def give_back_soon(self, worker: Worker) -> None:
        """``give_back`` from synchronous code, in the background (the pool's shutdown awaits it)."""
        self.archive.fence(worker.grant.token, None)
        self.pool.release_soon(worker)

    async def fetch(self, key: str) -> Session:
        """A session as the registry has it now, from any node.

        Read once per request: callers that already hold it (the API checked its owner)
        pass the :class:`Session` on instead of reading it again.
        """
        record = await self.registry.get(key)
        if record is None:
            self._vanish(key)
            raise SessionNotFoundError(f"session {public_id(key)!r} not found")
        return self._adopt(record)

    async def listing(self, owner: str | None) -> list[Session]:
        """``owner``'s sessions, across the deployment (None: the operator's own)."""
        return [self._adopt(r) for r in await self.registry.sessions(owner)]

    async def refresh(self) -> list[Session]:
        """Every session of the deployment; sessions gone from the registry leave the view."""
        records = await self.registry.sessions(everyone=True)
        for key in self._sessions.keys() - {r.key for r in records}:
            if not self._sessions[key].is_busy:
                self._vanish(key)
        return [self._adopt(r) for r in records]

    def is_full(self) -> bool:
        return len(self._sessions) >= self.config.session_manager.MAX_SESSIONS

    def owned_by(self, owner: str | None) -> list[Session]:
        return [s for s in self._sessions.values() if s.owner == owner]

    def get(self, session_id: str) -> Session:
        """This node's view of a session (``fetch`` reads the registry)."""
        try:
            return self._sessions[session_id]
        except KeyError:
            raise SessionNotFoundError(f"session {public_id(session_id)!r} not found") from None

    def running(self, key: str) -> Session | None:
        """The session, if a turn of it runs on this node now."""
        session = self._sessions.get(key)
        return session if session is not None and session.is_busy and not session.closed else None

    def sessions(self) -> list[Session]:
        return list(self._sessions.values())

    # -- registering -------------------------------------------------------------------

    async def create(
        self,
        session_id: str,
        config: SessionConfig | None = None,
        metadata: dict[str, Any] | None = None,
        owner: str | None = None,
        owner_limit: int | None = None,
        hold: bool = True,
        origin: Origin = "sessions",
        user_limit: int | None = None,
    ) -> Session:
        """Register a session within the limits, exactly across every node.

        Raises :class:`SessionExistsError` or :class:`SessionLimitError`. ``hold``: this
        node takes its lease at once (it is about to bind a CLI). ``user_limit`` caps the
        sessions of its end user (``config.user``).
        """
        key = session_key(session_id, owner)
        session = Session(key, config or SessionConfig(), dict(metadata or {}), owner, origin=origin)
        outcome = await self._create(session, owner_limit, hold, user_limit)
        if outcome == "exists":
            raise SessionExistsError(f"session {session_id!r} already exists")
        if outcome != "created":
            limit = {"global": self.config.session_manager.MAX_SESSIONS, "tenant": owner_limit, "user": user_limit}
            message = f"{'session' if outcome == 'global' else outcome + ' session'} limit reached ({limit[outcome]})"
            self.telemetry.sessions_rejected.labels(session.tenant, outcome).inc()
            raise SessionLimitError(message)
        return session

    async def _create(
        self, session: Session, owner_limit: int | None, hold: bool, user_limit: int | None = None
    ) -> CreateOutcome:
        limit = self.config.session_manager.MAX_SESSIONS
        outcome = await self.registry.create(session.record(), limit, owner_limit, hold, user_limit)
        if outcome == "created":
            session.fence, session.holder = (1, self.registry.node_id) if hold else (0, None)
            self._sessions[session.id] = session
        return outcome

    async def save(self, session: Session, *, ending: bool = False) -> None:
        """Commit a live session's state (metrics, conversation id), fenced by its lease.

        ``ending``: the turn is over (its lock is still held while this runs).

        Raises :class:`LeaseLostError` when another node took the session over; a
        database away keeps the state for the next heartbeat instead of failing the turn.
        """
        if session.closed or self._closing:
            return
        record = session.record()
        if ending:
            record = dataclasses.replace(record, busy=False)
        try:
            saved = await self.registry.save(record)
        except DatabaseUnavailableError:
            self.unsaved.add(session, record)
            log.warning("session_save_deferred", session_id=session.id)
            return
        self.unsaved.discard(session)
        if saved:
            return
        if await self.registry.get(session.id) is None:
            session.closed = True  # deleted meanwhile, by another node or maintenance
            self._sessions.pop(session.id, None)
            return
        raise LeaseLostError(f"session {session.public_id!r} moved to another node")

    async def save_unsaved(self) -> None:
        for session in self.unsaved:
            if session.closed:
                self.unsaved.discard(session)
                continue
            try:
                await self.save(session)
            except LeaseLostError:
                self.unsaved.discard(session)
                self._lost(session)

    async def drop(self, session: Session) -> bool:
        """Remove exactly ``session``, never a newer one registered under the same key since."""
        if self._sessions.get(session.id) is not session:
            return False
        del self._sessions[session.id]
        worker = await self._forget(session)
        if worker is not None:
            self.give_back_soon(worker)
        return True

    async def remove_session(self, session_id: str, purge: bool = False) -> Session:
        """Remove a session and wait until its worker is back in the pool or closed.

        ``purge`` also deletes its transcript now; otherwise the transcript is kept
        for ``SM_TRANSCRIPT_RETENTION_DAYS``.
        """
        session = self._sessions.pop(session_id, None)
        if session is None:
            record = await self.registry.get(session_id)
            if record is None:
                raise SessionNotFoundError(f"session {public_id(session_id)!r} not found")
            session = Session.restore(record)
        worker = await self._forget(session, purge)
        if worker is not None:
            await self.give_back(worker)
        conversation = session.conversation(self.conversations.project_of(session.config))
        if purge and conversation is not None and not session.is_busy:
            # Only now: the CLI writes the transcript until it lets go of the conversation.
            name = self.archive.name(conversation)
            await self.archive.delete(name)
            await self.registry.retired.remove(name)
        return session

    async def _forget(self, session: Session, purge: bool = False) -> Worker | None:
        """Drop a session from the registry and unbind its worker.

        Its transcript is kept for the retention period; a purge marks it due at once
        (the caller deletes it after the worker let go; maintenance catches the rest).
        """
        await self.registry.delete(session.id)
        conversation = session.conversation(self.conversations.project_of(session.config))
        if conversation is not None:
            await self.registry.retired.add(self.archive.name(conversation), at=0.0 if purge else None)
        session.closed = True
        return session.unbind()

    async def let_go_dead(self, worker: Worker) -> None:
        """A session's CLI ended between turns: the session lets go of it (its next turn starts
        another); one lent out, or mid-turn, is its holder's to deal with."""
        for session in self._sessions.values():
            if session.worker is worker and not session.is_busy and session.unbind() is worker:
                await self.give_back(worker, reuse=False, graceful=False)

    async def let_go(self, session: Session) -> Worker | None:
        """Take a session's idle worker and give up its lease, so any node may take it next."""
        worker = session.unbind()
        if worker is not None and not session.closed:
            session.holder = None
            # Unreachable: the lease lapses with this node's heartbeat, or the next turn here takes it back.
            with contextlib.suppress(DatabaseUnavailableError):
                await self.registry.release(session.id, session.fence)
        return worker

    # -- conversations -----------------------------------------------------------------

    async def import_conversation(self, session: Session, history: Sequence[Turn]) -> None:
        """Give a new session a conversation of earlier turns, as a transcript its first CLI resumes."""
        conversation = str(uuid.uuid4())
        entries = transcript_entries(conversation, session_cwd(session.config, self.config), history)
        await self.archive.write((self.conversations.project_of(session.config), conversation), entries)
        session.claude_session_id, session.recorded = conversation, True
        session.title = next((title_of(content) for role, content in history if role == "user"), None)
        await self.save(session)

    async def mark_orphaned(self, session: Session) -> Worker | None:
        """Record that a session lost its transcript; returns the worker to release."""
        session.orphaned = True
        await self.registry.mark_orphaned(session.id)
        self.telemetry.sessions_orphaned.labels(session.tenant).inc()
        return session.unbind()

    # -- cleanup (the cluster's: run by one node at a time) ------------------------------

    async def cleanup_inactive_sessions(self) -> list[str]:
        """Remove sessions idle longer than ``SM_TIMEOUT_MINUTES``; release their workers."""
        timeout = self.config.session_manager.TIMEOUT_MINUTES * 60
        expired = [
            key
            for key in await self.registry.expired(time.time() - timeout)
            if not (key in self._sessions and self._sessions[key].is_busy)
        ]
        for key in expired:
            self.telemetry.sessions_expired.labels(tenant_of_key(key)).inc()
        await self._remove_all(expired)
        if expired:
            log.info("inactive_sessions_removed", count=len(expired), session_ids=expired)
        return expired

    async def detect_orphaned_sessions(self) -> list[str]:
        """Find sessions whose transcript vanished, and end CLI processes nobody owns.

        An orphan keeps its record (state ``orphaned``, its messages answer
        :class:`SessionOrphanedError`, never a silent new conversation) but gives
        back its worker; it goes when deleted or expired.
        """
        candidates = {
            (self.conversations.project_of_cwd(cwd), claude_id): key
            for key, cwd, claude_id in await self.registry.conversations()
        }
        found: list[Session] = []
        for conversation in await self.archive.missing(candidates):
            with contextlib.suppress(SessionNotFoundError):  # deleted meanwhile
                found.append(await self.fetch(candidates[conversation]))
        workers = [w for w in [await self.mark_orphaned(s) for s in found if not s.is_busy] if w is not None]
        await asyncio.gather(*(self.give_back(w) for w in workers))
        orphans = [s.id for s in found]
        stray_pids = await self.reap_unowned()
        if orphans or stray_pids:
            log.warning("orphans_detected", count=len(orphans), session_ids=orphans, stray_cli_pids=stray_pids)
        return orphans

    async def reap_unowned(self) -> list[int]:
        """End this node's CLI processes that no session, spare or lent client owns."""
        owned = {s.worker.id for s in self._sessions.values() if s.worker is not None}
        return await self.pool.reap_unowned(owned)

    async def _remove_all(self, session_ids: list[str]) -> None:
        results = await asyncio.gather(*(self.remove_session(i) for i in session_ids), return_exceptions=True)
        for result in results:
            if isinstance(result, Exception) and not isinstance(result, SessionNotFoundError):
                log.error("session_remove_failed", error=repr(result))

    # -- this node's workers -----------------------------------------------------------

    async def release_idle_workers(self, needed: int = 0) -> list[str]:
        """Let idle sessions' workers go (:func:`release_order`); they stay registered. Idle release by
        the clock and by pressure, in one place: maintenance's, and an acquire's at ``CP_MAX_LIVE`` (``needed=1``).

        The ``needed`` least recently used are closed, their slots wanted now; any other idle
        ``SM_IDLE_RELEASE_MINUTES`` is given back reset, for the pool to keep or close.
        """
        idle = {s.id: s for s in self._sessions.values() if s.worker is not None and not s.is_busy}
        last_active = {key: session.metrics.last_activity for key, session in idle.items()}
        limit = self.config.session_manager.IDLE_RELEASE_MINUTES * 60
        close, pool = release_order(last_active, time.time(), limit, needed)
        let_go = [(await self.let_go(idle[key]), key in close) for key in close + pool]
        await asyncio.gather(*(self.give_back(w, reuse=not closed) for w, closed in let_go if w is not None))
        released = close + pool
        if released:
            log.info("idle_workers_released", count=len(released), for_room=len(close), session_ids=released)
        return released

    async def release_all_idle(self) -> int:
        """Draining: hand every session not mid-turn over to the other nodes at once."""
        held = [s for s in self._sessions.values() if s.worker is not None and not s.is_busy]
        workers = [w for w in [await self.let_go(s) for s in held] if w is not None]
        await asyncio.gather(*(self.give_back(w) for w in workers))
        return len(workers)

    async def check_leases(self) -> None:
        """Drop the CLIs of sessions this node no longer holds (deleted, or taken over while it was away)."""
        held = await self.registry.held()
        for session in list(self._sessions.values()):
            if session.worker is None or session.is_busy:
                continue
            if session.id not in held:
                if await self.registry.get(session.id) is None:
                    self._vanish(session.id)
                else:
                    self._lost(session)
            elif held[session.id] != session.fence:
                self._lost(session)

    async def close(self) -> int:
        """Shut down: close every CLI process and give up the leases; sessions stay registered."""
        count = len(self._sessions)
        self._closing = True
        for session in self._sessions.values():
            if session.unbind(during_turn=True) is not None:
                try:
                    await self.registry.release(session.id, session.fence)
                except DatabaseUnavailableError:
                    break  # the leases lapse with the heartbeat
        self._sessions.clear()
        await self.pool.shutdown()
        return count

    # -- metrics and health ----------------------------------------------------

    def get_session_health_report(self, tenant: str | None = None, user: str | None = None) -> dict[str, Any]:
        """The seed's health report, plus states, errors and the pool's figures.

        With ``tenant``, that tenant's view: its own sessions, and the workers of its workspace
        (``WORKSPACE_ROOT/<tenant>``) only; with ``user`` too, that end user's and its folder's.
        Sessions are this node's view: ``refresh()`` first for the whole cluster's.
        """
        sessions = self.sessions() if tenant is None else self.owned_by(tenant)
        sessions = sessions if user is None else [s for s in sessions if s.config.user == user]
        home = None if tenant is None else self.config.runtime.workspace_root / tenant
        pool = self.pool.status(home if home is None or user is None else home / user)
        return health_report(sessions, pool, self.config.session_manager)
