"""The seed's task scheduler, a periodic job that survives its own failures, and the job itself."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from claude_sessions.sessions.billing import Billing
from claude_sessions.sessions.manager import ClaudeCodeSessionManager
from claude_sessions.store.archive import TranscriptArchive
from claude_sessions.store.registry import Registry
from claude_sessions.workers.pool import WorkerPool

log = structlog.get_logger("claude_sessions.maintenance")


#: How long a turn submitted with an Idempotency-Key can be replayed.
REPLAY_SECONDS = 24 * 3600.0
#: A node unseen this long is forgotten by the maintenance leader.
FORGET_NODES_SECONDS = 86400.0


class Maintenance:
    """Runs ``job`` every ``interval`` seconds until stopped.

    An exception in one run is logged and the schedule goes on.
    """

    def __init__(self, interval: float, job: Callable[[], Awaitable[Any]]) -> None:
        self.interval = interval
        self._job = job
        self._task: asyncio.Task[None] | None = None
        self.failures = 0

    @property
    def is_running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if not self.is_running:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="claude-sessions-maintenance")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self._job()
            except Exception:  # one bad run must not stop maintenance
                self.failures += 1
                log.exception("maintenance_failed")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            except Exception:  # a broken loop must not keep close() from closing the rest
                log.exception("maintenance_crashed")
            self._task = None


async def maintenance_pass(
    manager: ClaudeCodeSessionManager, pool: WorkerPool, registry: Registry, billing: Billing, retention_days: float
) -> dict[str, Any]:
    """One maintenance pass: this node's workers always; the deployment's sessions if this node leads.

    Inactive and orphan cleanup and retention run on one node at a time (the
    registry's leader lock); idle release, stray CLIs, pool health and refill on each.
    Idle release is by the clock, and by pressure: idle sessions give up the slots the
    spares demand calls for lack under ``CP_MAX_LIVE`` (``spare_shortfall``), least recently used first.
    """
    inactive: list[str] = []
    orphans: list[str] = []
    purged = 0
    await billing.write_pending()
    if await registry.lead():
        inactive = await manager.cleanup_inactive_sessions()
        orphans = await manager.detect_orphaned_sessions()
        purged = await purge_retired(registry, manager.archive, retention_days)
    else:
        await manager.reap_unowned()
    released = await manager.release_idle_workers(needed=pool.spare_shortfall())
    retired = await pool.health_check()
    spawned = await pool.fill()
    log.info(
        "cleanup_run",
        active_sessions=len(manager),
        pool_size=len(pool.workers()),
        orphans=len(orphans),
        inactive_removed=len(inactive),
        idle_released=len(released),
        transcripts_purged=purged,
        workers_retired=retired,
        workers_spawned=spawned,
    )
    return {"inactive": inactive, "orphaned": orphans, "released": released, "retired": retired, "spawned": spawned}


async def purge_retired(registry: Registry, archive: TranscriptArchive, retention_days: float) -> int:
    """Delete removed sessions' transcripts past their retention; forget old replies and nodes."""
    now = time.time()
    names = await registry.retired.take(retired_before=now - retention_days * 86400)
    for name in names:
        await archive.delete(name)
    await registry.replies.forget(older_than=now - REPLAY_SECONDS)
    await registry.nodes.forget(unseen_since=now - FORGET_NODES_SECONDS)
    return len(names)
