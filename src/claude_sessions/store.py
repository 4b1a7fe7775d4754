"""The durable registry: sessions, CLI pids, replayable turns and transcripts to purge.

SQLite in the data directory, in WAL mode. Every write commits before it
returns, so what a caller was told survives a crash (``kill -9``) of the server.
Writes are small and local (well under a millisecond), so they run inline.
"""

from __future__ import annotations

import fcntl
import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .config import SessionConfig
from .errors import ConfigError
from .metrics import SessionMetrics

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
]


@dataclass(frozen=True)
class SessionRecord:
    """A session as stored: enough to list it and to resume its conversation."""

    key: str
    owner: str | None
    config: SessionConfig
    metadata: dict[str, Any]
    metrics: SessionMetrics
    claude_session_id: str | None
    orphaned: bool
    #: The CLI has written the conversation's transcript (a reply was seen).
    recorded: bool = False


class SessionStore:
    """One SQLite database per data directory."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        # One owner per data directory: a second one would end the first one's CLIs at start.
        self._lock = path.with_suffix(".lock").open("a")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise ConfigError(f"data directory {path.parent} is in use by another claude-sessions handler") from None
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # durable across a process crash
        self._migrate()

    def _migrate(self) -> None:
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        for number, script in enumerate(_MIGRATIONS[version:], start=version + 1):
            self._db.executescript(f"BEGIN IMMEDIATE; {script} PRAGMA user_version = {number}; COMMIT;")

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()
        self._lock.close()  # releases the flock

    # -- sessions -------------------------------------------------------------

    def save(self, record: SessionRecord) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO sessions"
                " (key, owner, config, metadata, metrics, claude_session_id, orphaned, recorded)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.key,
                    record.owner,
                    record.config.model_dump_json(),
                    json.dumps(record.metadata),
                    json.dumps(asdict(record.metrics)),
                    record.claude_session_id,
                    int(record.orphaned),
                    int(record.recorded),
                ),
            )

    def delete(self, key: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM sessions WHERE key = ?", (key,))
            db.execute("DELETE FROM replies WHERE session_key = ?", (key,))

    def load(self) -> list[SessionRecord]:
        rows = self._db.execute(
            "SELECT key, owner, config, metadata, metrics, claude_session_id, orphaned, recorded"
            " FROM sessions ORDER BY rowid"
        ).fetchall()
        return [
            SessionRecord(
                key=key,
                owner=owner,
                config=SessionConfig.model_validate_json(config),
                metadata=json.loads(metadata),
                metrics=SessionMetrics(**json.loads(metrics)),
                claude_session_id=claude_id,
                orphaned=bool(orphaned),
                recorded=bool(recorded),
            )
            for key, owner, config, metadata, metrics, claude_id, orphaned, recorded in rows
        ]

    # -- CLI processes, for crash hygiene ----------------------------------------

    def add_worker(self, pid: int, started_at: float) -> None:
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO workers VALUES (?, ?)", (pid, started_at))

    def remove_worker(self, pid: int) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM workers WHERE pid = ?", (pid,))

    def take_workers(self) -> list[tuple[int, float]]:
        """The recorded CLI processes of an earlier run; the record is cleared."""
        with self._transaction() as db:
            rows = db.execute("SELECT pid, started_at FROM workers").fetchall()
            db.execute("DELETE FROM workers")
        return [(int(pid), float(started)) for pid, started in rows]

    # -- replayable turns (Idempotency-Key) ----------------------------------------

    def reply(self, session_key: str, idempotency_key: str) -> tuple[str, list[dict[str, Any]]] | None:
        """(the request it answered, the turn's messages) stored under a key, if any."""
        row = self._db.execute(
            "SELECT request, messages FROM replies WHERE session_key = ? AND idempotency_key = ?",
            (session_key, idempotency_key),
        ).fetchone()
        return None if row is None else (row[0], list(json.loads(row[1])))

    def save_reply(self, session_key: str, idempotency_key: str, request: str, messages: list[dict[str, Any]]) -> None:
        """Keep a turn for replay, unless its session was deleted meanwhile (nothing outlives it)."""
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO replies SELECT ?, ?, ?, ?, ?"
                " WHERE EXISTS (SELECT 1 FROM sessions WHERE key = ?)",
                (session_key, idempotency_key, request, json.dumps(messages, default=str), time.time(), session_key),
            )

    def forget_replies(self, older_than: float) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM replies WHERE created_at < ?", (older_than,))

    # -- transcripts of removed sessions, purged after the retention period -------------

    def retire_transcript(self, path: Path, at: float | None = None) -> None:
        """Remember a removed session's transcript; ``at=0`` makes it due for purge now."""
        retired_at = time.time() if at is None else at
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO retired_transcripts VALUES (?, ?)", (str(path), retired_at))

    def unretire_transcript(self, path: Path) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM retired_transcripts WHERE path = ?", (str(path),))

    def take_retired_transcripts(self, retired_before: float) -> list[Path]:
        with self._transaction() as db:
            rows = db.execute(
                "SELECT path FROM retired_transcripts WHERE retired_at <= ?", (retired_before,)
            ).fetchall()
            db.execute("DELETE FROM retired_transcripts WHERE retired_at <= ?", (retired_before,))
        return [Path(path) for (path,) in rows]
