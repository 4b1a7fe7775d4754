"""Cluster mode: the registry on PostgreSQL against SQLite, forwarding, takeover, a create storm, scale.

Needs a PostgreSQL server (``BENCH_POSTGRES_URL``, default the local one with trust
auth); each benchmark makes a database of its own there and drops it afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import statistics
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg

from claude_sessions import ClaudeHandler, SessionConfig, SystemConfig
from claude_sessions.config import ClusterConfig, ConnectionPoolConfig
from claude_sessions.observability.metrics import SessionMetrics
from claude_sessions.store.postgres import PostgresRegistry
from claude_sessions.store.records import SessionRecord
from claude_sessions.store.registry import Registry
from claude_sessions.store.sqlite import SqliteRegistry
from claude_sessions.store.transcripts import PostgresTranscriptStore
from common import Comparison, served, summary

SERVER = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
#: Short, so a takeover after kill -9 is quick to measure; the default is 15 s.
LEASE = 3.0


async def reachable() -> str | None:
    """Why the cluster benchmarks cannot run, or None."""
    try:
        async with await psycopg.AsyncConnection.connect(SERVER, connect_timeout=3):
            return None
    except psycopg.Error as error:
        return f"no PostgreSQL at {SERVER} ({str(error).splitlines()[0]})"


@contextlib.asynccontextmanager
async def database() -> AsyncIterator[str]:
    """A new database on ``SERVER``, dropped (with its connections) afterwards."""
    name = f"bench_{uuid.uuid4().hex[:12]}"
    async with await psycopg.AsyncConnection.connect(SERVER, autocommit=True) as admin:
        await admin.execute(f"CREATE DATABASE {name}")
    try:
        yield f"{SERVER.rsplit('/', 1)[0]}/{name}"
    finally:
        async with await psycopg.AsyncConnection.connect(SERVER, autocommit=True) as admin:
            await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _node_env(dsn: str, workspace: Path, **extra: str) -> dict[str, str]:
    """What every node of one cluster shares: the database and the tenants' workspaces."""
    return {
        "CLAUDE_SESSIONS_DATABASE_URL": dsn,
        "WORKSPACE_ROOT": str(workspace),
        "CLUSTER_LEASE_SECONDS": str(LEASE),
        "CP_MIN_SIZE": "0",
        **extra,
    }


async def _say(client: httpx.AsyncClient, url: str, session_id: str, content: str) -> httpx.Response:
    return await client.post(f"{url}/v1/sessions/{session_id}/messages?stream=false", json={"content": content})


def _record(key: str, claude_session_id: str | None = None) -> SessionRecord:
    recorded = claude_session_id is not None
    return SessionRecord(key, None, SessionConfig(), {}, SessionMetrics(), claude_session_id, False, recorded)


async def _rate(call: Callable[[int], Awaitable[object]], n: int) -> float:
    """Calls per second, one after another."""
    began = time.perf_counter()
    for i in range(n):
        await call(i)
    return n / (time.perf_counter() - began)


async def _registry_rates(registry: Registry, n: int) -> dict[str, Any]:
    await registry.open()
    await registry.nodes.join("bench")
    await registry.nodes.heartbeat("http://127.0.0.1:9", 0, "up")
    try:
        return {
            "backend": registry.kind,
            "create": await _rate(lambda i: registry.create(_record(f"s{i}"), 10 * n, None, True), n),
            "claim": await _rate(lambda i: registry.claim(f"s{i}"), n),
            "save": await _rate(lambda i: registry.save(dataclasses.replace(_record(f"s{i}"), fence=1)), n),
            "get": await _rate(lambda i: registry.get(f"s{i}"), n),
        }
    finally:
        await registry.close()


async def registry_ops(n: int) -> list[dict[str, Any]]:
    """Operations per second from one caller: a create, the claim and save around each turn, a read."""
    with tempfile.TemporaryDirectory(prefix="registry-") as scratch:
        sqlite = await _registry_rates(SqliteRegistry(Path(scratch) / "sessions.db", "node", LEASE), n)
        async with database() as dsn:
            postgres = await _registry_rates(PostgresRegistry(dsn, "node", LEASE), n)
    return [sqlite, postgres]


