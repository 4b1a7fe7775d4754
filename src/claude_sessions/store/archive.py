"""Where conversations are kept: the CLI's own files on one node, or a store every node shares.

A conversation is named by its project key (the CLI's folder name for a working
directory) and its claude session id. One node reads and writes the CLI's JSONL files
under ``CLAUDE_CONFIG_DIR``; a cluster keeps them in :class:`PostgresTranscriptStore`,
which every CLI mirrors to through the SDK's ``session_store`` option and resumes from,
so no node reads another node's files.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any, cast

import structlog
from claude_agent_sdk import SessionKey, SessionListSubkeysKey, SessionStore, SessionStoreEntry

from claude_sessions.errors import DatabaseUnavailableError, LeaseLostError
from claude_sessions.store.registry import Registry
from claude_sessions.store.spill import Batch, Lease, Spill
from claude_sessions.store.transcripts import UNAVAILABLE, Guard, PostgresTranscriptStore

log = structlog.get_logger("claude_sessions.archive")

#: (project key, claude session id)
Conversation = tuple[str, str]


class TranscriptArchive(ABC):
    """The conversations of a deployment."""

    @abstractmethod
    def mirror_for(self, worker_token: str) -> SessionStore | None:
        """What one worker's CLI mirrors its transcript to and resumes from (None: its files are the archive)."""

    @abstractmethod
    def fence(self, worker_token: str, lease: Lease) -> None:
        """The session (and lease token) a worker's transcript writes now belong to."""

    @abstractmethod
    def forget(self, worker_token: str) -> None:
        """The worker is closed."""

    @abstractmethod
    async def catch_up(self) -> None:
        """Write what an outage kept from the store (each heartbeat asks)."""

    @abstractmethod
    async def exists(self, conversation: Conversation) -> bool: ...

    @abstractmethod
    async def missing(self, conversations: Iterable[Conversation]) -> set[Conversation]:
        """Which of these have no transcript (one pass, for orphan detection over every session)."""

    @abstractmethod
    async def entries(self, conversation: Conversation) -> list[dict[str, Any]]:
        """The transcript's entries, oldest first (empty when there is none)."""

    @abstractmethod
    async def write(self, conversation: Conversation, entries: list[dict[str, Any]]) -> None:
        """Store a whole new transcript (an imported history the CLI will resume)."""

    @abstractmethod
    async def truncate(self, conversation: Conversation, keep: int) -> None:
        """Keep only the transcript's first ``keep`` entries (a dead turn's are dropped)."""

    @abstractmethod
    def name(self, conversation: Conversation) -> str:
        """How the retention ledger names a transcript."""

    @abstractmethod
    async def delete(self, name: str) -> None:
        """Delete a transcript by its ledger name (nothing happens if it is gone)."""

    @abstractmethod
    async def open(self) -> None:
        """Connect and create or migrate a schema, if there is one."""

    @abstractmethod
    async def close(self) -> None:
        """Let go of connections, if any."""


class FileArchive(TranscriptArchive):
    """The CLI's JSONL files under ``CLAUDE_CONFIG_DIR/projects`` on this node."""

    def __init__(self, projects: Path) -> None:
        self.projects = projects

    def mirror_for(self, worker_token: str) -> None:
        return None

    def fence(self, worker_token: str, lease: Lease) -> None:
        """Files need no fence: one node is the whole deployment."""

    def forget(self, worker_token: str) -> None:
        """Nothing is kept per worker."""

    async def catch_up(self) -> None:
        """The CLI wrote its files itself: nothing waits."""

    async def open(self) -> None:
        """Nothing to open."""

    def path(self, conversation: Conversation) -> Path:
        project, claude_id = conversation
        return self.projects / project / f"{claude_id}.jsonl"

    async def exists(self, conversation: Conversation) -> bool:
        return await asyncio.to_thread(self.path(conversation).exists)

    async def missing(self, conversations: Iterable[Conversation]) -> set[Conversation]:
        paths = {c: self.path(c) for c in conversations}
        return await asyncio.to_thread(lambda: {c for c, path in paths.items() if not path.exists()})

    async def entries(self, conversation: Conversation) -> list[dict[str, Any]]:
        return await asyncio.to_thread(_read_jsonl, self.path(conversation))

    async def write(self, conversation: Conversation, entries: list[dict[str, Any]]) -> None:
        text = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries)
        await asyncio.to_thread(_write, self.path(conversation), text)

    async def truncate(self, conversation: Conversation, keep: int) -> None:
        await self.write(conversation, (await self.entries(conversation))[:keep])

    def name(self, conversation: Conversation) -> str:
        return str(self.path(conversation))

    async def delete(self, name: str) -> None:
        await asyncio.to_thread(Path(name).unlink, missing_ok=True)

    async def close(self) -> None:
        """Nothing to let go of."""


