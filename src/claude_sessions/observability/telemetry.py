"""Prometheus metrics: counters fed at events, gauges read from live state at scrape.

Labels carry the tenant where it makes sense, never a session id (unbounded).
Each handler has its own registry, so several handlers (tests) never collide.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from claude_sessions.observability.metrics import TurnUsage

DEFAULT_TENANT = "default"
disable_created_metrics()  # type: ignore[no-untyped-call]  # *_created series double the output
_TURN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_CONNECT_BUCKETS = (0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30)
#: A person reads the request and answers: seconds to minutes (``PERMISSION_TIMEOUT_SECONDS``).
_WAIT_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
#: A worker's states (``WorkerState``, a layer above): each is exported, 0 too.
WORKER_STATES = ("connecting", "idle", "bound", "lent", "resetting", "closing", "closed")


@dataclass(frozen=True)
class LiveState:
    """What the gauges show, read at scrape time."""

    sessions: Tally[tuple[str, str]]  # (tenant, state) -> count
    workers: Tally[str]  # state -> count
    live_workers: int  # CLI processes alive or starting: what ``max_workers`` caps
    max_workers: int  # the pool's ceiling on live CLIs (``CP_MAX_LIVE``, else ``SM_MAX_SESSIONS``)
    max_idle_workers: int  # idle CLIs kept at most (``CP_MAX_SIZE``)
    database_up: bool  # this node's last heartbeat reached the database


class Telemetry:
    """The service's Prometheus metrics."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)

        def counter(name: str, doc: str, *labels: str) -> Counter:
            return Counter(f"claude_sessions_{name}", doc, labels or ["tenant"], registry=r)

        self.sessions_created = counter("created", "Sessions created.")
        self.sessions_rejected = counter("rejected", "Session creates refused.", "tenant", "reason")
        self.sessions_expired = counter("expired", "Sessions removed as inactive.")
        self.sessions_orphaned = counter("orphaned", "Sessions removed as orphans.")
        self.messages = counter("messages", "Turns run.")
        self.tokens = counter("tokens", "Tokens used, by kind.", "tenant", "kind")
        self.cost = counter("cost_usd", "Spend in US dollars.")
        self.api_errors = counter("api_errors", "Turns that ended in an API error.")
        self.turns_refused = counter(
            "turns_refused", "Turns refused by a tenant's limit, by reason.", "tenant", "reason"
        )
        self.connection_errors = counter("connection_errors", "CLI process failures.")
        self.turn_timeouts = counter("turn_timeouts", "Turns cut by the timeout.")
        self.turn_seconds = Histogram(
            "claude_sessions_turn_duration_seconds", "Turn duration.", ["tenant"], buckets=_TURN_BUCKETS, registry=r
        )
        self.connect_seconds = Histogram(
            "claude_sessions_worker_connect_duration_seconds",
            "Time to spawn and connect a CLI worker.",
            buckets=_CONNECT_BUCKETS,
            registry=r,
        )
        self.permission_decisions = counter(
            "permission_decisions", "Answers to asked tool calls, by who gave them.", "tenant", "tool", "behavior", "by"
        )
        self.permission_wait = Histogram(
            "claude_sessions_permission_wait_seconds",
            "Time an asked tool call waited for its answer.",
            ["tenant"],
            buckets=_WAIT_BUCKETS,
            registry=r,
        )

    def watch(self, read: Callable[[], LiveState]) -> None:
        """Export gauges computed by ``read`` at every scrape."""
        self.registry.register(_LiveCollector(read))

    def turn_finished(self, owner: str | None, usage: TurnUsage, seconds: float) -> None:
        """A turn's figures: Prometheus by tenant only (never a user: unbounded)."""
        tenant = owner or DEFAULT_TENANT
        self.messages.labels(tenant).inc()
        self.turn_seconds.labels(tenant).observe(seconds)
        self._spent(tenant, usage)
        if usage.api_error:
            self.api_errors.labels(tenant).inc()

    def usage(self, owner: str | None, usage: TurnUsage) -> None:
        """Tokens and spend the gateway metered for a turn that never finished."""
        self._spent(owner or DEFAULT_TENANT, usage)

    def _spent(self, tenant: str, usage: TurnUsage) -> None:
        for kind, count in usage.tokens().items():
            self.tokens.labels(tenant, kind).inc(count)
        self.cost.labels(tenant).inc(usage.cost)


class _LiveCollector(Collector):
    def __init__(self, read: Callable[[], LiveState]) -> None:
        self._read = read

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        state = self._read()
        sessions = GaugeMetricFamily(
            "claude_sessions_sessions", "Registered sessions by state.", labels=["tenant", "state"]
        )
        for (tenant, session_state), count in sorted(state.sessions.items()):
            sessions.add_metric([tenant, session_state], count)
        yield sessions
        workers = GaugeMetricFamily("claude_sessions_pool_workers", "CLI workers by state.", labels=["state"])
        # Every state, 0 too: a series that vanished would leave alerts and the autoscaler blind.
        for worker_state in sorted({*WORKER_STATES, *state.workers}):
            workers.add_metric([worker_state], state.workers[worker_state])
        yield workers
        yield _gauge("pool_live_workers", "CLI processes alive or starting.", state.live_workers)
        yield _gauge("pool_max_workers", "CLI processes this node may run at once.", state.max_workers)
        yield _gauge("pool_max_idle_workers", "Idle CLI workers kept at most.", state.max_idle_workers)
        yield _gauge("database_up", "Whether this node's last heartbeat reached the database.", state.database_up)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"claude_sessions_{name}", doc, value=value)
