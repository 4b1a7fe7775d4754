"""The workload replay's trace: chat users arriving, each holding one conversation, seeded.

Users arrive as a Poisson background (a number of arrivals spread uniformly over the span, which is
what a Poisson process of that many arrivals is) plus bursts of ``burst_size`` new conversations
within one second. Each user sends a few turns, pausing between them: mostly to read and type (a
second to ``typing`` seconds, log-uniform), sometimes away (``away_share`` of the pauses: ``away``
times the idle release, uniform; 0.75 to 1.25 by default), so that about half of those outlast the
release and the next turn finds the worker released. Some users leave early and delete their
session; some talk through the OpenAI-compatible endpoint instead (each of them a new conversation
there: churn of sessions).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field, replace
from typing import Any, Literal

#: A burst that follows the last one within this many seconds is the burst metric's kind.
BURST_FOLLOWS_WITHIN = 60.0


@dataclass(frozen=True)
class Profile:
    """What a trace is made of; ``users``, ``minutes`` and ``seed`` are the options the command line sets."""

    name: str
    users: int
    #: Arrivals come within this span; conversations go on up to one longest pause beyond it.
    minutes: float
    #: ``SM_IDLE_RELEASE_MINUTES`` of the servers replayed against.
    idle_release_minutes: float
    bursts: int
    #: Seconds between one burst and the next, drawn uniformly from this range.
    burst_gap: tuple[float, float]
    burst_size: int = 10
    turns: tuple[int, int] = (2, 4)
    openai_share: float = 0.2
    leave_share: float = 0.2
    #: The longest pause to read and type, seconds; and the share of pauses that are away instead.
    typing: float = 8.0
    away_share: float = 0.3
    away: tuple[float, float] = (0.75, 1.25)
    #: New conversations timed one at a time on a warm, idle side, before the trace.
    warm_rounds: int = 3
    seed: int = 20261207

    @property
    def longest_pause(self) -> float:
        return max(self.typing, self.away[1] * self.idle_release_minutes * 60)


#: ``make bench``'s: two bursts about 30 s apart and two users besides, in 33 s; conversations end by 48 s.
SHORT = Profile(
    "short",
    users=22,
    minutes=0.55,
    idle_release_minutes=0.2,
    bursts=2,
    burst_gap=(27.0, 30.0),
    turns=(2, 3),
    typing=6.0,
    away_share=0.4,
)
#: ``--profile long``: minutes of trace, bursts 15 to 75 s apart (most within a minute of the last).
LONG = Profile(
    "long", users=120, minutes=4.0, idle_release_minutes=0.5, bursts=5, burst_gap=(15.0, 75.0), warm_rounds=5
)
PROFILES = {p.name: p for p in (SHORT, LONG)}


@dataclass(frozen=True)
class User:
    index: int
    #: Seconds from the trace's start.
    arrival: float
    via: Literal["sessions", "openai"]
    #: The pause before each turn after the first: one turn more than pauses.
    pauses: tuple[float, ...]
    #: Deletes its session after its last turn (a user who left before the end of its conversation).
    leaves: bool
    #: The burst it came in, counted from 0; None for the background.
    burst: int | None

    @property
    def turns(self) -> int:
        return len(self.pauses) + 1


@dataclass(frozen=True)
class Trace:
    profile: Profile
    users: list[User]
    #: Each burst's start, seconds from the trace's start.
    bursts: list[float] = field(default_factory=list)

    @property
    def turns(self) -> int:
        return sum(u.turns for u in self.users)

    def followed_bursts(self) -> set[int]:
        """The bursts that come within ``BURST_FOLLOWS_WITHIN`` of the burst before them."""
        pairs = zip(self.bursts, self.bursts[1:], strict=False)
        return {i + 1 for i, (a, b) in enumerate(pairs) if b - a <= BURST_FOLLOWS_WITHIN}

    def describe(self) -> dict[str, Any]:
        pauses = [p for u in self.users for p in u.pauses]
        release = self.profile.idle_release_minutes * 60
        return {
            "users": len(self.users),
            "turns": self.turns,
            "bursts_s": [round(b, 1) for b in self.bursts],
            "burst_users": sum(u.burst is not None for u in self.users),
            "openai_users": sum(u.via == "openai" for u in self.users),
            "leave_early": sum(u.leaves for u in self.users),
            "pauses": len(pauses),
            "pauses_past_release": sum(p > release for p in pauses),
            "last_arrival_s": round(max((u.arrival for u in self.users), default=0.0), 1),
        }


def make_trace(profile: Profile) -> Trace:
    """The trace ``profile`` and its seed make: the same every time."""
    rng = random.Random(profile.seed)
    span = profile.minutes * 60
    bursts = _burst_times(rng, profile, span)
    arrivals: list[tuple[float, int | None]] = [
        (t + rng.random(), b) for b, t in enumerate(bursts) for _ in range(profile.burst_size)
    ]
    background = profile.users - len(arrivals)
    arrivals += [(rng.uniform(0, span), None) for _ in range(background)]
    arrivals.sort(key=lambda a: a[0])
    horizon = span + profile.longest_pause
    users = [_user(rng, profile, i, at, burst, horizon) for i, (at, burst) in enumerate(arrivals)]
    return Trace(profile, users, bursts)


def _burst_times(rng: random.Random, profile: Profile, span: float) -> list[float]:
    """Bursts from the first seconds on, each a ``burst_gap`` after the last, as many as the users and span allow."""
    times: list[float] = []
    at = rng.uniform(0.5, 2.0)
    while len(times) < profile.bursts and (len(times) + 1) * profile.burst_size <= profile.users and at < span:
        times.append(at)
        at += rng.uniform(*profile.burst_gap)
    return times


def _user(rng: random.Random, profile: Profile, index: int, arrival: float, burst: int | None, horizon: float) -> User:
    planned = rng.randint(*profile.turns)
    via: Literal["sessions", "openai"] = "openai" if rng.random() < profile.openai_share else "sessions"
    leaves = via == "sessions" and planned > 1 and rng.random() < profile.leave_share
    turns = rng.randint(1, planned - 1) if leaves else planned
    release = profile.idle_release_minutes * 60
    away_from, away_to = (release * f for f in profile.away)
    pauses: list[float] = []
    at = arrival
    for _ in range(turns - 1):
        away = rng.random() < profile.away_share
        pause = rng.uniform(away_from, away_to) if away else math.exp(rng.uniform(0, math.log(profile.typing)))
        if at + pause > horizon:  # the trace ends: this user's conversation too
            break
        pauses.append(round(pause, 3))
        at += pause
    return User(index, round(arrival, 3), via, tuple(pauses), leaves, burst)


def sized(profile: Profile, users: int | None, minutes: float | None, seed: int | None) -> Profile:
    """``profile`` with the command line's sizes and seed, where given."""
    changes: dict[str, Any] = {}
    if users is not None:
        changes["users"] = users
    if minutes is not None:
        changes["minutes"] = minutes
    if seed is not None:
        changes["seed"] = seed
    return replace(profile, **changes)
