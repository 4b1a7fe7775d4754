"""The registry: the sessions and leases every node of a deployment shares, the front of its small stores.

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

import itertools
import json
import time
from abc import ABC, abstractmethod
from collections.abc import Coroutine
from contextlib import AbstractAsyncContextManager
from dataclasses import asdict
from functools import lru_cache
from typing import Any, TypeVar

from claude_sessions.config import SessionConfig
from claude_sessions.errors import ClusterModeError
from claude_sessions.observability.metrics import SessionMetrics
from claude_sessions.store.keys import KeyStore
from claude_sessions.store.ledgers import NodeStore, ReplyStore, RetiredTranscripts, WorkerLedger
from claude_sessions.store.records import CreateOutcome, Holder, Lease, RunningTurn, SessionRecord, Transaction
from claude_sessions.store.spend import SpendStore

T = TypeVar("T")

_COLUMNS = (
    "key, owner, config, metadata, metrics, claude_session_id, orphaned, recorded, busy, holder, fence, title, origin"
)
#: A session with its holder and busy flag as they stand: a dead or draining holder holds nothing.
#: The first parameter is the oldest fresh heartbeat time.
_SELECT = (
    "SELECT s.key, s.owner, s.config, s.metadata, s.metrics, s.claude_session_id, s.orphaned, s.recorded,"
    " CASE WHEN n.node_id IS NULL THEN 0 ELSE s.busy END, n.node_id, s.fence, n.url, s.title, s.origin FROM sessions s"
    " LEFT JOIN nodes n ON n.node_id = s.holder AND n.status = 'up' AND n.last_seen > ?"
)
#: The nodes whose leases hold: heartbeat fresh (the first parameter: the oldest fresh time) and up.
_LIVE_NODES = "SELECT node_id FROM nodes WHERE status = 'up' AND last_seen > ?"

#: A call kept this long from the database (a connection is at hand in milliseconds) saw it away.
OUTAGE_SECONDS = 0.5


@lru_cache(maxsize=1024)
def _config(raw: str) -> SessionConfig:
    """Options parsed once per distinct value: thousands of sessions share a few option sets."""
    return SessionConfig.model_validate_json(raw)


def _record(row: tuple[Any, ...]) -> SessionRecord:
    key, owner, config, metadata, metrics, claude_id, orphaned, recorded, busy, holder, fence, url, title, origin = row
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
        holder_url=url,
        title=title,
        origin=origin,
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
        #: An outage's length, discounted from others' heartbeats until ``_paused_until`` (``pause_leases``).
        self._paused, self._paused_until = 0.0, 0.0
        #: When each call not at the database yet began (``_call_began``), and the first that failed since
        #: the last one got through: how long the database was away when it is back.
        self._calls = itertools.count()
        self._waiting: dict[int, float] = {}
        self._away_since: float | None = None
        self.lease_seconds = lease_seconds
        self.closed = False
        #: The small stores behind this front, over the same transactions.
        self.nodes = NodeStore(self)
        self.pids = WorkerLedger(self)
        self.replies = ReplyStore(self)
        self.spend = SpendStore(self)
        self.keys = KeyStore(self)
        self.retired = RetiredTranscripts(self)

    # -- what a backend supplies ----------------------------------------------------

    @abstractmethod
    def transaction(self) -> AbstractAsyncContextManager[Transaction]: ...

    @abstractmethod
    async def _lock_creates(self, tx: Transaction) -> None:
        """Serialize creates across the deployment, so counting then inserting is exact."""

    @abstractmethod
    async def lock_tenant(self, tx: Transaction, tenant: str) -> None:
        """Hold, until ``tx`` ends, the lock that makes one tenant's turn admissions exact."""

    @abstractmethod
    async def open(self) -> None:
        """Connect, and create or migrate the schema."""

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def lead(self) -> bool:
        """Whether this node runs the deployment's maintenance now (one node at a time)."""

    def fresh_since(self) -> float:
        """Heartbeats since then are live: the lease, and for a while after an outage its length too."""
        now = time.time()
        return now - self.lease_seconds - self._active_pause(now)

    def pause_leases(self, seconds: float) -> None:
        """The database was away for ``seconds``: no node could renew its leases then, so none lapsed by it.
        For a lease after this, another node's heartbeat that old still counts (they beat again meanwhile)."""
        self._paused, self._paused_until = seconds, time.time() + self.lease_seconds

    # -- outages, as this node's own calls see them (a backend with waits calls these) -------------

    def _call_began(self) -> tuple[int, float]:
        call = (next(self._calls), time.time())
        self._waiting[call[0]] = call[1]
        return call

    def _call_reached(self, call: tuple[int, float]) -> None:
        """``call`` got a connection. If it, or a call still waiting, was kept from the database past
        ``OUTAGE_SECONDS``, or one failed since the last got through, the database was away (a restart
        shorter than a call's bound leaves calls waiting, not failing): nobody could beat meanwhile,
        and the other nodes' pools come back later than this one's. Leases are paused before this
        call reads any heartbeat, so a live holder is not taken from for the outage: a heartbeat
        that was fresh when the database went away counts for a whole lease after it is back."""
        self._waiting.pop(call[0], None)
        now = time.time()
        oldest = next(iter(self._waiting.values()), call[1])  # in order of their start: no scan
        began = min(call[1], oldest, self._away_since or call[1])
        self._away_since = None
        away = now - began
        if away > OUTAGE_SECONDS and away + self.lease_seconds > self._active_pause(now):
            self.pause_leases(away + self.lease_seconds)

    def _call_failed(self, call: tuple[int, float]) -> None:
        """``call`` found the database away: the outage began by its start."""
        self._away_since = call[1] if self._away_since is None else min(self._away_since, call[1])

    def _call_ended(self, call: tuple[int, float]) -> None:
        self._waiting.pop(call[0], None)

    def _active_pause(self, now: float) -> float:
        return self._paused if now < self._paused_until else 0.0

    # -- sessions ----------------------------------------------------------------------

    async def create(
        self,
        record: SessionRecord,
        max_sessions: int,
        owner_limit: int | None,
        hold: bool,
        user_limit: int | None = None,
    ) -> CreateOutcome:
        """Insert a session unless its key is taken or a limit is reached, atomically for every node.

        ``owner_limit`` counts the owner's sessions, ``user_limit`` those of its end user (``config.user``).

        ``hold``: this node takes the session's lease at once (it binds a CLI now), and the
        session counts as busy until the creator saves it: a CLI start slower than
        ``SM_TIMEOUT_MINUTES`` never lets maintenance, on any node, remove it half made.
        """
        async with self.transaction() as tx:
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
            user = record.config.user
            if user_limit is not None and user is not None:
                sql = "SELECT count(*) FROM sessions WHERE owner = ? AND end_user = ?"
                ((theirs,),) = await tx.run(sql, (record.owner, user))
                if theirs >= user_limit:
                    return "user"
            await tx.run(
                f"INSERT INTO sessions ({_COLUMNS}, last_activity, end_user)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
                    record.title,
                    record.origin,
                    record.metrics.last_activity,
                    user,
                ),
            )
        return "created"

    async def get(self, key: str) -> SessionRecord | None:
        async with self.transaction() as tx:
            rows = await tx.run(f"{_SELECT} WHERE s.key = ?", (self.fresh_since(), key))
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
        async with self.transaction() as tx:
            rows = await tx.run(f"{_SELECT} {where} ORDER BY s.last_activity, s.key", (self.fresh_since(), *params))
        return [_record(row) for row in rows]

    async def count(self) -> int:
        async with self.transaction() as tx:
            ((total,),) = await tx.run("SELECT count(*) FROM sessions")
        return int(total)

    async def save(self, record: SessionRecord) -> bool:
        """Write what a turn changed, fenced: False if the session is gone or another node took it."""
        async with self.transaction() as tx:
            await tx.run(
                "UPDATE sessions SET metadata = ?, metrics = ?, claude_session_id = ?, orphaned = ?, recorded = ?,"
                " busy = ?, last_activity = ?, title = ?, turn_prompt = ?, turn_key = ? WHERE key = ? AND fence = ?",
                (
                    json.dumps(record.metadata),
                    json.dumps(asdict(record.metrics)),
                    record.claude_session_id,
                    int(record.orphaned),
                    int(record.recorded),
                    int(record.busy),
                    record.metrics.last_activity,
                    record.title,
                    record.turn.prompt if record.turn else None,
                    record.turn.key if record.turn else None,
                    record.key,
                    record.fence,
                ),
            )
            return tx.rowcount == 1

    async def mark_orphaned(self, key: str) -> None:
        async with self.transaction() as tx:
            await tx.run("UPDATE sessions SET orphaned = 1 WHERE key = ?", (key,))

    async def delete(self, key: str) -> bool:
        async with self.transaction() as tx:
            await tx.run("DELETE FROM sessions WHERE key = ?", (key,))
            deleted = tx.rowcount == 1
            await tx.run("DELETE FROM replies WHERE session_key = ?", (key,))
        return deleted

    async def expired(self, idle_before: float) -> list[str]:
        """Sessions idle since ``idle_before``, except those mid-turn on a live node."""
        async with self.transaction() as tx:
            rows = await tx.run(
                f"SELECT key FROM sessions WHERE last_activity < ?"
                f" AND NOT (busy = 1 AND holder IN ({_LIVE_NODES})) ORDER BY last_activity",
                (idle_before, self.fresh_since()),
            )
        return [key for (key,) in rows]

    async def conversations(self) -> list[tuple[str, str | None, str]]:
        """(key, ``cwd`` option, conversation id) of each session with a recorded conversation, not
        orphaned and not mid-turn on a live node, whose transcript is not known to be stored in this
        database: what orphan detection checks, in narrow rows (thousands of sessions, every pass)."""
        async with self.transaction() as tx:
            rows = await tx.run(
                f"SELECT key, {self.cwd_sql}, claude_session_id FROM sessions WHERE recorded = 1 AND orphaned = 0"
                f" AND claude_session_id IS NOT NULL AND NOT (busy = 1 AND holder IN ({_LIVE_NODES}))"
                f"{self.unstored_sql}",
                (self.fresh_since(),),
            )
        return [(key, cwd, claude_id) for key, cwd, claude_id in rows]

    # -- leases --------------------------------------------------------------------------

    async def claim(self, key: str) -> Lease | Holder | None:
        """Take a session's lease (its fencing token; whether a turn was left running), or the live
        node that holds it, or None if gone.

        A lease is free when nobody holds it, or its holder's heartbeat is stale, or
        the holder is draining. Taking it from another node raises the token.
        """
        async with self.transaction() as tx:
            rows = await tx.run(
                "UPDATE sessions SET fence = CASE WHEN holder = ? THEN fence ELSE fence + 1 END, holder = ?"
                f" WHERE key = ? AND (holder IS NULL OR holder = ? OR holder NOT IN ({_LIVE_NODES}))"
                " RETURNING fence, busy, turn_prompt, turn_key",
                (self.node_id, self.node_id, key, self.node_id, self.fresh_since()),
            )
            if rows:
                fence, busy, prompt, idempotency_key = rows[0]
                return Lease(int(fence), bool(busy), RunningTurn(prompt, idempotency_key) if prompt else None)
            rows = await tx.run(
                "SELECT s.holder, n.url FROM sessions s LEFT JOIN nodes n ON n.node_id = s.holder WHERE s.key = ?",
                (key,),
            )
        return Holder(rows[0][0], rows[0][1] or "") if rows else None

    async def holder(self, key: str) -> Holder | None:
        """The live node, other than this one, that holds ``key``'s CLI (None: nobody alive, or us)."""
        async with self.transaction() as tx:
            rows = await tx.run(
                f"SELECT n.node_id, n.url FROM sessions s JOIN nodes n ON n.node_id = s.holder"
                f" WHERE s.key = ? AND s.holder <> ? AND s.holder IN ({_LIVE_NODES})",
                (key, self.node_id, self.fresh_since()),
            )
        return Holder(rows[0][0], rows[0][1]) if rows else None

    async def release(self, key: str, fence: int) -> None:
        """Let go of a lease (the CLI was released); a newer holder's lease is left alone."""
        async with self.transaction() as tx:
            await tx.run(
                "UPDATE sessions SET holder = NULL WHERE key = ? AND holder = ? AND fence = ?",
                (key, self.node_id, fence),
            )

    async def held(self) -> dict[str, int]:
        """The sessions this node holds, with their tokens: a local CLI missing here lost its lease."""
        async with self.transaction() as tx:
            rows = await tx.run("SELECT key, fence FROM sessions WHERE holder = ?", (self.node_id,))
        return {key: int(fence) for key, fence in rows}


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
