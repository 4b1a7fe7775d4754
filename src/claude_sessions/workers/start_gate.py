"""Who starts a CLI first: a caller waiting for one, before a spare for some later caller.

A CLI's start is CPU-bound (about a second of one core). In a burst of new conversations, spares
started beside the callers' own CLIs halve what each of them gets, so every caller waits longer
for a spare that serves none of them. Spares wait while a caller's CLI starts (up to a bound, so a
steady stream of resumes cannot starve them), then start a few at a time: as many as there are cores.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator

#: The longest a spare's start waits for callers' starts to end.
SPARE_DEFER_SECONDS = 10.0


class StartGate:
    """Callers' CLI starts go at once; spares' wait for them, then go ``parallel`` at a time."""

    def __init__(self, parallel: int | None = None, defer: float = SPARE_DEFER_SECONDS) -> None:
        self.defer = defer
        self._spares = asyncio.Semaphore(parallel or len(os.sched_getaffinity(0)))
        self._callers = 0
        self._quiet = asyncio.Event()
        self._quiet.set()

    @contextlib.asynccontextmanager
    async def caller(self) -> AsyncIterator[None]:
        """Around a start some caller waits for."""
        self._callers += 1
        self._quiet.clear()
        try:
            yield
        finally:
            self._callers -= 1
            if not self._callers:
                self._quiet.set()

    @contextlib.asynccontextmanager
    async def spare(self) -> AsyncIterator[None]:
        """Around a spare's start (and warm-up): after the callers', a few at a time."""
        async with self._spares:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.defer):
                    await self._quiet.wait()
            yield
