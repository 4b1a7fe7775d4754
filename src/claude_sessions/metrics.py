"""Per-session usage metrics, fed from the SDK's ``ResultMessage``."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from claude_agent_sdk import ResultMessage


@dataclass
class SessionMetrics:
    """What one session has used and suffered. Times are UNIX seconds."""

    created_at: float = field(default_factory=time.time)
    last_activity: float = field(default_factory=time.time)
    message_count: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0
    total_cost: float = 0.0
    connection_errors: int = 0
    api_errors: int = 0
    timeouts: int = 0
    last_turn_ms: float | None = None

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens + self.cache_read_tokens + self.cache_creation_tokens

    def touch(self) -> None:
        self.last_activity = time.time()

    def idle_seconds(self, now: float | None = None) -> float:
        return (now or time.time()) - self.last_activity

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total_tokens": self.total_tokens}


@dataclass
class CostMeter:
    """Turns the CLI's cumulative cost into per-turn spend.

    ``total_cost_usd`` accumulates per conversation *within one CLI process*: it
    restarts at zero after ``/clear`` and in a process that resumed the
    conversation. So the baseline is keyed by (process, conversation).
    """

    _key: tuple[int, str] | None = None
    _last: float = 0.0

    def spend(self, worker_pid: int, result: ResultMessage) -> float:
        key = (worker_pid, result.session_id)
        if key != self._key:
            self._key, self._last = key, 0.0
        cumulative = result.total_cost_usd or 0.0
        spent = max(0.0, cumulative - self._last)
        self._last = max(self._last, cumulative)
        return spent


@dataclass(frozen=True)
class TurnUsage:
    """What one turn used: tokens by kind, true spend, and whether the API failed."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0
    cost: float = 0.0
    api_error: bool = False

    @classmethod
    def of(cls, result: ResultMessage, cost: float) -> TurnUsage:
        usage = result.usage or {}
        return cls(
            input_tokens=int(usage.get("input_tokens") or 0),
            output_tokens=int(usage.get("output_tokens") or 0),
            cache_read_tokens=int(usage.get("cache_read_input_tokens") or 0),
            cache_creation_tokens=int(usage.get("cache_creation_input_tokens") or 0),
            cost=cost,
            # An interrupted turn also ends with is_error; that is not an API error.
            api_error=result.is_error and not (result.terminal_reason or "").startswith("aborted"),
        )

    def tokens(self) -> dict[str, int]:
        return {
            "input": self.input_tokens,
            "output": self.output_tokens,
            "cache_read": self.cache_read_tokens,
            "cache_creation": self.cache_creation_tokens,
        }


def record_result(metrics: SessionMetrics, meter: CostMeter, worker_pid: int, result: ResultMessage) -> TurnUsage:
    """Add one turn's usage, cost and outcome to ``metrics``; returns what was added."""
    usage = TurnUsage.of(result, meter.spend(worker_pid, result))
    metrics.input_tokens += usage.input_tokens
    metrics.output_tokens += usage.output_tokens
    metrics.cache_read_tokens += usage.cache_read_tokens
    metrics.cache_creation_tokens += usage.cache_creation_tokens
    metrics.total_cost += usage.cost
    metrics.api_errors += usage.api_error
    return usage
