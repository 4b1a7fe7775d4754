"""The usage series: per-minute turns, tokens and cost over the last hour, by tenant and end user."""

from __future__ import annotations

from claude_sessions.observability.metrics import TurnUsage
from claude_sessions.observability.usage_series import BUCKET_SECONDS, UsageSeries


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_each_minute_of_the_hour_is_a_point_oldest_first_empty_ones_included() -> None:
    clock = Clock(1_000_000 * BUCKET_SECONDS + 30)
    series = UsageSeries(clock=clock)
    series.turn("alice", TurnUsage(input_tokens=10, output_tokens=5, cost=0.25))
    clock.now += BUCKET_SECONDS
    series.turn("alice", TurnUsage(input_tokens=1, cost=0.5, api_error=True))
    series.turn("alice", TurnUsage(output_tokens=2))
    points = series.points("alice")
    assert len(points) == 60
    assert [p["start"] for p in points] == sorted(p["start"] for p in points)
    assert points[-1]["start"] == 1_000_001 * BUCKET_SECONDS
    assert points[-2] == {"start": 1_000_000 * BUCKET_SECONDS, "turns": 1, "tokens": 15, "cost": 0.25, "errors": 0}
    assert points[-1] == {"start": 1_000_001 * BUCKET_SECONDS, "turns": 2, "tokens": 3, "cost": 0.5, "errors": 1}
    assert all(p["turns"] == 0 for p in points[:-2])


def test_a_tenant_sees_its_own_minutes_and_everyone_sees_them_all() -> None:
    series = UsageSeries(clock=Clock(42.0))
    series.turn("alice", TurnUsage(input_tokens=4, cost=0.1))
    series.turn("bob", TurnUsage(input_tokens=6, cost=0.2))
    series.turn(None, TurnUsage(input_tokens=1))  # the operator of a keyless server
    assert series.points("alice")[-1]["tokens"] == 4
    assert series.points("bob")[-1]["tokens"] == 6
    assert series.points(None)[-1]["tokens"] == 1
    everyone = series.points(everyone=True)[-1]
    assert everyone["turns"] == 3 and everyone["tokens"] == 11 and round(everyone["cost"], 6) == 0.3


def test_an_end_user_sees_its_own_minutes_and_its_tenant_sees_all_of_its_users() -> None:
    series = UsageSeries(clock=Clock(42.0))
    series.turn("acme", TurnUsage(input_tokens=1))  # the tenant's own turn
    series.turn("acme", TurnUsage(input_tokens=2), user="ana")
    series.turn("acme", TurnUsage(input_tokens=4), user="bob")
    assert series.points("acme", user="ana")[-1]["tokens"] == 2
    assert series.points("acme", user="bob")[-1]["tokens"] == 4
    assert series.points("acme")[-1]["tokens"] == 7 and series.points("acme", user="cy")[-1]["turns"] == 0


def test_calls_of_an_unfinished_turn_count_their_tokens_but_no_turn() -> None:
    series = UsageSeries(clock=Clock(0.0))
    series.billed("alice", TurnUsage(input_tokens=7, cost=0.01))
    assert series.points("alice")[-1] | {"start": 0} == {"start": 0, "turns": 0, "tokens": 7, "cost": 0.01, "errors": 0}


def test_minutes_older_than_the_window_are_dropped() -> None:
    clock = Clock(0.0)
    series = UsageSeries(minutes=60, clock=clock)
    series.turn("alice", TurnUsage(input_tokens=1))
    clock.now += 59 * BUCKET_SECONDS
    assert sum(p["turns"] for p in series.points("alice")) == 1  # still inside the hour
    clock.now += BUCKET_SECONDS
    series.turn("bob", TurnUsage(input_tokens=1))
    assert sum(p["turns"] for p in series.points("alice")) == 0
    assert len(series._buckets) == 1  # the old minute is gone, not just hidden
