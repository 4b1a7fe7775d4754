"""The seed's task scheduler: a periodic job that survives its own failures."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

log = structlog.get_logger("claude_sessions.maintenance")


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
