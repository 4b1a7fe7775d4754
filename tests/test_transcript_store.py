"""PostgresTranscriptStore on the real local PostgreSQL: the SDK's contract, dedupe, races, purge, resume."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from claude_agent_sdk import (
    ClaudeAgentOptions,
    ClaudeSDKClient,
    Message,
    MirrorErrorMessage,
    SessionKey,
    SessionStore,
    SessionStoreEntry,
    project_key_for_directory,
)
from claude_agent_sdk.testing import run_session_store_conformance
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg_pool import PoolClosed, PoolTimeout

from claude_sessions import ConfigError, PostgresTranscriptStore
from claude_sessions.offline_model import OfflineModelServer
from helpers import cli_processes, offline_env, reply_text, result_of, wait_no_cli

SERVER = "host=127.0.0.1 port=5432 user=postgres dbname=test connect_timeout=5"
KEY: SessionKey = {"project_key": "proj", "session_id": "sess"}
OPTIONAL = ("list_sessions", "list_session_summaries", "delete", "list_subkeys")


@pytest.fixture(scope="module")
def server() -> str:
    """The local PostgreSQL; these tests fail, never skip, when it is not running."""
    try:
        with psycopg.connect(SERVER):
            return SERVER
    except psycopg.OperationalError as error:
        failure = str(error)
    pytest.fail(
        f"PostgreSQL is not reachable ({SERVER}): {failure}\n"
        "Start it: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start (.ci/run does)",
        pytrace=False,
    )


@pytest.fixture
def dsn(server: str) -> Iterator[str]:
    """A database of this test's own, dropped at the end."""
    name = f"transcripts_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_conninfo(server, dbname=name)
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
async def store(dsn: str) -> AsyncIterator[PostgresTranscriptStore]:
    async with PostgresTranscriptStore(dsn) as store:
        yield store


def entry(uuid_: str | None = None, **fields: Any) -> SessionStoreEntry:
    found: dict[str, Any] = {"type": "user", **fields}
    if uuid_ is not None:
        found["uuid"] = uuid_
    return found  # type: ignore[return-value]


def uuids(entries: list[SessionStoreEntry] | None) -> list[str | None]:
    assert entries is not None
    return [e.get("uuid") for e in entries]


async def test_passes_the_sdk_conformance_suite_with_every_optional_method(dsn: str) -> None:
    for method in OPTIONAL:  # the suite skips a method the class does not override: none is skipped
        assert getattr(PostgresTranscriptStore, method) is not getattr(SessionStore, method), method
    stores: list[PostgresTranscriptStore] = []

    async def fresh() -> PostgresTranscriptStore:
        """Each contract gets an empty store: its own schema, chosen by the search path."""
        schema = f"contract_{len(stores)}"
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        stores.append(PostgresTranscriptStore(make_conninfo(dsn, options=f"-c search_path={schema}")))
        return stores[-1]

    try:
        await run_session_store_conformance(fresh)
    finally:
        for each in stores:
            await each.close()
    assert len(stores) > 10


async def test_a_retried_batch_is_stored_once_in_order(store: PostgresTranscriptStore) -> None:
    batch = [entry("u1", n=1), entry("u2", n=2), entry("u3", n=3)]
    await store.append(KEY, batch)
    await store.append(KEY, batch)  # the SDK's retry after a lost reply
    await store.append(KEY, [entry("u3", n=3), entry("u4", n=4)])  # a retry overlapping a partial write
    assert await store.load(KEY) == [*batch, entry("u4", n=4)]


async def test_entries_without_a_uuid_are_all_kept(store: PostgresTranscriptStore) -> None:
    title, other = entry(None, title="a"), entry(None, title="b")
    await store.append(KEY, [title, entry("u1"), entry("u1"), title])
    await store.append(KEY, [other])
    assert await store.load(KEY) == [title, entry("u1"), title, other]


async def test_a_uuid_is_unique_per_transcript_not_globally(store: PostgresTranscriptStore) -> None:
    """A fork copies entries into another session: each transcript keeps its own."""
    keys: list[SessionKey] = [KEY, {**KEY, "session_id": "fork"}, {**KEY, "subpath": "subagents/agent-1"}]
    for key in keys:
        await store.append(key, [entry("same")])
    for key in keys:
        assert uuids(await store.load(key)) == ["same"]


