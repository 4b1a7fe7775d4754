"""Where conversations are kept: the CLI's files, or the shared store with writes fenced by the lease."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import psycopg
import pytest
from claude_agent_sdk import SessionKey, SessionStore, SessionStoreEntry

from claude_sessions import PostgresTranscriptStore, SessionConfig
from claude_sessions.errors import LeaseLostError
from claude_sessions.observability.metrics import SessionMetrics
from claude_sessions.store.archive import FileArchive, StoreArchive, TranscriptArchive
from claude_sessions.store.postgres import PostgresRegistry
from claude_sessions.store.records import Lease, SessionRecord
from claude_sessions.store.transcripts import Guard

SERVER = "postgresql://postgres@127.0.0.1:5432/{}"


def entry(text: str) -> dict[str, Any]:
    return {"type": "user", "uuid": str(uuid.uuid4()), "message": {"role": "user", "content": text}}


@pytest.fixture
def database() -> Iterator[str]:
    name = f"archive_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(SERVER.format("test"), autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    yield SERVER.format(name)
    with psycopg.connect(SERVER.format("test"), autocommit=True) as admin:
        admin.execute(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture
async def registry(database: str) -> AsyncIterator[PostgresRegistry]:
    registry = PostgresRegistry(database, "a", 1.0)
    await registry.open()
    await registry.nodes.join("owner-a")
    await registry.nodes.heartbeat("http://a", 0, "up")
    yield registry
    await registry.close()


@pytest.fixture(params=["files", "store"])
async def archive(
    request: pytest.FixtureRequest, tmp_path: Path, database: str, registry: PostgresRegistry
) -> AsyncIterator[TranscriptArchive]:
    files = FileArchive(tmp_path / "projects")
    store = PostgresTranscriptStore(database)
    made = files if request.param == "files" else StoreArchive(store, files, registry, tmp_path / "spill")
    await made.open()
    yield made
    await made.close()


async def test_a_conversation_round_trips_and_is_deleted_by_its_ledger_name(archive: TranscriptArchive) -> None:
    conversation, other = ("proj", str(uuid.uuid4())), ("proj", str(uuid.uuid4()))
    assert not await archive.exists(conversation) and await archive.entries(conversation) == []
    written = [entry("one"), entry("two")]
    await archive.write(conversation, written)
    assert await archive.exists(conversation) and await archive.entries(conversation) == written
    assert await archive.missing([conversation, other]) == {other}
    await archive.delete(archive.name(conversation))
    assert not await archive.exists(conversation)
    await archive.delete(archive.name(conversation))  # gone already: nothing happens


class FlakyStore(PostgresTranscriptStore):
    """The real store, with switches for an outage of its database and for one refused write."""

    down = False
    refuse_next = False

    async def append(self, key: SessionKey, entries: list[SessionStoreEntry], guard: Guard | None = None) -> None:
        if self.down:
            raise psycopg.OperationalError("connection refused")
        if self.refuse_next:
            self.refuse_next = False
            raise psycopg.errors.ReadOnlySqlTransaction("cannot execute INSERT in a read-only transaction")
        await super().append(key, entries, guard)


@pytest.fixture
async def store(database: str) -> AsyncIterator[FlakyStore]:
    store = FlakyStore(database)
    yield store
    await store.close()


@pytest.fixture
async def held(store: FlakyStore, tmp_path: Path, registry: PostgresRegistry) -> StoreArchive:
    """The store's archive on node a, which holds session "s" (fence 1)."""
    record = SessionRecord("s", None, SessionConfig(), {}, SessionMetrics(), None, False)
    assert await registry.create(record, 10, None, hold=True) == "created"
    return StoreArchive(store, FileArchive(tmp_path / "projects"), registry, tmp_path / "spill")


def worker_mirror(archive: StoreArchive, token: str) -> SessionStore:
    """What a worker of session "s" writes its transcript through."""
    mirror = archive.mirror_for(token)
    archive.fence(token, ("s", 1))
    return mirror


def conversation_key() -> SessionKey:
    return {"project_key": "proj", "session_id": str(uuid.uuid4())}


def said(text: str) -> list[SessionStoreEntry]:
    return [cast(SessionStoreEntry, entry(text))]


