"""One session: its key in the registry, its state, and what this node holds for it.

A session's record (``SessionRecord``) is what every node shares; :class:`Session` adds what only
this node knows: the worker it holds here and its turn lock.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from claude_agent_sdk import AssistantMessage, Message, ResultMessage, SystemMessage

from claude_sessions.config import SessionConfig
from claude_sessions.content import Content, text_of
from claude_sessions.observability.metrics import SessionMetrics
from claude_sessions.observability.telemetry import DEFAULT_TENANT
from claude_sessions.sessions.client_calls import ClientCalls
from claude_sessions.sessions.permissions import Approvals
from claude_sessions.store.archive import Conversation
from claude_sessions.store.records import Origin, RunningTurn, SessionRecord
from claude_sessions.workers.worker import Worker

#: How long a title may be: the first user message, shortened to fit a list's line.
TITLE_LENGTH = 80


def title_of(content: Content) -> str:
    """A session's title from its first user message: one line, at most ``TITLE_LENGTH`` characters."""
    line = " ".join(text_of(content).split()) or "(image)"
    return line if len(line) <= TITLE_LENGTH else line[: TITLE_LENGTH - 1].rstrip() + "\u2026"


def session_key(public_id: str, owner: str | None = None) -> str:
    """The registry key: tenants' ids live in their own namespace ("/" is not allowed in ids)."""
    return public_id if owner is None else f"{owner}/{public_id}"


def public_id(key: str) -> str:
    """The id a caller knows for a registry key (the tenant's prefix removed)."""
    return key.rpartition("/")[2]


def tenant_of_key(key: str) -> str:
    return key.rpartition("/")[0] or DEFAULT_TENANT


class KeptAnswer(NamedTuple):
    """A turn's answer kept for the retry of its message: its Idempotency-Key, its prompt, its messages."""

    key: str
    prompt: Content
    messages: list[Message]


@dataclass(eq=False)
class Session:
    """One logical conversation: options, metrics, and the worker it holds on this node, if any."""

    id: str  # the registry key, see session_key()
    config: SessionConfig
    metadata: dict[str, Any] = field(default_factory=dict)
    owner: str | None = None
    metrics: SessionMetrics = field(default_factory=SessionMetrics)
    origin: Origin = "sessions"
    #: The first user message, shortened (None before it): what a list shows.
    title: str | None = None
    worker: Worker | None = None
    #: The CLI's own conversation id, learned when a turn starts.
    claude_session_id: str | None = None
    #: The CLI has written that conversation's transcript (a reply was seen): from
    #: now on a missing transcript means the conversation was lost (an orphan).
    recorded: bool = False
    #: Unregistered; a running turn releases the worker when it ends.
    closed: bool = False
    #: Its transcript vanished: it answers an error instead of starting afresh.
    orphaned: bool = False
    #: The lease's fencing token as last read or claimed: every write carries it.
    fence: int = 0
    #: The node holding its live CLI, and whether a turn runs there, as last read.
    holder: str | None = None
    holder_url: str | None = None
    busy_elsewhere: bool = False
    turn_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: Its asked tool calls here (``ask_tools``): pending requests, answers, grants for the session.
    approvals: Approvals | None = None
    #: The calls of its client's functions waiting for their results, while a turn offering them runs here.
    client_calls: ClientCalls | None = None
    #: The turn running here, or the last one run (saved as it starts).
    turn: RunningTurn | None = None
    #: A turn whose answer reached the transcript but not its caller (its CLI or node died, or the
    #: database did not take the transcript in time). The retry with its key and prompt gets it.
    answer: KeptAnswer | None = None

    def bind(self, worker: Worker) -> None:
        """Make ``worker`` this session's CLI on this node: the one place a binding is made."""
        self.worker = worker

    def unbind(self, *, during_turn: bool = False) -> Worker | None:
        """Take the session's worker away and return it (None if it holds none). Between turns
        only, unless ``during_turn``: a running turn hands its worker back itself."""
        if self.worker is None or (self.is_busy and not during_turn):
            return None
        worker, self.worker = self.worker, None
        return worker

    def take_answer(self, key: str | None, prompt: Content) -> KeptAnswer | None:
        """The kept answer, if it is for this Idempotency-Key and prompt; a turn starting supersedes it either way."""
        answer, self.answer = self.answer, None
        return (
            answer if answer is not None and key is not None and (answer.key, answer.prompt) == (key, prompt) else None
        )

    @property
    def is_busy(self) -> bool:
        return self.turn_lock.locked()

    @property
    def public_id(self) -> str:
        return public_id(self.id)

    @property
    def tenant(self) -> str:
        return self.owner or DEFAULT_TENANT

    @property
    def state(self) -> str:
        if self.orphaned:
            return "orphaned"
        if self.is_busy or self.busy_elsewhere:
            return "busy"
        return "active" if self.worker is not None or self.holder is not None else "idle"

    def record(self) -> SessionRecord:
        return SessionRecord(
            self.id,
            self.owner,
            self.config,
            self.metadata,
            self.metrics,
            self.claude_session_id,
            self.orphaned,
            self.recorded,
            busy=self.is_busy,
            fence=self.fence,
            title=self.title,
            origin=self.origin,
            turn=self.turn,
        )

    @classmethod
    def restore(cls, record: SessionRecord) -> Session:
        session = cls(id=record.key, config=record.config, owner=record.owner, origin=record.origin)
        session.take(record)
        return session

    def take(self, record: SessionRecord) -> None:
        """Adopt the registry's state (written by whichever node ran the last turn).

        Metrics change in place: a caller holding ``get_session_metrics()`` keeps seeing them live.
        """
        self.metadata, self.title = record.metadata, record.title
        vars(self.metrics).update(vars(record.metrics))
        self.claude_session_id, self.recorded, self.orphaned = (
            record.claude_session_id,
            record.recorded,
            record.orphaned,
        )
        self.fence, self.holder, self.holder_url = record.fence, record.holder, record.holder_url
        self.busy_elsewhere = record.busy

    def conversation(self, project: str) -> Conversation | None:
        return None if self.claude_session_id is None else (project, self.claude_session_id)

    def has_expired(self, timeout_seconds: float, now: float) -> bool:
        # Cheapest test first: maintenance runs this over every session with a worker.
        return self.metrics.last_activity < now - timeout_seconds and not self.is_busy


def learn_conversation(session: Session, message: Message) -> bool:
    """Track the CLI's conversation id; True when something new was learned.

    The id is known from a turn's ``init`` message, before the CLI writes the
    transcript (it changes on ``/clear``, not on resume); a model reply, or the
    result of a turn that reached the API, proves the transcript exists.
    """
    if isinstance(message, SystemMessage) and message.subtype == "init":
        claude_id, recorded = message.data.get("session_id"), False
    elif isinstance(message, AssistantMessage) or (isinstance(message, ResultMessage) and message.duration_api_ms > 0):
        claude_id, recorded = message.session_id, True
    else:
        return False
    if not claude_id:
        return False
    if claude_id != session.claude_session_id:
        session.claude_session_id, session.recorded = claude_id, recorded
        return True
    if recorded and not session.recorded:
        session.recorded = True
        return True
    return False
