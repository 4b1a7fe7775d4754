"""Tenants' and end users' spend and turn rate (``TENANT_*``, ``USER_*``, a key's limits), exact across nodes."""

from __future__ import annotations

import math
from datetime import UTC, datetime

from claude_sessions.errors import BudgetExceededError, RateLimitedError
from claude_sessions.store.records import Database, Spend, TenantUsage, Transaction

#: A day's row taking one more charge.
_ADDED = (
    "cost = {table}.cost + excluded.cost, tokens = {table}.tokens + excluded.tokens,"
    " turns = {table}.turns + excluded.turns"
)
#: Who pays for a turn: a tenant, and the end user of it (None: the tenant's own turn).
Payer = tuple[str, str | None]
#: A payer's limits: US dollars per UTC day, turns per minute (None: not limited).
Limits = tuple[float | None, int | None]

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

#: Turns, tokens, spend and model errors per minute, by tenant and end user ('' the tenant's own): the
#: console's last hour, the same whichever node ran the turns (both backends).
USAGE_MINUTES_SCHEMA = """
CREATE TABLE usage_minutes (
    tenant TEXT NOT NULL,
    end_user TEXT NOT NULL,
    minute BIGINT NOT NULL,
    cost DOUBLE PRECISION NOT NULL DEFAULT 0,
    tokens BIGINT NOT NULL DEFAULT 0,
    turns BIGINT NOT NULL DEFAULT 0,
    errors BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, end_user, minute)
);
CREATE INDEX usage_minutes_minute ON usage_minutes (minute);
"""
#: One minute's (cost, tokens, turns, model errors).
Figures = tuple[float, int, int, int]
#: Minutes kept: the console's hour, and as much again.
MINUTES_KEPT = 120


class SpendStore:
    """Admits turns within a tenant's limits and adds up what they cost, per UTC day."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def admit(self, payer: Payer, now: float, tenant: Limits, user: Limits) -> float | None:
        """Let a turn of ``payer`` (tenant, end user or None) start within the tenant's limits and, for an
        end user, the user's: exactly across every node. The rest of the tenant's day budget (None:
        none), which the gateway holds the turn's calls to; a user's budget is checked here only.
        Raises :class:`BudgetExceededError` or :class:`RateLimitedError`; a refused turn counts for nothing."""
        name, end_user = payer
        async with self.db.transaction() as tx:
            await self.db.lock_tenant(tx, name)
            rests = [await self._check(tx, (name, None), now, *tenant)]
            if end_user is not None:
                rests.append(await self._check(tx, payer, now, *user))
            if tenant[1] is not None or user[1] is not None:  # only a rate reads them
                await tx.run("INSERT INTO turn_starts (tenant, end_user, at) VALUES (?, ?, ?)", (name, end_user, now))
        return rests[0]

    @staticmethod
    async def _check(
        tx: Transaction, payer: Payer, now: float, daily_usd: float | None, per_minute: int | None
    ) -> float | None:
        """One payer's budget and rate (a tenant's when its user is None); the rest of its day's budget."""
        name, end_user = payer
        who = f"tenant {name!r}" if end_user is None else f"user {end_user!r} of tenant {name!r}"
        table, where = ("usage", "tenant = ?") if end_user is None else ("user_usage", "tenant = ? AND end_user = ?")
        keys = (name,) if end_user is None else payer
        spent = 0.0
        if daily_usd is not None:
            rows = await tx.run(f"SELECT cost FROM {table} WHERE {where} AND day = ?", (*keys, _day(now)))
            spent = float(rows[0][0]) if rows else 0.0
            if spent >= daily_usd:
                raise BudgetExceededError(
                    f"{who} spent its daily budget (${daily_usd:g}); it renews at 00:00 UTC", seconds_to_midnight(now)
                )
        if per_minute is not None:
            await tx.run("DELETE FROM turn_starts WHERE tenant = ? AND at <= ?", (name, now - 60))
            ((count, oldest),) = await tx.run(f"SELECT count(*), min(at) FROM turn_starts WHERE {where}", keys)
            if count >= per_minute:
                retry = max(1, math.ceil(float(oldest) + 60 - now))
                raise RateLimitedError(f"{who} started {per_minute} turns in the last minute", retry)
        return None if daily_usd is None else daily_usd - spent

    async def charge(self, payer: Payer, now: float, cost: float, tokens: int, turns: int, errors: int = 0) -> None:
        """Add spend (and finished turns) to a tenant's day, to its end user's, and to the minute's."""
        name, end_user = payer
        minute = int(now // 60)
        async with self.db.transaction() as tx:
            await tx.run(
                "INSERT INTO usage_minutes (tenant, end_user, minute, cost, tokens, turns, errors)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (tenant, end_user, minute) DO UPDATE SET"
                f" {_ADDED.format(table='usage_minutes')}, errors = usage_minutes.errors + excluded.errors",
                (name, end_user or "", minute, cost, tokens, turns, errors),
            )
            await tx.run("DELETE FROM usage_minutes WHERE minute < ?", (minute - MINUTES_KEPT,))
            await tx.run(
                "INSERT INTO usage (tenant, day, cost, tokens, turns) VALUES (?, ?, ?, ?, ?)"
                f" ON CONFLICT (tenant, day) DO UPDATE SET {_ADDED.format(table='usage')}",
                (name, _day(now), cost, tokens, turns),
            )
            if end_user is not None:
                await tx.run(
                    "INSERT INTO user_usage (tenant, end_user, day, cost, tokens, turns) VALUES (?, ?, ?, ?, ?, ?)"
                    f" ON CONFLICT (tenant, end_user, day) DO UPDATE SET {_ADDED.format(table='user_usage')}",
                    (name, end_user, _day(now), cost, tokens, turns),
                )

    async def minutes(self, since: float, tenant: str | None, user: str | None) -> dict[int, Figures]:
        """(cost, tokens, turns, errors) per minute from ``since`` on: every tenant's (None), one's, or
        one end user's of it."""
        where, params = "", tuple[str, ...]()
        if tenant is not None:
            where, params = " AND tenant = ?", (tenant,)
            if user is not None:
                where, params = where + " AND end_user = ?", (tenant, user)
        async with self.db.transaction() as tx:
            rows = await tx.run(
                "SELECT minute, sum(cost), sum(tokens), sum(turns), sum(errors) FROM usage_minutes"
                f" WHERE minute >= ?{where} GROUP BY minute",
                (int(since // 60), *params),
            )
        return {int(m): (float(c), int(k), int(t), int(e)) for m, c, k, t, e in rows}

    async def usage(self, tenant: str | None, now: float, user: str | None = None) -> list[TenantUsage]:
        """Spend, tokens and turns today and this month (UTC), for one tenant or (None) every one; with
        ``user``, that end user's of the tenant."""
        today = _day(now)
        table, where, params = (
            ("usage", "", ())
            if tenant is None
            else ("usage", " AND tenant = ?", (tenant,))
            if user is None
            else ("user_usage", " AND tenant = ? AND end_user = ?", (tenant, user))
        )
        async with self.db.transaction() as tx:
            rows = await tx.run(
                "SELECT tenant, sum(CASE WHEN day = ? THEN cost ELSE 0 END),"
                " sum(CASE WHEN day = ? THEN tokens ELSE 0 END), sum(CASE WHEN day = ? THEN turns ELSE 0 END),"
                f" sum(cost), sum(tokens), sum(turns) FROM {table} WHERE day >= ?{where}"
                " GROUP BY tenant ORDER BY tenant",
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
