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
from collections import Counter, deque
from collections.abc import AsyncGenerator, Callable, Generator, Sequence
from typing import Any

import anyio
import structlog
from claude_agent_sdk import AssistantMessage, ClaudeSDKClient, ClaudeSDKError, Message, ResultMessage, SystemMessage

from claude_sessions.cluster.node import FORWARDED, Node
from claude_sessions.config import SessionConfig, SystemConfig
from claude_sessions.errors import (
    CapacityError,
    DatabaseUnavailableError,
    HandlerClosedError,
    LeaseLostError,
    SessionBusyError,
    SessionHeldElsewhereError,
    SessionNotFoundError,
    SessionOrphanedError,
    SlashCommandRefusedError,
    TurnRefusedError,
    TurnTimeoutError,
    WorkerDiedError,
    WorkerStartError,
)
from claude_sessions.gateway.relay import Grant, ModelGateway, Tally, credentials_of
from claude_sessions.observability.metrics import TurnUsage, add_usage, is_api_error
from claude_sessions.observability.telemetry import DEFAULT_TENANT, LiveState, Telemetry
from claude_sessions.sessions.maintenance import Maintenance
from claude_sessions.sessions.manager import ClaudeCodeSessionManager, Session
from claude_sessions.store.archive import FileArchive, StoreArchive, TranscriptArchive
from claude_sessions.store.conversations import Turn
from claude_sessions.store.postgres import PostgresRegistry
from claude_sessions.store.registry import Holder, Registry
from claude_sessions.store.sqlite import SqliteRegistry
from claude_sessions.store.transcripts import PostgresTranscriptStore
from claude_sessions.workers.options import build_options, session_cwd, tenant_of
from claude_sessions.workers.pool import NoLiveRoom, WorkerPool
from claude_sessions.workers.processes import DataDirLock, end_stray_processes, owner_mark, process_started_at
from claude_sessions.workers.sandbox import check_host
from claude_sessions.workers.worker import Worker, WorkerState

log = structlog.get_logger("claude_sessions.handler")

SESSION_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
#: How long an interrupted turn may take to wind down before its worker is discarded.
INTERRUPT_GRACE_SECONDS = 5.0
#: How often a turn waiting for a live worker looks again.
CAPACITY_POLL_SECONDS = 0.05
#: How long a turn submitted with an Idempotency-Key can be replayed.
REPLAY_SECONDS = 24 * 3600.0
#: The longest a registry call may wait for PostgreSQL (and at most ``OPT_CREATE_TIMEOUT``).
DATABASE_TIMEOUT = 5.0
#: A node unseen this long is forgotten by the maintenance leader.
FORGET_NODES_SECONDS = 86400.0


def open_registry(config: SystemConfig, node_id: str) -> tuple[Registry, TranscriptArchive]:
    """SQLite and the CLI's files for one node; PostgreSQL for both when a database URL is set."""
    lease, files = config.cluster.LEASE_SECONDS, FileArchive(config.runtime.config_dir / "projects")
    dsn = config.cluster.dsn
    if dsn is None:
        return SqliteRegistry(config.runtime.DATA_DIR.resolve() / "sessions.db", node_id, lease), files
    timeout = min(DATABASE_TIMEOUT, config.optimization.CREATE_TIMEOUT)
    store = PostgresTranscriptStore(dsn, min_size=0, timeout=timeout)
    registry = PostgresRegistry(dsn, node_id, lease, timeout=timeout)
    return registry, StoreArchive(store, files, registry)


