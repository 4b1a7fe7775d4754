"""What the registry stores and answers, and what its small stores need of it.

Plain values, shared by the registry, its SQLite and PostgreSQL backends and their callers.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from claude_sessions.config import ServerConfig, SessionConfig
from claude_sessions.observability.metrics import SessionMetrics

#: Which way in made a session: the sessions API, the OpenAI-compatible endpoint, the console.
Origin = Literal["sessions", "openai", "console"]
#: What ``create`` did: made it, or which rule refused it.
CreateOutcome = Literal["created", "exists", "global", "tenant", "user"]
#: A node serving turns; ``draining`` ones finish theirs and hand sessions over.
NodeStatus = Literal["up", "draining", "down"]


#: The columns naming a session's running turn (added after the first schema; the same SQL for both backends).
RUNNING_TURN_SCHEMA = """
ALTER TABLE sessions ADD COLUMN turn_prompt TEXT;
ALTER TABLE sessions ADD COLUMN turn_key TEXT;
"""


@dataclass(frozen=True)
class RunningTurn:
    """A turn as its start was saved: the uuid its prompt carries in the transcript, and the caller's
    ``Idempotency-Key``. A node taking over a turn that never ended learns from them whether its
    answer reached the transcript, and which retry that answer is for."""

    prompt: str
    key: str | None = None


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
    #: The first user message, shortened: what a list shows for the session.
    title: str | None = None
    origin: Origin = "sessions"
    #: The turn running, or the last one run (saved when it starts).
    turn: RunningTurn | None = None


@dataclass(frozen=True)
class UserLimits:
    """An end user's limits (a key's own, or ``USER_*``); None: not limited."""

    max_sessions: int | None = None
    daily_usd: float | None = None
    turns_per_minute: int | None = None

    @classmethod
    def of_user(cls, own: UserLimits | None, server: ServerConfig) -> UserLimits:
        """An end user's limits: ``own`` (its key's) where set, ``USER_*`` elsewhere."""
        defaults = cls(server.USER_MAX_SESSIONS, server.USER_DAILY_USD, server.USER_TURNS_PER_MINUTE)
        return (own or cls()).over(defaults)

    def over(self, defaults: UserLimits) -> UserLimits:
        """These limits where set, ``defaults`` elsewhere."""
        return UserLimits(
            defaults.max_sessions if self.max_sessions is None else self.max_sessions,
            defaults.daily_usd if self.daily_usd is None else self.daily_usd,
            defaults.turns_per_minute if self.turns_per_minute is None else self.turns_per_minute,
        )


@dataclass(frozen=True)
class KeyRecord:
    """A key made at run time, without its secret; ``user``: the end user it is bound to."""

    key_id: str
    tenant: str
    user: str | None
    name: str | None
    created_at: float
    expires_at: float | None = None
    revoked_at: float | None = None
    last_used_at: float | None = None
    limits: UserLimits = field(default_factory=UserLimits)

    def is_valid(self, now: float) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)


@dataclass(frozen=True)
class Lease:
    """A session's lease, taken: its fencing token, and whether a turn was left running under it
    (its holder died mid-turn, or this node before a restart): that turn never ended."""

    fence: int
    unfinished: bool
    #: The turn last started under the lease (None: none saved since the column exists).
    turn: RunningTurn | None = None


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


class Database(Protocol):
    """What a small store of the registry needs: its transactions and this node's identity."""

    node_id: str
    lease_seconds: float

    def transaction(self) -> AbstractAsyncContextManager[Transaction]: ...

    def fresh_since(self) -> float:
        """Heartbeats since then are live (the lease; after an outage, its length too)."""
        ...

    async def lock_tenant(self, tx: Transaction, tenant: str) -> None:
        """Hold, until ``tx`` ends, the lock that makes one tenant's turn admissions exact."""