#: What an unreachable database raises, through the registry or straight from the store.
_OUTAGE = (DatabaseUnavailableError, *UNAVAILABLE)


class _Conversation:
    """The batches of one conversation not in the store yet, oldest first, written one at a time."""

    def __init__(self) -> None:
        self.waiting: list[Batch] = []
        self.lock = asyncio.Lock()
        #: Writers holding or awaiting the lock: it is forgotten only when none is left.
        self.users = 0

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        self.users += 1
        try:
            async with self.lock:
                yield
        finally:
            self.users -= 1


class WriteBehind:
    """Every transcript write of this node, fenced by its lease, in order per conversation, and
    never lost to a database outage.

    A node paused past its lease wakes with its CLI still answering; the batches the
    SDK mirrors then are refused (the SDK reports them as a ``MirrorErrorMessage``),
    so the conversation another node continues never gets the stale node's entries.

    A batch the database cannot take (down, restarting) is kept, not failed: the SDK
    would drop it after three tries, leaving a hole in the middle of the conversation.
    Kept batches are written first, in order, on the conversation's next write or at the
    node's next heartbeat (``catch_up``), whichever worker wrote them (a session's
    next worker waits behind its last one's). Any other error is the SDK's to retry or
    report, as without us. Kept batches are on disk too (:class:`Spill`): a restart writes
    what the node's previous run kept, unless another node took the session since.
    """

    def __init__(self, store: PostgresTranscriptStore, registry: Registry, spill: Spill) -> None:
        self._store, self._registry, self._spill = store, registry, spill
        self._conversations: dict[str, _Conversation] = {}
        #: Leases of batches a previous run of this node kept: written if no other node took the session since.
        self._inherited: set[tuple[str, int]] = set()

    def restore(self) -> None:
        """Take up what a previous run of this node kept on disk."""
        for name, batches in self._spill.left().items():
            self._conversations.setdefault(name, _Conversation()).waiting[:0] = batches
            self._inherited |= {lease for lease, _, _ in batches if lease is not None}
            log.info("transcript_spill_found", conversation=name, batches=len(batches))

    async def write(self, lease: Lease, key: SessionKey, entries: list[SessionStoreEntry]) -> None:
        name = key["session_id"]
        conversation = self._conversations.setdefault(name, _Conversation())
        batch = (lease, key, entries)
        async with conversation.turn():
            conversation.waiting.append(batch)
            try:
                lost = await self._write(conversation)
            except Exception:
                if batch in conversation.waiting:  # the SDK retries it, or reports it: not kept twice
                    conversation.waiting.remove(batch)
                raise
            finally:
                self._spill.keep(name, conversation.waiting)
                self._forget_if_done(name, conversation)
        if lease is not None and lease in lost:
            raise LeaseLostError(f"session {lease[0]!r} moved to another node: transcript write refused")

    async def catch_up(self) -> None:
        """Write what waits, conversation by conversation; stop at the first sign the database is still away.

        A conversation being written right now is left to its writer, which writes what waits
        first: the heartbeat never waits behind a transcript write.
        """
        for name, conversation in list(self._conversations.items()):
            if conversation.lock.locked():
                continue
            async with conversation.turn():
                try:
                    lost = await self._write(conversation)
                except Exception as error:
                    log.error("transcript_batch_refused", error=repr(error))
                    continue
                finally:
                    self._spill.keep(name, conversation.waiting)
                    self._forget_if_done(name, conversation)
            for lease in lost:
                log.warning("transcript_write_refused", session_id=lease[0], reason="another node holds it now")
            if conversation.waiting:
                return

    def _forget_if_done(self, name: str, conversation: _Conversation) -> None:
        """Only conversations with batches waiting (or writers queued) are kept."""
        if not conversation.waiting and conversation.users <= 1 and self._conversations.get(name) is conversation:
            del self._conversations[name]

    def _guard(self, lease: Lease) -> Guard | None:
        """What a batch's write checks in its own transaction: its lease is still this node's (or, for a
        batch a previous run of this node kept, that nobody took the session since)."""
        if lease is None:
            return None
        return (lease[0], None if lease in self._inherited else self._registry.node_id, lease[1])

    async def _write(self, conversation: _Conversation) -> list[tuple[str, int]]:
        """Write the waiting batches in order: the leases found lost (their batches are dropped).

        An unreachable database keeps every batch for the next try; any other error drops
        the batch the store refused and is raised.
        """
        lost: list[tuple[str, int]] = []
        try:
            while conversation.waiting:
                lease, key, entries = conversation.waiting[0]
                try:
                    await self._store.append(key, entries, self._guard(lease))
                except LeaseLostError:  # another node holds the session now: nothing of this lease is written
                    conversation.waiting = [batch for batch in conversation.waiting if batch[0] != lease]
                    lost.append(cast(tuple[str, int], lease))
                    continue
                except _OUTAGE:
                    raise
                except Exception:
                    conversation.waiting.pop(0)
                    raise
                conversation.waiting.pop(0)
        except _OUTAGE as error:
            waiting = sum(len(entries) for _, _, entries in conversation.waiting)
            log.warning("transcript_mirror_waiting", entries=waiting, error=type(error).__name__)
        return lost


