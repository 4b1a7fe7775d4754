"""The seed's ``ClaudeHandler``: sessions bound to pooled workers, one turn at a time.

A turn is bounded by ``OPT_MESSAGE_TIMEOUT``; a worker that dies mid-turn fails
that turn with :class:`WorkerDiedError` and the next message resumes the same
conversation in a new worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import uuid
from collections.abc import AsyncGenerator
from typing import Any

import structlog
from claude_agent_sdk import ClaudeSDKError, Message, ResultMessage, SystemMessage

from .cli_options import build_options, session_cwd
from .config import SessionConfig, SystemConfig
from .errors import (
    HandlerClosedError,
    SessionBusyError,
    SessionExistsError,
    SessionLimitError,
    TurnTimeoutError,
    WorkerDiedError,
)
from .maintenance import Maintenance
from .manager import ClaudeCodeSessionManager, Session
from .metrics import record_result
from .pool import WorkerPool
from .worker import Worker

log = structlog.get_logger("claude_sessions.handler")

SESSION_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
#: How long an interrupted turn may take to wind down before its worker is discarded.
INTERRUPT_GRACE_SECONDS = 5.0


class ClaudeHandler:
    """Creates sessions, runs their turns and keeps the machinery healthy."""

    def __init__(self, config: SystemConfig | None = None) -> None:
        self.config = config or SystemConfig.from_env()
        self.pool = WorkerPool(
            self.config.connection_pool,
            self.config.optimization,
            lambda session, resume: build_options(session, self.config, resume),
        )
        self.session_manager = ClaudeCodeSessionManager(self.config, self.pool)
        self.maintenance = Maintenance(self.config.session_manager.CLEANUP_INTERVAL * 60, self.run_maintenance)
        self._started: asyncio.Task[None] | None = None
        self._closed = False

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        """Warm the pool and start maintenance; runs once, callers share it."""
        if self._closed:
            raise HandlerClosedError("handler is closed")
        if self._started is None:
            self._started = asyncio.get_running_loop().create_task(self._start())
        await asyncio.shield(self._started)

    async def _start(self) -> None:
        self.config.runtime.config_dir.mkdir(parents=True, exist_ok=True)
        self.config.runtime.workspace_root.mkdir(parents=True, exist_ok=True)
        spares = await self.pool.fill()
        self.maintenance.start()
        log.info("handler_started", warm_workers=spares, max_sessions=self.config.session_manager.MAX_SESSIONS)

    async def close(self) -> None:
        """Stop maintenance, close every session's worker and the pool."""
        self._closed = True
        await self.maintenance.stop()
        if self._started is not None and not self._started.done():
            self._started.cancel()
        count = await self.session_manager.close_all()
        log.info("handler_closed", sessions=count)

    async def shutdown_pool(self) -> None:
        """Close every pooled worker; sessions resume in new workers on their next message."""
        for session in self.session_manager.sessions():
            if not session.is_busy:
                session.worker = None
        await self.pool.shutdown()

    async def __aenter__(self) -> ClaudeHandler:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- sessions ---------------------------------------------------------------

    async def create_session(
        self,
        session_id: str | None = None,
        config: SessionConfig | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> str:
        """Register a session and bind a worker to it; returns its id."""
        if session_id is not None and not (isinstance(session_id, str) and SESSION_ID.fullmatch(session_id)):
            raise ValueError("session_id must match [A-Za-z0-9._-]{1,128}")
        config = config or SessionConfig()
        session_cwd(config, self.config)  # raises ValueError for a cwd outside the workspace
        await self.start()
        session_id = session_id or uuid.uuid4().hex
        manager = self.session_manager
        if not manager.register_session(session_id, config, metadata):
            if session_id in manager:
                raise SessionExistsError(f"session {session_id!r} already exists")
            raise SessionLimitError(f"session limit reached ({self.config.session_manager.MAX_SESSIONS})")
        session = manager.get(session_id)
        try:
            worker = await self.pool.acquire(config)
        except BaseException:
            manager.unregister_session(session_id)
            raise
        if session.closed:  # destroyed while its worker was starting
            await self.pool.release(worker)
        else:
            session.worker = worker
        log.info("session_created", session_id=session_id, pool_size=len(self.pool.workers()))
        return session_id

    async def destroy_session(self, session_id: str) -> None:
        """Unregister a session; a running turn is interrupted, the worker returns to the pool."""
        session = await self.session_manager.remove_session(session_id)
        if session.is_busy and session.worker is not None:
            await self._interrupt_worker(session.worker)
        log.info("session_destroyed", session_id=session_id)

    async def interrupt(self, session_id: str) -> None:
        """Stop the running turn of a session (nothing happens when it is idle)."""
        session = self.session_manager.get(session_id)
        if session.is_busy and session.worker is not None:
            await self._interrupt_worker(session.worker)

    @staticmethod
    async def _interrupt_worker(worker: Worker) -> None:
        try:
            async with asyncio.timeout(INTERRUPT_GRACE_SECONDS):
                await worker.client.interrupt()
        except Exception as error:
            log.info("interrupt_failed", worker=worker.id, error=repr(error))

    def get_pool_status(self) -> dict[str, Any]:
        return self.pool.status()

    # -- turns ------------------------------------------------------------------

    async def send_message(self, session_id: str, prompt: str) -> AsyncGenerator[Message, None]:
        """Run one turn and yield the SDK's messages, ending with the ``ResultMessage``."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("prompt must be a non-empty string")
        session = self.session_manager.get(session_id)
        if session.is_busy:
            raise SessionBusyError(f"session {session_id!r} is running a turn")
        async with session.turn_lock:
            session.metrics.touch()
            worker = await self._bind(session)
            try:
                # aclosing: an abandoned turn winds down before the lock is released.
                async with contextlib.aclosing(self._turn(session, worker, prompt)) as turn:
                    async for message in turn:
                        yield message
            finally:
                session.metrics.touch()
                if session.closed and session.worker is not None:
                    worker, session.worker = session.worker, None
                    await self.pool.release(worker)

    async def _bind(self, session: Session) -> Worker:
        """The session's worker; a new one (resuming the conversation) if it has none."""
        worker = session.worker
        if worker is not None and worker.is_alive():
            return worker
        if worker is not None:  # died between turns
            session.metrics.connection_errors += 1
            session.worker = None
            await self.pool.discard(worker)
        try:
            worker = await self.pool.acquire(session.config, resume=session.claude_session_id)
        except Exception:
            session.metrics.connection_errors += 1
            raise
        session.worker = worker
        if session.claude_session_id is not None:
            log.info("session_resumed", session_id=session.id, claude_session_id=session.claude_session_id)
        return worker

    async def _turn(self, session: Session, worker: Worker, prompt: str) -> AsyncGenerator[Message, None]:
        metrics = session.metrics
        began = time.perf_counter()
        deadline = asyncio.get_running_loop().time() + self.config.optimization.MESSAGE_TIMEOUT
        settled = False  # the turn ended, or its worker was dealt with
        worker.uses += 1
        metrics.message_count += 1
        try:
            await worker.client.query(prompt)
            replies = worker.client.receive_response()
            while not settled:
                async with asyncio.timeout_at(deadline):
                    message = await anext(replies)
                _learn_conversation(session, message)
                if isinstance(message, ResultMessage):
                    settled = True
                    metrics.last_turn_ms = round((time.perf_counter() - began) * 1000, 3)
                    record_result(metrics, session.cost, worker.pid, message)
                yield message
        except TimeoutError:
            settled = True
            metrics.timeouts += 1
            await self._wind_down(session, worker)
            raise TurnTimeoutError(
                f"turn exceeded {self.config.optimization.MESSAGE_TIMEOUT:g}s and was interrupted"
            ) from None
        except (ClaudeSDKError, StopAsyncIteration, OSError) as error:
            settled = True
            metrics.connection_errors += 1
            await self._drop_worker(session, worker)
            raise WorkerDiedError(f"the CLI process of session {session.id!r} failed: {error}") from error
        finally:
            if not settled and worker is session.worker and worker.is_alive():
                # Abandoned by the caller (closed generator, cancellation).
                await asyncio.shield(self._wind_down(session, worker))

    async def _wind_down(self, session: Session, worker: Worker) -> None:
        """Interrupt the running turn and drain it; discard the worker if it will not stop."""
        try:
            async with asyncio.timeout(INTERRUPT_GRACE_SECONDS):
                await worker.client.interrupt()
                async for message in worker.client.receive_response():
                    _learn_conversation(session, message)
                    if isinstance(message, ResultMessage):
                        record_result(session.metrics, session.cost, worker.pid, message)
                        return
        except Exception as error:
            log.warning("turn_wind_down_failed", session_id=session.id, error=repr(error))
        await self._drop_worker(session, worker)

    async def _drop_worker(self, session: Session, worker: Worker) -> None:
        if session.worker is worker:
            session.worker = None
        await self.pool.discard(worker)

    # -- maintenance -------------------------------------------------------------

    async def run_maintenance(self) -> dict[str, Any]:
        """One maintenance pass: inactive and orphan cleanup, pool health, refill."""
        manager = self.session_manager
        inactive = await manager.cleanup_inactive_sessions()
        orphans = await manager.detect_orphaned_sessions()
        retired = await self.pool.health_check()
        spawned = await self.pool.fill()
        log.info(
            "cleanup_run",
            active_sessions=len(manager),
            pool_size=len(self.pool.workers()),
            orphans=len(orphans),
            inactive_removed=len(inactive),
            workers_retired=retired,
            workers_spawned=spawned,
        )
        return {"inactive": inactive, "orphaned": orphans, "retired": retired, "spawned": spawned}


def _learn_conversation(session: Session, message: Message) -> None:
    """Track the CLI's conversation id (it changes on ``/clear``, not on resume)."""
    if isinstance(message, SystemMessage):
        claude_id = message.data.get("session_id") if message.subtype == "init" else None
    else:
        claude_id = getattr(message, "session_id", None)
    if isinstance(claude_id, str) and claude_id:
        session.claude_session_id = claude_id
