"""The registry: sessions, leases, nodes and ledgers that every node of a deployment shares.

One interface, two backends: SQLite in the data directory (one node, the default)
and PostgreSQL (any number of nodes). The SQL lives here, once; a backend supplies
its connection, its schema and the lock that makes creates exact.

A session's conversation runs in one CLI in the whole cluster: the node that
``claim``-s it becomes its holder and gets a fencing token (``fence``). Every write
of a turn carries the token, so a holder that was paused past its lease and lost the
session to another node has its writes refused instead of mixing two histories.
A lease lasts as long as its holder's heartbeat is fresh and the holder is ``up``.
"""

from __future__ import annotations

import json
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Coroutine, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Literal, Protocol, TypeVar

from claude_sessions.config import SessionConfig
from claude_sessions.errors import BudgetExceededError, ClusterModeError, RateLimitedError
from claude_sessions.observability.metrics import SessionMetrics

T = TypeVar("T")

#: What ``create`` did: made it, or which rule refused it.
CreateOutcome = Literal["created", "exists", "global", "tenant"]
#: A node serving turns; ``draining`` ones finish theirs and hand sessions over.
NodeStatus = Literal["up", "draining", "down"]


@dataclass(frozen=True)
class SessionRecord:
    """A session as stored: enough to list it and to resume its conversation anywhere."""

    key: str
    owner: str | None
    config: SessionConfig
    metadata: dict[str, Any]
    metrics: SessionMetrics
    claude_session_id: str | None
    orphaned: bool
    #: The CLI has written the conversation's transcript (a reply was seen).
    recorded: bool = False
    #: A turn is running on the holder.
    busy: bool = False
    #: The node holding the session's live CLI, if any, and the lease's fencing token.
    holder: str | None = None
    fence: int = 0
    #: Where the holder answers (a live holder's, as read).
    holder_url: str | None = None


@dataclass(frozen=True)
class Holder:
    """The live node that runs a session's CLI, and where to reach it."""

    node_id: str
    url: str


@dataclass(frozen=True)
class Spend:
    cost_usd: float
    tokens: int
    turns: int


@dataclass(frozen=True)
class TenantUsage:
    """What a tenant used today and this month (UTC)."""

    tenant: str
    today: Spend
    month: Spend


@dataclass(frozen=True)
class NodeRecord:
    node_id: str
    url: str
    last_seen: float
    live_workers: int
    status: NodeStatus


