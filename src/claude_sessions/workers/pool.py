"""Warm CLI workers kept for reuse, keyed by an options fingerprint.

State (which worker is idle, bound, closing) changes only in synchronous code
between awaits, which asyncio runs atomically; all process I/O (connect,
``/clear``, close) happens outside those sections, so one slow process never
blocks the pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, Protocol

import structlog
from claude_agent_sdk import ClaudeAgentOptions

from claude_sessions.config import ConnectionPoolConfig, OptimizationConfig, SessionConfig
from claude_sessions.errors import CapacityError, WorkerStartError
from claude_sessions.gateway.relay import Grant
from claude_sessions.workers.demand import Demand, Target, excess, shortfall
from claude_sessions.workers.start_gate import StartGate
from claude_sessions.workers.worker import Worker, WorkerState

log = structlog.get_logger("claude_sessions.pool")

#: (session options, conversation to resume, the worker's gateway token) -> the CLI's options.
OptionsFactory = Callable[[SessionConfig, str | None, str], ClaudeAgentOptions]


#: Frees a live slot held outside the pool (an idle session's worker); False when there is none.
MakeRoom = Callable[[], Awaitable[bool]]
#: Starts and connects one worker: (options set, the CLI's options, its grant, timeout) -> worker.
StartWorker = Callable[[SessionConfig, ClaudeAgentOptions, Grant, float], Awaitable[Worker]]


class PoolEvents(Protocol):
    """What the pool asks of its owner (gateway tokens) and tells it (metrics, the crash-hygiene ledger)."""

    def grant_for(self, config: SessionConfig) -> Grant: ...

    async def worker_warmed(self, worker: Worker) -> None: ...

    async def worker_started(self, worker: Worker, seconds: float) -> None: ...

    async def worker_closed(self, worker: Worker) -> None: ...

    async def worker_died(self, worker: Worker) -> None:
        """A CLI a session holds (not mid-turn) ended on its own: the session lets go of it."""


class WorkerPool:
    """Hands out connected workers and takes them back.

    Spares are sized by the recent bursts of new conversations per option set
    (:class:`Demand`), at least ``CP_MIN_SIZE`` for the warm ones; at most
    ``CP_MAX_SIZE`` idle workers are kept, and at most ``max_live`` processes
    live at all; a returned worker is reset with ``/clear`` and kept only if it
    is alive, young and little used enough.
    """

    def __init__(
        self,
        limits: ConnectionPoolConfig,
        timeouts: OptimizationConfig,
        options_for: OptionsFactory,
        max_live: int,
        events: PoolEvents,
        start_worker: StartWorker = Worker.start,
    ) -> None:
        self.limits = limits
        self.timeouts = timeouts
        #: Options kept warm from the start: the default ones, or each tenant's.
        self.warm_configs: list[SessionConfig] = [SessionConfig()]
        self._options_for = options_for
        self._idle: dict[str, deque[Worker]] = {}
        self._workers: dict[str, Worker] = {}  # every worker not yet closed
        self._spawning: dict[str, int] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        #: One per live worker, waiting for its process to end (see ``_watch``).
        self._watchers: set[asyncio.Task[None]] = set()
        self.max_live = max_live
        self._events = events
        #: How a CLI is started: ``Worker.start``; tests pass a fake to check the pool's logic alone.
        self._start_worker = start_worker
        #: New conversations per option set lately: what sizes the spares (tests give it a fake clock).
        self.demand = Demand()
        #: Callers' CLI starts before spares' (a start is CPU-bound).
        self.gate = StartGate()
        #: Bumped by ``shutdown``: a CLI that finishes connecting afterwards closes itself.
        self._generation = 0
        #: Set, then replaced, whenever a live slot may have come free: what waiting acquires wait on.
        self._room_changed = asyncio.Event()

    # -- predicates and figures -------------------------------------------

    @property
    def idle_count(self) -> int:
        return sum(len(q) for q in self._idle.values())

    def workers(self) -> list[Worker]:
        return list(self._workers.values())

    def _is_reusable(self, worker: Worker) -> bool:
        return worker.is_healthy() and not self.is_expired(worker)

    def _has_room(self) -> bool:
        return self.idle_count < self.limits.MAX_SIZE

    def live_count(self) -> int:
        """CLI processes alive or starting (closing ones count until they are gone)."""
        return len(self._workers) + sum(self._spawning.values())

    def is_expired(self, worker: Worker) -> bool:
        """Past ``CP_MAX_AGE_MINUTES`` or ``CP_MAX_USES``: retire it at the next chance."""
        return worker.has_expired(self.limits.MAX_AGE_MINUTES * 60, self.limits.MAX_USES)

    # -- taking and returning ---------------------------------------------

    async def acquire(
        self, config: SessionConfig, resume: str | None = None, make_room: MakeRoom | None = None
    ) -> Worker:
        """A worker bound to the caller: a warm one when possible, else a new one.

        A worker resuming a conversation is always new: a live process cannot switch to
        another existing conversation; any other acquire is a new conversation's arrival, which
        sizes the spares (:class:`Demand`). At ``CP_MAX_LIVE``, the idle pool's oldest worker is
        closed, else ``make_room`` frees one held outside the pool; when neither can, the
        caller waits, queued until a worker closes or a turn ends, up to ``OPT_CREATE_TIMEOUT``,
        then :class:`CapacityError`.
        """
        if resume is None:
            self.demand.arrive(config)
        deadline = asyncio.get_running_loop().time() + self.timeouts.CREATE_TIMEOUT
        while True:
            worker = self._take_idle(config.fingerprint) if resume is None else None
            if worker is not None or self.live_count() < self.max_live:
                break
            if await self.evict_idle() or (make_room is not None and await make_room()):
                continue
            await self._wait_for_room(deadline)
        if worker is None:
            worker = await self._spawn(config, resume)
        worker.state = WorkerState.BOUND
        self.refill_soon()
        return worker

    async def _wait_for_room(self, deadline: float) -> None:
        """Until the room may have changed (``room_changed``), or :class:`CapacityError` at ``deadline``."""
        changed = self._room_changed
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            raise CapacityError(f"all {self.max_live} live workers are mid-turn; try again shortly")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(remaining):
                await changed.wait()

    def room_changed(self) -> None:
        """A live slot may be free now (a worker closed, a start ended, a turn ended): wake every waiter."""
        self._room_changed.set()
        self._room_changed = asyncio.Event()

    def _take_idle(self, fingerprint: str) -> Worker | None:
        queue = self._idle.get(fingerprint)
        while queue:
            worker = queue.pop()  # most recently used first: its pages are warm
            if self._is_reusable(worker) and worker.settle():
                return worker
            self._spawn_task(self._close(worker))
        return None

    async def release(self, worker: Worker) -> None:
        """Take a worker back: reset and keep it, or close it."""
        if self._is_reusable(worker) and worker.settle() and self._has_room():
            worker.state = WorkerState.RESETTING
            reset = await worker.reset(self.timeouts.DESTROY_TIMEOUT)
            if reset and self._has_room() and worker.state is WorkerState.RESETTING:  # not closed meanwhile
                worker.state = WorkerState.IDLE
                self._idle.setdefault(worker.fingerprint, deque()).append(worker)
                self.room_changed()  # an idle worker can be evicted for a waiter
                return
        await self._close(worker)

    def release_soon(self, worker: Worker) -> None:
        """``release`` from synchronous code; tracked so ``shutdown`` awaits it."""
        self._spawn_task(self.release(worker))

    async def evict_idle(self) -> bool:
        """Close the idle worker that waited longest, to free a live slot; False if none."""
        queues = [q for q in self._idle.values() if q]
        if not queues:
            return False
        oldest = min(queues, key=lambda q: q[0].created_at).popleft()
        await self._close(oldest)
        return True

    async def discard(self, worker: Worker, graceful: bool = True) -> None:
        """Close a worker that must not be reused (died, timed out, in doubt)."""
        worker.reusable = False
        await self._close(worker, graceful)

    # -- spawning and closing ----------------------------------------------

    async def _spawn(self, config: SessionConfig, resume: str | None = None) -> Worker:
        self._reserve(config.fingerprint, 1)
        try:
            async with self.gate.caller():
                return await self._connect(config, resume)
        finally:
            self._reserve(config.fingerprint, -1)

    def _reserve(self, fingerprint: str, count: int) -> None:
        """Count spawns in flight, so concurrent refills do not overshoot."""
        self._spawning[fingerprint] = self._spawning.get(fingerprint, 0) + count
        if count < 0:
            self.room_changed()

    async def _connect(self, config: SessionConfig, resume: str | None, warm: bool = False) -> Worker:
        """Start a CLI (``warm``: and warm it up) and register it.

        Until registered it counts as spawning, so fills and ``CP_MAX_LIVE`` see it
        once; it never outlives a failure, a cancellation or a shutdown meanwhile.
        """
        began, generation = time.perf_counter(), self._generation
        grant = self._events.grant_for(config)
        try:
            options = self._options_for(config, resume, grant.token)
            worker = await self._start_worker(config, options, grant, self.timeouts.CREATE_TIMEOUT)
        except BaseException:
            grant.revoke()
            raise
        try:
            await self._events.worker_started(worker, time.perf_counter() - began)
            if warm:
                if not await worker.warm_up(self.timeouts.CREATE_TIMEOUT):
                    raise WorkerStartError("a spare CLI could not be warmed up")
                await self._events.worker_warmed(worker)
            if generation != self._generation:
                raise WorkerStartError("the pool was shut down while this CLI was starting")
        except BaseException as error:
            await self._close(worker)
            if isinstance(error, Exception) and not isinstance(error, WorkerStartError):
                raise WorkerStartError(f"CLI started but could not be registered: {error!r}") from error
            raise
        self._workers[worker.id] = worker
        watcher = asyncio.get_running_loop().create_task(self._watch(worker))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)
        return worker

    async def _watch(self, worker: Worker) -> None:
        """A CLI that ends on its own is noticed at once, not at the next health check: its
        token stops working, an idle one's place frees and a spare follows; a session's is let go."""
        await worker.exited()
        if worker.state in (WorkerState.CLOSING, WorkerState.CLOSED):
            return
        worker.grant.revoke()
        worker.reusable = False
        log.warning("worker_died", worker=worker.id, pid=worker.pid, state=worker.state.value)
        if worker.state != WorkerState.IDLE:
            await self._events.worker_died(worker)
            return
        queue = self._idle.get(worker.fingerprint)
        if queue is not None and worker in queue:
            queue.remove(worker)
        await self._close(worker, graceful=False)
        await self.fill(surplus=False)

    async def _close(self, worker: Worker, graceful: bool = True) -> None:
        if worker.state in (WorkerState.CLOSING, WorkerState.CLOSED):
            return
        worker.state = WorkerState.CLOSING
        try:
            await worker.close(self.timeouts.DESTROY_TIMEOUT, graceful)
        finally:
            worker.state = WorkerState.CLOSED
            worker.grant.revoke()
            self._workers.pop(worker.id, None)
            self.room_changed()
            await self._events.worker_closed(worker)

    def _spawn_task(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- keeping it warm and healthy ----------------------------------------

    async def fill(self, surplus: bool = True) -> int:
        """Bring the spares to their targets (``Demand.targets``): close the idle workers of option sets
        unseen within the window and, with ``surplus``, those beyond their target too; then start
        the missing ones. Returns how many were started.

        Maintenance closes the surplus; an acquire's top-up does not (a worker just given back
        stays until the next pass). ``CP_MIN_SIZE=0`` turns spares off: none is started or closed.
        """
        if not self.limits.MIN_SIZE:
            return 0
        targets = self._targets()
        await self._trim(targets, surplus)
        return sum(await asyncio.gather(*(self._top_up(config, spares) for config, spares in targets)))

    def _targets(self, capacity: int | None = None) -> list[Target]:
        """Spares per option set within ``capacity``; by default ``CP_MAX_SIZE`` and what ``max_live``
        leaves beside the workers in use."""
        if capacity is None:
            capacity = min(self.limits.MAX_SIZE, self.max_live - (len(self._workers) - self.idle_count))
        return self.demand.targets(self.warm_configs, self.limits.MIN_SIZE, max(0, capacity))

    def spare_shortfall(self) -> int:
        """Live slots that the spares demand calls for lack under ``max_live``: how many idle sessions'
        workers maintenance closes (the least recently used first) before it fills."""
        if not self.limits.MIN_SIZE:
            return 0
        free = self.max_live - self.live_count()
        return shortfall(self._targets(self.limits.MAX_SIZE), self._idle_counts(), self._spawning, free)

    def _idle_counts(self) -> dict[str, int]:
        return {fingerprint: len(queue) for fingerprint, queue in self._idle.items()}

    async def _trim(self, targets: list[Target], surplus: bool) -> None:
        """Close the idle workers ``excess`` names, the least recently pooled first: each holds a process's memory."""
        closing = [
            self._idle[fp].popleft()
            for fp, count in excess(targets, self._idle_counts(), surplus).items()
            for _ in range(count)
        ]
        if closing:
            log.info("pool_spares_closed", count=len(closing))
        await asyncio.gather(*(self._close(worker) for worker in closing))

    async def _top_up(self, config: SessionConfig, target: int) -> int:
        """Start spares of ``config`` up to ``target``, within ``CP_MAX_SIZE`` idle and ``max_live`` live
        (a worker starting for a caller counts as one: the last to start tops up the rest)."""
        fingerprint = config.fingerprint
        missing = target - len(self._idle.get(fingerprint, ())) - self._spawning.get(fingerprint, 0)
        room = self.limits.MAX_SIZE - self.idle_count - sum(self._spawning.values())
        missing = min(missing, room, self.max_live - self.live_count())
        if missing <= 0:
            return 0
        self._reserve(fingerprint, missing)
        ended = 0

        async def add_spare() -> None:
            nonlocal ended
            try:
                await self._add_spare(config)
            finally:  # at once: a registered spare must not also count as starting
                ended += 1
                self._reserve(fingerprint, -1)

        try:
            results = await asyncio.gather(*(add_spare() for _ in range(missing)), return_exceptions=True)
        finally:
            self._reserve(fingerprint, ended - missing)  # spares cancelled before they began
        for result in results:
            if isinstance(result, BaseException):
                log.warning("pool_fill_failed", error=repr(result))
        return sum(1 for result in results if result is None)

    async def _add_spare(self, config: SessionConfig) -> None:
        """A new CLI, its first turn already paid (``Worker.warm_up``), idle in the pool."""
        async with self.gate.spare():
            worker = await self._connect(config, None, warm=True)
        worker.state = WorkerState.IDLE
        self._idle.setdefault(worker.fingerprint, deque()).append(worker)

    def refill_soon(self) -> None:
        """``fill`` without its surplus, in the background: after each acquire, so a burst's spares
        are back before the next one."""
        if self.limits.MIN_SIZE:
            self._spawn_task(self.fill(surplus=False))

    async def health_check(self) -> int:
        """Retire idle workers that died or expired; returns how many."""
        retired = 0
        for fingerprint, queue in list(self._idle.items()):
            keep = deque(w for w in queue if self._is_reusable(w) and w.settle())
            for worker in queue:
                if worker not in keep:
                    self._spawn_task(self._close(worker))
                    retired += 1
            self._idle[fingerprint] = keep
        if retired:
            log.info("pool_workers_retired", count=retired)
        return retired

    async def reap_unowned(self, owned: set[str]) -> list[int]:
        """End bound workers that no session owns any more; returns their pids."""
        strays = [w for w in self._workers.values() if w.state is WorkerState.BOUND and w.id not in owned]
        for worker in strays:
            await self.discard(worker)
        return [w.pid for w in strays]

    async def shutdown(self) -> None:
        """Close every worker, idle or bound, and stop pending spawns.

        A CLI still connecting for a caller closes itself when it is done
        (``_connect`` sees the new generation); this waits for those too.
        """
        self._generation += 1
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._idle.clear()
        self.demand.clear()
        await asyncio.gather(*(self._close(w) for w in list(self._workers.values())))
        deadline = time.monotonic() + self.timeouts.CREATE_TIMEOUT + self.timeouts.DESTROY_TIMEOUT
        while (any(self._spawning.values()) or self._workers) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for watcher in list(self._watchers):  # a process that would not end: its worker is gone all the same
            watcher.cancel()

    def status(self, workspace: Path | None = None) -> dict[str, Any]:
        """The contract's pool status.

        With ``workspace``, a tenant's view: only the workers whose working directory
        lies inside it (a worker serves one workspace only), and no pids.
        """
        now = time.monotonic()
        workers = self.workers()
        if workspace is not None:
            workers = [w for w in workers if w.config.cwd is not None and Path(w.config.cwd).is_relative_to(workspace)]
        connections = []
        for w in workers:
            connection: dict[str, Any] = {"id": w.id, "pid": w.pid} if workspace is None else {"id": w.id}
            connection |= {
                "state": w.state.value,
                "age_seconds": round(w.age_seconds(now), 3),
                "uses": w.uses,
                "healthy": w.is_healthy(),
            }
            connections.append(connection)
        return {
            "pool_size": len(workers),
            "idle": self.idle_count if workspace is None else sum(w.state is WorkerState.IDLE for w in workers),
            "healthy_connections": sum(1 for w in workers if w.is_healthy()),
            "max_size": self.limits.MAX_SIZE,
            "min_size": self.limits.MIN_SIZE,
            "connections": connections,
        }