async def forwarding(rounds: int, workspace: Path) -> Comparison:
    """A turn sent to a node that does not hold the session (forwarded) vs to the holder, interleaved."""
    direct: list[float] = []
    forwarded: list[float] = []
    async with database() as dsn:
        env = _node_env(dsn, workspace, CLUSTER_LEASE_SECONDS="15")
        async with (
            served("forward-holder", **env) as holder,
            served("forward-other", **env) as other,
            httpx.AsyncClient(timeout=60) as client,
        ):
            (await client.post(f"{holder.url}/v1/sessions", json={"session_id": "fw"})).raise_for_status()
            for i in range(rounds + 3):
                for url, times in ((holder.url, direct), (other.url, forwarded)):
                    began = time.perf_counter()
                    (await _say(client, url, "fw", f"message {i}")).raise_for_status()
                    if i >= 3:  # the first rounds warm both paths
                        times.append(time.perf_counter() - began)
    ours, baseline = summary(forwarded), summary(direct)
    extra = ours["median_ms"] - baseline["median_ms"]
    return Comparison(
        "cluster: a turn through another node",
        "through the holder",
        baseline,
        "forwarded to the holder",
        ours,
        f"+{extra:.1f} ms p50 (target <= +5 ms)",
    )


async def takeover(rounds: int, workspace: Path) -> dict[str, Any]:
    """From ``kill -9`` of the holder to the conversation's next answer through another node, as the
    client sees it: one request, no retry (the node waits the lease out); any other answer is an error."""
    times: list[float] = []
    errors = 0
    async with database() as dsn:
        env = _node_env(dsn, workspace)
        async with served("survivor", **env) as survivor, httpx.AsyncClient(timeout=60) as client:
            for i in range(rounds):
                # The same data directory each round: a restart ends the CLIs the last kill left.
                async with served("victim", **env) as victim:
                    (await client.post(f"{victim.url}/v1/sessions", json={"session_id": f"t{i}"})).raise_for_status()
                    (await _say(client, victim.url, f"t{i}", "the word is kiwi")).raise_for_status()
                    victim.process.kill()
                    await victim.process.wait()
                    began = time.perf_counter()
                    reply = await _say(client, survivor.url, f"t{i}", "which word?")
                    if reply.status_code != 200:
                        errors += 1
                        continue
                    times.append(time.perf_counter() - began)
            async with served("victim", **env):
                pass
    return {"lease_s": LEASE, "takeover": summary(times), "errors": errors}


async def create_storm(per_node: int, limit: int, workspace: Path) -> dict[str, Any]:
    """Creates on three nodes at once against one global limit: throughput, and the limit held exactly."""
    async with database() as dsn:
        env = _node_env(dsn, workspace, SM_MAX_SESSIONS=str(limit), CP_MAX_SIZE=str(limit), OPT_CREATE_TIMEOUT="120")
        async with (
            served("storm-1", **env) as one,
            served("storm-2", **env) as two,
            served("storm-3", **env) as three,
            httpx.AsyncClient(timeout=180) as client,
        ):
            began = time.perf_counter()
            urls = [node.url for node in (one, two, three) for _ in range(per_node)]
            answers = await asyncio.gather(*(client.post(f"{url}/v1/sessions", json={}) for url in urls))
            seconds = time.perf_counter() - began
            listed = len((await client.get(f"{one.url}/v1/sessions")).json()["sessions"])
    statuses = Counter(answer.status_code for answer in answers)
    return {
        "attempted": 3 * per_node,
        "limit": limit,
        "created": statuses[201],
        "refused_429": statuses[429],
        "other": sum(count for status, count in statuses.items() if status not in (201, 429)),
        "listed": listed,
        "seconds": seconds,
        "creates_per_s": statuses[201] / seconds,
    }


