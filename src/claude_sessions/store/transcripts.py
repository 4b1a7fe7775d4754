"""Conversation transcripts in PostgreSQL: the SDK's ``SessionStore``, shared by every node.

The CLI still writes its JSONL under ``CLAUDE_CONFIG_DIR``; the SDK mirrors each
batch here (``append``) and, on ``resume``, rebuilds the file from here (``load``),
so a node can continue a conversation it never ran. One row per transcript line,
kept as ``json`` (keeps key order and, unlike ``jsonb``, accepts ``\\u0000``), plus one
row per main transcript carrying its write time and the SDK's summary.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any, Self

import anyio
import psycopg
from claude_agent_sdk import (
    SessionKey,
    SessionListSubkeysKey,
    SessionStore,
    SessionStoreEntry,
    SessionStoreListEntry,
    SessionSummaryEntry,
    fold_session_summary,
)
from psycopg.pq import TransactionStatus
from psycopg.rows import TupleRow
from psycopg.types.json import Json
from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout

from claude_sessions.errors import ConfigError, LeaseLostError

#: One row per stored main transcript; the PostgreSQL registry reads it for orphan detection.
TRANSCRIPT_TABLE = "transcript_sessions"

#: Schema versions in order; ``transcript_schema`` records each one applied.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        # subpath '' is the main transcript (a total primary key: NULLs would be distinct).
        """CREATE TABLE transcript_entries (
            session_id  text   NOT NULL,
            project_key text   NOT NULL,
            subpath     text   NOT NULL,
            seq         bigint GENERATED ALWAYS AS IDENTITY,
            uuid        text,
            entry       json   NOT NULL,
            PRIMARY KEY (session_id, project_key, subpath, seq)
        )""",
        # The SDK retries batches: an entry's uuid is its idempotency key within its transcript.
        """CREATE UNIQUE INDEX transcript_entries_uuid
            ON transcript_entries (session_id, project_key, subpath, uuid) WHERE uuid IS NOT NULL""",
        # mtime: epoch ms, the server's clock, of the last write to the main transcript.
        """CREATE TABLE transcript_sessions (
            session_id  text   NOT NULL,
            project_key text   NOT NULL,
            mtime       bigint NOT NULL,
            summary     json,
            PRIMARY KEY (session_id, project_key)
        )""",
        "CREATE INDEX transcript_sessions_project ON transcript_sessions (project_key)",
    ),
)

#: Serializes schema changes across every node starting at once (``pg_advisory_xact_lock``).
_MIGRATION_LOCK = 0x636C617564657472  # "claudetr"

_NOW_MS = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint"

# The arrays go in binary (%b): quoting a batch of JSON for a text-format array costs more than the insert.
_INSERT_ENTRIES = """
    INSERT INTO transcript_entries (session_id, project_key, subpath, uuid, entry)
    SELECT %s, %s, %s, u, e::json
    FROM unnest(%b::text[], %b::text[]) WITH ORDINALITY AS batch(u, e, n)
    ORDER BY n
    ON CONFLICT (session_id, project_key, subpath, uuid) WHERE uuid IS NOT NULL DO NOTHING
"""

# Creates the session's row or takes its row lock: appends to one transcript fold its summary in turn.
_LOCK_SESSION = """
    INSERT INTO transcript_sessions AS s (session_id, project_key, mtime) VALUES (%s, %s, 0)
    ON CONFLICT (session_id, project_key) DO UPDATE SET mtime = s.mtime
    RETURNING s.mtime, s.summary
"""

# Strictly increasing per session, so back-to-back appends never share an mtime.
_STAMP_SESSION = f"""
    UPDATE transcript_sessions SET summary = %s, mtime = greatest({_NOW_MS}, mtime + 1)
    WHERE session_id = %s AND project_key = %s
