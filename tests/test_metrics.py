"""Usage accounting: what the gateway metered, added to a session's metrics."""

from __future__ import annotations

import pytest
from claude_agent_sdk import ResultMessage

from claude_sessions.observability.metrics import SessionMetrics, TurnUsage, add_usage, is_api_error


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
