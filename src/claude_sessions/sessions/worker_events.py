"""What the session layer does as the pool starts, warms and closes its workers, and the pool it wires.

The pool knows only :class:`PoolEvents`; this is its one implementation: a gateway grant for
each worker's tenant, the pid ledger a crash is cleaned up by, warm-up transcripts deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from claude_sessions.config import SessionConfig, SystemConfig
from claude_sessions.errors import DatabaseUnavailableError
from claude_sessions.gateway.relay import Grant, ModelGateway
from claude_sessions.observability.telemetry import Telemetry
from claude_sessions.store.archive import TranscriptArchive
from claude_sessions.store.registry import Registry
from claude_sessions.workers.containment import Containment, worker_key
from claude_sessions.workers.options import build_options
from claude_sessions.workers.pool import StartWorker, WorkerPool
from claude_sessions.workers.processes import process_started_at
from claude_sessions.workers.worker import Worker


class WorkerEvents:
    """The pool's events, answered for this node."""

    def __init__(
        self,
        gateway: ModelGateway,
        registry: Registry,
        archive: TranscriptArchive,
        telemetry: Telemetry,
        *,
        tenant_of: Callable[[SessionConfig], str],
        project_of: Callable[[SessionConfig], str],
        mark: str,
        containment: Containment,
        let_go: Callable[[Worker], Awaitable[None]],
    ) -> None:
        self.gateway, self.registry, self.archive, self.telemetry = gateway, registry, archive, telemetry
        self._tenant_of, self._project_of, self._mark = tenant_of, project_of, mark
        self.containment, self._let_go = containment, let_go

    def grant_for(self, config: SessionConfig) -> Grant:
        return self.gateway.issue(self._tenant_of(config))

    async def worker_warmed(self, worker: Worker) -> None:
        """A warm-up conversation is nobody's: its transcript goes at once."""
        project = self._project_of(worker.config)
        for conversation in worker.warmed_conversations:
            await self.archive.delete(self.archive.name((project, conversation)))

    async def worker_started(self, worker: Worker, seconds: float) -> None:
        self.telemetry.connect_seconds.observe(seconds)
        with contextlib.suppress(DatabaseUnavailableError):  # the owner mark finds it after a crash
            await self.registry.pids.add(self._mark, worker.pid, process_started_at(worker.pid))

    async def worker_closed(self, worker: Worker) -> None:
        self.archive.forget(worker.grant.token)
        # What its commands left running, its cgroup and its temp folder go with it.
        await asyncio.to_thread(self.containment.worker_ended, worker_key(worker.grant.token))
        if not self.registry.closed:  # a late close after shutdown
            with contextlib.suppress(DatabaseUnavailableError):
                await self.registry.pids.remove(self._mark, worker.pid)

    async def worker_died(self, worker: Worker) -> None:
        await self._let_go(worker)


def worker_pool(config: SystemConfig, events: WorkerEvents, start_worker: StartWorker) -> WorkerPool:
    """This node's worker pool: each CLI starts with its session's options and a gateway grant of its tenant's."""
    limits, gateway, archive = config.connection_pool, events.gateway, events.archive
    return WorkerPool(
        limits,
        config.optimization,
        lambda session, resume, token: build_options(
            session, config, gateway.base_url, token, events.containment, resume, archive.mirror_for(token)
        ),
        max_live=limits.MAX_LIVE or config.session_manager.MAX_SESSIONS,
        events=events,
        start_worker=start_worker,
    )
