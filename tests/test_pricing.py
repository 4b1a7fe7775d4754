"""Prices: our table agrees with the bundled CLI's own figures, model by model."""

from __future__ import annotations

from dataclasses import asdict

import pytest

from claude_sessions import SessionConfig
from claude_sessions.gateway.pricing import TIERS, cost_usd, prices_of
from claude_sessions.offline_model import OfflineModel
from conftest import MakeHandler
from helpers import result_of, turn


def test_dated_ids_take_the_longest_matching_entry() -> None:
    assert prices_of("claude-opus-4-1-20250805") == TIERS["tier_15_75"]
    assert prices_of("claude-opus-4-5-20251101") == TIERS["tier_5_25"]
    assert prices_of("claude-opus-5-5") == TIERS["tier_4_20_cache_read_0_20"]
    assert prices_of("claude-sonnet-4-5[1m]") == TIERS["tier_3_15"]
    assert prices_of("some-future-model") == TIERS["tier_5_25"]  # the CLI's own fallback


def test_cache_writes_reads_and_long_prompts_have_their_own_rates() -> None:
    base = {"input_tokens": 1_000_000, "output_tokens": 1_000_000}
    assert cost_usd("claude-sonnet-4-5", base) == pytest.approx(3 + 15)
    assert cost_usd("claude-sonnet-4-5", {"cache_read_input_tokens": 1_000_000}) == pytest.approx(0.3)
    written = {"cache_creation_input_tokens": 1_000_000, "cache_creation": {"ephemeral_1h_input_tokens": 400_000}}
    assert cost_usd("claude-sonnet-4-5", written) == pytest.approx(0.6 * 3.75 + 0.4 * 6)
    assert cost_usd("claude-haiku-5-5", {"input_tokens": 100_000}) == pytest.approx(0.01)
    assert cost_usd("claude-haiku-5-5", {"input_tokens": 100_001}) == pytest.approx(100_001 * 0.5 / 1e6)


@pytest.mark.parametrize("alias", ["opus", "sonnet", "haiku"])
async def test_our_cost_equals_the_clis_for_each_alias(
    make_handler: MakeHandler, model: OfflineModel, alias: str
) -> None:
    handler = await make_handler(connection_pool={"MIN_SIZE": 0})
    session_id = await handler.create_session(alias, SessionConfig(model=alias))
    model.requests.clear()
    results = [result_of(await turn(handler, session_id, f"{alias} turn {i}")) for i in range(2)]
    calls = model.message_requests()
    ours = sum(cost_usd(c.body["model"], asdict(c.usage)) for c in calls if c.usage is not None)
    metrics = handler.session_manager.get_session_metrics(session_id)
    assert metrics is not None and metrics.total_cost == pytest.approx(ours)
    assert metrics.total_cost == pytest.approx(results[-1].total_cost_usd or 0.0)  # the CLI's cumulative figure