"""


#: A write under a session's lease: the lease must still be the one it was made under (row shared-locked,
#: so a claim of the session waits for the write or the write sees the claim).
_GUARD = "SELECT 1 FROM sessions WHERE key = %s AND fence = %s AND (%s::text IS NULL OR holder = %s) FOR SHARE"
#: (session key, its holder (None: any), fence) a transcript write is made under.
Guard = tuple[str, str | None, int]

#: What a database that is down, restarting or cut off raises (the registry's and the store's).
UNAVAILABLE = (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout, TimeoutError, OSError)


class PostgresTranscriptStore(SessionStore):
    """A ``claude_agent_sdk.SessionStore`` on PostgreSQL, with the optional methods.

    The pool opens on first use (or ``open()`` / ``async with``) and the schema
    is created or migrated then. Use one store per event loop: the SDK calls it
    from its own tasks in the loop that runs the client.
    """

    def __init__(self, dsn: str, *, min_size: int = 1, max_size: int = 8, timeout: float = 10.0) -> None:
        self._dsn = dsn
        self._sizes = (min_size, max_size)
        self._timeout = timeout
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[TupleRow]] | None = None
        self._closed = False
        self._opening = asyncio.Lock()

    async def open(self) -> None:
        """Connect and create or migrate the schema; raises ``PoolTimeout`` if the database is unreachable.

        A failed open leaves nothing running (the next call tries afresh): an
        unclosed pool's workers ignore cancellation and would hang the loop's shutdown.
        """
        if self._pool is not None:
            return
        async with self._opening:
            if self._closed:
                raise PoolClosed("this transcript store is closed")
            if self._pool is not None:
                return
            min_size, max_size = self._sizes
            pool: AsyncConnectionPool[psycopg.AsyncConnection[TupleRow]] = AsyncConnectionPool(
                self._dsn,
                min_size=min_size,
                max_size=max_size,
                timeout=self._timeout,
                open=False,
                check=AsyncConnectionPool.check_connection,  # a restarted server left dead idle connections
                # Reconnecting in the background backs off up to minutes; past a caller's wait, the
                # next caller starts a fresh attempt instead, so a database that is back is used at once.
                reconnect_timeout=self._timeout,
                kwargs={"autocommit": True},
                name="claude-sessions-transcripts",
            )
            try:
                await pool.open()
                async with pool.connection() as conn:
                    await _migrate(conn)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await pool.close()
                raise
            self._pool = pool

    async def close(self) -> None:
        """Close every connection; the store cannot be used after. Always call it (or ``async with``)."""
        self._closed = True
        if self._pool is not None:
            await self._pool.close()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- SessionStore -------------------------------------------------------------

    async def append(self, key: SessionKey, entries: list[SessionStoreEntry], guard: Guard | None = None) -> None:
        """Store a batch in order, skipping entries whose ``uuid`` this transcript already has.

        ``guard`` (session key, holder or None, fence): written only while that session's lease is
        still that one, checked in the same transaction (a claim waits for it, or it sees the claim);
        else :class:`LeaseLostError`. The service's sessions table is in the same database.
        """
        if not entries:
            return
        session_id, project_key, subpath = _parts(key)
        uuids = [_uuid_of(entry) for entry in entries]
        lines = [json.dumps(entry) for entry in entries]
        insert = (session_id, project_key, subpath, uuids, lines)
        async with self._connection() as conn:
            if subpath and guard is None:
                # Subagent transcripts have no summary: one statement, one round trip.
                await conn.execute(_INSERT_ENTRIES, insert)
                return
            # Main transcript: one transaction in two round trips (lock and read the
            # summary; then insert, fold, commit), so racing appends cannot lose a fold.
            async with _pipelined_transaction(conn):
                if guard is not None:
                    session_key, holder, fence = guard
                    cur = await conn.execute(_GUARD, (session_key, fence, holder, holder))
                    if await cur.fetchone() is None:
                        raise LeaseLostError(f"session {session_key!r} moved to another node: transcript write refused")
                if subpath:
                    await conn.execute(_INSERT_ENTRIES, insert)
                    return
                cur = await conn.execute(_LOCK_SESSION, (session_id, project_key))
                row = await cur.fetchone()
                assert row is not None
                mtime, data = row
                previous: SessionSummaryEntry | None = (
                    None if data is None else {"session_id": session_id, "mtime": mtime, "data": data}
                )
                await conn.execute(_INSERT_ENTRIES, insert)
                summary = fold_session_summary(previous, key, entries)
                await conn.execute(_STAMP_SESSION, (Json(summary["data"]), session_id, project_key))

    async def load(self, key: SessionKey) -> list[SessionStoreEntry] | None:
        """Every entry of one transcript in append order, or None if it has none."""
        async with self._connection() as conn:
            # One json array, parsed once: twice as fast as a row per entry; NULL when none.
            cur = await conn.execute(
                "SELECT json_agg(entry ORDER BY seq) FROM transcript_entries"
                " WHERE session_id = %s AND project_key = %s AND subpath = %s",
                _parts(key),
            )
            row = await cur.fetchone()
        return row[0] if row else None

    async def list_sessions(self, project_key: str) -> list[SessionStoreListEntry]:
        """The project's main transcripts with their last write time (epoch ms)."""
        async with self._connection() as conn:
            cur = await conn.execute(
                "SELECT session_id, mtime FROM transcript_sessions WHERE project_key = %s", (project_key,)
            )
            rows = await cur.fetchall()
        return [{"session_id": session_id, "mtime": mtime} for session_id, mtime in rows]

    async def list_session_summaries(self, project_key: str) -> list[SessionSummaryEntry]:
        """The SDK's folded summaries, stamped with the same clock as ``list_sessions``."""
        async with self._connection() as conn:
            cur = await conn.execute(
                "SELECT session_id, mtime, summary FROM transcript_sessions WHERE project_key = %s", (project_key,)
            )
            rows = await cur.fetchall()
        return [{"session_id": session_id, "mtime": mtime, "data": data} for session_id, mtime, data in rows]

    async def delete(self, key: SessionKey) -> None:
        """Delete one transcript; the main one takes its subagent transcripts with it."""
        session_id, project_key, subpath = _parts(key)
        if not subpath:
            await self.purge(session_id, project_key=project_key)
            return
        async with self._connection() as conn:
            await conn.execute(
                "DELETE FROM transcript_entries WHERE session_id = %s AND project_key = %s AND subpath = %s",
                (session_id, project_key, subpath),
            )

    async def list_subkeys(self, key: SessionListSubkeysKey) -> list[str]:
        """The subagent transcripts of one session (``subagents/agent-…``)."""
        async with self._connection() as conn:
            cur = await conn.execute(
                "SELECT DISTINCT subpath FROM transcript_entries"
                " WHERE session_id = %s AND project_key = %s AND subpath <> ''",
                (key["session_id"], key["project_key"]),
            )
            rows = await cur.fetchall()
        return [subpath for (subpath,) in rows]

    # -- for the service: orphan detection, purge, retention ---------------------

    async def exists(self, session_id: str, *, project_key: str | None = None) -> bool:
        """Whether the conversation's main transcript is stored (one index probe).

        Without ``project_key`` any project counts: the service knows its
        conversation ids, not necessarily the directory the CLI derived a key from.
        """
        query = "SELECT EXISTS (SELECT 1 FROM transcript_sessions WHERE session_id = %s"
        params: tuple[str, ...] = (session_id,)
        if project_key is not None:
            query, params = query + " AND project_key = %s", (session_id, project_key)
        async with self._connection() as conn:
            cur = await conn.execute(query + ")", params)
            row = await cur.fetchone()
        return bool(row and row[0])

    async def missing(self, conversations: list[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which (project key, session id) pairs have no main transcript: one query that answers
        only the missing ones (orphan detection asks about every session each pass)."""
        async with self._connection() as conn:
            cur = await conn.execute(  # one JSON text: psycopg dumps long arrays element by element
                "SELECT c->>0, c->>1 FROM json_array_elements(%s::json) AS c WHERE NOT EXISTS (SELECT 1"
                " FROM transcript_sessions t WHERE t.project_key = c->>0 AND t.session_id = c->>1)",
                (json.dumps(conversations),),
            )
            return {(p, s) for p, s in await cur.fetchall()}

    async def truncate(self, session_id: str, project_key: str, keep: int) -> None:
        """Keep the main transcript's first ``keep`` entries (a turn its dead node left unfinished goes)."""
        async with self._connection() as conn:
            await conn.execute(
                "DELETE FROM transcript_entries WHERE session_id = %s AND project_key = %s AND subpath = ''"
                " AND seq IN (SELECT seq FROM transcript_entries WHERE session_id = %s AND project_key = %s"
                " AND subpath = '' ORDER BY seq OFFSET %s)",
                (session_id, project_key, session_id, project_key, keep),
            )

    async def purge(self, session_id: str, *, project_key: str | None = None) -> int:
        """Delete a whole conversation (main and subagent transcripts); how many entries went.

        Without ``project_key``, in every project. The session row goes first, in
        its own statement: that waits out a main-transcript append in flight, and
        the entries' delete then sees what it committed, so nothing is left behind.
        """
        where = "session_id = %s" + ("" if project_key is None else " AND project_key = %s")
        params = (session_id,) if project_key is None else (session_id, project_key)
        async with self._connection() as conn, _pipelined_transaction(conn):
            await conn.execute(f"DELETE FROM transcript_sessions WHERE {where}", params)
            cur = await conn.execute(f"DELETE FROM transcript_entries WHERE {where}", params)
        return cur.rowcount

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[TupleRow]]:
        await self.open()
        pool = self._pool
        if pool is None:  # closed while opening
            raise PoolClosed("this transcript store is closed")
        try:
            async with pool.connection() as conn:
                yield conn
        except psycopg.OperationalError:
            # After a server restart every idle connection is dead: drop them now so
            # the SDK's retry of this batch gets a live one, not the next dead one.
            await pool.check()
            raise


@asynccontextmanager
async def _pipelined_transaction(conn: psycopg.AsyncConnection[TupleRow]) -> AsyncIterator[None]:
    """BEGIN and COMMIT travel with the statements (``conn.transaction()`` in a pipeline syncs twice more)."""
    try:
        async with conn.pipeline():
            await conn.execute("BEGIN")
            yield
            await conn.execute("COMMIT")
    except BaseException:
        if not conn.closed and conn.info.transaction_status != TransactionStatus.IDLE:
            with contextlib.suppress(Exception):
                await conn.execute("ROLLBACK")
        raise


async def _migrate(conn: psycopg.AsyncConnection[TupleRow]) -> None:
    """Bring the schema to the newest version; nodes starting together take turns."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        await conn.execute("CREATE TABLE IF NOT EXISTS transcript_schema (version integer PRIMARY KEY)")
        cur = await conn.execute("SELECT coalesce(max(version), 0) FROM transcript_schema")
        row = await cur.fetchone()
        current = int(row[0]) if row else 0
        if current > len(_MIGRATIONS):
            raise ConfigError(
                f"transcript schema version {current} in the database is newer than this"
                f" claude-sessions knows ({len(_MIGRATIONS)}): upgrade this node"
            )
        for version, statements in enumerate(_MIGRATIONS[current:], start=current + 1):
            for statement in statements:
                await conn.execute(statement)
            await conn.execute("INSERT INTO transcript_schema (version) VALUES (%s)", (version,))


def _parts(key: SessionKey) -> tuple[str, str, str]:
    return key["session_id"], key["project_key"], key.get("subpath") or ""


def _uuid_of(entry: SessionStoreEntry) -> str | None:
    value: Any = entry.get("uuid")
    return value if isinstance(value, str) and value else None