async def test_concurrent_appends_to_two_sessions_keep_each_order(store: PostgresTranscriptStore) -> None:
    keys: list[SessionKey] = [{**KEY, "session_id": "left"}, {**KEY, "session_id": "right"}]

    async def converse(key: SessionKey) -> list[str]:
        """Like the SDK: one batch at a time per session, each retried once."""
        written = []
        for batch in range(30):
            ids = [f"{key['session_id']}-{batch}-{n}" for n in range(5)]
            entries = [entry(i, lastPrompt=f"prompt {batch}") for i in ids]
            await store.append(key, entries)
            await store.append(key, entries[3:])
            written += ids
        return written

    expected = await asyncio.gather(*(converse(key) for key in keys))
    for key, ids in zip(keys, expected, strict=True):
        assert uuids(await store.load(key)) == ids
    summaries = {s["session_id"]: s for s in await store.list_session_summaries("proj")}
    assert set(summaries) == {"left", "right"}
    assert all(s["data"]["last_prompt"] == "prompt 29" for s in summaries.values())


async def test_racing_nodes_appending_to_one_session_lose_nothing(dsn: str) -> None:
    async with PostgresTranscriptStore(dsn) as one, PostgresTranscriptStore(dsn) as other:

        async def write(node: PostgresTranscriptStore, name: str) -> list[str]:
            ids = [f"{name}-{n}" for n in range(40)]
            for n in range(0, 40, 4):
                await node.append(KEY, [entry(i) for i in ids[n : n + 4]])
            return ids

        written = await asyncio.gather(write(one, "one"), write(other, "other"))
        stored = uuids(await one.load(KEY))
        assert sorted(map(str, stored)) == sorted(written[0] + written[1])
        for ids in written:  # each writer's entries in its own order
            assert [i for i in stored if i in ids] == ids
        (listed,) = await other.list_sessions("proj")
        (summary,) = await other.list_session_summaries("proj")
        assert summary["mtime"] == listed["mtime"]


async def test_exists_and_purge_cover_a_whole_conversation(store: PostgresTranscriptStore) -> None:
    sub: SessionKey = {**KEY, "subpath": "subagents/agent-1"}
    elsewhere: SessionKey = {**KEY, "project_key": "other-project"}
    neighbour: SessionKey = {**KEY, "session_id": "neighbour"}
    assert not await store.exists("sess")
    await store.append(sub, [entry("s1")])
    assert not await store.exists("sess"), "a subagent transcript alone is no conversation"
    await store.append(KEY, [entry("m1"), entry("m2")])
    await store.append(elsewhere, [entry("e1")])
    await store.append(neighbour, [entry("n1")])
    assert await store.exists("sess") and await store.exists("sess", project_key="proj")
    assert not await store.exists("sess", project_key="nowhere")

    assert await store.purge("sess", project_key="other-project") == 1
    assert await store.load(elsewhere) is None and await store.exists("sess")

    assert await store.purge("sess") == 3
    assert not await store.exists("sess")
    assert await store.load(KEY) is None and await store.load(sub) is None
    assert await store.list_subkeys(KEY) == []
    assert [s["session_id"] for s in await store.list_sessions("proj")] == ["neighbour"]
    assert uuids(await store.load(neighbour)) == ["n1"]
    assert await store.purge("sess") == 0


async def test_a_failed_append_writes_nothing_and_the_store_goes_on(store: PostgresTranscriptStore) -> None:
    with pytest.raises(psycopg.DataError):  # text columns refuse NUL: the insert fails inside the transaction
        await store.append(KEY, [entry("fine"), entry("bad\x00uuid")])
    assert await store.load(KEY) is None and not await store.exists("sess")
    await store.append(KEY, [entry("fine")])
    assert uuids(await store.load(KEY)) == ["fine"]


async def test_entries_come_back_as_written(store: PostgresTranscriptStore) -> None:
    """``json`` keeps key order and takes what ``jsonb`` refuses (NUL, lone surrogates)."""
    odd = entry("u1", zeta=1, alpha={"b": [1, 2.5, None, True], "a": "é 🎉"}, nul="a\x00b", lone="\ud800", big=2**70)
    await store.append(KEY, [odd])
    (back,) = await store.load(KEY) or []
    assert back == odd and list(back) == list(odd)


