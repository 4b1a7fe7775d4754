"""The adaptive pool's policy alone, on a clock moved by hand: spares sized by bursts, idle release by pressure."""

from __future__ import annotations

from claude_sessions import SessionConfig
from claude_sessions.workers.demand import Demand, Target, excess, release_order, share, shortfall
from fakes import Clock

DEFAULT = SessionConfig()
BURSTY = SessionConfig(system_prompt="bursty")
QUIET = SessionConfig(system_prompt="quiet")


def spares(targets: list[Target]) -> dict[str, int]:
    return {config.system_prompt or "default": count for config, count in targets}


def burst(demand: Demand, clock: Clock, config: SessionConfig, count: int, every: float = 0.0) -> None:
    for _ in range(count):
        demand.arrive(config)
        clock.now += every


def test_a_burst_seen_within_the_minute_calls_for_as_many_spares_then_none() -> None:
    clock = Clock()
    demand = Demand(clock)
    burst(demand, clock, BURSTY, 10, every=0.05)
    assert demand.peak(BURSTY.fingerprint) == 10
    assert spares(demand.targets([], floor=2, capacity=20)) == {"bursty": 10}
    clock.now += 58
    assert spares(demand.targets([], floor=2, capacity=20)) == {"bursty": 10}
    clock.now += 2  # the last arrival is a minute old
    assert spares(demand.targets([], floor=2, capacity=20)) == {}
    assert demand.peak(BURSTY.fingerprint) == 0


def test_the_peak_is_the_densest_second_not_the_minutes_total() -> None:
    clock = Clock()
    demand = Demand(clock)
    burst(demand, clock, BURSTY, 6, every=2.0)  # steady: one at a time
    assert demand.peak(BURSTY.fingerprint) == 1
    for offset in (0.0, 0.5, 0.9, 1.5, 1.6):
        clock.now = 2000.0 + offset
        demand.arrive(QUIET)
    assert demand.peak(QUIET.fingerprint) == 3  # 0.9, 1.5 and 1.6 lie within one second


def test_warm_options_keep_the_minimum_and_unseen_ones_get_none() -> None:
    demand = Demand(Clock())
    assert spares(demand.targets([DEFAULT], floor=2, capacity=10)) == {"default": 2}
    demand.arrive(DEFAULT)
    assert spares(demand.targets([DEFAULT], floor=2, capacity=10)) == {"default": 2}  # a peak of 1 is below it
    demand.arrive(QUIET)
    assert spares(demand.targets([DEFAULT], floor=2, capacity=10)) == {"default": 2, "quiet": 1}


def test_a_schemas_options_never_count() -> None:
    demand = Demand(Clock())
    demand.arrive(SessionConfig(output_schema='{"type": "object"}'))
    assert demand.targets([], floor=1, capacity=10) == []


def test_spares_stay_within_the_bound_floors_first_and_small_demands_met_in_full() -> None:
    clock = Clock()
    demand = Demand(clock)
    burst(demand, clock, BURSTY, 10)
    burst(demand, clock, QUIET, 3)
    assert spares(demand.targets([DEFAULT], floor=2, capacity=8)) == {"default": 2, "bursty": 3, "quiet": 3}
    assert spares(demand.targets([DEFAULT], floor=2, capacity=3)) == {"default": 2, "bursty": 1, "quiet": 0}
    assert spares(demand.targets([DEFAULT], floor=2, capacity=1)) == {"default": 1, "bursty": 0, "quiet": 0}
    assert sum(spares(demand.targets([DEFAULT], floor=2, capacity=0)).values()) == 0


def test_share_is_max_min_fair() -> None:
    assert share({"a": 10, "b": 3, "c": 1}, 20) == {"a": 10, "b": 3, "c": 1}
    assert share({"a": 10, "b": 3, "c": 1}, 8) == {"a": 4, "b": 3, "c": 1}
    assert share({"a": 10, "b": 3, "c": 1}, 2) == {"a": 1, "b": 1, "c": 0}  # larger wants first
    assert share({"a": 0}, 5) == {"a": 0} and share({"a": 4}, -1) == {"a": 0}


def test_what_is_closed_and_what_is_short() -> None:
    targets = [Target(DEFAULT, 2), Target(BURSTY, 3)]
    idle = {DEFAULT.fingerprint: 4, BURSTY.fingerprint: 1, QUIET.fingerprint: 2}
    assert excess(targets, idle, surplus=False) == {QUIET.fingerprint: 2}  # demand expired
    assert excess([*targets, Target(QUIET, 0)], idle, surplus=False) == {}  # in demand, squeezed out: surplus
    assert excess(targets, idle, surplus=True) == {DEFAULT.fingerprint: 2, QUIET.fingerprint: 2}
    # 2 bursty spares missing, 1 starting: 1 slot, found among the 4 the surplus frees.
    assert shortfall(targets, idle, {BURSTY.fingerprint: 1}, free=0) == 0
    assert shortfall(targets, {BURSTY.fingerprint: 1}, {}, free=0) == 4  # 2 default + 2 bursty
    assert shortfall(targets, {BURSTY.fingerprint: 1}, {}, free=3) == 1


def test_idle_sessions_keep_their_workers_while_there_is_room() -> None:
    last = {"a": 100.0, "b": 200.0}
    assert release_order(last, now=250.0, idle_limit=300.0, needed=0) == ([], [])


def test_without_room_the_least_recently_used_goes_first() -> None:
    last = {"newer": 200.0, "oldest": 100.0, "middle": 150.0}
    assert release_order(last, now=250.0, idle_limit=300.0, needed=1) == (["oldest"], [])
    assert release_order(last, now=250.0, idle_limit=300.0, needed=2) == (["oldest", "middle"], [])
    assert release_order(last, now=250.0, idle_limit=300.0, needed=5) == (["oldest", "middle", "newer"], [])


def test_the_clock_is_the_upper_bound() -> None:
    last = {"newer": 200.0, "oldest": 100.0, "middle": 150.0}
    assert release_order(last, now=460.0, idle_limit=300.0, needed=0) == ([], ["oldest", "middle"])
    assert release_order(last, now=460.0, idle_limit=300.0, needed=1) == (["oldest"], ["middle"])
    assert release_order(last, now=450.0, idle_limit=300.0, needed=0) == ([], ["oldest"])  # 300 s exactly: not yet
