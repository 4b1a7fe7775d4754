"""One live Claude Code CLI process behind a connected ``ClaudeSDKClient``.

A worker knows its process, its age and its use count, and owns the three
pieces of I/O that touch the process: connect, reset (``/clear``) and close.
Every one is bounded in time; a process that will not close is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import itertools
import time
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import psutil
import structlog
from claude_agent_sdk import (
    CanUseToolShadowedWarning,
    ClaudeAgentOptions,
    ClaudeSDKClient,
    Message,
    ResultMessage,
    SystemMessage,
)

from claude_sessions.config import SessionConfig
from claude_sessions.content import Content
from claude_sessions.errors import WorkerStartError
from claude_sessions.gateway.relay import Grant
from claude_sessions.workers.client_tools import SERVER, ClientTools
from claude_sessions.workers.permission_gate import PermissionGate

log = structlog.get_logger("claude_sessions.worker")

#: System messages a CLI sends between turns without doing anything (seen: at start-up).
QUIET_NOTICES = frozenset({"ui_invalidate"})
#: What a CLI sends after a turn whose prompt carried a ``uuid``: that prompt's lifecycle (``completed``).
PROMPT_NOTICE = "command_lifecycle"
#: Warm-up rounds (a turn the gateway answers, then ``/clear``) a spare has before it is
#: pooled. A CLI's code gets faster over its first conversations, not only its first
#: turn: measured, a fresh spare's first turn against a later one after 1 round was
#: 1.5-2.1x, after 3 rounds 1.2-1.6x, after 6-10 rounds no better, at ~0.17 s a round.
WARM_UP_ROUNDS = 3
_ids = itertools.count(1)
#: By design: a session's allowed tools run unasked, only its ``ask_tools`` reach the gate.
warnings.filterwarnings("ignore", category=CanUseToolShadowedWarning)


class WorkerState(enum.StrEnum):
    CONNECTING = "connecting"
    IDLE = "idle"  # in the pool, ready to be taken
    BOUND = "bound"  # serving a session
    LENT = "lent"  # its client handed to a caller (the seed's ``_get_or_create_pooled_client``)
    RESETTING = "resetting"  # /clear on its way back to the pool
    CLOSING = "closing"
    CLOSED = "closed"


@dataclass(eq=False)
class Worker:
    """A CLI process; state changes happen under the pool's lock, I/O outside it."""

    #: The options it runs with; a worker serves only sessions with exactly these.
    config: SessionConfig
    client: ClaudeSDKClient
    process: Any  # anyio Process of the CLI, kept so it can be killed after disconnect
    #: Its token at the model gateway, and what its calls used.
    grant: Grant
    id: str = field(default_factory=lambda: f"w{next(_ids)}")
    created_at: float = field(default_factory=time.monotonic)
    uses: int = 0
    state: WorkerState = WorkerState.CONNECTING
    #: False once a turn failed in a way that leaves the process in doubt.
    reusable: bool = True
    #: The model the process reported first (its launch model, resolved by the CLI).
    model: str | None = None
    #: The conversations of its warm-up turns (their transcripts are no session's).
    warmed_conversations: list[str] = field(default_factory=list)
    #: The processes the CLI started for its sandbox (socat bridges), seen at connect: a CLI
    #: that dies leaves them running, with no parent left to find them by.
    helpers: list[psutil.Process] = field(default_factory=list)
    #: Where its CLI asks about tool calls (options with ``ask_tools`` only): the turn holding it.
    gate: PermissionGate | None = None
    #: The functions a turn's client offers (OpenAI's function calling), listed by its CLI.
    client_tools: ClientTools = field(default_factory=ClientTools)

    @property
    def fingerprint(self) -> str:
        return self.config.fingerprint

    @property
    def pid(self) -> int:
        return int(self.process.pid)

    def is_alive(self) -> bool:
        return self.process.returncode is None

    async def exited(self) -> None:
        """Return when the CLI process has ended, for whatever reason."""
        with contextlib.suppress(Exception):  # a process already reaped counts as ended
            await self.process.wait()

    def age_seconds(self, now: float | None = None) -> float:
        return (now or time.monotonic()) - self.created_at

    def has_expired(self, max_age_seconds: float, max_uses: int) -> bool:
        return self.age_seconds() >= max_age_seconds or self.uses >= max_uses

    def is_healthy(self) -> bool:
        return self.reusable and self.is_alive()

    def settle(self) -> bool:
        """Drain what arrived while no turn was reading; False if the CLI acted on its own.

        Anything but a repaint notice or a prompt's lifecycle (a reply left unread, a turn the CLI started by
        itself, the end of its output) would be taken for the next turn's replies, so
        such a worker must serve no further turn.
        """
        query = self.client._query
        if query is None:
            return False
        while True:
            try:
                message = query._message_receive.receive_nowait()
            except anyio.WouldBlock:
                return True
            except (anyio.EndOfStream, anyio.ClosedResourceError):
                return False
            kind = message.get("type")
            if not (kind == PROMPT_NOTICE or (kind == "system" and message.get("subtype") in QUIET_NOTICES)):
                log.warning("worker_acted_unasked", worker=self.id, message_type=kind)
                self.reusable = False
                return False

    def runs_as_launched(self, message: Message) -> bool:
        """Check a turn's ``init`` message: False if the model or permission mode drifted.

        Every turn (``/clear`` included) starts with one, naming the process's live
        model and mode; a worker that drifted (``/model``, ...) is never handed on.
        """
        if not (isinstance(message, SystemMessage) and message.subtype == "init"):
            return True
        model, mode = message.data.get("model"), message.data.get("permissionMode")
        if self.model is None:
            self.model = model
        expected_mode = self.config.permission_mode or "default"
        if model == self.model and mode == expected_mode:
            return True
        log.warning("worker_drifted", worker=self.id, model=model, expected_model=self.model, permission_mode=mode)
        self.reusable = False
        return False

    @classmethod
    async def start(cls, config: SessionConfig, options: ClaudeAgentOptions, grant: Grant, timeout: float) -> Worker:
        """Spawn and connect a CLI process holding ``grant``'s token, or raise :class:`WorkerStartError`."""
        gate = PermissionGate() if config.ask_tools else None
        if gate is not None:
            options = dataclasses.replace(options, can_use_tool=gate.can_use_tool)
        client_tools = ClientTools()
        options = dataclasses.replace(
            options,
            mcp_servers={SERVER: client_tools.config},
            allowed_tools=[*options.allowed_tools, f"mcp__{SERVER}"],  # they run on the client, never here
            env={**options.env, "ENABLE_TOOL_SEARCH": "false"},  # else the model sees their names, not their schemas
        )
        client = ClaudeSDKClient(options)
        began = time.perf_counter()
        try:
            async with asyncio.timeout(timeout):
                await client.connect()
        except BaseException as error:
            # connect() disconnects on its own failure, but a timeout or a
            # cancellation may cut that short: make sure no process survives.
            _kill(_process_of(client))
            if isinstance(error, TimeoutError):
                raise WorkerStartError(f"CLI did not connect within {timeout:g}s") from None
            if isinstance(error, Exception):
                raise WorkerStartError(f"CLI could not start: {error}") from error
            raise
        process = _process_of(client)
        worker = cls(config=config, client=client, process=process, grant=grant, gate=gate, client_tools=client_tools)
        worker.helpers = _descendants(worker.process)
        log.debug("worker_connected", worker=worker.id, pid=worker.pid, seconds=round(time.perf_counter() - began, 3))
        return worker

    async def ask(self, prompt: Content, verbatim: bool, uuid: str | None = None) -> None:
        """Send a user message (text, or text and image blocks); ``verbatim`` makes the CLI take it as plain text.

        Marked ``client_composed``, a message is never dispatched as a CLI command
        nor expanded (``@/path`` would make the CLI read a file of the host). ``uuid`` is the id the
        CLI gives the prompt's transcript entry: how a turn is found there after its node died.
        """
        message: dict[str, Any] = {
            "type": "user",
            "message": {"role": "user", "content": prompt},
            "parent_tool_use_id": None,
        }
        message.update({"client_composed": True} if verbatim else {})
        message.update({"uuid": uuid} if uuid else {})

        async def composed() -> AsyncIterator[dict[str, Any]]:
            yield message

        await self.client.query(composed())

    async def warm_up(self, timeout: float) -> bool:
        """Pay the CLI's first-turn costs now, on ``WARM_UP_ROUNDS`` turns the gateway answers.

        A fresh CLI spends ~100 ms on its first model response whatever it is asked,
        and its first few conversations stay slower than later ones; a spare warmed up
        this way answers its first real turn nearly like a reused worker. Each round ends with
        ``/clear``. Returns whether the worker is ready for a session (reset and as launched).
        """
        deadline = asyncio.get_running_loop().time() + timeout
        for _ in range(WARM_UP_ROUNDS):
            if not await self._warm_up_round(deadline):
                return False
        return True

    async def _warm_up_round(self, deadline: float) -> bool:
        self.grant.warming = True
        try:
            async with asyncio.timeout_at(deadline):
                await self.ask("warm-up", verbatim=True)
                async for message in self.client.receive_response():
                    self.runs_as_launched(message)
                    if isinstance(message, ResultMessage):
                        self.warmed_conversations.append(message.session_id)
        except Exception as error:
            log.info("worker_warm_up_failed", worker=self.id, error=repr(error))
            return False
        finally:
            self.grant.warming = False
            self.grant.take()  # nothing was billed; nothing of it belongs to a session
        return await self.reset(deadline - asyncio.get_running_loop().time())

    async def reset(self, timeout: float) -> bool:
        """Start a new, empty conversation (``/clear``); False if that failed or the
        process no longer runs with its launch model and permission mode."""
        try:
            async with asyncio.timeout(timeout):
                await self.client.query("/clear")
                async for message in self.client.receive_response():
                    self.runs_as_launched(message)
                    if isinstance(message, ResultMessage):  # /clear's own: no model turn in it
                        return not message.is_error and message.num_turns == 0 and self.is_healthy()
        except Exception as error:
            log.info("worker_reset_failed", worker=self.id, error=repr(error))
        return False

    async def close(self, timeout: float, graceful: bool = True) -> None:
        """Disconnect within ``timeout`` seconds, else kill the process. Never raises.

        Not ``graceful``: kill first (a process in doubt, e.g. half a prompt written),
        then let the SDK clean up its side.
        """
        # The sandbox's helpers (socat bridges): a CLI that is killed leaves them running.
        helpers = {*self.helpers, *_descendants(self.process)}
        if not graceful:
            _kill(self.process)
        try:
            async with asyncio.timeout(timeout):
                await self.client.disconnect()
        except Exception as error:
            log.warning("worker_close_forced", worker=self.id, pid=self.pid, error=repr(error))
        finally:
            # Also on cancellation: a SIGKILL needs no await, and asyncio reaps the child.
            _kill(self.process)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await self.process.wait()
        for helper in helpers:
            with contextlib.suppress(psutil.Error):
                helper.kill()  # psutil checks the pid still names the same process


def _process_of(client: ClaudeSDKClient) -> Any:
    """The anyio ``Process`` behind a client (the SDK does not expose it publicly)."""
    transport = client._transport
    return getattr(transport, "_process", None)


def _descendants(process: Any) -> list[psutil.Process]:
    if process is None or process.returncode is not None:
        return []
    try:
        return list(psutil.Process(process.pid).children(recursive=True))
    except psutil.Error:
        return []


def _kill(process: Any) -> None:
    if process is not None and process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
