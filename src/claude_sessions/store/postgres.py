"""The registry in PostgreSQL: any number of nodes serve the same sessions.

Every call is bounded: a database that does not answer within ``timeout`` raises
:class:`DatabaseUnavailableError` (the API answers 503 with ``Retry-After``), and the
pool reconnects by itself when the database is back. Creates take a transaction-level
advisory lock, so the session limits hold exactly under concurrent creates on every
node; maintenance runs on the node holding a session-level advisory lock.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import psycopg
import structlog
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

from claude_sessions.errors import DatabaseUnavailableError
from claude_sessions.store.keys import KEYS_AND_USERS_SCHEMA
from claude_sessions.store.records import RUNNING_TURN_SCHEMA, Transaction
from claude_sessions.store.registry import Registry
from claude_sessions.store.spend import USAGE_MINUTES_SCHEMA, USAGE_SCHEMA
from claude_sessions.store.transcripts import TRANSCRIPT_TABLE, UNAVAILABLE

log = structlog.get_logger("claude_sessions.registry")

#: Advisory lock keys (arbitrary, fixed): schema migration, creates, the maintenance leader.
_MIGRATE_LOCK, _CREATE_LOCK, _LEADER_LOCK = 0x636C_0001, 0x636C_0002, 0x636C_0003
#: The first half of a tenant's admission lock (the second: the hash of its name).
_TENANT_LOCK_CLASS = 0x636C_0004

_MIGRATIONS = [
    """
