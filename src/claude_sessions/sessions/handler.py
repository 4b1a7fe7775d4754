"""The seed's ``ClaudeHandler``: the library's front, which wires the layers together.

It builds the store, the gateway, the pool, the session manager, this node, billing and the
turn runner, starts and closes them, and answers the seed's calls by handing each to its owner:
turns to :class:`Turns`, lent clients to :class:`Lender`, maintenance passes to the manager and pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import uuid
from collections import Counter
from collections.abc import AsyncGenerator, Sequence
from pathlib import Path
from typing import Any

import anyio
import structlog
from claude_agent_sdk import ClaudeSDKClient

from claude_sessions.cluster.node import Node
from claude_sessions.config import SessionConfig, SystemConfig
from claude_sessions.content import Content, check_content, slash_command
from claude_sessions.errors import (
    ConfigError,
    HandlerClosedError,
    PermissionNotFoundError,
    SlashCommandRefusedError,
    ToolCallNotFoundError,
)
from claude_sessions.gateway.relay import ModelGateway, credentials_of
from claude_sessions.observability.telemetry import DEFAULT_TENANT, LiveState, Telemetry
from claude_sessions.offline_model import OfflineModelServer, loopback_env
from claude_sessions.sessions.billing import Billing
from claude_sessions.sessions.lending import Lender, PooledClient
from claude_sessions.sessions.maintenance import Maintenance, maintenance_pass
from claude_sessions.sessions.manager import ClaudeCodeSessionManager
from claude_sessions.sessions.node_services import NodeServices
from claude_sessions.sessions.permissions import Behavior, PermissionRequest, Scope
from claude_sessions.sessions.replies import Reply
from claude_sessions.sessions.session import Session
from claude_sessions.sessions.turn_events import stop_turn
from claude_sessions.sessions.turn_options import TurnOptions
from claude_sessions.sessions.turns import Turns
from claude_sessions.sessions.worker_events import WorkerEvents, worker_pool
from claude_sessions.store.backends import open_registry
from claude_sessions.store.history import Turn
from claude_sessions.store.records import Origin
from claude_sessions.workers.containment import Containment
from claude_sessions.workers.pool import StartWorker, WorkerPool
from claude_sessions.workers.processes import DataDirLock, data_dir_mark, end_stray_processes
from claude_sessions.workers.sandbox import check_host, sandbox_on
from claude_sessions.workers.worker import Worker
from claude_sessions.workers.workspaces import session_cwd, tenant_of

log = structlog.get_logger("claude_sessions.handler")

SESSION_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")


class ClaudeHandler(NodeServices):
    """Creates sessions, runs their turns and keeps the machinery healthy."""

    def __init__(self, config: SystemConfig | None = None, *, start_worker: StartWorker = Worker.start) -> None:
        """``start_worker`` starts one CLI: ``Worker.start``; tests pass a fake to check the logic alone."""
        self.config = config or SystemConfig.from_env()
        check_host(self.config)
        self.telemetry = Telemetry()
        self.clock = time.time
        runtime = self.config.runtime
        self._data_dir_lock = DataDirLock(runtime.DATA_DIR.resolve())
        self.registry, self.archive = open_registry(self.config, uuid.uuid4().hex[:12])
        #: This data directory's mark on every CLI it starts (found again after a crash).
        self._mark = data_dir_mark(runtime.DATA_DIR)
        #: What one session's tools may take of this host (``LIMITS``): its cgroups, disks and view.
        try:
            self.containment = Containment.prepare(self.config, self._mark, sandbox_on(runtime))
        except ConfigError:
            self._data_dir_lock.release()
            raise
        #: Neither credentials nor an endpoint: the offline model answers, as ``serve`` does (see ``_start``).
        self._offline_model = None if runtime.has_model_credentials else OfflineModelServer()
        self.gateway = ModelGateway(
            runtime.ANTHROPIC_BASE_URL,
            credentials_of(runtime),
            timeout=self.config.optimization.CLI_API_TIMEOUT,
            permits_model=self.config.server.permits_model,
        )
        self.pool = self._worker_pool(start_worker)
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
        self.billing = Billing(self.registry, self.telemetry, self.config.server, lambda: self.clock())
        manager, pool = self.session_manager, self.pool
        self.turns = Turns(
            self.config, manager, pool, self.gateway, self.billing, self.telemetry, self.archive, self.node
        )
        self.lender = Lender(self.pool, self.turns.acquire, self.config.optimization.DESTROY_TIMEOUT)
        self.session_manager.load_now()
        self.telemetry.watch(self._live_state)
        self.maintenance = Maintenance(self.config.session_manager.CLEANUP_INTERVAL * 60, self.run_maintenance)
        self._opened: asyncio.Task[None] | None = None
        self._started: asyncio.Task[None] | None = None
        self._closed = False

    def _worker_pool(self, start_worker: StartWorker) -> WorkerPool:
        """The pool, told of its workers' events here (the session manager, made after it, is read late)."""
        return worker_pool(
            self.config,
            WorkerEvents(
                self.gateway,
                self.registry,
                self.archive,
                self.telemetry,
                tenant_of=lambda session: tenant_of(session, self.config),
                project_of=lambda session: self.session_manager.conversations.project_of(session),
                mark=self._mark,
                containment=self.containment,
                let_go=lambda worker: self.session_manager.let_go_dead(worker),
            ),
            start_worker,
        )

    # -- lifecycle -------------------------------------------------------------

    async def open(self) -> None:
        """Open the stores, join the cluster, start the heartbeat: what a request needs. Runs once,
        callers share it; the server listens after it, while the pool warms."""
        if self._closed:
            raise HandlerClosedError("handler is closed")
        if self._opened is None:
            self._opened = asyncio.get_running_loop().create_task(self._open())
        await asyncio.shield(self._opened)

    async def start(self) -> None:
        """:meth:`open`, then warm the pool and start maintenance; runs once, callers share it."""
        await self.open()
        if self._started is None:
            self._started = asyncio.get_running_loop().create_task(self._warm())
        await asyncio.shield(self._started)

    @property
    def warming(self) -> bool:
        """The pool's first spares are not up yet (:meth:`start` has not finished)."""
        return self._started is None or not self._started.done()

    async def _open(self) -> None:
        self.config.runtime.config_dir.mkdir(parents=True, exist_ok=True)
        self.config.runtime.workspace_root.mkdir(parents=True, exist_ok=True)
        await self.registry.open()
        await self.archive.open()
        await self.session_manager.unsaved.write_left(self.registry)  # after the transcripts it counts
        # CLI processes an earlier run on this data directory recorded, read before this run records its own.
        earlier = await self.registry.pids.take(self._mark)
        await self.registry.nodes.join(self._mark)
        ended = await asyncio.to_thread(end_stray_processes, earlier, self._mark)
        if ended:
            log.info("stray_cli_ended", pids=ended)
        if self._offline_model is not None:
            await asyncio.to_thread(self._offline_model.start)
            url = self._offline_model.base_url
            self.gateway.point_at(url, {"x-api-key": loopback_env(url)["ANTHROPIC_API_KEY"]})
            log.warning("offline_model_answers", reason="no Anthropic credentials and no ANTHROPIC_BASE_URL", url=url)
        await self.gateway.start()
        await self.session_manager.refresh()
        await self.node.beat()
        self.node.start()

    async def _warm(self) -> None:
        spares = await self.pool.fill()
        self.maintenance.start()
        log.info(
            "handler_started",
            warm_workers=spares,
            sessions=len(self.session_manager),
            max_sessions=self.config.session_manager.MAX_SESSIONS,
        )

    async def close(self) -> None:
        """Stop maintenance and close every CLI process; sessions stay in the store."""
        if self._closed:
            return
        self._closed = True
        await self.maintenance.stop()
        for starting in (self._opened, self._started):
            if starting is not None and not starting.done():
                starting.cancel()
        self.lender.lent.clear()  # the pool closes them with every other worker
        await self.node.stop()
        count = await self.session_manager.close()
        await self.gateway.close()
        if self._offline_model is not None:
            await asyncio.to_thread(self._offline_model.stop)
        await self.archive.close()
        await self.registry.close()
        await asyncio.to_thread(self.containment.close)
        self._data_dir_lock.release()
        log.info("handler_closed", sessions=count)

    async def _after_beat(self) -> None:
        """Drop CLIs of sessions another node took over; write what a database outage held back."""
        await self.session_manager.check_leases()
        await self.session_manager.save_unsaved()
        await self.archive.catch_up()

    async def shutdown_pool(self) -> None:
        """Close every pooled worker; sessions resume in new workers on their next message."""
        for session in self.session_manager.sessions():
            session.unbind()
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
        origin: Origin = "sessions",
        user_limit: int | None = None,
    ) -> str:
        """Register a session and bind a worker to it; returns its registry key.

        Without ``owner`` the key is the id itself; a tenant's sessions live in
        the tenant's own namespace (``session_key``), capped by ``owner_limit``; its end user's
        (``config.user``) by ``user_limit``.
        ``history`` (earlier user and assistant messages) becomes the conversation
        the session continues: its first turn resumes it in a new CLI. ``origin``: the way in
        that made it, as its listing shows.
        """
        if session_id is not None and not (isinstance(session_id, str) and SESSION_ID.fullmatch(session_id)):
            raise ValueError("session_id must match [A-Za-z0-9._-]{1,128}")
        config = config or SessionConfig()
        session_cwd(config, self.config)  # raises ValueError for a cwd outside the workspace
        await self.start()
        session_id = session_id or uuid.uuid4().hex
        manager = self.session_manager
        tenant = owner or DEFAULT_TENANT
        session = await manager.create(
            session_id, config, metadata, owner, owner_limit, hold=not history, origin=origin, user_limit=user_limit
        )
        key = session.id
        if history:
            await manager.import_conversation(session, history)
            self.telemetry.sessions_created.labels(tenant).inc()
            log.info("session_created", session_id=session_id, tenant=owner, imported_messages=len(history))
            return key
        try:
            worker = await self.turns.acquire(config)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await manager.drop(session)
            raise
        if session.closed:  # destroyed while its worker was starting
            await self.session_manager.give_back(worker)
        else:
            self.turns.attach(session, worker)
            session.metrics.touch()  # inactivity counts from when the session is ready, not from the request
            await manager.save(session)
        self.telemetry.sessions_created.labels(tenant).inc()
        log.info("session_created", session_id=session_id, tenant=owner, pool_size=len(self.pool.workers()))
        return key

    async def destroy_session(self, session_id: str, purge: bool = False, *, forwarded: bool = False) -> None:
        """Unregister a session; a running turn is interrupted, the worker returns to the pool.

        ``purge`` deletes the transcript now instead of after the retention period.
        ``forwarded``: another node sent this request here as the session's holder.
        """
        await self.turns.refuse_if_held_elsewhere(session_id, forwarded=forwarded)
        session = await self.session_manager.remove_session(session_id, purge)
        if session.is_busy and session.worker is not None:
            await stop_turn(session, session.worker)
        log.info("session_destroyed", session_id=session_id)

    async def interrupt(self, session: str | Session, *, forwarded: bool = False) -> None:
        """Stop the running turn of a session (nothing happens when it is idle); by id, or
        the :class:`Session` a caller has just read."""
        await self.turns.interrupt(await self._session(session), forwarded=forwarded)

    def get_pool_status(self, workspace: Path | None = None) -> dict[str, Any]:
        """The pool's status; with ``workspace``, only the workers working inside it, and no pids."""
        return self.pool.status(workspace)

    def _get_or_create_pooled_client(self, config: SessionConfig | None = None) -> PooledClient:
        """The seed's pool call: a connected ``ClaudeSDKClient`` for ``config``, warm when one is idle.

        ``client = await handler._get_or_create_pooled_client(config)`` lends it until
        ``await handler._return_pooled_client(client)``; ``async with`` on the same call
        returns it by itself. Lent clients count in ``get_pool_status()`` (state
        ``lent``), stay within ``CP_MAX_LIVE``, and are closed by ``close()`` if the
        caller never gave them back.
        """
        config = config or SessionConfig()

        async def lend() -> ClaudeSDKClient:
            await self.start()
            return await self.lender.lend(config)

        return PooledClient(lend, self.lender)

    async def _return_pooled_client(self, client: ClaudeSDKClient) -> None:
        """Take back a lent client: reset with ``/clear`` and pooled, or closed."""
        await self.lender.take_back(client)

    # -- turns ------------------------------------------------------------------

    async def send_message(
        self, session: str | Session, prompt: Content, *, forwarded: bool = False, options: TurnOptions | None = None
    ) -> AsyncGenerator[Reply, None]:
        """Run one turn and yield the SDK's messages, ending with the ``ResultMessage``.

        A session with ``ask_tools`` also yields a :class:`PermissionRequest` for each asked call
        (answer it with :meth:`decide_permission`; the turn waits) and a ``PermissionResolved``
        when it is answered; a turn offering ``functions`` a :class:`ClientToolCall` for each call
        (answer it with :meth:`answer_tool_call`; the turn waits). ``options`` (:class:`TurnOptions`):
        what the turn asks beyond the session's options (no one to ask, an end user's limits, a schema
        for the answer, the caller's functions).
        ``session``: its id, or the :class:`Session` a caller has just read (read once per request).
        ``prompt``: text, or the Messages API's ``text`` and ``image`` blocks; bad content raises
        :class:`InvalidContentError` (``InvalidImageError``, ``ImageTooLargeError``).
        A message starting with a CLI command outside ``SLASH_COMMANDS_ALLOWED``
        raises :class:`SlashCommandRefusedError`: commands such as ``/config`` or
        ``/model`` would change settings that belong to the operator.
        """
        prompt = check_content(prompt, self.config.server.IMAGE_MAX_BYTES)
        command = slash_command(prompt) if isinstance(prompt, str) else None
        if command is not None and command not in self.config.server.slash_commands_allowed:
            raise SlashCommandRefusedError(command)
        await self.start()
        session = await self._session(session)
        async with contextlib.aclosing(
            self.turns.run(session, prompt, command, forwarded=forwarded, options=options)
        ) as turn:
            async for message in turn:
                yield message

    async def permission_requests(self, session: str | Session, *, forwarded: bool = False) -> list[PermissionRequest]:
        """The session's tool calls waiting for their user's answer (``GET .../permissions``)."""
        approvals = await self.turns.approvals_of(await self._session(session), forwarded=forwarded)
        return [] if approvals is None else approvals.requests()

    async def decide_permission(
        self,
        session: str | Session,
        request_id: str,
        behavior: Behavior,
        message: str | None = None,
        scope: Scope = "once",
        *,
        forwarded: bool = False,
    ) -> None:
        """Allow or deny a pending :class:`PermissionRequest`; ``scope="session"`` allows that tool (for
        Bash, that command prefix) unasked for the rest of the session. A deny's ``message`` reaches the model.

        Raises ``PermissionNotFoundError`` (unknown id), ``PermissionDecidedError`` (answered before)
        or ``PermissionExpiredError`` (denied by ``PERMISSION_TIMEOUT_SECONDS``).
        """
        if behavior not in ("allow", "deny") or scope not in ("once", "session"):
            raise ValueError("behavior must be 'allow' or 'deny', scope 'once' or 'session'")
        approvals = await self.turns.approvals_of(await self._session(session), forwarded=forwarded)
        if approvals is None:
            raise PermissionNotFoundError(f"permission request {request_id!r} not found")
        approvals.decide(request_id, behavior, message, scope)

    @staticmethod
    def answer_tool_call(session: Session, call_id: str, result: str, *, is_error: bool = False) -> None:
        """Return the result of a :class:`ClientToolCall` the session's running turn yielded: the CLI,
        waiting for it, goes on. Raises :class:`ToolCallNotFoundError` when no such call waits."""
        if session.client_calls is None:
            raise ToolCallNotFoundError(f"no call {call_id!r} waits for its result in this session")
        session.client_calls.answer(call_id, result, is_error=is_error)

    async def _session(self, session: str | Session) -> Session:
        return session if isinstance(session, Session) else await self.session_manager.fetch(session)

    def _live_state(self) -> LiveState:
        sessions = self.session_manager.sessions()
        return LiveState(
            sessions=Counter((s.tenant, s.state) for s in sessions),
            workers=Counter(w.state.value for w in self.pool.workers()),
            live_workers=self.pool.live_count(),
            max_workers=self.pool.max_live,
            max_idle_workers=self.pool.limits.MAX_SIZE,
            database_up=self.node.database_ok,
        )

    # -- maintenance -------------------------------------------------------------

    async def run_maintenance(self) -> dict[str, Any]:
        """One maintenance pass (see :func:`maintenance_pass`): what it removed, released, retired and spawned."""
        retention = self.config.session_manager.TRANSCRIPT_RETENTION_DAYS
        return await maintenance_pass(self.session_manager, self.pool, self.registry, self.billing, retention)
