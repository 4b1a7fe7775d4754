"""Clients lent to callers: the seed's ``_get_or_create_pooled_client`` and its return.

A lent client is a pooled worker a caller drives itself; it counts in the pool (state ``lent``),
stays within ``CP_MAX_LIVE``, and goes back reset with ``/clear``, or is closed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator
from typing import Any

from claude_agent_sdk import ClaudeSDKClient

from claude_sessions.config import SessionConfig
from claude_sessions.errors import WorkerStartError
from claude_sessions.workers.pool import WorkerPool
from claude_sessions.workers.worker import Worker, WorkerState


class Lender:
    """The one owner of lent workers, by client."""

    def __init__(
        self, pool: WorkerPool, acquire: Callable[[SessionConfig], Awaitable[Worker]], reset_timeout: float
    ) -> None:
        self.pool, self._acquire, self._reset_timeout = pool, acquire, reset_timeout
        #: Workers whose client a caller holds, by ``id(client)``.
        self.lent: dict[int, Worker] = {}

    async def lend(self, config: SessionConfig) -> ClaudeSDKClient:
        worker = await self._acquire(config)
        if worker.model is None and not await worker.reset(self._reset_timeout):
            await self.pool.discard(worker)  # a /clear on a fresh CLI names its launch model; it failed
            raise WorkerStartError("a pooled CLI could not be reset")
        worker.state = WorkerState.LENT
        self.lent[id(worker.client)] = worker
        return worker.client

    async def take_back(self, client: ClaudeSDKClient) -> None:
        """Reset with ``/clear`` and pooled, or closed: the reset proves the worker as it was
        launched (model, permission mode, no reply left unread)."""
        worker = self.lent.pop(id(client), None)
        if worker is None:
            raise ValueError("this client was not lent by this handler")
        await self.pool.release(worker)


class PooledClient:
    """What ``_get_or_create_pooled_client`` returns: await it for a lent client, or
    use it with ``async with`` to have the client handed back at the end."""

    def __init__(self, lend: Callable[[], Awaitable[ClaudeSDKClient]], lender: Lender) -> None:
        self._lend, self._lender = lend, lender
        self._client: ClaudeSDKClient | None = None

    def __await__(self) -> Generator[Any, None, ClaudeSDKClient]:
        return self.__aenter__().__await__()

    async def __aenter__(self) -> ClaudeSDKClient:
        self._client = await self._lend()
        return self._client

    async def __aexit__(self, *exc: object) -> None:
        if self._client is not None:
            await self._lender.take_back(self._client)