class FencedMirror:
    """The store as one worker's CLI writes to it (the SDK's ``session_store``), under the lease
    of the session it serves now (:class:`WriteBehind` does the writing)."""

    def __init__(self, store: PostgresTranscriptStore, writes: WriteBehind) -> None:
        self._store, self._writes = store, writes
        self.lease: Lease = None

    async def append(self, key: SessionKey, entries: list[SessionStoreEntry]) -> None:
        await self._writes.write(self.lease, key, entries)

    async def load(self, key: SessionKey) -> list[SessionStoreEntry] | None:
        return await self._store.load(key)

    async def list_subkeys(self, key: SessionListSubkeysKey) -> list[str]:
        return await self._store.list_subkeys(key)


@contextlib.asynccontextmanager
async def _reached() -> AsyncIterator[None]:
    """A store call a request waits for: the database away is its 503 (``DatabaseUnavailableError``), not a 500."""
    try:
        yield
    except UNAVAILABLE as error:
        raise DatabaseUnavailableError(f"the transcript store did not answer: {type(error).__name__}") from error


class StoreArchive(TranscriptArchive):
    """A :class:`PostgresTranscriptStore` shared by every node; local files are the CLI's scratch copies."""

    def __init__(self, store: PostgresTranscriptStore, files: FileArchive, registry: Registry, spill: Path) -> None:
        self.store = store
        self._files = files
        self._mirrors: dict[str, FencedMirror] = {}
        self.writes = WriteBehind(store, registry, Spill(spill))

    def mirror_for(self, worker_token: str) -> SessionStore:
        mirror = self._mirrors[worker_token] = FencedMirror(self.store, self.writes)
        return cast(SessionStore, mirror)

    def fence(self, worker_token: str, lease: Lease) -> None:
        if worker_token in self._mirrors:
            self._mirrors[worker_token].lease = lease

    def forget(self, worker_token: str) -> None:
        self._mirrors.pop(worker_token, None)  # what it wrote and waits stays with ``writes``

    async def catch_up(self) -> None:
        await self.writes.catch_up()

    async def exists(self, conversation: Conversation) -> bool:
        project, claude_id = conversation
        async with _reached():
            return await self.store.exists(claude_id, project_key=project)

    async def missing(self, conversations: Iterable[Conversation]) -> set[Conversation]:
        wanted = list(conversations)
        async with _reached():
            return await self.store.missing(wanted) if wanted else set()

    async def entries(self, conversation: Conversation) -> list[dict[str, Any]]:
        project, claude_id = conversation
        async with _reached():
            found = await self.store.load({"project_key": project, "session_id": claude_id})
        return [dict(e) for e in found or []]

    async def write(self, conversation: Conversation, entries: list[dict[str, Any]]) -> None:
        project, claude_id = conversation
        async with _reached():
            await self.store.append(
                {"project_key": project, "session_id": claude_id}, cast(list[SessionStoreEntry], entries)
            )

    async def truncate(self, conversation: Conversation, keep: int) -> None:
        project, claude_id = conversation
        async with _reached():
            await self.store.truncate(claude_id, project, keep)
        await self._files.delete(self._files.name(conversation))  # this node's copy, if any: the store's is whole

    def name(self, conversation: Conversation) -> str:
        project, claude_id = conversation
        return f"{project}/{claude_id}"

    async def delete(self, name: str) -> None:
        project, _, claude_id = name.rpartition("/")
        async with _reached():
            await self.store.purge(claude_id, project_key=project)
        await self._files.delete(self._files.name((project, claude_id)))  # this node's copy, if any

    async def open(self) -> None:
        await self.store.open()
        self.writes.restore()  # written at the next heartbeat's catch-up

    async def close(self) -> None:
        await self.store.close()


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    entries = []
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line being written right now
    return entries