async def test_the_schema_is_versioned_and_created_once(dsn: str) -> None:
    stores = [PostgresTranscriptStore(dsn) for _ in range(4)]
    try:
        await asyncio.gather(*(s.open() for s in stores))  # nodes starting together
    finally:
        for each in stores:
            await each.close()
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        versions = await (await conn.execute("SELECT version FROM transcript_schema")).fetchall()
        assert versions == [(1,)]
        await conn.execute("INSERT INTO transcript_schema (version) VALUES (2)")  # a newer node migrated
    with pytest.raises(ConfigError, match=r"transcript schema version 2 .* newer"):
        async with PostgresTranscriptStore(dsn):
            pass


async def test_the_pool_opens_on_first_use_and_not_after_close(dsn: str) -> None:
    store = PostgresTranscriptStore(dsn)
    try:
        await store.append(KEY, [entry("u1")])
        assert uuids(await store.load(KEY)) == ["u1"]
    finally:
        await store.close()
    with pytest.raises(PoolClosed):
        await store.load(KEY)


async def test_a_failed_open_leaves_nothing_running_and_a_later_one_works(server: str) -> None:
    name = f"transcripts_{uuid.uuid4().hex[:12]}"
    store = PostgresTranscriptStore(make_conninfo(server, dbname=name), timeout=0.5)
    try:
        with pytest.raises(PoolTimeout):  # its database does not exist yet
            await store.load(KEY)
        assert not [t for t in asyncio.all_tasks() if "transcripts" in t.get_name()]
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        await store.append(KEY, [entry("u1")])
        assert uuids(await store.load(KEY)) == ["u1"]
    finally:
        await store.close()
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


async def test_after_the_server_drops_every_connection_one_retry_suffices(dsn: str) -> None:
    """What a restart does to the pool: the SDK retries a failed batch (3 attempts) and must not run out."""
    async with PostgresTranscriptStore(dsn, max_size=4) as store:
        await asyncio.gather(*(store.load(KEY) for _ in range(8)))  # several idle connections, all about to die
        others = "FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        with psycopg.connect(dsn, autocommit=True) as admin:
            doomed = [pid for (pid,) in admin.execute(f"SELECT pid {others}")]
            admin.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", [doomed])
            # A backend ends a moment after it is told to: wait, as a restart has them all gone at once.
            # (Only for those: the pool may still be opening a connection it asked for before.)
            alive = "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)"
            while admin.execute(alive, [doomed]).fetchone() != (0,):
                await asyncio.sleep(0.02)
        failures = 0
        for _ in range(3):
            try:
                await store.append(KEY, [entry("after-restart")])
                break
            except psycopg.OperationalError:
                failures += 1
        assert failures <= 1
        assert uuids(await store.load(KEY)) == ["after-restart"]


async def test_a_client_on_another_node_resumes_from_the_store_alone(
    store: PostgresTranscriptStore, offline_server: OfflineModelServer, tmp_path: Path
) -> None:
    """Node 1 runs a turn; its file is gone; node 2, with its own config dir, continues the conversation."""
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    seen: set[int] = set()

    async def turn(node: str, prompt: str, resume: str | None = None) -> list[Message]:
        options = ClaudeAgentOptions(
            session_store=store,
            resume=resume,
            cwd=str(workspace),
            env=offline_env(offline_server.base_url, tmp_path / node),
            setting_sources=[],
            strict_mcp_config=True,
            max_turns=1,
        )
        async with ClaudeSDKClient(options) as client:
            seen.update(p.pid for p in cli_processes())
            await client.query(prompt)
            messages = [m async for m in client.receive_response()]
        assert not [m for m in messages if isinstance(m, MirrorErrorMessage)]
        return messages

    try:
        first = await turn("node1", "remember the word tangerine")
        session_id = result_of(first).session_id
        assert "[user message 1 of this conversation]" in reply_text(first)
        key: SessionKey = {"project_key": project_key_for_directory(workspace), "session_id": session_id}
        assert await store.exists(session_id, project_key=key["project_key"])
        files = list((tmp_path / "node1").rglob(f"{session_id}.jsonl"))
        assert files, "node 1 wrote no local transcript"
        for file in files:
            file.unlink()

        second = await turn("node2", "which word was it?", resume=session_id)
        assert result_of(second).session_id == session_id
        assert "[user message 2 of this conversation]" in reply_text(second)
        assert not list((tmp_path / "node2").rglob(f"{session_id}.jsonl"))  # resumed from a temporary copy
        stored = str(await store.load(key))
        assert "remember the word tangerine" in stored and "which word was it?" in stored
    finally:
        assert wait_no_cli(seen) == [], "CLI processes of this test left behind"
        assert wait_no_cli() == [], "CLI processes left behind"
