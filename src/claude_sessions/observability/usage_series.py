"""Turns, tokens and spend per minute over the last hour: what the console's charts draw.

A small in-memory series kept by each server process, fed where turns end (and
where the gateway bills calls of turns that never finished). It is this node's
view only: in cluster mode each node counts the turns it ran. Buckets older than
the window are dropped as new ones arrive, so it never grows past
``minutes x tenants`` entries.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from claude_sessions.observability.metrics import TurnUsage

BUCKET_SECONDS = 60
WINDOW_MINUTES = 60


@dataclass
class Bucket:
    """What one minute (of one tenant, or of everyone) added up to."""

    turns: int = 0
    tokens: int = 0
    cost: float = 0.0
    errors: int = 0

    def add(self, other: Bucket) -> None:
        self.turns += other.turns
        self.tokens += other.tokens
        self.cost += other.cost
        self.errors += other.errors


class UsageSeries:
    """Per-minute buckets by tenant (``None``: the operator of a keyless server) and end user (``None``: the
    tenant's own); a tenant's view adds up its users'."""

    def __init__(self, minutes: int = WINDOW_MINUTES, clock: Callable[[], float] = time.time) -> None:
        self.minutes = minutes
        self._clock = clock
        self._buckets: dict[tuple[int, str | None, str | None], Bucket] = {}
        self._lock = threading.Lock()  # the gateway and the handler may feed it from different threads

    def turn(self, tenant: str | None, usage: TurnUsage, user: str | None = None) -> None:
        """A turn ended: one more turn, its tokens and spend, and whether the model failed it."""
        self._add((tenant, user), Bucket(1, _tokens(usage), usage.cost, int(usage.api_error)))

    def billed(self, tenant: str | None, usage: TurnUsage, user: str | None = None) -> None:
        """Calls of a turn that never finished: billed all the same, but no turn."""
        self._add((tenant, user), Bucket(0, _tokens(usage), usage.cost, 0))

    def points(
        self, tenant: str | None = None, *, everyone: bool = False, user: str | None = None
    ) -> list[dict[str, Any]]:
        """The window, oldest minute first, empty minutes included: ``tenant``'s (with ``user``, that
        end user's only), or everyone's."""
        now = self._minute()
        first = now - self.minutes + 1
        totals = {minute: Bucket() for minute in range(first, now + 1)}
        with self._lock:
            for (minute, owner, whose), bucket in self._buckets.items():
                if minute in totals and (everyone or (owner == tenant and user in (None, whose))):
                    totals[minute].add(bucket)
        return [
            {"start": minute * BUCKET_SECONDS, **asdict(bucket), "cost": round(bucket.cost, 6)}
            for minute, bucket in totals.items()
        ]

    def _add(self, payer: tuple[str | None, str | None], amount: Bucket) -> None:
        minute = self._minute()
        with self._lock:
            self._buckets.setdefault((minute, *payer), Bucket()).add(amount)
            for key in [key for key in self._buckets if key[0] <= minute - self.minutes]:
                del self._buckets[key]

    def _minute(self) -> int:
        return int(self._clock() // BUCKET_SECONDS)


def _tokens(usage: TurnUsage) -> int:
    return sum(usage.tokens().values())
