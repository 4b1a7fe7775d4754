"""What a model call costs, from the tokens the upstream reported.

The CLI's ``total_cost_usd`` is its own estimate, cumulative per conversation and
per process; the gateway meters what the upstream really answered instead, and
prices it here. The table mirrors the model catalog of the bundled CLI (2.1.332):
``tests/test_pricing.py`` proves our figure equals the CLI's for its aliases, so a
CLI with new prices fails a test rather than drifting silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MILLION = 1_000_000


@dataclass(frozen=True)
class Prices:
    """US dollars per million tokens."""

    input: float
    output: float
    cache_write_5m: float
    cache_write_1h: float
    cache_read: float
    #: A prompt above this many tokens is billed at ``long_prompt`` rates instead.
    long_prompt_above: int | None = None
    long_prompt: Prices | None = None


def _tier(input: float, output: float, cache_read: float | None = None) -> Prices:
    """Anthropic's usual ratios: 5-minute writes 1.25x input, 1-hour writes 2x, reads 0.1x."""
    read = input / 10 if cache_read is None else cache_read
    return Prices(input, output, input * 1.25, input * 2, read)


TIERS = {
    "haiku_35": _tier(0.8, 4),
    "haiku_45": _tier(1, 5),
    "haiku_55": Prices(0.1, 0.5, 0.125, 0.2, 0.01, long_prompt_above=100_000, long_prompt=_tier(0.5, 2.5, 0.05)),
    "tier_2_10": _tier(2, 10, 0.2),
    "tier_2_10_cache_read_0_10": _tier(2, 10, 0.1),
    "tier_3_15": _tier(3, 15),
    "tier_5_25": _tier(5, 25),
    "tier_15_75": _tier(15, 75),
    "tier_10_50": _tier(10, 50),
    "tier_10_50_cache_read_0_25": _tier(10, 50, 0.25),
    "tier_4_20_cache_read_0_20": _tier(4, 20, 0.2),
    "tier_8_40_cache_read_0_20": _tier(8, 40, 0.2),
}

#: Model id (or the start of a dated id) -> tier; the longest matching id wins.
MODELS = {
    "claude-3-5-haiku": "haiku_35",
    "claude-haiku-4-5": "haiku_45",
    "claude-haiku-5-5": "haiku_55",
    "claude-3-5-sonnet": "tier_3_15",
    "claude-3-7-sonnet": "tier_3_15",
    "claude-sonnet-4": "tier_3_15",
    "claude-sonnet-5": "tier_2_10",
    "claude-sonnet-5-5": "tier_2_10_cache_read_0_10",
    "claude-opus-4": "tier_15_75",
    "claude-opus-4-5": "tier_5_25",
    "claude-opus-4-6": "tier_5_25",
    "claude-opus-4-7": "tier_5_25",
    "claude-opus-4-8": "tier_5_25",
    "claude-opus-5": "tier_5_25",
    "claude-opus-5-5": "tier_4_20_cache_read_0_20",
    "claude-fable-5": "tier_10_50",
    "claude-fable-5-1": "tier_10_50_cache_read_0_25",
    "claude-fable-5-2": "tier_8_40_cache_read_0_20",
    "claude-mythos-5": "tier_10_50",
    "claude-mythos-5-1": "tier_10_50_cache_read_0_25",
    "claude-mythos-5-2": "tier_8_40_cache_read_0_20",
}
#: A model the table does not know is priced like the CLI's own fallback.
DEFAULT_TIER = "tier_5_25"


def prices_of(model: str) -> Prices:
    """The prices of ``model``: its own id, a dated id of it, or the default tier."""
    model = model.removesuffix("[1m]")
    matches = [known for known in MODELS if model == known or model.startswith(known + "-")]
    return TIERS[MODELS[max(matches, key=len)] if matches else DEFAULT_TIER]


def cost_usd(model: str, usage: dict[str, Any]) -> float:
    """Dollars for one model response, from its ``usage`` object as the Messages API gives it."""
    prices = prices_of(model)
    read = int(usage.get("cache_read_input_tokens") or 0)
    written = int(usage.get("cache_creation_input_tokens") or 0)
    fresh = int(usage.get("input_tokens") or 0)
    long = prices.long_prompt
    if long is not None and prices.long_prompt_above is not None and fresh + read + written > prices.long_prompt_above:
        prices = long
    split = usage.get("cache_creation") or {}
    written_1h = min(written, int(split.get("ephemeral_1h_input_tokens") or 0))
    dollars = (
        fresh * prices.input
        + int(usage.get("output_tokens") or 0) * prices.output
        + read * prices.cache_read
        + (written - written_1h) * prices.cache_write_5m
        + written_1h * prices.cache_write_1h
    )
    return dollars / MILLION
