"""Cost and usage accounting from ResultMessage figures."""

from __future__ import annotations

import pytest
from claude_agent_sdk import ResultMessage

from claude_sessions.metrics import CostMeter, SessionMetrics, record_result


def result(cost: float, session: str = "c1", is_error: bool = False, reason: str | None = "completed") -> ResultMessage:
    return ResultMessage(
        subtype="success",
        duration_ms=1,
        duration_api_ms=1,
        is_error=is_error,
        num_turns=1,
        session_id=session,
        total_cost_usd=cost,
        usage={"input_tokens": 10, "output_tokens": 2, "cache_read_input_tokens": 3, "cache_creation_input_tokens": 4},
        terminal_reason=reason,
    )


def test_cumulative_cost_becomes_true_spend() -> None:
    metrics, meter = SessionMetrics(), CostMeter()
    for cumulative in (0.01, 0.03, 0.06):
        record_result(metrics, meter, 100, result(cumulative))
    assert metrics.total_cost == pytest.approx(0.06)  # not 0.10, the sum of cumulative figures
    assert (metrics.input_tokens, metrics.output_tokens) == (30, 6)
    assert (metrics.cache_read_tokens, metrics.cache_creation_tokens) == (9, 12)
    assert metrics.total_tokens == 57


def test_new_process_or_new_conversation_restarts_the_baseline() -> None:
    metrics, meter = SessionMetrics(), CostMeter()
    record_result(metrics, meter, 100, result(0.05))
    record_result(metrics, meter, 200, result(0.02))  # resumed in another process
    record_result(metrics, meter, 200, result(0.01, session="c2"))  # after /clear
    assert metrics.total_cost == pytest.approx(0.08)


def test_api_errors_count_but_interrupts_do_not() -> None:
    metrics, meter = SessionMetrics(), CostMeter()
    record_result(metrics, meter, 1, result(0.0, is_error=True, reason=None))
    record_result(metrics, meter, 1, result(0.0, is_error=True, reason="aborted_streaming"))
    assert metrics.api_errors == 1
