"""The seed's health report over a set of sessions and the pool's status."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from claude_sessions.config import SessionManagerConfig
from claude_sessions.sessions.session import Session

#: A session active within this many seconds counts as "recent" in the health report.
RECENT_SECONDS = 300.0


def health_report(sessions: Sequence[Session], pool: dict[str, Any], limits: SessionManagerConfig) -> dict[str, Any]:
    """Sessions by age and state, the pool's figures, and the sessions' totals and errors."""
    now = time.time()
    metrics = [s.metrics for s in sessions]
    half_timeout = limits.TIMEOUT_MINUTES * 30
    return {
        "sessions": {
            "active": len(sessions),
            "recent": sum(1 for m in metrics if m.idle_seconds(now) <= RECENT_SECONDS),
            "old": sum(1 for m in metrics if m.idle_seconds(now) > half_timeout),
            "busy": sum(1 for s in sessions if s.is_busy or s.busy_elsewhere),
            "with_worker": sum(1 for s in sessions if s.worker is not None),
            "max": limits.MAX_SESSIONS,
        },
        "pool": {
            "size": pool["pool_size"],
            "idle": pool["idle"],
            "healthy": pool["healthy_connections"],
            "max_size": pool["max_size"],
            "min_size": pool["min_size"],
        },
        "totals": {
            "messages": sum(m.message_count for m in metrics),
            "tokens": sum(m.total_tokens for m in metrics),
            "cost": round(sum(m.total_cost for m in metrics), 6),
        },
        "errors": {
            "api": sum(m.api_errors for m in metrics),
            "connection": sum(m.connection_errors for m in metrics),
            "timeouts": sum(m.timeouts for m in metrics),
        },
    }
