"""What turns cost a tenant: admission within budgets and rates, and charges written to the registry.

One owner for the charges not written yet: a database away keeps them here, in order, and the
next turn or maintenance pass writes them; each counts as charged on its tally once written.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import structlog
from claude_agent_sdk import ResultMessage

from claude_sessions.config import ServerConfig
from claude_sessions.errors import DatabaseUnavailableError, TurnRefusedError
from claude_sessions.gateway.relay import Tally
from claude_sessions.observability.metrics import TurnUsage, add_usage, is_api_error
from claude_sessions.observability.telemetry import Telemetry
from claude_sessions.sessions.session import Session
from claude_sessions.store.records import UserLimits
from claude_sessions.store.registry import Registry
from claude_sessions.store.spend import Payer
from claude_sessions.workers.worker import Worker

log = structlog.get_logger("claude_sessions.handler")

#: A charge as the registry takes it: (tenant, end user), when, cost, tokens, turns, model errors.
Charge = tuple[Payer, float, float, int, int, int]


class Billing:
    """Budgets and rates before a turn; its metered usage on the session and the tenant's day after."""

    def __init__(
        self, registry: Registry, telemetry: Telemetry, server: ServerConfig, clock: Callable[[], float]
    ) -> None:
        self.registry, self.telemetry, self.server, self.clock = registry, telemetry, server, clock
        #: Charges not written yet (the database was away), with the tally that metered each.
        self._uncharged: deque[tuple[Tally, Charge]] = deque()

    async def admit(self, session: Session, limits: UserLimits | None = None) -> float | None:
        """Start a turn within its tenant's limits and its end user's (``limits``, a key's own, win over
        ``USER_*``); the rest of the nearer day budget, if any.

        Raises :class:`BudgetExceededError` or :class:`RateLimitedError` before anything runs.
        """
        server, tenant, user = self.server, session.tenant, session.config.user
        mine = UserLimits.of_user(limits, server) if user is not None else UserLimits()
        tenant_limits = (server.daily_usd(tenant), server.turns_per_minute(tenant))
        user_limits = (mine.daily_usd, mine.turns_per_minute)
        if tenant_limits == user_limits == (None, None):
            return None
        try:
            return await self.registry.spend.admit((tenant, user), self.clock(), tenant_limits, user_limits)
        except TurnRefusedError as refusal:
            self.telemetry.turns_refused.labels(tenant, refusal.kind).inc()
            raise

    async def record(self, session: Session, worker: Worker, result: ResultMessage, seconds: float) -> None:
        """A finished turn: what the gateway metered for its calls, and its outcome."""
        session.metrics.last_turn_ms = round(seconds * 1000, 3)
        usage = worker.grant.take() + TurnUsage(api_error=is_api_error(result))
        add_usage(session.metrics, usage)
        self.telemetry.turn_finished(session.owner, usage, seconds)
        await self._charge(session, usage, 1, worker.grant.tally)

    async def bill_unfinished(self, session: Session, worker: Worker) -> None:
        """Calls of a turn that never finished (its CLI died or was killed) were billed all the same."""
        usage = worker.grant.take()
        add_usage(session.metrics, usage)
        self.telemetry.usage(session.owner, usage)
        if usage.cost or any(usage.tokens().values()):
            await self._charge(session, usage, 0, worker.grant.tally)

    async def _charge(self, session: Session, usage: TurnUsage, turns: int, tally: Tally) -> None:
        """Add spend to the tenant's day (and its end user's) in the registry (what budgets and
        ``/v1/usage`` read); ``tally`` metered it, and counts it as charged once written."""
        payer = (session.tenant, session.config.user)
        charge = (payer, self.clock(), usage.cost, sum(usage.tokens().values()), turns, int(usage.api_error))
        self._uncharged.append((tally, charge))
        await self.write_pending()

    async def write_pending(self) -> None:
        """Write the charges not yet written; a database away keeps them for the next turn or pass."""
        while self._uncharged:
            tally, charge = pending = self._uncharged.popleft()  # taken first: two callers never write one twice
            try:
                await self.registry.spend.charge(*charge)
            except DatabaseUnavailableError:
                self._uncharged.appendleft(pending)
                log.warning("usage_charge_deferred", pending=len(self._uncharged))
                return
            tally.charged += charge[2]