class Transaction(Protocol):
    """One database transaction; ``run`` answers the rows and sets ``rowcount``."""

    rowcount: int

    async def run(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...


_COLUMNS = "key, owner, config, metadata, metrics, claude_session_id, orphaned, recorded, busy, holder, fence"
#: A session with its holder and busy flag as they stand: a dead or draining holder holds nothing.
#: The first parameter is the oldest fresh heartbeat time.
_SELECT = (
    "SELECT s.key, s.owner, s.config, s.metadata, s.metrics, s.claude_session_id, s.orphaned, s.recorded,"
    " CASE WHEN n.node_id IS NULL THEN 0 ELSE s.busy END, n.node_id, s.fence, n.url FROM sessions s"
    " LEFT JOIN nodes n ON n.node_id = s.holder AND n.status = 'up' AND n.last_seen > ?"
)
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
#: The nodes whose leases hold: heartbeat fresh (the first parameter: the oldest fresh time) and up.
_LIVE_NODES = "SELECT node_id FROM nodes WHERE status = 'up' AND last_seen > ?"


_HEARTBEAT = (
    "INSERT INTO nodes (node_id, owner, url, started_at, last_seen, live_workers, status)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (node_id) DO UPDATE SET url = excluded.url, last_seen = excluded.last_seen,"
    " live_workers = excluded.live_workers, status = excluded.status"
)


@lru_cache(maxsize=1024)
def _config(raw: str) -> SessionConfig:
    """Options parsed once per distinct value: thousands of sessions share a few option sets."""
    return SessionConfig.model_validate_json(raw)


def _record(row: tuple[Any, ...]) -> SessionRecord:
    key, owner, config, metadata, metrics, claude_id, orphaned, recorded, busy, holder, fence, holder_url = row
    return SessionRecord(
        key=key,
        owner=owner,
        config=_config(config),
        metadata=json.loads(metadata),
        metrics=SessionMetrics(**json.loads(metrics)),
        claude_session_id=claude_id,
        orphaned=bool(orphaned),
        recorded=bool(recorded),
        busy=bool(busy),
        holder=holder,
        fence=int(fence),
        holder_url=holder_url,
    )


class Registry(ABC):
    """The shared state of a deployment. Every method is one short transaction."""

    #: True when no call ever waits (SQLite): synchronous callers may then use ``run_now``.
    synchronous = False
    #: The database's name, for people.
    kind = ""
    #: The SQL for a session's ``cwd`` option, read from its stored JSON (each dialect has its own).
    cwd_sql = ""
    #: A condition leaving out the sessions whose transcripts this database itself holds.
    unstored_sql = ""

    def __init__(self, node_id: str, lease_seconds: float) -> None:
        self.node_id = node_id
        self.lease_seconds = lease_seconds
        self.closed = False
        #: The data directory this node runs on (see ``join``).
        self.owner = ""

    # -- what a backend supplies ----------------------------------------------------

    @abstractmethod
    def _transaction(self) -> AbstractAsyncContextManager[Transaction]: ...

    @abstractmethod
    async def _lock_creates(self, tx: Transaction) -> None:
        """Serialize creates across the deployment, so counting then inserting is exact."""

    @abstractmethod
    async def _lock_tenant(self, tx: Transaction, tenant: str) -> None:
        """Hold, until ``tx`` ends, the lock that makes one tenant's turn admissions exact."""

    @abstractmethod
    async def open(self) -> None:
        """Connect, and create or migrate the schema."""

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def lead(self) -> bool:
        """Whether this node runs the deployment's maintenance now (one node at a time)."""

    def _fresh_since(self) -> float:
        return time.time() - self.lease_seconds

    # -- sessions ----------------------------------------------------------------------

    async def create(
        self, record: SessionRecord, max_sessions: int, owner_limit: int | None, hold: bool
    ) -> CreateOutcome:
        """Insert a session unless its key is taken or a limit is reached, atomically for every node.

        ``hold``: this node takes the session's lease at once (it binds a CLI now), and the
        session counts as busy until the creator saves it: a CLI start slower than
        ``SM_TIMEOUT_MINUTES`` never lets maintenance, on any node, remove it half made.
        """
        async with self._transaction() as tx:
            await self._lock_creates(tx)
            if await tx.run("SELECT 1 FROM sessions WHERE key = ?", (record.key,)):
                return "exists"
            ((total,),) = await tx.run("SELECT count(*) FROM sessions")
            if total >= max_sessions:
                return "global"
            if owner_limit is not None:
                ((mine,),) = await tx.run("SELECT count(*) FROM sessions WHERE owner = ?", (record.owner,))
                if mine >= owner_limit:
                    return "tenant"
            await tx.run(
                f"INSERT INTO sessions ({_COLUMNS}, last_activity) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.key,
                    record.owner,
                    record.config.model_dump_json(),
                    json.dumps(record.metadata),
                    json.dumps(asdict(record.metrics)),
                    record.claude_session_id,
                    int(record.orphaned),
                    int(record.recorded),
                    int(hold),  # busy while its CLI starts
                    self.node_id if hold else None,
                    1 if hold else 0,
                    record.metrics.last_activity,
                ),
            )
        return "created"

    async def get(self, key: str) -> SessionRecord | None:
        async with self._transaction() as tx:
            rows = await tx.run(f"{_SELECT} WHERE s.key = ?", (self._fresh_since(), key))
        return _record(rows[0]) if rows else None

    async def sessions(self, owner: str | None = None, *, everyone: bool = False) -> list[SessionRecord]:
        """``owner``'s sessions (None: the operator's own), or every session with ``everyone``."""
        where, params = (
            ("", ())
            if everyone
            else ("WHERE s.owner IS NULL", ())
            if owner is None
            else ("WHERE s.owner = ?", (owner,))
        )
        async with self._transaction() as tx:
            rows = await tx.run(f"{_SELECT} {where} ORDER BY s.last_activity, s.key", (self._fresh_since(), *params))
        return [_record(row) for row in rows]

    async def count(self) -> int:
        async with self._transaction() as tx:
            ((total,),) = await tx.run("SELECT count(*) FROM sessions")
        return int(total)

    async def save(self, record: SessionRecord) -> bool:
        """Write what a turn changed, fenced: False if the session is gone or another node took it."""
        async with self._transaction() as tx:
            await tx.run(
                "UPDATE sessions SET metadata = ?, metrics = ?, claude_session_id = ?, orphaned = ?, recorded = ?,"
                " busy = ?, last_activity = ? WHERE key = ? AND fence = ?",
                (
                    json.dumps(record.metadata),
                    json.dumps(asdict(record.metrics)),
                    record.claude_session_id,
                    int(record.orphaned),
                    int(record.recorded),
                    int(record.busy),
                    record.metrics.last_activity,
                    record.key,
                    record.fence,
                ),
            )
            return tx.rowcount == 1

    async def mark_orphaned(self, key: str) -> None:
        async with self._transaction() as tx:
            await tx.run("UPDATE sessions SET orphaned = 1 WHERE key = ?", (key,))

    async def delete(self, key: str) -> bool:
        async with self._transaction() as tx:
            await tx.run("DELETE FROM sessions WHERE key = ?", (key,))
            deleted = tx.rowcount == 1
            await tx.run("DELETE FROM replies WHERE session_key = ?", (key,))
        return deleted

    async def expired(self, idle_before: float) -> list[str]:
        """Sessions idle since ``idle_before``, except those mid-turn on a live node."""
        async with self._transaction() as tx:
            rows = await tx.run(
                f"SELECT key FROM sessions WHERE last_activity < ?"
                f" AND NOT (busy = 1 AND holder IN ({_LIVE_NODES})) ORDER BY last_activity",
                (idle_before, self._fresh_since()),
            )
        return [key for (key,) in rows]

    async def conversations(self) -> list[tuple[str, str | None, str]]:
        """(key, ``cwd`` option, conversation id) of each session with a recorded conversation, not
        orphaned and not mid-turn on a live node, whose transcript is not known to be stored in this
        database: what orphan detection checks, in narrow rows (thousands of sessions, every pass)."""
        async with self._transaction() as tx:
            rows = await tx.run(
                f"SELECT key, {self.cwd_sql}, claude_session_id FROM sessions WHERE recorded = 1 AND orphaned = 0"
                f" AND claude_session_id IS NOT NULL AND NOT (busy = 1 AND holder IN ({_LIVE_NODES}))"
                f"{self.unstored_sql}",
                (self._fresh_since(),),
            )
        return [(key, cwd, claude_id) for key, cwd, claude_id in rows]

    # -- leases --------------------------------------------------------------------------

    async def claim(self, key: str) -> int | Holder | None:
        """Take a session's lease: its fencing token, or the live node that holds it, or None if gone.

        A lease is free when nobody holds it, or its holder's heartbeat is stale, or
        the holder is draining. Taking it from another node raises the token.
        """
        async with self._transaction() as tx:
            rows = await tx.run(
                "UPDATE sessions SET fence = CASE WHEN holder = ? THEN fence ELSE fence + 1 END, holder = ?"
                f" WHERE key = ? AND (holder IS NULL OR holder = ? OR holder NOT IN ({_LIVE_NODES})) RETURNING fence",
                (self.node_id, self.node_id, key, self.node_id, self._fresh_since()),
            )
            if rows:
                return int(rows[0][0])
            rows = await tx.run(
                "SELECT s.holder, n.url FROM sessions s LEFT JOIN nodes n ON n.node_id = s.holder WHERE s.key = ?",
                (key,),
            )
        return Holder(rows[0][0], rows[0][1] or "") if rows else None

    async def holder(self, key: str) -> Holder | None:
        """The live node, other than this one, that holds ``key``'s CLI (None: nobody alive, or us)."""
        async with self._transaction() as tx:
            rows = await tx.run(
                f"SELECT n.node_id, n.url FROM sessions s JOIN nodes n ON n.node_id = s.holder"
                f" WHERE s.key = ? AND s.holder <> ? AND s.holder IN ({_LIVE_NODES})",
                (key, self.node_id, self._fresh_since()),
            )
        return Holder(rows[0][0], rows[0][1]) if rows else None

    async def holds(self, key: str, fence: int) -> bool:
        """Whether this node still holds ``key`` under ``fence``."""
        async with self._transaction() as tx:
            rows = await tx.run(
                "SELECT 1 FROM sessions WHERE key = ? AND holder = ? AND fence = ?", (key, self.node_id, fence)
            )
        return bool(rows)

    async def release(self, key: str, fence: int) -> None:
        """Let go of a lease (the CLI was released); a newer holder's lease is left alone."""
        async with self._transaction() as tx:
            await tx.run(
                "UPDATE sessions SET holder = NULL WHERE key = ? AND holder = ? AND fence = ?",
                (key, self.node_id, fence),
            )

    async def held(self) -> dict[str, int]:
        """The sessions this node holds, with their tokens: a local CLI missing here lost its lease."""
        async with self._transaction() as tx:
            rows = await tx.run("SELECT key, fence FROM sessions WHERE holder = ?", (self.node_id,))
        return {key: int(fence) for key, fence in rows}

    # -- nodes ---------------------------------------------------------------------------

    async def join(self, owner: str) -> None:
        """Start as the node of data directory ``owner``; an earlier node there is dead (this one holds
        the directory's lock), so its leases are free now, not when its heartbeat would have lapsed."""
        self.owner = owner
        async with self._transaction() as tx:
            await tx.run("DELETE FROM nodes WHERE owner = ?", (owner,))

    async def heartbeat(self, url: str, live_workers: int, status: NodeStatus) -> None:
        now = time.time()
        async with self._transaction() as tx:
            await tx.run(
                _HEARTBEAT,
                (self.node_id, self.owner, url, now, now, live_workers, status),
            )

    async def leave(self) -> None:
        """This node stops: its leases are free at once (a killed node's lapse with its heartbeat)."""
        async with self._transaction() as tx:
            await tx.run("DELETE FROM nodes WHERE node_id = ?", (self.node_id,))

    async def forget_nodes(self, unseen_since: float) -> None:
        async with self._transaction() as tx:
            await tx.run("DELETE FROM nodes WHERE last_seen < ?", (unseen_since,))

    async def nodes(self) -> list[NodeRecord]:
        """Every node that has not left; a stale heartbeat reads ``down`` whatever the node last said."""
        fresh = self._fresh_since()
        async with self._transaction() as tx:
            rows = await tx.run("SELECT node_id, url, last_seen, live_workers, status FROM nodes ORDER BY started_at")
        return [
            NodeRecord(node_id, url, float(seen), int(live), status if seen > fresh else "down")
            for node_id, url, seen, live, status in rows
        ]

    # -- CLI processes, for crash hygiene (``owner``: this host's data directory) ----------

    async def add_worker(self, owner: str, pid: int, started_at: float) -> None:
        async with self._transaction() as tx:
            await tx.run(
                "INSERT INTO workers (owner, pid, started_at) VALUES (?, ?, ?)"
                " ON CONFLICT (owner, pid) DO UPDATE SET started_at = excluded.started_at",
                (owner, pid, started_at),
            )

    async def remove_worker(self, owner: str, pid: int) -> None:
        async with self._transaction() as tx:
            await tx.run("DELETE FROM workers WHERE owner = ? AND pid = ?", (owner, pid))

    async def take_workers(self, owner: str) -> list[tuple[int, float]]:
        """The recorded CLI processes of an earlier run on this data directory; the record is cleared."""
        async with self._transaction() as tx:
            rows = await tx.run("DELETE FROM workers WHERE owner = ? RETURNING pid, started_at", (owner,))
        return [(int(pid), float(started)) for pid, started in rows]

    # -- replayable turns (Idempotency-Key) ----------------------------------------------

    async def reply(self, session_key: str, idempotency_key: str) -> tuple[str, list[dict[str, Any]]] | None:
        """(the request it answered, the turn's messages) stored under a key, if any."""
        async with self._transaction() as tx:
            rows = await tx.run(
                "SELECT request, messages FROM replies WHERE session_key = ? AND idempotency_key = ?",
                (session_key, idempotency_key),
            )
        return None if not rows else (rows[0][0], list(json.loads(rows[0][1])))

    async def save_reply(
        self, session_key: str, idempotency_key: str, request: str, messages: list[dict[str, Any]]
    ) -> None:
        """Keep a turn for replay, unless its session was deleted meanwhile (nothing outlives it)."""
        async with self._transaction() as tx:
            await tx.run(
                "INSERT INTO replies (session_key, idempotency_key, request, messages, created_at)"
                " SELECT ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM sessions WHERE key = ?)"
                " ON CONFLICT (session_key, idempotency_key) DO UPDATE SET request = excluded.request,"
                " messages = excluded.messages, created_at = excluded.created_at",
                (
                    session_key,
                    idempotency_key,
                    request,
                    json.dumps(messages, default=str),
                    time.time(),
                    session_key,
                ),
            )

    async def forget_replies(self, older_than: float) -> None:
        async with self._transaction() as tx:
            await tx.run("DELETE FROM replies WHERE created_at < ?", (older_than,))

    # -- tenants' spend and turn rate (TENANT_DAILY_USD, TENANT_TURNS_PER_MINUTE) ---------

    async def admit(self, tenant: str, now: float, daily_usd: float | None, per_minute: int | None) -> float | None:
        """Let a turn of ``tenant`` start within its limits, exactly across every node; the rest
        of its day's budget (None: no budget). Raises :class:`BudgetExceededError` or
        :class:`RateLimitedError`; a refused turn counts for nothing."""
        async with self._transaction() as tx:
            await self._lock_tenant(tx, tenant)
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
        async with self._transaction() as tx:
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
        async with self._transaction() as tx:
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

    # -- transcripts of removed sessions, purged after the retention period -------------

    async def retire_transcript(self, name: str, at: float | None = None) -> None:
        """Remember a removed session's transcript; ``at=0`` makes it due for purge now."""
        retired_at = time.time() if at is None else at
        async with self._transaction() as tx:
            await tx.run(
                "INSERT INTO retired_transcripts (path, retired_at) VALUES (?, ?)"
                " ON CONFLICT (path) DO UPDATE SET retired_at = excluded.retired_at",
                (name, retired_at),
            )

    async def unretire_transcript(self, name: str) -> None:
        async with self._transaction() as tx:
            await tx.run("DELETE FROM retired_transcripts WHERE path = ?", (name,))

    async def take_retired_transcripts(self, retired_before: float) -> list[str]:
        async with self._transaction() as tx:
            rows = await tx.run(
                "DELETE FROM retired_transcripts WHERE retired_at <= ? RETURNING path", (retired_before,)
            )
        return [name for (name,) in rows]


def _day(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d")


def seconds_to_midnight(now: float) -> int:
    """Whole seconds until the next UTC day (at least 1): when a spent daily budget comes back."""
    return max(1, math.ceil(86400 - now % 86400))


def run_now(registry: Registry, call: Coroutine[Any, Any, T]) -> T:
    """Finish a registry call from synchronous code (the seed's sync methods); SQLite only.

    A SQLite call never waits, so its coroutine completes on the first step.
    """
    if not registry.synchronous:
        call.close()
        raise ClusterModeError("this synchronous call needs the SQLite registry; await the handler's methods instead")
    try:
        call.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    call.close()
    raise ClusterModeError("a synchronous registry call had to wait")