CREATE TABLE sessions (
    key TEXT PRIMARY KEY,
    owner TEXT,
    config TEXT NOT NULL,
    metadata TEXT NOT NULL,
    metrics TEXT NOT NULL,
    claude_session_id TEXT,
    orphaned INTEGER NOT NULL DEFAULT 0,
    recorded INTEGER NOT NULL DEFAULT 0,
    last_activity DOUBLE PRECISION NOT NULL DEFAULT 0,
    busy INTEGER NOT NULL DEFAULT 0,
    holder TEXT,
    fence BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX sessions_last_activity ON sessions (last_activity);
CREATE INDEX sessions_owner ON sessions (owner);
CREATE INDEX sessions_holder ON sessions (holder);
CREATE TABLE nodes (
    node_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    url TEXT NOT NULL,
    started_at DOUBLE PRECISION NOT NULL,
    last_seen DOUBLE PRECISION NOT NULL,
    live_workers INTEGER NOT NULL,
    status TEXT NOT NULL
);
CREATE TABLE workers (
    owner TEXT NOT NULL,
    pid INTEGER NOT NULL,
    started_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (owner, pid)
);
CREATE TABLE replies (
    session_key TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    request TEXT NOT NULL,
    messages TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (session_key, idempotency_key)
);
CREATE TABLE retired_transcripts (
    path TEXT PRIMARY KEY,
    retired_at DOUBLE PRECISION NOT NULL
);
""",
    USAGE_SCHEMA,
    # Sessions say how a list shows them: a title (the first user message) and the way in that made them.
    """
ALTER TABLE sessions ADD COLUMN title TEXT;
ALTER TABLE sessions ADD COLUMN origin TEXT NOT NULL DEFAULT 'sessions';
UPDATE sessions SET origin = 'openai' WHERE metadata::json ->> 'origin' = 'openai';
""",
    # Keys made at run time, and end users: sessions, turn starts and spend say whose they are.
    KEYS_AND_USERS_SCHEMA,
    # The console's last hour, per minute, as every node adds to it.
    USAGE_MINUTES_SCHEMA,
    # What a node taking over a turn that never ended needs to settle it.
    RUNNING_TURN_SCHEMA,
]


class _PostgresTransaction:
    def __init__(self, conn: psycopg.AsyncConnection[TupleRow]) -> None:
        self._conn = conn
        self.rowcount = 0

    async def run(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        cursor = await self._conn.execute(_placeholders(sql), params)
        self.rowcount = cursor.rowcount
        return await cursor.fetchall() if cursor.description is not None else []


_converted: dict[str, str] = {}


def _placeholders(sql: str) -> str:
    """The shared SQL's ``?`` as psycopg's ``%s`` (no statement here has a literal ``?`` or ``%``)."""
    converted = _converted.get(sql)
    if converted is None:
        converted = _converted[sql] = sql.replace("?", "%s")
    return converted


class PostgresRegistry(Registry):
    """Sessions, leases, nodes and ledgers in one PostgreSQL database, shared by every node."""

    kind = "PostgreSQL"
    cwd_sql = "config::json ->> 'cwd'"
    # Transcripts live in this same database (PostgresTranscriptStore): orphan detection then
    # asks about the few sessions it cannot find here, not about every session each pass.
    unstored_sql = (
        f" AND NOT EXISTS (SELECT 1 FROM {TRANSCRIPT_TABLE} t WHERE t.session_id = sessions.claude_session_id)"
    )

    def __init__(
        self, dsn: str, node_id: str, lease_seconds: float, *, timeout: float = 5.0, max_size: int = 10
    ) -> None:
        super().__init__(node_id, lease_seconds)
        self._dsn = dsn
        self.timeout = timeout
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[TupleRow]] = AsyncConnectionPool(
            dsn,
            min_size=1,
            max_size=max_size,
            timeout=timeout,
            open=False,
            check=AsyncConnectionPool.check_connection,  # a restarted database left dead connections
            reconnect_timeout=timeout,  # then the next call tries afresh (see PostgresTranscriptStore)
            kwargs={"connect_timeout": max(2, round(timeout))},
            name="claude-sessions-registry",
        )
        self._leader: psycopg.AsyncConnection[TupleRow] | None = None

    async def open(self) -> None:
        """Connect and migrate; a database that stays away raises :class:`DatabaseUnavailableError`."""
        try:
            await self._pool.open(wait=True, timeout=self.timeout)
            async with self._pool.connection() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATE_LOCK,))
                await conn.execute("CREATE TABLE IF NOT EXISTS registry_schema (version INTEGER PRIMARY KEY)")
                cursor = await conn.execute("SELECT coalesce(max(version), 0) FROM registry_schema")
                row = await cursor.fetchone()
                version = int(row[0]) if row else 0
                for number, script in enumerate(_MIGRATIONS[version:], start=version + 1):
                    await conn.execute(script.encode())
                    await conn.execute("INSERT INTO registry_schema (version) VALUES (%s)", (number,))
        except UNAVAILABLE as error:
            await self._pool.close()
            raise DatabaseUnavailableError(f"the database is unreachable: {error}") from error

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        call = self._call_began()  # how long it waits tells an outage (``Registry._call_reached``)
        try:
            async with asyncio.timeout(self.timeout), self._pool.connection() as conn:
                self._call_reached(call)
                async with conn.transaction():
                    yield _PostgresTransaction(conn)
        except UNAVAILABLE as error:
            self._call_failed(call)
            raise DatabaseUnavailableError(f"the database did not answer: {type(error).__name__}") from error
        finally:
            self._call_ended(call)

    async def _lock_creates(self, tx: Transaction) -> None:
        await tx.run("SELECT pg_advisory_xact_lock(?)", (_CREATE_LOCK,))

    async def lock_tenant(self, tx: Transaction, tenant: str) -> None:
        await tx.run("SELECT pg_advisory_xact_lock(?, hashtext(?))", (_TENANT_LOCK_CLASS, tenant))

    async def lead(self) -> bool:
        """Hold the leader lock on a connection of its own; a lost connection loses the lead."""
        try:
            async with asyncio.timeout(self.timeout):
                if self._leader is not None and self._leader.closed:
                    self._leader = None
                if self._leader is None:
                    self._leader = await psycopg.AsyncConnection.connect(self._dsn, autocommit=True)
                    cursor = await self._leader.execute("SELECT pg_try_advisory_lock(%s)", (_LEADER_LOCK,))
                else:  # still ours? (a lock held twice by one session is still one lock)
                    cursor = await self._leader.execute(
                        "SELECT count(*) > 0 FROM pg_locks WHERE locktype = 'advisory' AND objid = %s"
                        " AND pid = pg_backend_pid() AND granted",
                        (_LEADER_LOCK,),
                    )
                row = await cursor.fetchone()
        except UNAVAILABLE:
            await self._drop_leader()
            return False
        if not (row and row[0]):
            await self._drop_leader()
            return False
        return True

    async def _drop_leader(self) -> None:
        if self._leader is not None:
            with contextlib.suppress(*UNAVAILABLE):
                await self._leader.close()
            self._leader = None

    async def close(self) -> None:
        self.closed = True
        await self._drop_leader()
        await self._pool.close()
