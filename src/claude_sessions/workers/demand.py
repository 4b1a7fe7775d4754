"""How the node shares its live slots: spares sized by recent bursts, idle sessions' workers by pressure.

A spare serves only a new conversation with exactly its options (a resumed one needs a CLI
started with ``resume``), so demand is counted per options fingerprint, from the acquires a
spare could have served. Everything here is pure: it reads the clock it is given, so tests
move time by hand.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import NamedTuple, TypeVar

from claude_sessions.config import SessionConfig

#: How long a burst is remembered: one seen within it is expected again.
WINDOW_SECONDS = 60.0
#: The span a burst is measured over: an option set's demand is its most arrivals within one.
BURST_SECONDS = 1.0

K = TypeVar("K", bound=Hashable)


class Target(NamedTuple):
    """How many spares of one option set the pool should hold."""

    config: SessionConfig
    spares: int


class Demand:
    """Arrivals of new conversations per option set over the last ``window`` seconds, and the
    spares they call for: the next burst is expected to be as large as the largest one seen."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        window: float = WINDOW_SECONDS,
        burst: float = BURST_SECONDS,
    ) -> None:
        self.clock, self.window, self.burst = clock, window, burst
        self._arrivals: dict[str, deque[float]] = {}
        self._configs: dict[str, SessionConfig] = {}

    def arrive(self, config: SessionConfig) -> None:
        """A new conversation asked for a worker with these options (one a spare could have served)."""
        if config.output_schema is not None:  # a schema's options serve one turn: never spares
            return
        self._configs[config.fingerprint] = config
        self._arrivals.setdefault(config.fingerprint, deque()).append(self.clock())

    def peak(self, fingerprint: str) -> int:
        """The most arrivals within any ``burst`` seconds of the window (0: none seen within it)."""
        times = list(self._recent(fingerprint))
        best = start = 0
        for end, at in enumerate(times):
            while at - times[start] >= self.burst:
                start += 1
            best = max(best, end - start + 1)
        return best

    def _recent(self, fingerprint: str) -> deque[float]:
        """The fingerprint's arrivals within the window; one with none left is forgotten."""
        arrivals = self._arrivals.get(fingerprint, deque())
        since = self.clock() - self.window
        while arrivals and arrivals[0] <= since:
            arrivals.popleft()
        if not arrivals:
            self._arrivals.pop(fingerprint, None)
            self._configs.pop(fingerprint, None)
        return arrivals

    def targets(self, warm: Sequence[SessionConfig], floor: int, capacity: int) -> list[Target]:
        """Spares per option set: its peak, at least ``floor`` for the ``warm`` ones, none for one
        unseen within the window (it is not listed); ``capacity`` in all at most.

        The warm floors are shared out first, then the peaks above them, each by :func:`share`:
        small demands are met in full, the largest share what is left.
        """
        configs = {config.fingerprint: config for config in warm}
        floors = share(dict.fromkeys(configs, floor), capacity)
        for fingerprint in list(self._configs):
            if self._recent(fingerprint):
                configs.setdefault(fingerprint, self._configs[fingerprint])
                floors.setdefault(fingerprint, 0)
        above = {fp: max(0, self.peak(fp) - floors[fp]) for fp in configs}
        extra = share(above, capacity - sum(floors.values()))
        return [Target(config, floors[fp] + extra[fp]) for fp, config in configs.items()]

    def clear(self) -> None:
        self._arrivals.clear()
        self._configs.clear()


def share(wants: Mapping[K, int], capacity: int) -> dict[K, int]:
    """Split ``capacity`` max-min fairly: one each in turn, larger wants first, until every want is
    met or nothing is left; so one option set's burst never starves another's few."""
    given = dict.fromkeys(wants, 0)
    hungry = sorted((key for key, want in wants.items() if want > 0), key=lambda key: -wants[key])
    left = max(0, capacity)
    while left and hungry:
        for key in hungry[:left]:
            given[key] += 1
        left -= min(left, len(hungry))
        hungry = [key for key in hungry if given[key] < wants[key]]
    return given


def release_order(
    last_active: Mapping[K, float], now: float, idle_limit: float, needed: int
) -> tuple[list[K], list[K]]:
    """Which idle sessions give up their workers: (to close, to reset and pool).

    The ``needed`` least recently active close: their slots are wanted now (an acquire at the
    live cap, spares the cap leaves no room for). Any other idle longer than ``idle_limit``
    seconds, the clock's upper bound, is reset and pooled. The rest keep theirs: there is room.
    """
    order = sorted(last_active, key=lambda key: last_active[key])
    due = sum(1 for key in order if now - last_active[key] > idle_limit)  # a prefix: oldest first
    needed = max(0, needed)
    return order[:needed], order[needed : max(needed, due)]


def excess(targets: Sequence[Target], idle: Mapping[str, int], surplus: bool) -> dict[str, int]:
    """Idle workers to close per option set: every one of a set no longer in demand (not in
    ``targets``) and, with ``surplus``, those beyond their set's target."""
    wanted = {config.fingerprint: spares for config, spares in targets}
    return {
        fingerprint: count - wanted.get(fingerprint, 0)
        for fingerprint, count in idle.items()
        if count > wanted.get(fingerprint, 0) and (surplus or fingerprint not in wanted)
    }


def shortfall(targets: Sequence[Target], idle: Mapping[str, int], starting: Mapping[str, int], free: int) -> int:
    """Live slots the spares of ``targets`` lack: those missing (neither idle nor ``starting``) beyond
    the ``free`` slots and those the surplus's closing (:func:`excess`) frees."""
    missing = sum(max(0, spares - idle.get(c.fingerprint, 0) - starting.get(c.fingerprint, 0)) for c, spares in targets)
    return max(0, missing - sum(excess(targets, idle, surplus=True).values()) - free)
