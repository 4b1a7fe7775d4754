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

from claude_sessions.errors import DatabaseUnavailableError
from claude_sessions.store.registry import Registry
from claude_sessions.store.spill import Spill
from claude_sessions.store.transcripts import UNAVAILABLE, PostgresTranscriptStore
from claude_sessions.store.write_behind import Lease, WriteBehind

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
    async def written(self, claude_session_id: str, lease: Lease) -> None:
        """Return once what this node's CLIs wrote of a conversation is in the store (a database away:
        when it is back); :class:`LeaseLostError` if another node took the session (``lease``) since."""

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

    async def written(self, claude_session_id: str, lease: Lease) -> None:
        """The CLI's own files: written as it went."""

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

    async def written(self, claude_session_id: str, lease: Lease) -> None:
        await self.writes.written(claude_session_id, lease)

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
        self.writes.restore()
        await self.writes.catch_up()  # before the node serves: its restored records must not claim a missing turn

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
