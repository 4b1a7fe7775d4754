"""The registry's small stores of what is not a session: nodes, CLI processes, replies, retired transcripts.

Each is one table and one job; the registry builds them over its own transactions.
"""

from __future__ import annotations

import json
import time
from typing import Any

from claude_sessions.store.records import Database, NodeRecord, NodeStatus

_HEARTBEAT = (
    "INSERT INTO nodes (node_id, owner, url, started_at, last_seen, live_workers, status)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (node_id) DO UPDATE SET url = excluded.url, last_seen = excluded.last_seen,"
    " live_workers = excluded.live_workers, status = excluded.status"
)


class NodeStore:
    """The deployment's nodes: who is up, draining or gone, and where each answers."""

    def __init__(self, db: Database) -> None:
        self.db = db
        #: The mark of the data directory this node runs on (see ``join``).
        self.mark = ""

    async def join(self, mark: str) -> None:
        """Start as the node of the data directory ``mark`` names; an earlier node there is dead (this one holds
        the directory's lock), so its leases are free now, not when its heartbeat would have lapsed."""
        self.mark = mark
        async with self.db.transaction() as tx:
            await tx.run("DELETE FROM nodes WHERE owner = ?", (mark,))

    async def heartbeat(self, url: str, live_workers: int, status: NodeStatus) -> None:
        now = time.time()
        async with self.db.transaction() as tx:
            await tx.run(
                _HEARTBEAT,
                (self.db.node_id, self.mark, url, now, now, live_workers, status),
            )

    async def leave(self) -> None:
        """This node stops: its leases are free at once (a killed node's lapse with its heartbeat), and its
        CLIs, all ended, leave no record (one whose removal an outage refused included)."""
        async with self.db.transaction() as tx:
            await tx.run("DELETE FROM nodes WHERE node_id = ?", (self.db.node_id,))
            await tx.run("DELETE FROM workers WHERE owner = ?", (self.mark,))

    async def forget(self, unseen_since: float) -> None:
        async with self.db.transaction() as tx:
            await tx.run("DELETE FROM nodes WHERE last_seen < ?", (unseen_since,))

    async def listing(self) -> list[NodeRecord]:
        """Every node that has not left; a stale heartbeat reads ``down`` whatever the node last said."""
        fresh = self.db.fresh_since()
        async with self.db.transaction() as tx:
            rows = await tx.run("SELECT node_id, url, last_seen, live_workers, status FROM nodes ORDER BY started_at")
        return [
            NodeRecord(node_id, url, float(seen), int(live), status if seen > fresh else "down")
            for node_id, url, seen, live, status in rows
        ]

    async def node_live(self, node_id: str) -> bool:
        """Whether ``listing`` would show the node other than ``down``: one row, not every node's (a forward
        asks this while it waits on a holder)."""
        async with self.db.transaction() as tx:
            rows = await tx.run(
                "SELECT 1 FROM nodes WHERE node_id = ? AND status <> 'down' AND last_seen > ?",
                (node_id, self.db.fresh_since()),
            )
        return bool(rows)


class WorkerLedger:
    """The CLI processes a node started, by its data directory's mark (column ``owner``): a crash leaves none behind."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def add(self, mark: str, pid: int, started_at: float) -> None:
        async with self.db.transaction() as tx:
            await tx.run(
                "INSERT INTO workers (owner, pid, started_at) VALUES (?, ?, ?)"
                " ON CONFLICT (owner, pid) DO UPDATE SET started_at = excluded.started_at",
                (mark, pid, started_at),
            )

    async def remove(self, mark: str, pid: int) -> None:
        async with self.db.transaction() as tx:
            await tx.run("DELETE FROM workers WHERE owner = ? AND pid = ?", (mark, pid))

    async def take(self, mark: str) -> list[tuple[int, float]]:
        """The recorded CLI processes of an earlier run on this data directory; the record is cleared."""
        async with self.db.transaction() as tx:
            rows = await tx.run("DELETE FROM workers WHERE owner = ? RETURNING pid, started_at", (mark,))
        return [(int(pid), float(started)) for pid, started in rows]


class ReplyStore:
    """Turns kept under an Idempotency-Key, replayed instead of run twice."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(self, session_key: str, idempotency_key: str) -> tuple[str, list[dict[str, Any]]] | None:
        """(the request it answered, the turn's messages) stored under a key, if any."""
        async with self.db.transaction() as tx:
            rows = await tx.run(
                "SELECT request, messages FROM replies WHERE session_key = ? AND idempotency_key = ?",
                (session_key, idempotency_key),
            )
        return None if not rows else (rows[0][0], list(json.loads(rows[0][1])))

    async def save(self, session_key: str, idempotency_key: str, request: str, messages: list[dict[str, Any]]) -> None:
        """Keep a turn for replay, unless its session was deleted meanwhile (nothing outlives it)."""
        async with self.db.transaction() as tx:
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

    async def forget(self, older_than: float) -> None:
        async with self.db.transaction() as tx:
            await tx.run("DELETE FROM replies WHERE created_at < ?", (older_than,))


class RetiredTranscripts:
    """Transcripts of removed sessions, purged after ``SM_TRANSCRIPT_RETENTION_DAYS``."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def add(self, name: str, at: float | None = None) -> None:
        """Remember a removed session's transcript; ``at=0`` makes it due for purge now."""
        retired_at = time.time() if at is None else at
        async with self.db.transaction() as tx:
            await tx.run(
                "INSERT INTO retired_transcripts (path, retired_at) VALUES (?, ?)"
                " ON CONFLICT (path) DO UPDATE SET retired_at = excluded.retired_at",
                (name, retired_at),
            )

    async def remove(self, name: str) -> None:
        async with self.db.transaction() as tx:
            await tx.run("DELETE FROM retired_transcripts WHERE path = ?", (name,))

    async def take(self, retired_before: float) -> list[str]:
        async with self.db.transaction() as tx:
            rows = await tx.run(
                "DELETE FROM retired_transcripts WHERE retired_at <= ? RETURNING path", (retired_before,)
            )
        return [name for (name,) in rows]