async def stored(store: PostgresTranscriptStore, key: SessionKey) -> list[str]:
    entries: list[dict[str, Any]] = [dict(e) for e in await store.load(key) or []]
    return [e.get("lastPrompt") or e["message"]["content"] for e in entries]


async def test_a_worker_whose_lease_moved_cannot_write_the_conversation(
    database: str, store: FlakyStore, held: StoreArchive
) -> None:
    mirror = worker_mirror(held, "worker-token")
    key = conversation_key()
    await mirror.append(key, said("before the pause"))
    other = PostgresRegistry(database, "b", 1.0)
    await other.open()
    try:
        await asyncio.sleep(1.1)  # node a is paused: its heartbeat lapses
        await other.nodes.heartbeat("http://b", 0, "up")
        assert await other.claim("s") == Lease(2, True)
        with pytest.raises(LeaseLostError):
            await mirror.append(key, said("after the pause"))
    finally:
        await other.close()
    assert await stored(store, key) == ["before the pause"]
    held.forget("worker-token")


async def test_batches_an_outage_kept_back_are_written_in_order_even_after_their_worker_closed(
    store: FlakyStore, held: StoreArchive
) -> None:
    mirror = worker_mirror(held, "worker-token")
    key = conversation_key()
    await mirror.append(key, said("one"))
    store.down = True
    await mirror.append(key, said("two"))  # kept, not failed: the SDK would drop the batch after three tries
    assert await stored(store, key) == ["one"]
    store.down = False
    await mirror.append(key, said("three"))  # the kept batch goes first
    assert await stored(store, key) == ["one", "two", "three"]
    store.down = True
    await mirror.append(key, said("four"))
    held.forget("worker-token")  # the worker closes while its batch waits
    store.down = False
    await held.catch_up()  # the node's next heartbeat
    assert await stored(store, key) == ["one", "two", "three", "four"]


async def test_a_refused_batch_is_the_sdks_to_retry_and_a_sessions_next_worker_writes_after_its_last(
    store: FlakyStore, held: StoreArchive
) -> None:
    key = conversation_key()
    untagged = [cast(SessionStoreEntry, {"type": "last-prompt", "lastPrompt": "hi"})]  # no uuid: no dedupe
    first = worker_mirror(held, "first-worker")
    store.refuse_next = True
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        await first.append(key, untagged)
    await first.append(key, untagged)  # the SDK's retry: written once, not once per try
    store.down = True
    await first.append(key, said("older"))
    held.forget("first-worker")  # the worker closes with its batch waiting
    store.down = False
    second = worker_mirror(held, "second-worker")
    await second.append(key, said("newer"))  # waits behind the older batch
    assert await stored(store, key) == ["hi", "older", "newer"]


async def test_batches_kept_back_survive_the_nodes_death_and_a_restart_writes_them_unless_the_session_moved(
    database: str, store: FlakyStore, held: StoreArchive, registry: PostgresRegistry, tmp_path: Path
) -> None:
    mirror = worker_mirror(held, "worker-token")
    key, moved = conversation_key(), conversation_key()
    await mirror.append(key, said("one"))
    store.down = True
    await mirror.append(key, said("two"))  # the database is away; then the node is killed (nothing runs after)
    assert [p.name for p in (tmp_path / "spill").iterdir()] == [f"{key['session_id']}.json"]
    store.down = False
    restarted = PostgresRegistry(database, "a2", 60.0)  # the same data directory, a new node
    await restarted.open()
    try:
        again = StoreArchive(store, FileArchive(tmp_path / "projects"), restarted, tmp_path / "spill")
        await again.open()
        await again.catch_up()  # its first heartbeat: nobody took session "s" since
        assert await stored(store, key) == ["one", "two"] and not list((tmp_path / "spill").iterdir())

        store.down = True
        await mirror.append(moved, said("lost"))  # kept by the first run again
        store.down = False
        await registry.nodes.leave()  # node a is gone for good
        assert await restarted.claim("s") == Lease(2, True)  # another node took it meanwhile
        third = StoreArchive(store, FileArchive(tmp_path / "projects"), restarted, tmp_path / "spill")
        await third.open()
        await third.catch_up()
        assert await stored(store, moved) == []  # written under a lease that moved: never written
    finally:
        await restarted.close()
    held.forget("worker-token")
