"""Tenants' spend and turn rate (``TENANT_DAILY_USD``, ``TENANT_TURNS_PER_MINUTE``), exact across nodes."""

from __future__ import annotations

import math
from datetime import UTC, datetime

from claude_sessions.errors import BudgetExceededError, RateLimitedError
from claude_sessions.store.records import Database, Spend, TenantUsage

#: Each tenant's spend per UTC day, and the turns it started in the last minute (both backends).
USAGE_SCHEMA = """
CREATE TABLE usage (
    tenant TEXT NOT NULL,
    day TEXT NOT NULL,
    cost DOUBLE PRECISION NOT NULL DEFAULT 0,
    tokens BIGINT NOT NULL DEFAULT 0,
    turns BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, day)
);
CREATE TABLE turn_starts (
    tenant TEXT NOT NULL,
    at DOUBLE PRECISION NOT NULL
);
CREATE INDEX turn_starts_tenant_at ON turn_starts (tenant, at);
"""


class SpendStore:
    """Admits turns within a tenant's limits and adds up what they cost, per UTC day."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def admit(self, tenant: str, now: float, daily_usd: float | None, per_minute: int | None) -> float | None:
        """Let a turn of ``tenant`` start within its limits, exactly across every node; the rest
        of its day's budget (None: no budget). Raises :class:`BudgetExceededError` or
        :class:`RateLimitedError`; a refused turn counts for nothing."""
        async with self.db.transaction() as tx:
            await self.db.lock_tenant(tx, tenant)
            rows = await tx.run("SELECT cost FROM usage WHERE tenant = ? AND day = ?", (tenant, _day(now)))
            spent = float(rows[0][0]) if rows else 0.0
            if daily_usd is not None and spent >= daily_usd:
                raise BudgetExceededError(
                    f"tenant {tenant!r} spent its daily budget (${daily_usd:g}); it renews at 00:00 UTC",
                    seconds_to_midnight(now),
                )
            if per_minute is not None:
                await tx.run("DELETE FROM turn_starts WHERE tenant = ? AND at <= ?", (tenant, now - 60))
                ((count, oldest),) = await tx.run(
                    "SELECT count(*), min(at) FROM turn_starts WHERE tenant = ?", (tenant,)
                )
                if count >= per_minute:
                    raise RateLimitedError(
                        f"tenant {tenant!r} started {per_minute} turns in the last minute",
                        max(1, math.ceil(float(oldest) + 60 - now)),
                    )
                await tx.run("INSERT INTO turn_starts (tenant, at) VALUES (?, ?)", (tenant, now))
        return None if daily_usd is None else daily_usd - spent

    async def charge(self, tenant: str, now: float, cost: float, tokens: int, turns: int) -> None:
        """Add spend (and finished turns) to a tenant's day."""
        async with self.db.transaction() as tx:
            await tx.run(
                "INSERT INTO usage (tenant, day, cost, tokens, turns) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (tenant, day) DO UPDATE SET cost = usage.cost + excluded.cost,"
                " tokens = usage.tokens + excluded.tokens, turns = usage.turns + excluded.turns",
                (tenant, _day(now), cost, tokens, turns),
            )

    async def usage(self, tenant: str | None, now: float) -> list[TenantUsage]:
        """Spend, tokens and turns today and this month (UTC), for one tenant or (None) every one."""
        today = _day(now)
        where, params = ("", ()) if tenant is None else (" AND tenant = ?", (tenant,))
        async with self.db.transaction() as tx:
            rows = await tx.run(
                "SELECT tenant, sum(CASE WHEN day = ? THEN cost ELSE 0 END),"
                " sum(CASE WHEN day = ? THEN tokens ELSE 0 END), sum(CASE WHEN day = ? THEN turns ELSE 0 END),"
                f" sum(cost), sum(tokens), sum(turns) FROM usage WHERE day >= ?{where} GROUP BY tenant ORDER BY tenant",
                (today, today, today, today[:8] + "01", *params),
            )
        return [
            TenantUsage(name, Spend(float(c), int(k), int(t)), Spend(float(mc), int(mk), int(mt)))
            for name, c, k, t, mc, mk, mt in rows
        ]


def _day(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d")


def seconds_to_midnight(now: float) -> int:
    """Whole seconds until the next UTC day (at least 1): when a spent daily budget comes back."""
    return max(1, math.ceil(86400 - now % 86400))
