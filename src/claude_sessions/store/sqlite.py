"""The registry in SQLite: one node, one file in the data directory (the default).

WAL mode; every write commits before it returns, so what a caller was told survives a
crash (``kill -9``) of the server. Calls are small and local (well under a
millisecond), so they run inline and never wait: synchronous callers may use them too.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from claude_sessions.store.keys import KEYS_AND_USERS_SCHEMA
from claude_sessions.store.records import RUNNING_TURN_SCHEMA, Transaction
from claude_sessions.store.registry import Registry
from claude_sessions.store.spend import USAGE_MINUTES_SCHEMA, USAGE_SCHEMA

#: Schema versions in order; ``PRAGMA user_version`` says how many a database has had.
_MIGRATIONS = [
    """
CREATE TABLE IF NOT EXISTS sessions (
    key TEXT PRIMARY KEY,
    owner TEXT,
    config TEXT NOT NULL,
    metadata TEXT NOT NULL,
    metrics TEXT NOT NULL,
    claude_session_id TEXT,
    orphaned INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS workers (
    pid INTEGER PRIMARY KEY,
    started_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS replies (
    session_key TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    request TEXT NOT NULL,
    messages TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (session_key, idempotency_key)
);
CREATE TABLE IF NOT EXISTS retired_transcripts (
    path TEXT PRIMARY KEY,
    retired_at REAL NOT NULL
);
""",
    # The conversation id is now learned when a turn starts, before the CLI has
    # written its transcript; rows from before were learned from replies.
    "ALTER TABLE sessions ADD COLUMN recorded INTEGER NOT NULL DEFAULT 1;",
    # One registry interface for SQLite and PostgreSQL: leases, nodes, the ledger keyed
    # by data directory, and activity as a column so maintenance asks SQL, not Python.
    """
ALTER TABLE sessions ADD COLUMN last_activity REAL NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN busy INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN holder TEXT;
ALTER TABLE sessions ADD COLUMN fence INTEGER NOT NULL DEFAULT 0;
UPDATE sessions SET last_activity = coalesce(json_extract(metrics, '$.last_activity'), 0);
CREATE INDEX sessions_last_activity ON sessions (last_activity);
CREATE INDEX sessions_owner ON sessions (owner);
CREATE TABLE nodes (
    node_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    url TEXT NOT NULL,
    started_at REAL NOT NULL,
    last_seen REAL NOT NULL,
    live_workers INTEGER NOT NULL,
    status TEXT NOT NULL
);
CREATE TABLE workers_by_owner (
    owner TEXT NOT NULL,
    pid INTEGER NOT NULL,
    started_at REAL NOT NULL,
    PRIMARY KEY (owner, pid)
);
DROP TABLE workers;
ALTER TABLE workers_by_owner RENAME TO workers;
""",
    USAGE_SCHEMA,
    # Sessions say how a list shows them: a title (the first user message) and the way in that made them.
    """
ALTER TABLE sessions ADD COLUMN title TEXT;
ALTER TABLE sessions ADD COLUMN origin TEXT NOT NULL DEFAULT 'sessions';
UPDATE sessions SET origin = 'openai' WHERE json_extract(metadata, '$.origin') = 'openai';
""",
    # Keys made at run time, and end users: sessions, turn starts and spend say whose they are.
    KEYS_AND_USERS_SCHEMA,
    # The console's last hour, per minute, as every node adds to it.
    USAGE_MINUTES_SCHEMA,
    # What a node taking over a turn that never ended needs to settle it.
    RUNNING_TURN_SCHEMA,
]


class _SqliteTransaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self.rowcount = 0

    async def run(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        cursor = self._db.execute(sql, params)
        rows = cursor.fetchall()
        self.rowcount = cursor.rowcount
        return rows


class SqliteRegistry(Registry):
    """One SQLite database per data directory; this node is the whole deployment."""

    synchronous = True
    kind = "SQLite"
    cwd_sql = "json_extract(config, '$.cwd')"

    def __init__(self, path: Path, node_id: str, lease_seconds: float) -> None:
        super().__init__(node_id, lease_seconds)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # durable across a process crash
        self._migrate()

    def _migrate(self) -> None:
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        for number, script in enumerate(_MIGRATIONS[version:], start=version + 1):
            self._db.executescript(f"BEGIN IMMEDIATE; {script} PRAGMA user_version = {number}; COMMIT;")

    async def open(self) -> None:
        """Nothing to do: the file was opened and migrated when the registry was made."""

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield _SqliteTransaction(self._db)
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    async def _lock_creates(self, tx: Transaction) -> None:
        """``BEGIN IMMEDIATE`` already holds the only writer's lock."""

    async def lock_tenant(self, tx: Transaction, tenant: str) -> None:
        """``BEGIN IMMEDIATE`` already holds the only writer's lock."""

    async def lead(self) -> bool:
        return True

    async def close(self) -> None:
        self.closed = True
        self._db.close()
