"""Usage accounting: what the gateway metered, added to a session's metrics."""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest
from claude_agent_sdk import ResultMessage
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from claude_sessions.observability.metrics import SessionMetrics, TurnUsage, add_usage, is_api_error
from claude_sessions.observability.telemetry import WORKER_STATES, LiveState, Telemetry
from claude_sessions.workers.worker import WorkerState


def result(is_error: bool = False, reason: str | None = "completed") -> ResultMessage:
    return ResultMessage(
        subtype="success",
        duration_ms=1,
        duration_api_ms=1,
        is_error=is_error,
        num_turns=1,
        session_id="c1",
        terminal_reason=reason,
    )


def test_usage_objects_of_the_messages_api_become_token_counts() -> None:
    api = {"input_tokens": 10, "output_tokens": 2, "cache_read_input_tokens": 3, "cache_creation_input_tokens": None}
    usage = TurnUsage.from_api(api, 0.5)
    assert usage.tokens() == {"input": 10, "output": 2, "cache_read": 3, "cache_creation": 0}
    assert usage.cost == 0.5


def test_usage_adds_and_subtracts_field_by_field() -> None:
    a, b = TurnUsage(1, 2, 3, 4, 0.25), TurnUsage(10, 20, 30, 40, 1.0)
    assert a + b - a == b
    assert (a + TurnUsage(api_error=True)).api_error


def test_turns_add_up_in_the_metrics() -> None:
    metrics = SessionMetrics()
    for _ in range(3):
        add_usage(metrics, TurnUsage(10, 2, 3, 4, 0.01))
    assert (metrics.input_tokens, metrics.output_tokens, metrics.total_tokens) == (30, 6, 57)
    assert metrics.total_cost == pytest.approx(0.03)


def test_api_errors_count_but_interrupts_do_not() -> None:
    assert is_api_error(result(is_error=True, reason=None))
    assert not is_api_error(result(is_error=True, reason="aborted_streaming"))
    assert not is_api_error(result())


def scraped(state: LiveState) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    telemetry = Telemetry()
    telemetry.watch(lambda: state)
    text = generate_latest(telemetry.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_the_live_gauges_show_the_pools_ceilings_and_the_database_at_scrape() -> None:
    state = LiveState(
        sessions=Counter({("acme", "active"): 2}),
        workers=Counter({"bound": 3}),
        live_workers=4,
        max_workers=8,
        max_idle_workers=5,
        database_up=False,
    )
    values = scraped(state)
    assert values["claude_sessions_sessions", (("state", "active"), ("tenant", "acme"))] == 2
    assert values["claude_sessions_pool_live_workers", ()] == 4
    assert values["claude_sessions_pool_max_workers", ()] == 8
    assert values["claude_sessions_pool_max_idle_workers", ()] == 5
    assert values["claude_sessions_database_up", ()] == 0
    assert scraped(dataclasses.replace(state, database_up=True))["claude_sessions_database_up", ()] == 1


def test_every_worker_state_is_exported_zero_too() -> None:
    """A state with no worker still has its series: ``state="idle"} == 0`` is what an alert matches."""
    values = scraped(LiveState(Counter(), Counter({"bound": 1}), 1, 4, 2, True))
    workers = {
        labels[0][1]: value for (name, labels), value in values.items() if name == "claude_sessions_pool_workers"
    }
    assert workers == {state: float(state == "bound") for state in WORKER_STATES}
    assert set(WORKER_STATES) == {state.value for state in WorkerState}  # the list telemetry keeps, a layer below
