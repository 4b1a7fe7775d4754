"""The console's last hour laid out: every minute of the window, oldest first, empty ones as zeros."""

from __future__ import annotations

from claude_sessions.observability.usage_series import BUCKET_SECONDS, points, window_start


def test_the_window_is_sixty_minutes_ending_with_the_current_one() -> None:
    now = 1_000_000 * BUCKET_SECONDS + 30.0
    assert window_start(now) == 999_941 * BUCKET_SECONDS
    laid_out = points({1_000_000: (0.5, 3, 2, 1), 999_000: (9.0, 9, 9, 9)}, now)
    assert len(laid_out) == 60 and laid_out[0]["start"] == 999_941 * BUCKET_SECONDS
    assert laid_out[-1] == {"start": 1_000_000 * BUCKET_SECONDS, "turns": 2, "tokens": 3, "cost": 0.5, "errors": 1}
    assert sum(p["turns"] for p in laid_out) == 2  # a minute outside the window is not drawn