class ClaudeHandler:
    """Creates sessions, runs their turns and keeps the machinery healthy."""

    def __init__(self, config: SystemConfig | None = None) -> None:
        self.config = config or SystemConfig.from_env()
        check_host(self.config)
        self.telemetry = Telemetry()
        #: The wall clock budgets count days and minutes by (tests move it).
        self.clock: Callable[[], float] = time.time
        #: Charges not written yet (the database was away): the tally that metered each, and
        #: (tenant, at, cost, tokens, turns) as the registry takes them.
        self._uncharged: deque[tuple[Tally, tuple[str, float, float, int, int]]] = deque()
        runtime = self.config.runtime
        self._data_dir_lock = DataDirLock(runtime.DATA_DIR.resolve())
        self.registry, self.archive = open_registry(self.config, uuid.uuid4().hex[:12])
        self.gateway = ModelGateway(
            runtime.ANTHROPIC_BASE_URL,
            credentials_of(runtime),
            timeout=self.config.optimization.CLI_API_TIMEOUT,
            permits_model=self.config.server.permits_model,
        )
        limits = self.config.connection_pool
        self.pool = WorkerPool(
            limits,
            self.config.optimization,
            lambda session, resume, token: build_options(
                session, self.config, self.gateway.base_url, token, resume, self.archive.mirror_for(token)
            ),
            max_live=limits.MAX_LIVE or self.config.session_manager.MAX_SESSIONS,
            events=self,
        )
        self.session_manager = ClaudeCodeSessionManager(
            self.config, self.pool, self.registry, self.archive, self.telemetry
        )
        #: This node in the registry; ``CLAUDE_SESSIONS_NODE_URL`` (the server sets its own) is where others reach it.
        self.node = Node(
            self.registry,
            self.config.cluster.NODE_URL or "",
            live_workers=lambda: len(self.pool.workers()),
            keep=self._after_beat,
            hand_over=self.session_manager.release_all_idle,
        )
        self._mark = owner_mark(runtime.DATA_DIR)
        self.session_manager.load_now()
        self.telemetry.watch(self._live_state)
        self.maintenance = Maintenance(self.config.session_manager.CLEANUP_INTERVAL * 60, self.run_maintenance)
        self._started: asyncio.Task[None] | None = None
        self._closed = False
        #: Workers whose client a caller holds (``_get_or_create_pooled_client``), by client.
        self._lent: dict[int, Worker] = {}

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
        await self.registry.open()
        await self.archive.open()
        # CLI processes an earlier run on this data directory recorded, read before this run records its own.
        earlier = await self.registry.take_workers(self._mark)
        await self.registry.join(self._mark)
        ended = await asyncio.to_thread(end_stray_processes, earlier, self._mark)
        await self.gateway.start()
        await self.session_manager.refresh()
        await self.node.beat()
        self.node.start()
        spares = await self.pool.fill()
        self.maintenance.start()
        log.info(
            "handler_started",
            warm_workers=spares,
            sessions=len(self.session_manager),
            stray_cli_ended=ended,
            max_sessions=self.config.session_manager.MAX_SESSIONS,
        )

    async def close(self) -> None:
        """Stop maintenance and close every CLI process; sessions stay in the store."""
        if self._closed:
            return
        self._closed = True
        await self.maintenance.stop()
        if self._started is not None and not self._started.done():
            self._started.cancel()
        self._lent.clear()  # the pool closes them with every other worker
        await self.node.stop()
        count = await self.session_manager.close()
        await self.gateway.close()
        await self.archive.close()
        await self.registry.close()
        self._data_dir_lock.release()
        log.info("handler_closed", sessions=count)

    async def _after_beat(self) -> None:
        """Drop CLIs of sessions another node took over; write what a database outage held back."""
        await self.session_manager.check_leases()
        await self.session_manager.save_unsaved()
        await self.archive.catch_up()

    # -- pool events: gateway tokens, metrics and the ledger of live CLI processes ------

    def grant_for(self, config: SessionConfig) -> Grant:
        return self.gateway.issue(tenant_of(config, self.config))

    async def worker_warmed(self, worker: Worker) -> None:
        """A warm-up conversation is nobody's: its transcript goes at once."""
        project = self.session_manager.project_of(worker.config)
        for conversation in worker.warmed_conversations:
            await self.archive.delete(self.archive.name((project, conversation)))

    async def worker_started(self, worker: Worker, seconds: float) -> None:
        self.telemetry.connect_seconds.observe(seconds)
        with contextlib.suppress(DatabaseUnavailableError):  # the owner mark finds it after a crash
            await self.registry.add_worker(self._mark, worker.pid, process_started_at(worker.pid))

    async def worker_closed(self, worker: Worker) -> None:
        self.archive.forget(worker.grant.token)
        if not self.registry.closed:  # a late close after shutdown
            with contextlib.suppress(DatabaseUnavailableError):
                await self.registry.remove_worker(self._mark, worker.pid)

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
        *,
        owner: str | None = None,
        owner_limit: int | None = None,
        history: Sequence[Turn] = (),
    ) -> str:
        """Register a session and bind a worker to it; returns its registry key.

        Without ``owner`` the key is the id itself; a tenant's sessions live in
        the tenant's own namespace (``session_key``), capped by ``owner_limit``.
        ``history`` (earlier user and assistant messages) becomes the conversation
        the session continues: its first turn resumes it in a new CLI.
        """
        if session_id is not None and not (isinstance(session_id, str) and SESSION_ID.fullmatch(session_id)):
            raise ValueError("session_id must match [A-Za-z0-9._-]{1,128}")
        config = config or SessionConfig()
        session_cwd(config, self.config)  # raises ValueError for a cwd outside the workspace
        await self.start()
        session_id = session_id or uuid.uuid4().hex
        manager = self.session_manager
        tenant = owner or DEFAULT_TENANT
        session = await manager.create(session_id, config, metadata, owner, owner_limit, hold=not history)
        key = session.id
        if history:
            await manager.import_conversation(session, history)
            self.telemetry.sessions_created.labels(tenant).inc()
            log.info("session_created", session_id=session_id, tenant=owner, imported_messages=len(history))
            return key
        try:
            worker = await self._acquire(config)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await manager.drop(session)
            raise
        if session.closed:  # destroyed while its worker was starting
            await self.pool.release(worker)
        else:
            session.worker = worker
            session.metrics.touch()  # inactivity counts from when the session is ready, not from the request
            await manager.save(session)
        self.telemetry.sessions_created.labels(tenant).inc()
        log.info("session_created", session_id=session_id, tenant=owner, pool_size=len(self.pool.workers()))
        return key

    async def destroy_session(self, session_id: str, purge: bool = False) -> None:
        """Unregister a session; a running turn is interrupted, the worker returns to the pool.

        ``purge`` deletes the transcript now instead of after the retention period.
        """
        await self._refuse_if_held_elsewhere(session_id)
        session = await self.session_manager.remove_session(session_id, purge)
        if session.is_busy and session.worker is not None:
            await self._interrupt_worker(session.worker)
        log.info("session_destroyed", session_id=session_id)

    async def interrupt(self, session_id: str) -> None:
        """Stop the running turn of a session (nothing happens when it is idle)."""
        session = await self.session_manager.fetch(session_id)
        if session.is_busy and session.worker is not None:
            await self._interrupt_worker(session.worker)
        else:
            await self._refuse_if_held_elsewhere(session_id)

    async def _refuse_if_held_elsewhere(self, session_id: str) -> None:
        """A session whose live CLI runs on another live node is acted on there (the API forwards)."""
        if FORWARDED.get():
            return
        holder = await self.registry.holder(session_id)
        if holder is not None:
            raise _held_elsewhere(session_id, holder)

    @staticmethod
    async def _interrupt_worker(worker: Worker) -> None:
        try:
            async with asyncio.timeout(INTERRUPT_GRACE_SECONDS):
                await worker.client.interrupt()
        except Exception as error:
            log.info("interrupt_failed", worker=worker.id, error=repr(error))

    def get_pool_status(self) -> dict[str, Any]:
        return self.pool.status()

    def _get_or_create_pooled_client(self, config: SessionConfig | None = None) -> PooledClient:
        """The seed's pool call: a connected ``ClaudeSDKClient`` for ``config``, warm when one is idle.

        ``client = await handler._get_or_create_pooled_client(config)`` lends it until
        ``await handler._return_pooled_client(client)``; ``async with`` on the same call
        returns it by itself. Lent clients count in ``get_pool_status()`` (state
        ``lent``), stay within ``CP_MAX_LIVE``, and are closed by ``close()`` if the
        caller never gave them back.
        """
        return PooledClient(self, config or SessionConfig())

    async def _lend(self, config: SessionConfig) -> ClaudeSDKClient:
        await self.start()
        worker = await self._acquire(config)
        if worker.model is None and not await worker.reset(self.config.optimization.DESTROY_TIMEOUT):
            await self.pool.discard(worker)  # a /clear on a fresh CLI names its launch model; it failed
            raise WorkerStartError("a pooled CLI could not be reset")
        worker.state = WorkerState.LENT
        self._lent[id(worker.client)] = worker
        return worker.client

    async def _return_pooled_client(self, client: ClaudeSDKClient) -> None:
        """Take back a lent client: reset with ``/clear`` and pooled, or closed.

        The reset proves the worker as it was launched (model, permission mode, no
        reply left unread); otherwise it is closed.
        """
        worker = self._lent.pop(id(client), None)
        if worker is None:
            raise ValueError("this client was not lent by this handler")
        await self.pool.release(worker)

    # -- turns ------------------------------------------------------------------

    async def send_message(self, session_id: str, prompt: str) -> AsyncGenerator[Message, None]:
        """Run one turn and yield the SDK's messages, ending with the ``ResultMessage``.

        A message starting with a CLI command outside ``SLASH_COMMANDS_ALLOWED``
        raises :class:`SlashCommandRefusedError`: commands such as ``/config`` or
        ``/model`` would change settings that belong to the operator.
        """
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("prompt must be a non-empty string")
        command = slash_command(prompt)
        if command is not None and command not in self.config.server.slash_commands_allowed:
            raise SlashCommandRefusedError(command)
        await self.start()
        session = await self.session_manager.fetch(session_id)
        if session.is_busy:
            raise SessionBusyError(f"session {session.public_id!r} is running a turn")
        bound = False
        try:
            async with session.turn_lock:
                await self._claim(session)
                # tenant_of checks the cwd at every turn, live worker or not: a folder swapped for
                # a symlink since must not move the session (ValueError). The tally is read before
                # the day's rest: what is metered from here on, the tenant's other running turns
                # included, counts against that rest (turns at once share it).
                baseline = self.gateway.tally(tenant_of(session.config, self.config)).charged
                budget = await self._admit(session)
                session.metrics.touch()
                worker = await self._bind(session)
                worker.grant.budget, worker.grant.baseline = budget, baseline
                bound = True
                try:
                    if session.closed:  # destroyed while its worker was being bound: no billed turn
                        raise SessionNotFoundError(f"session {session.public_id!r} not found")
                    # aclosing: an abandoned turn winds down before the lock is released.
                    async with contextlib.aclosing(self._turn(session, worker, prompt, command)) as turn:
                        async for message in turn:
                            yield message
                finally:
                    with anyio.CancelScope(shield=True):
                        await self._save_turn_end(session)
        finally:
            if bound:
                with anyio.CancelScope(shield=True):
                    await self._hand_back(session)

    async def _save_turn_end(self, session: Session) -> None:
        session.metrics.touch()
        try:
            await self.session_manager.save(session, ending=True)
        except LeaseLostError:
            if session.worker is not None:
                await self._drop_worker(session, session.worker)

    async def _hand_back(self, session: Session) -> None:
        """After a turn: the worker goes back if the session is gone, or to another node if this one drains."""
        if session.closed:
            worker = self.session_manager.detach(session)
        elif self.node.status != "up":
            worker = await self.session_manager.let_go(session)
        else:
            return
        if worker is not None:
            await self.pool.release(worker)

    async def _claim(self, session: Session) -> None:
        """Take the session's lease for this turn, or send the caller to the live node holding it.

        A CLI this node kept from an older lease (another node ran turns since) holds
        a stale conversation: it is dropped and the conversation resumed afresh.
        """
        elsewhere = session.holder not in (None, self.registry.node_id)
        if elsewhere and session.holder_url and not FORWARDED.get():
            # Read a moment ago (``fetch``): a live node holds it. A claim could only say the same;
            # should that node have let go since, it takes the forwarded turn itself.
            raise _held_elsewhere(session.id, Holder(str(session.holder), session.holder_url))
        claim = await self.registry.claim(session.id)
        if claim is None:
            self.session_manager.get(session.id)  # the view still has it: gone since
            raise SessionNotFoundError(f"session {session.public_id!r} not found")
        if isinstance(claim, Holder):
            if FORWARDED.get():  # sent here as its holder, but it moved on meanwhile
                raise SessionBusyError(f"session {session.public_id!r} is moving between nodes; retry")
            raise _held_elsewhere(session.id, claim)
        if claim != session.fence and session.worker is not None:
            await self._drop_worker(session, session.worker)
        session.fence, session.holder = claim, self.registry.node_id

    async def _bind(self, session: Session) -> Worker:
        """The session's worker; a new one (resuming the conversation) if it has none.

        A conversation whose transcript vanished is never silently restarted.
        """
        manager = self.session_manager
        if not session.orphaned and session.worker is None and await manager.is_orphaned(session):
            await manager.mark_orphaned(session)  # it holds no worker to give back
        if session.orphaned:
            raise SessionOrphanedError(f"session {session.public_id!r} lost its transcript; delete it")
        worker = session.worker
        if worker is not None and worker.is_alive() and not self.pool.is_expired(worker) and worker.settle():
            return worker
        if worker is not None and worker.is_alive():  # too old, too used, or it acted on its own
            log.info("session_worker_retired", session_id=session.id, worker=worker.id, uses=worker.uses)
            session.worker = None
            self.pool.release_soon(worker)
        elif worker is not None:  # died between turns
            self._count_connection_error(session)
            session.worker = None
            await self.pool.discard(worker)
        try:
            worker = await self._acquire(session.config, resume=await manager.conversation_to_resume(session))
        except WorkerStartError:
            self._count_connection_error(session)
            raise
        session.worker = worker
        self.archive.fence(worker.grant.token, (session.id, session.fence))
        if session.claude_session_id is not None:
            log.info("session_resumed", session_id=session.id, claude_session_id=session.claude_session_id)
        return worker

    async def _acquire(self, config: SessionConfig, resume: str | None = None) -> Worker:
        """A worker within ``CP_MAX_LIVE``: past it, free the idle pool's oldest worker,
        then the least recently used idle session's; if every live worker is mid-turn,
        wait up to ``OPT_CREATE_TIMEOUT`` and raise :class:`CapacityError`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.optimization.CREATE_TIMEOUT
        while True:
            try:
                return await self.pool.acquire(config, resume)
            except NoLiveRoom:
                pass
            if await self.pool.evict_idle():
                continue
            victim = self.session_manager.least_recently_used_worker()
            if victim is not None:
                worker = await self.session_manager.let_go(victim)
                if worker is not None:
                    await self.pool.discard(worker)
                continue
            if loop.time() >= deadline:
                raise CapacityError(f"all {self.pool.max_live} live workers are mid-turn; try again shortly") from None
            await asyncio.sleep(CAPACITY_POLL_SECONDS)

    async def _turn(
        self, session: Session, worker: Worker, prompt: str, command: str | None
    ) -> AsyncGenerator[Message, None]:
        """One turn on ``worker``, bounded as a whole (prompt written, every reply read).

        What a caller was told is committed first: the turn's count when it
        starts, the conversation id when first seen, the usage before the result.
        """
        metrics = session.metrics
        began = time.perf_counter()
        deadline = asyncio.get_running_loop().time() + self.config.optimization.MESSAGE_TIMEOUT
        settled = False  # the turn ended, or its worker was dealt with
        asked = False  # the whole prompt reached the CLI (else its input stream is in doubt)
        worker.uses += 1
        worker.grant.take()  # calls made between turns (none expected) are no turn's
        metrics.message_count += 1
        try:
            await self.session_manager.save(session)
            async with asyncio.timeout_at(deadline):
                await worker.ask(prompt, verbatim=command is None)
            asked = True
            replies = worker.client.receive_response()
            while not settled:
                async with asyncio.timeout_at(deadline):
                    message = await anext(replies)
                if not worker.runs_as_launched(message):
                    log.warning("session_worker_drifted", session_id=session.id)
                if _learn_conversation(session, message):
                    await self.session_manager.save(session)
                if isinstance(message, ResultMessage):
                    settled = True
                    await self._record(session, worker, message, time.perf_counter() - began)
                    await self.session_manager.save(session)
                yield message
        except TimeoutError:
            settled = True
            metrics.timeouts += 1
            self.telemetry.turn_timeouts.labels(session.tenant).inc()
            await (self._wind_down(session, worker, began) if asked else self._drop_worker(session, worker))
            raise TurnTimeoutError(
                f"turn exceeded {self.config.optimization.MESSAGE_TIMEOUT:g}s and was interrupted"
            ) from None
        except LeaseLostError:
            settled = True  # another node runs this conversation now: this CLI must stop at once
            await self._drop_worker(session, worker)
            raise
        except (ClaudeSDKError, StopAsyncIteration, OSError) as error:
            settled = True
            self._count_connection_error(session)
            await self._drop_worker(session, worker)
            raise WorkerDiedError(f"the CLI process of session {session.public_id!r} failed: {error}") from error
        finally:
            if not settled and worker is session.worker and worker.is_alive():
                # Abandoned by the caller (closed generator, cancelled stream): the
                # shield lets the wind-down finish before the session is free again.
                with anyio.CancelScope(shield=True):
                    await (self._wind_down(session, worker, began) if asked else self._drop_worker(session, worker))

    async def _admit(self, session: Session) -> float | None:
        """Start a turn within its tenant's limits; the rest of the tenant's day budget, if it has one.

        Raises :class:`BudgetExceededError` or :class:`RateLimitedError` before anything runs.
        """
        tenant, server = session.tenant, self.config.server
        daily, per_minute = server.daily_usd(tenant), server.turns_per_minute(tenant)
        if daily is None and per_minute is None:
            return None
        try:
            return await self.registry.admit(tenant, self.clock(), daily, per_minute)
        except TurnRefusedError as refusal:
            self.telemetry.turns_refused.labels(tenant, refusal.kind).inc()
            raise

    async def _record(self, session: Session, worker: Worker, result: ResultMessage, seconds: float) -> None:
        """A finished turn: what the gateway metered for its calls, and its outcome."""
        session.metrics.last_turn_ms = round(seconds * 1000, 3)
        usage = worker.grant.take() + TurnUsage(api_error=is_api_error(result))
        add_usage(session.metrics, usage)
        self.telemetry.turn_finished(session.owner, usage, seconds)
        await self._charge(session.tenant, usage, 1, worker.grant.tally)

    async def _bill_unfinished(self, session: Session, worker: Worker) -> None:
        """Calls of a turn that never finished (its CLI died or was killed) were billed all the same."""
        usage = worker.grant.take()
        add_usage(session.metrics, usage)
        self.telemetry.usage(session.owner, usage)
        if usage.cost or any(usage.tokens().values()):
            await self._charge(session.tenant, usage, 0, worker.grant.tally)

    async def _charge(self, tenant: str, usage: TurnUsage, turns: int, tally: Tally) -> None:
        """Add spend to the tenant's day in the registry (what budgets and ``/v1/usage`` read);
        ``tally`` metered it, and counts it as charged once written."""
        self._uncharged.append((tally, (tenant, self.clock(), usage.cost, sum(usage.tokens().values()), turns)))
        await self._charge_pending()

    async def _charge_pending(self) -> None:
        """Write the charges not yet written; a database away keeps them for the next turn or pass."""
        while self._uncharged:
            tally, charge = pending = self._uncharged.popleft()  # taken first: two callers never write one twice
            try:
                await self.registry.charge(*charge)
            except DatabaseUnavailableError:
                self._uncharged.appendleft(pending)
                log.warning("usage_charge_deferred", pending=len(self._uncharged))
                return
            tally.charged += charge[2]

    def _count_connection_error(self, session: Session) -> None:
        session.metrics.connection_errors += 1
        self.telemetry.connection_errors.labels(session.tenant).inc()

    async def _wind_down(self, session: Session, worker: Worker, began: float) -> None:
        """Interrupt the running turn and drain it; discard the worker if it will not stop."""
        try:
            async with asyncio.timeout(INTERRUPT_GRACE_SECONDS):
                await worker.client.interrupt()
                async for message in worker.client.receive_response():
                    _learn_conversation(session, message)
                    if isinstance(message, ResultMessage):
                        await self._record(session, worker, message, time.perf_counter() - began)
                        return
        except Exception as error:
            log.warning("turn_wind_down_failed", session_id=session.id, error=repr(error))
        await self._drop_worker(session, worker)

    async def _drop_worker(self, session: Session, worker: Worker) -> None:
        """Kill a worker that failed this turn (died, stuck, or cut mid-prompt)."""
        if session.worker is worker:
            session.worker = None
        await self.pool.discard(worker, graceful=False)
        await self._bill_unfinished(session, worker)

    def _live_state(self) -> LiveState:
        sessions = self.session_manager.sessions()
        return LiveState(
            sessions=Counter((s.tenant, s.state) for s in sessions),
            workers=Counter(w.state.value for w in self.pool.workers()),
        )

    # -- maintenance -------------------------------------------------------------

    async def run_maintenance(self) -> dict[str, Any]:
        """One maintenance pass: this node's workers always; the deployment's sessions if this node leads.

        Inactive and orphan cleanup and retention run on one node at a time (the
        registry's leader lock); idle release, stray CLIs, pool health and refill on each.
        """
        manager = self.session_manager
        inactive: list[str] = []
        orphans: list[str] = []
        purged = 0
        await self._charge_pending()
        if await self.registry.lead():
            inactive = await manager.cleanup_inactive_sessions()
            orphans = await manager.detect_orphaned_sessions()
            purged = await self._purge_transcripts()
        else:
            await manager.reap_unowned()
        released = await manager.release_idle_workers()
        retired = await self.pool.health_check()
        spawned = await self.pool.fill()
        log.info(
            "cleanup_run",
            active_sessions=len(manager),
            pool_size=len(self.pool.workers()),
            orphans=len(orphans),
            inactive_removed=len(inactive),
            idle_released=len(released),
            transcripts_purged=purged,
            workers_retired=retired,
            workers_spawned=spawned,
        )
        return {"inactive": inactive, "orphaned": orphans, "released": released, "retired": retired, "spawned": spawned}

    async def _purge_transcripts(self) -> int:
        """Delete removed sessions' transcripts past ``SM_TRANSCRIPT_RETENTION_DAYS``; forget old replies and nodes."""
        now = time.time()
        days = self.config.session_manager.TRANSCRIPT_RETENTION_DAYS
        names = await self.registry.take_retired_transcripts(retired_before=now - days * 86400)
        for name in names:
            await self.archive.delete(name)
        await self.registry.forget_replies(older_than=now - REPLAY_SECONDS)
        await self.registry.forget_nodes(unseen_since=now - FORGET_NODES_SECONDS)
        return len(names)


def _held_elsewhere(session_id: str, holder: Holder) -> SessionHeldElsewhereError:
    message = f"session {session_id!r} runs on node {holder.node_id}"
    return SessionHeldElsewhereError(message, session_id, holder.node_id, holder.url)


class PooledClient:
    """What ``_get_or_create_pooled_client`` returns: await it for a lent client, or
    use it with ``async with`` to have the client handed back at the end."""

    def __init__(self, handler: ClaudeHandler, config: SessionConfig) -> None:
        self._handler, self._config = handler, config
        self._client: ClaudeSDKClient | None = None

    def __await__(self) -> Generator[Any, None, ClaudeSDKClient]:
        return self.__aenter__().__await__()

    async def __aenter__(self) -> ClaudeSDKClient:
        self._client = await self._handler._lend(self._config)
        return self._client

    async def __aexit__(self, *exc: object) -> None:
        if self._client is not None:
            await self._handler._return_pooled_client(self._client)


def slash_command(prompt: str) -> str | None:
    """The CLI command a message starts with (``"/model x"`` -> ``"model"``), or None."""
    text = prompt.lstrip()
    if not text.startswith("/"):
        return None
    return text[1:].split(maxsplit=1)[0] if text[1:].strip() else ""


def _learn_conversation(session: Session, message: Message) -> bool:
    """Track the CLI's conversation id; True when something new was learned.

    The id is known from a turn's ``init`` message, before the CLI writes the
    transcript (it changes on ``/clear``, not on resume); a model reply, or the
    result of a turn that reached the API, proves the transcript exists.
    """
    if isinstance(message, SystemMessage) and message.subtype == "init":
        claude_id, recorded = message.data.get("session_id"), False
    elif isinstance(message, AssistantMessage) or (isinstance(message, ResultMessage) and message.duration_api_ms > 0):
        claude_id, recorded = message.session_id, True
    else:
        return False
    if not claude_id:
        return False
    if claude_id != session.claude_session_id:
        session.claude_session_id, session.recorded = claude_id, recorded
        return True
    if recorded and not session.recorded:
        session.recorded = True
        return True
    return False
