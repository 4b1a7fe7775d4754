"""The registry on both backends: round trips, exact limits, leases with fencing, nodes, the leader, outages."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import psycopg
import pytest

from claude_sessions import SessionConfig
from claude_sessions.errors import BudgetExceededError, DatabaseUnavailableError, RateLimitedError
from claude_sessions.observability.metrics import SessionMetrics
from claude_sessions.observability.usage_series import BUCKET_SECONDS, points, window_start
from claude_sessions.store.postgres import PostgresRegistry
from claude_sessions.store.records import Holder, Lease, SessionRecord, Spend
from claude_sessions.store.registry import Registry
from claude_sessions.store.spend import Limits
from claude_sessions.store.sqlite import _MIGRATIONS, SqliteRegistry

NO_LIMITS: Limits = (None, None)

SERVER = "postgresql://postgres@127.0.0.1:5432/{}"
#: (node id, lease seconds) -> a registry on the test's database; every call of one test shares it.
MakeRegistry = Callable[[str, float], Awaitable[Registry]]


def record(key: str, owner: str | None = None, **changes: object) -> SessionRecord:
    base = SessionRecord(key, owner, SessionConfig(system_prompt="hi"), {"k": [1]}, SessionMetrics(), None, False)
    return replace(base, **changes)  # type: ignore[arg-type]


@pytest.fixture
def database() -> Iterator[str]:
    """A fresh PostgreSQL database on the local server (these tests fail, never skip, without one)."""
    name = f"registry_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(SERVER.format("test"), autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    yield SERVER.format(name)
    with psycopg.connect(SERVER.format("test"), autocommit=True) as admin:
        admin.execute(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture(params=["sqlite", "postgres"])
async def make_registry(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[MakeRegistry]:
    made: list[Registry] = []
    url = request.getfixturevalue("database") if request.param == "postgres" else None

    async def make(node_id: str, lease: float = 15.0) -> Registry:
        if url is None:
            registry: Registry = SqliteRegistry(tmp_path / "sessions.db", node_id, lease)
        else:
            registry = PostgresRegistry(url, node_id, lease, timeout=5.0)
        await registry.open()
        await registry.nodes.join(f"owner-{node_id}")
        await registry.nodes.heartbeat(f"http://{node_id}", 0, "up")
        made.append(registry)
        return registry

    yield make
    for registry in made:
        await registry.close()


async def test_sessions_round_trip(make_registry: MakeRegistry) -> None:
    registry = await make_registry("a", 15.0)
    metrics = SessionMetrics(message_count=3, input_tokens=10, total_cost=0.5)
    assert await registry.create(record("acme/s1", "acme", metrics=metrics), 10, None, hold=False) == "created"
    assert await registry.create(record("s2"), 10, None, hold=True) == "created"
    got = await registry.get("acme/s1")
    assert got == record("acme/s1", "acme", metrics=metrics)
    assert [r.key for r in await registry.sessions("acme")] == ["acme/s1"]
    assert [r.key for r in await registry.sessions(None)] == ["s2"]
    assert {r.key for r in await registry.sessions(everyone=True)} == {"acme/s1", "s2"}
    held = await registry.get("s2")
    assert held is not None and (held.holder, held.fence) == ("a", 1)
    assert await registry.delete("acme/s1") and not await registry.delete("acme/s1")
    assert await registry.get("acme/s1") is None and await registry.count() == 1


async def test_limits_hold_exactly_under_concurrent_creates_on_every_node(make_registry: MakeRegistry) -> None:
    nodes = [await make_registry(name, 15.0) for name in ("a", "b", "c")]
    outcomes = await asyncio.gather(
        *(nodes[i % 3].create(record(f"t{i % 2}/s{i}", f"t{i % 2}"), 12, 5, hold=False) for i in range(60))
    )
    assert outcomes.count("created") == 10  # 5 per tenant, under the global 12
    for tenant in ("t0", "t1"):
        assert len(await nodes[0].sessions(tenant)) == 5
    more = await asyncio.gather(*(nodes[i % 3].create(record(f"x{i}"), 12, None, hold=False) for i in range(20)))
    assert more.count("created") == 2 and more.count("global") == 18
    assert await nodes[0].count() == 12
    taken = (await nodes[2].sessions(everyone=True))[0].key
    assert await nodes[1].create(record(taken), 100, None, hold=False) == "exists"


async def test_a_lease_moves_only_from_a_stale_or_draining_holder_and_fences_the_old_one(
    make_registry: MakeRegistry,
) -> None:
    a, b = await make_registry("a", 1.0), await make_registry("b", 1.0)
    await a.create(record("s"), 10, None, hold=True)
    assert await a.claim("s") == Lease(1, True)  # its own lease: same token (held since its create)
    assert await b.claim("s") == Holder("a", "http://a") and await b.holder("s") == Holder("a", "http://a")
    assert await a.holder("s") is None  # not held by another node
    assert await a.save(record("s", fence=1, metrics=SessionMetrics(message_count=1)))
    await asyncio.sleep(1.1)  # a's heartbeat lapses (say it was paused)
    await b.nodes.heartbeat("http://b", 0, "up")
    assert await b.claim("s") == Lease(2, False)  # no turn was left running
    assert not await a.save(record("s", fence=1, metrics=SessionMetrics(message_count=99)))  # fenced out
    assert (await b.get("s")).metrics.message_count == 1  # type: ignore[union-attr]
    assert await a.held() == {} and await b.held() == {"s": 2}
    await a.nodes.heartbeat("http://a", 0, "up")  # back from the pause: still not its lease
    assert await a.claim("s") == Holder("b", "http://b")
    await b.nodes.heartbeat("http://b", 0, "draining")
    assert await a.claim("s") == Lease(3, False)  # a draining node's sessions move at once
    await a.release("s", 2)  # an old token releases nothing
    assert await a.held() == {"s": 3}
    await a.release("s", 3)
    assert await a.held() == {} and (await a.get("s")).holder is None  # type: ignore[union-attr]
    assert await a.claim("gone") is None


async def test_a_node_that_leaves_frees_its_leases_and_a_restart_frees_its_predecessors(
    make_registry: MakeRegistry,
) -> None:
    a, b = await make_registry("a", 60.0), await make_registry("b", 60.0)
    await a.create(record("s"), 10, None, hold=True)
    await a.nodes.leave()
    assert await b.claim("s") == Lease(2, True)  # its creator left before it was ever saved
    a2 = await make_registry("a2", 60.0)
    await b.nodes.join("owner-b")  # as b's successor on the same data directory: b is dead
    assert await a2.claim("s") == Lease(3, True)
    assert {n.node_id for n in await a2.nodes.listing()} == {"a2"}


async def test_a_node_is_live_exactly_when_the_listing_shows_it_up_or_draining(make_registry: MakeRegistry) -> None:
    a, b, c = [await make_registry(name, 1.0) for name in ("a", "b", "c")]
    await b.nodes.heartbeat("http://b", 0, "down")
    await c.nodes.heartbeat("http://c", 0, "draining")

    async def live() -> dict[str, bool]:
        listed = {n.node_id: n.status != "down" for n in await a.nodes.listing()}
        assert {n: await a.nodes.node_live(n) for n in listed} == listed  # the listing's count of liveness
        return listed

    assert await live() == {"a": True, "b": False, "c": True}
    assert not await a.nodes.node_live("never-seen")
    await asyncio.sleep(1.1)  # every heartbeat lapses
    await a.nodes.heartbeat("http://a", 0, "up")
    assert await live() == {"a": True, "b": False, "c": False}
    await a.nodes.leave()
    assert not await b.nodes.node_live("a") and await live() == {"b": False, "c": False}


async def test_expired_skips_sessions_mid_turn_on_a_live_node(make_registry: MakeRegistry) -> None:
    a = await make_registry("a", 60.0)
    old = SessionMetrics(last_activity=1000.0)
    await a.create(record("idle", metrics=old), 10, None, hold=False)
    await a.create(record("busy", metrics=old), 10, None, hold=True)
    await a.create(record("starting", metrics=old), 10, None, hold=True)  # its CLI not yet started
    assert await a.expired(idle_before=2000.0) == ["idle"]
    await a.save(record("starting", metrics=old, fence=1))  # created: idle from now on
    await a.save(record("busy", metrics=old, busy=True, fence=1))
    await a.create(record("fresh"), 10, None, hold=False)
    assert sorted(await a.expired(idle_before=2000.0)) == ["idle", "starting"]
    await a.nodes.leave()  # its holder is gone: a turn that never ended does not pin it forever
    assert sorted(await a.expired(idle_before=2000.0)) == ["busy", "idle", "starting"]


async def test_workers_replies_and_retired_transcripts(make_registry: MakeRegistry) -> None:
    registry = await make_registry("a", 15.0)
    await registry.pids.add("here", 123, 1000.5)
    await registry.pids.add("elsewhere", 123, 7.0)
    assert await registry.pids.take("here") == [(123, 1000.5)] and await registry.pids.take("here") == []
    await registry.create(record("s"), 10, None, hold=False)
    await registry.replies.save("s", "key-1", "hello", [{"type": "result"}])
    assert await registry.replies.get("s", "key-1") == ("hello", [{"type": "result"}])
    assert await registry.replies.get("s", "other") is None
    await registry.retired.add("proj/t")
    assert await registry.retired.take(retired_before=0) == []
    assert await registry.retired.take(retired_before=9e12) == ["proj/t"]
    await registry.delete("s")  # deleted while its turn was still running
    await registry.replies.save("s", "key-2", "hello", [{"type": "result"}])
    assert await registry.replies.get("s", "key-1") is None and await registry.replies.get("s", "key-2") is None


async def test_one_node_leads_maintenance_at_a_time(make_registry: MakeRegistry) -> None:
    a, b = await make_registry("a", 15.0), await make_registry("b", 15.0)
    if isinstance(a, SqliteRegistry):
        assert await a.lead()  # one node: always
        return
    assert await a.lead() and not await b.lead() and await a.lead()
    await a.close()  # the lock goes with its connection (as with a killed node)
    assert await b.lead()


async def test_an_unreachable_database_raises_within_the_timeout() -> None:
    registry = PostgresRegistry("postgresql://postgres@127.0.0.1:9/none", "a", 15.0, timeout=1.0)
    began = time.monotonic()
    with pytest.raises(DatabaseUnavailableError):
        await registry.open()
    assert time.monotonic() - began < 5
    await registry.close()


def test_a_sqlite_database_of_the_first_schema_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "sessions.db"
    with sqlite3.connect(path) as old:  # as the first release wrote it: learned ids were recorded ones
        old.executescript(_MIGRATIONS[0])
        metrics = json.dumps(asdict(SessionMetrics(last_activity=1234.5)))
        row = ("s1", None, SessionConfig().model_dump_json(), "{}", metrics, "uuid-1", 0)
        old.execute("INSERT INTO sessions VALUES (?, ?, ?, ?, ?, ?, ?)", row)
        chat = ("s2", None, SessionConfig().model_dump_json(), '{"origin": "openai"}', metrics, None, 0)
        old.execute("INSERT INTO sessions VALUES (?, ?, ?, ?, ?, ?, ?)", chat)
    old.close()
    registry = SqliteRegistry(path, "a", 15.0)
    got = asyncio.run(registry.get("s1"))
    assert got is not None and got.claude_session_id == "uuid-1" and got.recorded and got.holder is None
    assert (got.title, got.origin) == (None, "sessions")
    made_by_chat = asyncio.run(registry.get("s2"))
    assert made_by_chat is not None and made_by_chat.origin == "openai"  # once told by its metadata
    assert asyncio.run(registry.expired(idle_before=2000.0)) == ["s1", "s2"]  # activity moved to its column
    assert registry._db.execute("PRAGMA user_version").fetchone() == (len(_MIGRATIONS),)
    asyncio.run(registry.close())


async def test_turn_admissions_hold_the_rate_exactly_on_every_node(make_registry: MakeRegistry) -> None:
    nodes = [await make_registry(name, 15.0) for name in ("a", "b", "c")]
    now = 1_800_000_000.0
    attempts = await asyncio.gather(
        *(nodes[i % 3].spend.admit(("acme", None), now + i / 1000, (None, 7), NO_LIMITS) for i in range(21)),
        return_exceptions=True,
    )
    refused = [a for a in attempts if isinstance(a, RateLimitedError)]
    assert attempts.count(None) == 7 and len(refused) == 14  # no budget: nothing left to say
    assert all(r.retry_after == 60 for r in refused)  # the first start leaves the window in 60 s
    assert (
        await nodes[1].spend.admit(("other", None), now, (None, 7), NO_LIMITS) is None
    )  # each tenant has its own count
    with pytest.raises(RateLimitedError) as limited:
        await nodes[2].spend.admit(("acme", None), now + 59.0, (None, 7), NO_LIMITS)
    assert limited.value.retry_after == 1
    assert (
        await nodes[2].spend.admit(("acme", None), now + 60.5, (None, 7), NO_LIMITS) is None
    )  # the first minute's starts left it


async def test_a_spent_day_refuses_turns_until_midnight_and_usage_adds_up(make_registry: MakeRegistry) -> None:
    registry = await make_registry("a", 15.0)
    noon = 1_800_000_000.0 - 1_800_000_000.0 % 86400 + 12 * 3600
    assert await registry.spend.admit(("acme", None), noon, (1.0, None), NO_LIMITS) == pytest.approx(1.0)
    await registry.spend.charge(("acme", None), noon, 0.75, 1000, 1)
    assert await registry.spend.admit(("acme", None), noon, (1.0, None), NO_LIMITS) == pytest.approx(
        0.25
    )  # what is left
    await registry.spend.charge(("acme", None), noon, 0.5, 600, 1)  # one turn may overshoot
    with pytest.raises(BudgetExceededError) as spent:
        await registry.spend.admit(("acme", None), noon + 60, (1.0, None), NO_LIMITS)
    assert spent.value.retry_after == 12 * 3600 - 60
    assert await registry.spend.admit(("acme", None), noon + 12 * 3600, (1.0, None), NO_LIMITS) == pytest.approx(
        1.0
    )  # a new day
    await registry.spend.charge(("acme", None), noon + 12 * 3600, 0.25, 100, 1)
    await registry.spend.charge(("zeta", None), noon, 2.0, 50, 2)
    (acme,) = await registry.spend.usage("acme", noon + 12 * 3600)
    assert acme.today == Spend(0.25, 100, 1) and acme.month.tokens == 1700 and acme.month.turns == 3
    assert [u.tenant for u in await registry.spend.usage(None, noon)] == ["acme", "zeta"]


async def test_an_end_users_limits_hold_beside_its_tenants(make_registry: MakeRegistry) -> None:
    registry = await make_registry("a", 15.0)
    noon = 1_800_000_000.0 - 1_800_000_000.0 % 86400 + 12 * 3600
    ana, bob = ("acme", "ana"), ("acme", "bob")
    assert await registry.spend.admit(ana, noon, (5.0, None), (1.0, 2)) == pytest.approx(5.0)  # the tenant's rest
    await registry.spend.charge(ana, noon, 1.0, 10, 1)
    with pytest.raises(BudgetExceededError, match="user 'ana' of tenant 'acme'"):
        await registry.spend.admit(ana, noon + 1, (5.0, None), (1.0, 2))
    assert await registry.spend.admit(bob, noon + 1, (5.0, None), (1.0, 2)) == pytest.approx(4.0)  # bob's own day
    await registry.spend.admit(bob, noon + 2, NO_LIMITS, (None, 2))
    with pytest.raises(RateLimitedError, match="user 'bob'"):
        await registry.spend.admit(bob, noon + 3, NO_LIMITS, (None, 2))
    (tenant,) = await registry.spend.usage("acme", noon)
    (user,) = await registry.spend.usage("acme", noon, user="ana")
    assert tenant.today.cost_usd == user.today.cost_usd == 1.0 and await registry.spend.usage("acme", noon, "bob") == []


# The console's last hour: every node's charges, per minute.

NOW = 1_000_000 * BUCKET_SECONDS + 30.0


async def test_each_minute_of_the_hour_is_a_point_oldest_first_empty_ones_included(
    make_registry: MakeRegistry,
) -> None:
    registry = await make_registry("a", 15.0)
    await registry.spend.charge(("alice", None), NOW - BUCKET_SECONDS, 0.25, 15, 1)
    await registry.spend.charge(("alice", None), NOW, 0.5, 1, 1, errors=1)
    await registry.spend.charge(("alice", None), NOW, 0.0, 2, 1)
    laid_out = points(await registry.spend.minutes(window_start(NOW), "alice", None), NOW)
    assert len(laid_out) == 60 and [p["start"] for p in laid_out] == sorted(p["start"] for p in laid_out)
    assert laid_out[-1]["start"] == 1_000_000 * BUCKET_SECONDS
    assert laid_out[-2] == {"start": 999_999 * BUCKET_SECONDS, "turns": 1, "tokens": 15, "cost": 0.25, "errors": 0}
    assert laid_out[-1] == {"start": 1_000_000 * BUCKET_SECONDS, "turns": 2, "tokens": 3, "cost": 0.5, "errors": 1}
    assert all(p["turns"] == 0 for p in laid_out[:-2])


async def test_every_nodes_charges_are_one_series_seen_by_tenant_end_user_or_everyone(
    make_registry: MakeRegistry,
) -> None:
    a, b = await make_registry("a", 15.0), await make_registry("b", 15.0)
    await a.spend.charge(("acme", None), NOW, 0.1, 1, 1)  # the tenant's own turn, on node a
    await b.spend.charge(("acme", "ana"), NOW, 0.2, 2, 1)  # its end user's, on node b
    await b.spend.charge(("acme", "bob"), NOW, 0.0, 4, 0)  # calls of a turn that never finished
    await a.spend.charge(("zeta", None), NOW, 0.4, 8, 1)

    async def last(tenant: str | None, user: str | None = None) -> dict[str, object]:
        return points(await b.spend.minutes(window_start(NOW), tenant, user), NOW)[-1]

    assert (await last("acme"))["tokens"] == 7 and (await last("acme"))["turns"] == 2
    assert (await last("acme", "ana"))["tokens"] == 2 and (await last("acme", "cy"))["turns"] == 0
    assert (await last(None))["tokens"] == 15 and (await last("zeta"))["cost"] == 0.4


async def test_minutes_past_two_hours_are_deleted_by_the_next_charge(make_registry: MakeRegistry) -> None:
    registry = await make_registry("a", 15.0)
    await registry.spend.charge(("alice", None), NOW, 0.1, 1, 1)
    await registry.spend.charge(("alice", None), NOW + 121 * BUCKET_SECONDS, 0.1, 1, 1)
    assert list(await registry.spend.minutes(0.0, "alice", None)) == [int(NOW // 60) + 121]


async def test_after_an_outage_no_lease_lapses_by_the_heartbeats_it_kept_from_the_database(
    make_registry: MakeRegistry,
) -> None:
    a, b = await make_registry("a", 1.0), await make_registry("b", 1.0)
    await b.create(record("s"), 10, None, hold=True)
    assert isinstance(await b.claim("s"), Lease)
    await asyncio.sleep(1.3)  # the database was away: b could not beat (nor could a)
    a.pause_leases(1.5)  # a is back and knows for how long it was away
    assert await a.claim("s") == Holder("b", "http://b") and await a.holder("s") == Holder("b", "http://b")
    a.pause_leases(0.0)  # b never came back: its lease lapses as usual
    assert await a.claim("s") == Lease(2, True)


async def _registries(database: str, lease: float, **a_options: Any) -> tuple[PostgresRegistry, PostgresRegistry]:
    a, b = PostgresRegistry(database, "a", lease, **a_options), PostgresRegistry(database, "b", lease)
    for registry in (a, b):
        await registry.open()
        await registry.nodes.join(f"owner-{registry.node_id}")
        await registry.nodes.heartbeat(f"http://{registry.node_id}", 0, "up")
    return a, b


async def test_calls_kept_waiting_by_the_database_take_no_lease_the_wait_let_lapse(database: str) -> None:
    """A restart of PostgreSQL shorter than a call's bound leaves calls waiting, not failing, and no
    node beats meanwhile: the first call through must still see a live holder, not take its session
    (the chaos soak saw a forward give a live holder up so, and its message run a second time)."""
    a, b = await _registries(database, 1.0, max_size=1)
    try:
        await b.create(record("s"), 10, None, hold=True)

        async def away() -> None:  # a's calls wait for the database: its one connection is taken
            async with a.transaction():
                await asyncio.sleep(1.3)

        outage = asyncio.create_task(away())
        await asyncio.sleep(0.05)
        assert await a.holder("s") == Holder("b", "http://b")  # b's heartbeat is 1.3 s old now
        assert await a.claim("s") == Holder("b", "http://b") and await a.nodes.node_live("b")
        await outage
        await asyncio.sleep(1.1)  # a lease after the database is back, b has not beaten: it is dead
        assert await a.claim("s") == Lease(2, True)
    finally:
        await a.close()
        await b.close()


async def test_calls_that_failed_for_an_outage_pause_the_leases_once_one_gets_through(database: str) -> None:
    a, b = await _registries(database, 1.0, max_size=1, timeout=0.4)
    try:
        await b.create(record("s"), 10, None, hold=True)

        async def away() -> None:
            async with asyncio.timeout(5), a._pool.connection():  # under the registry: no call of a's waits here
                await asyncio.sleep(1.3)

        outage = asyncio.create_task(away())
        await asyncio.sleep(0.05)
        with pytest.raises(DatabaseUnavailableError):
            await a.holder("s")
        await outage
        assert await a.holder("s") == Holder("b", "http://b")
        assert await b.claim("s") == Lease(1, True)
    finally:
        await a.close()
        await b.close()
