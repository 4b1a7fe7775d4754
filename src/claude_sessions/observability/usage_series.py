"""Turns, tokens and spend per minute over the last hour: what the console's charts draw.

Every charge of a turn adds to its minute in the registry (``usage_minutes``), whichever node ran
it, so any node draws the cluster's hour, and a node's restart loses none of it. This lays the
minutes out as the charts take them: oldest first, every minute of the window, empty ones included.
"""

from __future__ import annotations

from typing import Any

BUCKET_SECONDS = 60
WINDOW_MINUTES = 60

#: (cost, tokens, turns, model errors) of one minute, by the minute's number (epoch seconds // 60).
Minutes = dict[int, tuple[float, int, int, int]]


def window_start(now: float, minutes: int = WINDOW_MINUTES) -> float:
    """The first second of the window ending with the minute ``now`` is in."""
    return (int(now // BUCKET_SECONDS) - minutes + 1) * BUCKET_SECONDS


def points(found: Minutes, now: float, minutes: int = WINDOW_MINUTES) -> list[dict[str, Any]]:
    """The window's minutes, oldest first, those with nothing in them as zeros."""
    first = int(window_start(now, minutes) // BUCKET_SECONDS)
    laid_out = []
    for minute in range(first, first + minutes):
        cost, tokens, turns, errors = found.get(minute, (0.0, 0, 0, 0))
        laid_out.append(
            {
                "start": minute * BUCKET_SECONDS,
                "turns": turns,
                "tokens": tokens,
                "cost": round(cost, 6),
                "errors": errors,
            }
        )
    return laid_out
