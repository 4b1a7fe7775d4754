"""A worker with no CLI behind it, for the pool's, manager's and handler's own logic (fast tests).

It keeps the real :class:`Worker`'s state and predicates and fakes only its process I/O:
starting, warming up, ``/clear`` and closing. Each can be told to fail.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field
from typing import Any, cast

from claude_agent_sdk import ClaudeAgentOptions, ClaudeSDKClient

from claude_sessions.config import SessionConfig
from claude_sessions.errors import WorkerStartError
from claude_sessions.gateway.relay import Grant
from claude_sessions.workers.worker import Worker

_pids = itertools.count(1_000_000)


@dataclass
class FakeProcess:
    """What the pool reads of a process: its pid and whether it ended."""

    pid: int = field(default_factory=lambda: next(_pids))
    returncode: int | None = None
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    def kill(self) -> None:
        self.returncode = -9
        self.ended.set()

    async def wait(self) -> int:
        await self.ended.wait()
        return -9


@dataclass(eq=False)
class FakeWorker(Worker):
    resets: int = 0
    reset_works: bool = True

    def settle(self) -> bool:
        return self.is_alive()

    async def warm_up(self, timeout: float) -> bool:
        return await self.reset(timeout)

    async def reset(self, timeout: float) -> bool:
        await asyncio.sleep(0)
        self.resets += 1
        return self.reset_works and self.is_healthy()

    async def close(self, timeout: float, graceful: bool = True) -> None:
        await asyncio.sleep(0)
        self.process.kill()

    def die(self) -> None:
        """As a CLI killed from outside."""
        self.process.kill()


@dataclass
class FakeStarts:
    """A ``start_worker`` for the pool: records every worker it started; ``fail`` makes starts fail."""

    started: list[FakeWorker] = field(default_factory=list)
    fail: bool = False
    #: Set to hold every start until it is set (a CLI that takes its time to connect).
    gate: asyncio.Event | None = None

    async def __call__(
        self, config: SessionConfig, options: ClaudeAgentOptions, grant: Grant, timeout: float
    ) -> Worker:
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise WorkerStartError("fake start refused")
        client = cast(ClaudeSDKClient, None)  # never used: no turn runs on a fake
        worker = FakeWorker(config=config, client=client, process=cast(Any, FakeProcess()), grant=grant)
        self.started.append(worker)
        return worker

    def alive(self) -> list[FakeWorker]:
        return [w for w in self.started if w.is_alive()]


class Clock:
    """A clock moved by hand (``now``), for time-driven policy: the pool's ``demand.clock``."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
