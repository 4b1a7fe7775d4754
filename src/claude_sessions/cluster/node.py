"""This node among the others: its heartbeat, which keeps its leases, and its draining.

A node's leases last as long as its heartbeat is fresh (``CLUSTER_LEASE_SECONDS``).
Each beat also checks that this node still holds the sessions whose CLIs it runs: a
node that was paused (SIGSTOP, a long GC, a cut network) finds on waking that
another node took them over, and drops those CLIs before they can run again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

import structlog

from claude_sessions.errors import DatabaseUnavailableError
from claude_sessions.store.records import NodeStatus
from claude_sessions.store.registry import Registry

log = structlog.get_logger("claude_sessions.cluster")

#: Beats per lease: a node misses two before its leases lapse.
BEATS_PER_LEASE = 3


class Node:
    """This node's presence in the registry.

    What a beat and a drain do to sessions is the session layer's, handed in: ``keep``
    runs after each beat that reached the database, ``hand_over`` lets the idle sessions go.
    """

    def __init__(
        self,
        registry: Registry,
        url: str,
        live_workers: Callable[[], int],
        keep: Callable[[], Awaitable[None]],
        hand_over: Callable[[], Awaitable[int]],
    ) -> None:
        self.registry = registry
        self.url = url
        self.status: NodeStatus = "up"
        self.interval = registry.lease_seconds / BEATS_PER_LEASE
        self._live_workers, self._keep, self._hand_over = live_workers, keep, hand_over
        self._task: asyncio.Task[None] | None = None
        self.database_ok = True
        #: When a beat last reached the database.
        self._reached_at = time.time()

    @property
    def node_id(self) -> str:
        return self.registry.node_id

    async def beat(self) -> None:
        """Renew this node's leases, then drop CLIs it no longer holds and write what an outage held back."""
        if await self._renew():
            await self._kept()

    async def _renew(self) -> bool:
        """The heartbeat alone (what keeps this node's leases); whether it reached the database."""
        try:
            await self.registry.nodes.heartbeat(self.url, self._live_workers(), self.status)
        except DatabaseUnavailableError as error:
            if self.database_ok:
                log.warning("database_unavailable", error=str(error))
            self.database_ok = False
            return False
        if not self.database_ok:  # no node could beat meanwhile: the registry paused the leases for it
            log.info("database_available", away_s=round(time.time() - self._reached_at, 1))
        self.database_ok, self._reached_at = True, time.time()
        return True

    async def _kept(self) -> None:
        try:
            await self._keep()
        except DatabaseUnavailableError as error:
            log.warning("keep_deferred", error=str(error))
        except Exception:  # the next beat tries again
            log.exception("keep_failed")

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="claude-sessions-heartbeat")

    async def _loop(self) -> None:
        """Beat on a clock of its own: the work after a beat never delays the next one (a late heartbeat
        lets another node take a live node's sessions)."""
        keeping: asyncio.Task[None] | None = None
        try:
            while True:
                try:
                    if await self._renew() and (keeping is None or keeping.done()):
                        keeping = asyncio.get_running_loop().create_task(self._kept())
                except Exception:  # one bad beat must not stop the next
                    log.exception("heartbeat_failed")
                await asyncio.sleep(self.interval)
        finally:
            if keeping is not None and not keeping.done():
                keeping.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await keeping

    async def drain(self) -> int:
        """Stop taking sessions: the other nodes take this node's on their next message, at once."""
        self.status = "draining"
        with contextlib.suppress(DatabaseUnavailableError):
            await self.registry.nodes.heartbeat(self.url, self._live_workers(), self.status)
        released = await self._hand_over()
        log.info("node_draining", node_id=self.node_id, sessions_handed_over=released)
        return released

    async def stop(self) -> None:
        """Stop beating and leave, so the others do not wait for the leases to lapse."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.status = "down"
        with contextlib.suppress(DatabaseUnavailableError):
            await self.registry.nodes.leave()
