"""Every transcript write of a node, fenced by its lease, in order per conversation, and kept
through a database outage (in memory and, through :class:`Spill`, on the node's disk)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, cast

import structlog
from claude_agent_sdk import SessionKey, SessionStoreEntry

from claude_sessions.errors import DatabaseUnavailableError, LeaseLostError
from claude_sessions.store.registry import Registry
from claude_sessions.store.spill import Spill
from claude_sessions.store.transcripts import UNAVAILABLE, Guard, PostgresTranscriptStore

log = structlog.get_logger("claude_sessions.archive")

#: (session key, fencing token) a batch was written under; None: no session's.
Lease = tuple[str, int] | None
#: One batch the SDK mirrored: the lease it was written under, where it goes, what it holds.
Batch = tuple[Lease, SessionKey, list[SessionStoreEntry]]

#: What an unreachable database raises, through the registry or straight from the store.
_OUTAGE = (DatabaseUnavailableError, *UNAVAILABLE)


#: How often a turn waiting for its transcript to be stored tries again.
RETRY_SECONDS = 0.5


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
        for name, items in self._spill.left().items():
            try:
                batches = [_batch(item) for item in items]
            except (KeyError, TypeError, ValueError, IndexError):
                log.error("transcript_spill_unreadable", conversation=name)
                continue
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
                self._spill.keep(name, _spilled(conversation.waiting))
                self._forget_if_done(name, conversation)
        if lease is not None and lease in lost:
            raise _lost(lease)

    async def catch_up(self) -> None:
        """Write what waits, conversation by conversation; stop at the first sign the database is still away.

        A conversation being written right now is left to its writer, which writes what waits
        first: the heartbeat never waits behind a transcript write.
        """
        for name, conversation in list(self._conversations.items()):
            if conversation.lock.locked():
                continue
            try:
                lost = await self._flush(name, conversation)
            except Exception as error:
                log.error("transcript_batch_refused", error=repr(error))
                continue
            for lease in lost:
                log.warning("transcript_write_refused", session_id=lease[0], reason="another node holds it now")
            if conversation.waiting:
                return

    async def written(self, name: str, lease: Lease) -> None:
        """Return once nothing of conversation ``name`` waits for the database, trying again every
        ``RETRY_SECONDS``: a turn's answer goes out only then, so that an answer its caller saw is
        never only on this node. :class:`LeaseLostError` if another node holds the session now; a
        batch the store refused for another reason is the SDK's to report, as in ``catch_up``."""
        while (conversation := self._conversations.get(name)) is not None and conversation.waiting:
            try:
                lost = await self._flush(name, conversation)
            except Exception as error:
                log.error("transcript_batch_refused", error=repr(error))
                return
            if lease is not None and lease in lost:
                raise _lost(lease)
            if conversation.waiting:
                await asyncio.sleep(RETRY_SECONDS)

    async def _flush(self, name: str, conversation: _Conversation) -> list[tuple[str, int]]:
        """Write what waits of one conversation, in its turn; what is still kept goes to disk."""
        async with conversation.turn():
            try:
                return await self._write(conversation)
            finally:
                self._spill.keep(name, _spilled(conversation.waiting))
                self._forget_if_done(name, conversation)

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


def _lost(lease: tuple[str, int]) -> LeaseLostError:
    return LeaseLostError(f"session {lease[0]!r} moved to another node: transcript write refused")


def _spilled(batches: list[Batch]) -> list[dict[str, Any]]:
    return [{"lease": lease, "key": key, "entries": entries} for lease, key, entries in batches]


def _batch(item: dict[str, Any]) -> Batch:
    lease = item["lease"]
    kept: Lease = None if lease is None else (str(lease[0]), int(lease[1]))
    return kept, cast(SessionKey, item["key"]), cast(list[SessionStoreEntry], item["entries"])
