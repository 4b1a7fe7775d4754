"""Per-session usage metrics, fed by what the model gateway metered."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from claude_agent_sdk import ResultMessage

from claude_sessions.errors import ModelError


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


@dataclass(frozen=True)
class TurnUsage:
    """Tokens by kind and dollars: what calls to the model used, as the upstream billed them."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0
    cost: float = 0.0
    #: The turn ended in a model error after the CLI's retries.
    api_error: bool = False

    @classmethod
    def from_api(cls, usage: dict[str, Any], cost: float) -> TurnUsage:
        """From a Messages API ``usage`` object and its price."""
        return cls(
            input_tokens=int(usage.get("input_tokens") or 0),
            output_tokens=int(usage.get("output_tokens") or 0),
            cache_read_tokens=int(usage.get("cache_read_input_tokens") or 0),
            cache_creation_tokens=int(usage.get("cache_creation_input_tokens") or 0),
            cost=cost,
        )

    def __add__(self, other: TurnUsage) -> TurnUsage:
        return self._combine(other, 1)

    def __sub__(self, other: TurnUsage) -> TurnUsage:
        return self._combine(other, -1)

    def _combine(self, other: TurnUsage, sign: int) -> TurnUsage:
        return TurnUsage(
            self.input_tokens + sign * other.input_tokens,
            self.output_tokens + sign * other.output_tokens,
            self.cache_read_tokens + sign * other.cache_read_tokens,
            self.cache_creation_tokens + sign * other.cache_creation_tokens,
            self.cost + sign * other.cost,
            self.api_error or other.api_error,
        )

    def tokens(self) -> dict[str, int]:
        return {
            "input": self.input_tokens,
            "output": self.output_tokens,
            "cache_read": self.cache_read_tokens,
            "cache_creation": self.cache_creation_tokens,
        }


def is_api_error(result: ResultMessage) -> bool:
    """A turn the model call failed (an interrupted turn also ends with ``is_error``: not this)."""
    return result.is_error and not (result.terminal_reason or "").startswith("aborted")


def model_error(result: ResultMessage) -> ModelError | None:
    """The error of a turn whose model call failed, or None."""
    if not is_api_error(result):
        return None
    return ModelError(
        result.result or "; ".join(result.errors or []) or "the model call failed", result.api_error_status
    )


def add_usage(metrics: SessionMetrics, usage: TurnUsage) -> None:
    """Add what the gateway billed, and the turn's outcome, to a session's metrics."""
    metrics.input_tokens += usage.input_tokens
    metrics.output_tokens += usage.output_tokens
    metrics.cache_read_tokens += usage.cache_read_tokens
    metrics.cache_creation_tokens += usage.cache_creation_tokens
    metrics.total_cost += usage.cost
    metrics.api_errors += usage.api_error
