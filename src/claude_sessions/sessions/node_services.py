"""What the HTTP API asks of the handler besides sessions and turns: this node and the cluster.

A mixin of :class:`ClaudeHandler`, kept apart so the handler's own file holds the wiring and the
turns; each call here hands one question to the part of the node that knows the answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import generate_latest

from claude_sessions.cluster.node import Node
from claude_sessions.config import SessionConfig, SystemConfig
from claude_sessions.gateway.relay import ModelGateway
from claude_sessions.observability.telemetry import Telemetry
from claude_sessions.observability.usage_series import points, window_start
from claude_sessions.sessions.maintenance import Maintenance
from claude_sessions.sessions.manager import ClaudeCodeSessionManager
from claude_sessions.sessions.session import Session
from claude_sessions.store.records import Holder, NodeRecord, TenantUsage
from claude_sessions.store.registry import Registry
from claude_sessions.workers.pool import WorkerPool


class NodeServices:
    """The handler's answers about this node, its peers, usage and health (the handler sets these parts)."""

    config: SystemConfig
    registry: Registry
    gateway: ModelGateway
    pool: WorkerPool
    session_manager: ClaudeCodeSessionManager
    node: Node
    telemetry: Telemetry
    maintenance: Maintenance
    #: The wall clock budgets count days and minutes by (tests move it).
    clock: Callable[[], float]

    def warm(self, configs: Sequence[SessionConfig]) -> None:
        """Keep spares warm for these options (each tenant's, say) instead of the default ones."""
        self.pool.warm_configs = list(configs)

    def serve_at(self, url: str) -> None:
        """Where the other nodes reach this one (``CLAUDE_SESSIONS_NODE_URL``, else the server's address)."""
        self.node.url = url

    @property
    def gateway_url(self) -> str:
        return self.gateway.base_url

    async def stored_reply(self, key: str, idempotency_key: str) -> tuple[str, list[dict[str, Any]]] | None:
        """The turn kept under an Idempotency-Key: (the request it answered, its messages), if any."""
        return await self.registry.replies.get(key, idempotency_key)

    async def keep_reply(self, key: str, idempotency_key: str, request: str, messages: list[dict[str, Any]]) -> None:
        await self.registry.replies.save(key, idempotency_key, request, messages)

    async def holder_of(self, key: str) -> Holder | None:
        """The live node running a session's CLI, if another does."""
        return await self.registry.holder(key)

    async def node_alive(self, node_id: str) -> bool:
        """Whether a node's heartbeat is fresh (it has not left, died or stopped beating)."""
        return await self.registry.nodes.node_live(node_id)

    async def usage(self, tenant: str | None, user: str | None = None) -> list[TenantUsage]:
        """Spend, tokens and turns today and this month, for a tenant (or its end ``user``) or (None)
        every tenant, across nodes."""
        return await self.registry.spend.usage(tenant, self.clock(), user)

    async def usage_series(self, tenant: str | None, user: str | None = None) -> list[dict[str, Any]]:
        """Turns, tokens and spend per minute over the last hour, every node's (the console's charts): a
        tenant's (with ``user``, that end user's), or (None) everyone's."""
        now = self.clock()
        return points(await self.registry.spend.minutes(window_start(now), tenant, user), now)

    def prometheus_text(self) -> bytes:
        """The Prometheus exposition of this node's telemetry."""
        return generate_latest(self.telemetry.registry)

    async def nodes(self) -> list[NodeRecord]:
        return await self.registry.nodes.listing()

    def problems(self) -> list[str]:
        """Why this node is not fully healthy, as far as it knows without asking the network."""
        reasons = []
        if self.config.connection_pool.MIN_SIZE and not self.pool.status()["healthy_connections"]:
            reasons.append("pool has no healthy worker")
        if self.session_manager.is_full():
            reasons.append("session limit reached")
        if not self.maintenance.is_running:
            reasons.append("maintenance task is not running")
        return reasons

    async def hand_over(self) -> int:
        """Drain: the other nodes take this node's idle sessions at once, its busy ones as their turns end."""
        return await self.node.drain()

    def busy_sessions(self) -> list[Session]:
        return [s for s in self.session_manager.sessions() if s.is_busy]

    async def end_stuck_turns(self, sessions: Sequence[Session]) -> None:
        """Close the workers of turns that did not stop when interrupted (their streams end in an error)."""
        stuck = [s.worker for s in sessions if s.is_busy and s.worker is not None]
        await asyncio.gather(*(self.session_manager.give_back(w, reuse=False) for w in stuck), return_exceptions=True)