async def maintenance_at_scale(n: int) -> dict[str, Any]:
    """One maintenance pass of the leader over ``n`` sessions held by three nodes, transcripts in the store."""
    async with database() as dsn:
        nodes = [PostgresRegistry(dsn, f"node{i}", 600.0) for i in range(3)]
        store = PostgresTranscriptStore(dsn)
        began = time.perf_counter()
        for i, node in enumerate(nodes):
            await node.open()
            await node.nodes.join(f"bench{i}")
            await node.nodes.heartbeat(f"http://127.0.0.1:{9001 + i}", 0, "up")
        with tempfile.TemporaryDirectory(prefix="scale-") as scratch:
            config = SystemConfig.from_env()
            config.runtime.DATA_DIR = Path(scratch)
            config.cluster = ClusterConfig(CLAUDE_SESSIONS_DATABASE_URL=dsn, CLUSTER_LEASE_SECONDS=600)
            config.connection_pool = ConnectionPoolConfig(MIN_SIZE=0, MAX_SIZE=0)
            config.session_manager.MAX_SESSIONS = n
            handler = ClaudeHandler(config)
            project = handler.session_manager.conversations.project_of(SessionConfig())
            for start in range(0, n, 30):
                batch = range(start, min(n, start + 30))
                await asyncio.gather(*(nodes[i % 3].create(_record(f"s{i}", f"c{i}"), n, None, True) for i in batch))
                await asyncio.gather(
                    *(
                        store.append(
                            {"project_key": project, "session_id": f"c{i}"}, [{"type": "user", "uuid": f"u{i}"}]
                        )
                        for i in batch
                    )
                )
            seconds = time.perf_counter() - began
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                await conn.execute("ANALYZE")  # what autovacuum does for a database this size
            passes = []
            try:
                await handler.start()
                for _ in range(6):
                    began = time.perf_counter()
                    outcome = await handler.run_maintenance()
                    passes.append(time.perf_counter() - began)
                    assert outcome["orphaned"] == [] and outcome["inactive"] == []
            finally:
                await handler.close()
                await store.close()
                for node in nodes:
                    await node.close()
    steady = passes[1:]  # the first also takes the leader's lock
    return {
        "sessions": n,
        "pass_ms": statistics.median(steady) * 1000,
        "slowest_pass_ms": max(steady) * 1000,
        "first_pass_ms": passes[0] * 1000,
        "setup_per_s": n / seconds,
    }


async def run_all(quick: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="cluster-workspaces-") as workspace:
        shared = Path(workspace)
        return {
            "registry": await registry_ops(200 if quick else 1000),
            "forwarding": (await forwarding(10 if quick else 40, shared)).as_dict(),
            "takeover": await takeover(2 if quick else 5, shared),
            "storm": await create_storm(4 if quick else 8, 9 if quick else 20, shared),
            "scale": await maintenance_at_scale(1_000 if quick else 10_000),
        }


def markdown(results: dict[str, Any]) -> list[str]:
    """The README's cluster tables."""
    lines = ["| registry, one caller (ops/s) | create | claim | save | get |", "|---|---|---|---|---|"]
    for r in results["registry"]:
        lines.append(f"| {r['backend']} | {r['create']:.0f} | {r['claim']:.0f} | {r['save']:.0f} | {r['get']:.0f} |")
    f, t, s, m = results["forwarding"], results["takeover"], results["storm"], results["scale"]
    lines += [
        "",
        "| cluster (3 nodes on one PostgreSQL unless said) | figure | target |",
        "|---|---|---|",
        f"| turn via the holder / forwarded from another node (p50, p95) "
        f"| {f['baseline']['median_ms']:.1f} / {f['ours']['median_ms']:.1f} ms "
        f"({f['baseline']['p95_ms']:.1f} / {f['ours']['p95_ms']:.1f}) | {f['target']} |",
        f"| takeover: `kill -9` of the holder to the next answer via another node (one request, no retry), "
        f"lease {t['lease_s']:.0f} s | {t['takeover']['median_ms'] / 1000:.2f} s median, "
        f"{t['takeover']['p95_ms'] / 1000:.2f} s worst of {t['takeover']['n']}, {t['errors']} errors "
        f"| lease + one resume, 0 errors |",
        f"| create storm: {s['attempted']} creates at once on 3 nodes, limit {s['limit']} "
        f"| {s['created']} created, {s['refused_429']} refused (429), {s['other']} other; "
        f"{s['creates_per_s']:.1f} creates/s (each spawns a CLI) | exactly the limit |",
        f"| maintenance pass over {m['sessions']:,} sessions held by 3 nodes (leader) "
        f"| {m['pass_ms']:.1f} ms median, {m['slowest_pass_ms']:.1f} ms slowest | < 50 ms |",
    ]
    return lines
