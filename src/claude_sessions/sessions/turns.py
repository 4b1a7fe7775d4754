"""A turn's path on this node: the session's lease, its worker, the prompt, every reply, the bill.

:class:`Turns` is the one owner of a session's binding to a worker here: it binds one (resuming
the conversation in a new CLI when needed), drops one that failed a turn, and hands one back
when the session is gone or this node drains. A turn is bounded by ``OPT_MESSAGE_TIMEOUT``; a
worker that dies mid-turn fails that turn with :class:`WorkerDiedError` and the next message
resumes the same conversation in a new worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncGenerator
from typing import NoReturn

import anyio
import structlog
from claude_agent_sdk import ClaudeSDKError, Message, ResultMessage

from claude_sessions.cluster.node import Node
from claude_sessions.config import SessionConfig, SystemConfig
from claude_sessions.content import Content
from claude_sessions.errors import (
    DatabaseUnavailableError,
    LeaseLostError,
    SessionBusyError,
    SessionNotFoundError,
    SessionOrphanedError,
    TurnTimeoutError,
    WorkerDiedError,
    WorkerStartError,
)
from claude_sessions.gateway.relay import ModelGateway
from claude_sessions.observability.metrics import model_error
from claude_sessions.observability.telemetry import Telemetry
from claude_sessions.sessions.billing import Billing
from claude_sessions.sessions.client_calls import ClientToolCall
from claude_sessions.sessions.leases import Leases
from claude_sessions.sessions.permissions import Approvals
from claude_sessions.sessions.replies import Replies, Reply, TurnEvent
from claude_sessions.sessions.session import KeptAnswer, Session, learn_conversation, title_of
from claude_sessions.sessions.settling import Settling
from claude_sessions.sessions.turn_events import (
    INTERRUPT_GRACE_SECONDS,
    close_events,
    open_events,
    release_waiting,
    stop_turn,
)
from claude_sessions.sessions.turn_options import TurnOptions
from claude_sessions.sessions.view import SessionView
from claude_sessions.store.archive import TranscriptArchive
from claude_sessions.store.records import RunningTurn
from claude_sessions.store.registry import Registry
from claude_sessions.workers.pool import WorkerPool
from claude_sessions.workers.worker import Worker
from claude_sessions.workers.workspaces import tenant_of

log = structlog.get_logger("claude_sessions.handler")


class Turns:
    """Runs sessions' turns on this node's workers."""

    def __init__(
        self,
        config: SystemConfig,
        manager: SessionView,
        pool: WorkerPool,
        gateway: ModelGateway,
        billing: Billing,
        telemetry: Telemetry,
        archive: TranscriptArchive,
        node: Node,
    ) -> None:
        self.config, self.manager, self.pool, self.gateway = config, manager, pool, gateway
        self.billing, self.telemetry, self.archive, self.node = billing, telemetry, archive, node
        self.leases = Leases(manager)
        self.settling = Settling(manager.conversations, archive, config.optimization.MESSAGE_TIMEOUT)

    @property
    def registry(self) -> Registry:
        return self.manager.registry

    async def run(
        self,
        session: Session,
        prompt: Content,
        command: str | None,
        *,
        forwarded: bool,
        options: TurnOptions | None = None,
    ) -> AsyncGenerator[Reply, None]:
        """One turn of ``session``: yields the SDK's messages, ending with the ``ResultMessage``, and
        its permission events between them (``ask_tools`` only).

        ``forwarded``: another node sent this request here as the session's holder.
        """
        options = options or TurnOptions()
        if session.is_busy:
            raise SessionBusyError(f"session {session.public_id!r} is running a turn")
        claimed = False
        try:
            async with session.turn_lock:
                await self._claim(session, forwarded)
                claimed = True
                answer = session.take_answer(options.idempotency_key, prompt)
                if answer is not None:  # this very message ran, and its caller never had the answer
                    log.info("unfinished_turn_answered", session_id=session.id)
                    turn = self.settling.replayed(session, answer)
                else:
                    worker = await self._prepare(session, options)
                    turn = self._turn(session, worker, prompt, command, options)
                try:
                    if session.closed:  # destroyed while its worker was being bound: no billed turn
                        raise SessionNotFoundError(f"session {session.public_id!r} not found")
                    # aclosing: an abandoned turn winds down before the lock is released.
                    async with contextlib.aclosing(turn) as replies:
                        async for message in replies:
                            yield message
                finally:
                    with anyio.CancelScope(shield=True):
                        await self._save_turn_end(session)
        finally:
            if claimed:
                with anyio.CancelScope(shield=True):
                    await self._hand_back(session)
            self.pool.room_changed()  # the session's worker, idle again, may be given up for a waiter

    async def _prepare(self, session: Session, options: TurnOptions) -> Worker:
        """Admit the turn (budgets, rates) and bind the session's worker for it."""
        # tenant_of checks the cwd at every turn, live worker or not: a folder swapped for
        # a symlink since must not move the session (ValueError). The tally is read before
        # the day's rest: what is metered from here on, the tenant's other running turns
        # included, counts against that rest (turns at once share it).
        baseline = self.gateway.tally(tenant_of(session.config, self.config)).charged
        budget = await self.billing.admit(session, options.limits)
        session.metrics.touch()
        worker = await self._bind(session, options.worker_config(session.config))
        worker.grant.budget, worker.grant.baseline = budget, baseline
        return worker

    async def interrupt(self, session: Session, *, forwarded: bool) -> None:
        """Stop the running turn of a session (nothing happens when it is idle); its pending requests are denied."""
        if session.is_busy and session.worker is not None:
            await stop_turn(session, session.worker)
        else:
            await self.refuse_if_held_elsewhere(session.id, forwarded=forwarded)

    async def approvals_of(self, session: Session, *, forwarded: bool) -> Approvals | None:
        """A session's requests, read where its turns run: a session held by another node is answered there."""
        if not session.is_busy:
            await self.refuse_if_held_elsewhere(session.id, forwarded=forwarded)
        return session.approvals

    async def refuse_if_held_elsewhere(self, key: str, *, forwarded: bool) -> None:
        await self.leases.refuse_if_held_elsewhere(key, forwarded=forwarded)

    async def _save_turn_end(self, session: Session) -> None:
        session.metrics.touch()
        try:
            await self.manager.save(session, ending=True)
        except LeaseLostError:
            if session.worker is not None:
                await self._drop_worker(session, session.worker)

    async def _hand_back(self, session: Session) -> None:
        """After a turn: the worker goes back if the session is gone, or to another node if this one drains."""
        if session.closed:
            worker = session.unbind()
        elif self.node.status != "up":
            worker = await self.manager.let_go(session)
        else:
            return
        if worker is not None:
            await self.manager.give_back(worker)

    async def _claim(self, session: Session, forwarded: bool) -> None:
        """Take the session's lease for this turn, or send the caller to the live node holding it.

        A CLI this node kept from an older lease (another node ran turns since) holds
        a stale conversation: it is dropped and the conversation resumed afresh. A turn left
        running under the lease (its node died mid-turn) is settled by its transcript (:class:`Settling`).
        """
        claim = await self.leases.claim(session, forwarded)
        moved = claim.fence != session.fence
        if moved:  # another node, or this node's previous run, held it since: what we keep of it is stale
            session.approvals = None  # grants for the session are the holder's, not kept across a move
            session.answer = None
            if session.worker is not None:
                await self._drop_worker(session, session.worker)
        session.fence, session.holder = claim.fence, self.registry.node_id
        # Under an unchanged lease the running mark is this process's own turn, already settled here
        # (its end's save waits for the database): only a turn left under another lease is settled.
        if moved and claim.unfinished:
            session.turn = claim.turn
            await self.settling.settle(session)

    async def _bind(self, session: Session, options: SessionConfig) -> Worker:
        """The session's worker for a turn with ``options`` (its own, and this turn's output schema);
        a new one resuming the conversation if it has none, or one started with other options.

        A conversation whose transcript vanished is never silently restarted.
        """
        manager = self.manager
        if not session.orphaned and session.worker is None and await manager.conversations.is_orphaned(session):
            await manager.mark_orphaned(session)  # it holds no worker to give back
        if session.orphaned:
            raise SessionOrphanedError(f"session {session.public_id!r} lost its transcript; delete it")
        worker = session.worker
        fits = worker is not None and worker.config == options
        if worker is not None and fits and worker.is_alive() and not self.pool.is_expired(worker) and worker.settle():
            return worker
        if worker is not None and worker.is_alive():  # too old, too used, acted on its own, or other options
            log.info("session_worker_retired", session_id=session.id, worker=worker.id, uses=worker.uses)
            session.unbind(during_turn=True)
            self.manager.give_back_soon(worker)
        elif worker is not None:  # died between turns
            self._count_connection_error(session)
            session.unbind(during_turn=True)
            await self.manager.give_back(worker, reuse=False)
        try:
            worker = await self.acquire(options, resume=await manager.conversations.conversation_to_resume(session))
        except WorkerStartError:
            self._count_connection_error(session)
            raise
        self.attach(session, worker)
        if session.claude_session_id is not None:
            log.info("session_resumed", session_id=session.id, claude_session_id=session.claude_session_id)
        return worker

    def attach(self, session: Session, worker: Worker) -> None:
        """Make ``worker`` the session's CLI here, its transcript writes fenced by the session's lease (a
        write made after another node took the session is refused, never stored beside its conversation)."""
        session.bind(worker)
        self.archive.fence(worker.grant.token, (session.id, session.fence))

    async def acquire(self, config: SessionConfig, resume: str | None = None) -> Worker:
        """A worker within ``CP_MAX_LIVE``; past it, the least recently used idle session here gives its up
        (``release_idle_workers``, as maintenance's under pressure)."""
        return await self.pool.acquire(config, resume, make_room=self._make_room)

    async def _make_room(self) -> bool:
        return bool(await self.manager.release_idle_workers(needed=1))

    async def _turn(
        self, session: Session, worker: Worker, prompt: Content, command: str | None, options: TurnOptions
    ) -> AsyncGenerator[Reply, None]:
        """One turn on ``worker``, bounded as a whole (prompt written, every reply read).

        What a caller was told is committed first: the turn's count when it
        starts, the conversation id when first seen, the usage before the result.
        """
        began = time.perf_counter()
        deadline = asyncio.get_running_loop().time() + self.config.optimization.MESSAGE_TIMEOUT
        settled = False  # the turn ended, or its worker was dealt with
        asked = False  # the whole prompt reached the CLI (else its input stream is in doubt)
        running = _count_turn(session, worker, prompt, command, options.idempotency_key)
        answered: list[Message] = []  # kept for a retry should its transcript not be stored in time
        events = open_events(session, worker, options, deadline, self.config, self.telemetry)
        replies = Replies(worker.client.receive_response(), events)
        loop = asyncio.get_running_loop()
        try:
            await self.manager.save(session)
            async with asyncio.timeout_at(deadline):
                await worker.client_tools.offer(worker.client, options.functions)
                await worker.ask(prompt, verbatim=command is None, uuid=running.prompt)
            asked = True
            while not settled:
                async with asyncio.timeout_at(deadline):
                    message = await replies.next()
                if not isinstance(message, TurnEvent):
                    answered.append(message)
                    settled = await self._take(session, worker, message, began)
                if settled:
                    kept = KeptAnswer(running.key, prompt, answered) if running.key is not None else None
                    await self.settling.stored(session, deadline, kept)
                handed = loop.time()
                yield message
                if isinstance(message, ClientToolCall):  # the time its client takes is not the turn's
                    deadline += loop.time() - handed
            if isinstance(message, ResultMessage) and (failed := model_error(message)) is not None:
                raise failed  # after the turn's messages, the result included
        except TimeoutError:
            settled = True
            await self._timed_out(session, worker, began, asked, replies)
        except DatabaseUnavailableError:
            raise  # the turn ended; only its transcript waits for the database (not the CLI's failure)
        except LeaseLostError:
            settled = True  # another node runs this conversation now: this CLI must stop at once
            await replies.aclose()
            await self._drop_worker(session, worker)
            raise
        except (ClaudeSDKError, StopAsyncIteration, OSError) as error:
            settled = True
            await replies.aclose()
            await self._worker_failed(session, worker, min(deadline, loop.time() + INTERRUPT_GRACE_SECONDS))
            raise WorkerDiedError(f"the CLI process of session {session.public_id!r} failed: {error}") from error
        finally:
            # Abandoned by the caller (closed generator, cancelled stream): the shield lets the
            # turn end before the session is free again.
            with anyio.CancelScope(shield=True):
                await self._leave(session, worker, replies, (deadline, began), options, settled=settled, asked=asked)

    async def _timed_out(
        self, session: Session, worker: Worker, began: float, asked: bool, replies: Replies
    ) -> NoReturn:
        """The turn's deadline passed: count it, cut the turn short, raise :class:`TurnTimeoutError`."""
        session.metrics.timeouts += 1
        self.telemetry.turn_timeouts.labels(session.tenant).inc()
        await replies.aclose()
        await self._cut_short(session, worker, began, asked, replies)
        timeout = self.config.optimization.MESSAGE_TIMEOUT
        raise TurnTimeoutError(f"turn exceeded {timeout:g}s and was interrupted") from None

    async def _worker_failed(self, session: Session, worker: Worker, deadline: float) -> None:
        """The CLI failed mid-turn: drop it, then settle the turn by what it wrote (stored first, up to
        ``deadline``): a retry of the message runs it once, or gets its answer."""
        self._count_connection_error(session)
        await self._drop_worker(session, worker)
        with contextlib.suppress(DatabaseUnavailableError):
            await self.settling.stored(session, deadline, None)
        await self.settling.settle(session)

    async def _leave(
        self,
        session: Session,
        worker: Worker,
        replies: Replies,
        times: tuple[float, float],
        options: TurnOptions,
        *,
        settled: bool,
        asked: bool,
    ) -> None:
        """A turn's end however it came: one its caller abandoned runs on unread while a call waits for its
        user, else is cut short; its events are closed."""
        abandoned = not settled and worker is session.worker and worker.is_alive()
        if abandoned and asked and session.approvals is not None and session.approvals.pending:
            abandoned = not await self._finish_unread(session, worker, replies, times, options)
        await replies.aclose()
        if abandoned:
            await self._cut_short(session, worker, times[1], asked, replies)
        close_events(session, worker)

    async def _cut_short(self, session: Session, worker: Worker, began: float, asked: bool, replies: Replies) -> None:
        """End a turn cut short: wind down one whose prompt reached the CLI, else drop its worker
        (its input stream is in doubt)."""
        if asked:
            await self._wind_down(session, worker, began, replies.leftover)
        else:
            await self._drop_worker(session, worker)

    async def _take(self, session: Session, worker: Worker, message: Message, began: float) -> bool:
        """Learn what a CLI message tells of the session, bill its result; True once the turn ended."""
        if not worker.runs_as_launched(message):
            log.warning("session_worker_drifted", session_id=session.id)
        if learn_conversation(session, message):
            await self.manager.save(session)
        if not isinstance(message, ResultMessage):
            return False
        await self.billing.record(session, worker, message, time.perf_counter() - began)
        await self.manager.save(session)
        return True

    async def _finish_unread(
        self, session: Session, worker: Worker, replies: Replies, times: tuple[float, float], options: TurnOptions
    ) -> bool:
        """The caller left while a call waited for its user, who may answer from another connection
        (``GET .../permissions``): the turn runs on unread to its end or deadline; False if it did not end."""
        log.info("turn_continues_unread", session_id=session.id)
        deadline, began = times
        try:
            async with asyncio.timeout_at(deadline):
                while True:
                    message = await replies.next()
                    ended = not isinstance(message, TurnEvent) and await self._take(session, worker, message, began)
                    if options.unread is not None:
                        await options.unread(message)
                    if ended:
                        return True
        except (Exception, StopAsyncIteration) as error:
            log.info("turn_unread_ended", session_id=session.id, error=repr(error))
        return False

    def _count_connection_error(self, session: Session) -> None:
        session.metrics.connection_errors += 1
        self.telemetry.connection_errors.labels(session.tenant).inc()

    async def _wind_down(self, session: Session, worker: Worker, began: float, leftover: Message | None = None) -> None:
        """Interrupt the running turn and drain it; discard the worker if it will not stop."""
        release_waiting(session)  # a call waiting for its user or its client would hold the CLI back
        try:
            async with asyncio.timeout(INTERRUPT_GRACE_SECONDS):
                # Read while the interrupt is on its way: its answer comes after what the CLI already
                # wrote, and replies left unread (a stalled client's turn) would hold it back.
                async with asyncio.TaskGroup() as interrupting:
                    interrupting.create_task(worker.client.interrupt())
                    result = await self._drain(session, worker, leftover)
                await self.billing.record(session, worker, result, time.perf_counter() - began)
                return
        except Exception as error:
            log.warning("turn_wind_down_failed", session_id=session.id, error=repr(error))
        await self._drop_worker(session, worker)

    @staticmethod
    async def _drain(session: Session, worker: Worker, leftover: Message | None) -> ResultMessage:
        """The rest of a turn, read to its ``ResultMessage`` (``leftover``: one read already)."""
        if isinstance(leftover, ResultMessage):
            return leftover
        async for message in worker.client.receive_response():
            learn_conversation(session, message)
            if isinstance(message, ResultMessage):
                return message
        raise WorkerDiedError("the CLI ended the turn without a result")

    async def _drop_worker(self, session: Session, worker: Worker) -> None:
        """Kill a worker that failed this turn (died, stuck, or cut mid-prompt)."""
        if session.worker is worker:
            session.unbind(during_turn=True)
        await self.manager.give_back(worker, reuse=False, graceful=False)
        await self.billing.bill_unfinished(session, worker)


def _count_turn(session: Session, worker: Worker, prompt: Content, command: str | None, key: str | None) -> RunningTurn:
    """A turn starts on ``worker``: both count it; the session's first message is its title. Its prompt
    gets the uuid the CLI records it under (``session.turn``, saved before the prompt is sent)."""
    turn = session.turn = RunningTurn(str(uuid.uuid4()), key)
    worker.uses += 1
    worker.grant.take()  # calls made between turns (none expected) are no turn's
    session.metrics.message_count += 1
    if session.title is None and command is None:  # a CLI command is no title
        session.title = title_of(prompt)
    return turn
