"""Workload replay: one seeded trace of chat users, replayed against each side in turn.

Sides: the bare SDK (one ``ClaudeSDKClient``, so one CLI, per conversation, from its first turn to
its last), claude-sessions as one ``claude-sessions serve`` node, and three nodes on PostgreSQL behind
``deploy/haproxy.cfg`` (a database of its own on ``BENCH_POSTGRES_URL``; skipped without PostgreSQL or
haproxy). Everything against the offline model; the servers run with ``SM_IDLE_RELEASE_MINUTES`` the
profile's (0.2 min short) so pauses outlast it, maintenance ten times as often, the pool's defaults.
The trace: :mod:`workload_trace`; what each side measures: :mod:`workload_sides`; whether a session
found its CLI running: :mod:`workload_probe`. docs/benchmarks.md#workload-replay says what each figure
means.

    python bench/workload.py [--profile short|long] [--users N] [--minutes M] [--seed S] [--sides bare,single,cluster]

Prints the table, then one JSON line (the whole result).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import statistics
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import httpx
import psutil

import cluster_scenarios as cluster
from chaos_cluster import start_haproxy
from claude_sessions.config import ConnectionPoolConfig
from claude_sessions.observability.logs import configure_logging
from common import Served, offline_environment, served_by
from workload_probe import LAUNCHER, LOG_VARIABLE, outcomes
from workload_sides import (
    AUTH,
    KEY,
    TENANT,
    Record,
    Sampler,
    bare_clis,
    bare_conversation,
    bare_warm_create,
    http_conversation,
    http_warm_create,
    percentiles,
    play,
    say,
    settle,
)
from workload_trace import PROFILES, SHORT, Profile, Trace, make_trace, sized

SIDES = ("bare", "single", "cluster")
LABELS = {
    "bare": "bare SDK (a CLI per conversation)",
    "single": "claude-sessions, one node",
    "cluster": "claude-sessions, 3 nodes + HAProxy",
}
Figures = dict[str, Any]


def server_env(profile: Profile, name: str, probe_log: Path) -> dict[str, str]:
    """A node's settings: the profile's idle release, maintenance ten times as often, the pool's defaults."""
    data_dir = Path(os.environ["CLAUDE_SESSIONS_DATA_DIR"]) / name
    spares = os.environ.get("CP_MIN_SIZE", str(ConnectionPoolConfig.model_fields["MIN_SIZE"].default))
    return {
        "SM_IDLE_RELEASE_MINUTES": str(profile.idle_release_minutes),
        "SM_CLEANUP_INTERVAL": str(profile.idle_release_minutes / 10),
        "SM_MAX_SESSIONS": str(max(50, 2 * profile.users)),
        "CP_MIN_SIZE": spares,  # served_by's own is 1
        "API_KEYS": f"{TENANT}:{KEY}",
        "CLAUDE_CONFIG_DIR": str(data_dir / "claude"),  # a node's own, as on a machine of its own
        LOG_VARIABLE: str(probe_log),
    }


async def replay_bare(trace: Trace) -> Figures:
    record = Record()
    for _ in range(trace.profile.warm_rounds):
        record.warm_creates.append(await bare_warm_create())
    sampler = Sampler(bare_clis, lambda: record.registered)
    sampler.start()
    try:
        seconds = await play(trace, lambda user: bare_conversation(user, record), record)
    finally:
        sampler.stop()
    waited = Counter({"new started": record.connects})
    return figures(trace, record, sampler, seconds, waited, record.connects)


async def replay_http(trace: Trace, nodes: list[Served], url: str, probe_logs: list[Path]) -> Figures:
    """The trace through ``url`` (a node, or HAProxy in front of ``nodes``), once every node has its spares."""
    record = Record()
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=200)
    async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=600, limits=limits) as http:
        for _ in range(trace.profile.warm_rounds):
            await settle(nodes)
            record.warm_creates.append(await http_warm_create(http))
        await settle(nodes)
        roots = [psutil.Process(node.process.pid) for node in nodes]
        sampler = Sampler(lambda: roots, lambda: record.registered)
        began = time.monotonic()
        sampler.start()
        try:
            seconds = await play(trace, lambda user: http_conversation(http, user, record), record)
        finally:
            sampler.stop()
        listed = len((await http.get("/v1/sessions")).json()["sessions"])
    found = figures(trace, record, sampler, seconds, outcomes(probe_logs, began), sampler.started)
    # Each burst's creates, by whether their CLI was running: those asked within 2 s of its start.
    per_burst = [dict(outcomes(probe_logs, began + at, began + at + 2)) for at in trace.bursts]
    return {**found, "bursts_acquired": per_burst, "registered_at_end": record.registered, "sessions_listed": listed}


async def replay_single(trace: Trace) -> Figures:
    with tempfile.TemporaryDirectory(prefix="workload-single-") as scratch:
        log, name = Path(scratch) / "probe.log", "workload-single"
        async with served_by(LAUNCHER, name, **server_env(trace.profile, name, log)) as node:
            return await replay_http(trace, [node], node.url, [log])


async def replay_cluster(trace: Trace) -> Figures:
    why_not = await cluster.reachable() or (None if shutil.which("haproxy") else "no haproxy")
    if why_not is not None:
        return {"skipped": why_not}
    with tempfile.TemporaryDirectory(prefix="workload-cluster-") as scratch:
        root = Path(scratch)
        logs = [root / f"probe{i}.log" for i in range(3)]
        async with cluster.database() as dsn, contextlib.AsyncExitStack() as stack:
            shared = {"CLAUDE_SESSIONS_DATABASE_URL": dsn, "WORKSPACE_ROOT": str(root / "workspaces")}
            names = [f"workload-node{i + 1}" for i in range(len(logs))]
            envs = [server_env(trace.profile, name, log) | shared for name, log in zip(names, logs, strict=True)]
            nodes = await started(stack, [served_by(LAUNCHER, n, **e) for n, e in zip(names, envs, strict=True)])
            rng = random.Random(trace.profile.seed)
            balancer, url = await asyncio.to_thread(start_haproxy, cast(Any, SimpleNamespace(nodes=nodes)), root, rng)
            try:
                return await replay_http(trace, nodes, url, logs)
            finally:
                balancer.terminate()
                await asyncio.to_thread(balancer.wait, 10)


async def started(stack: contextlib.AsyncExitStack, servers: list[AbstractAsyncContextManager[Served]]) -> list[Served]:
    """``servers`` started at once, each stopped with ``stack``; if one fails, the others are stopped."""
    tasks = [asyncio.ensure_future(stack.enter_async_context(server)) for server in servers]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


RUNNERS: dict[str, Callable[[Trace], Coroutine[Any, Any, Figures]]] = {
    "bare": replay_bare,
    "single": replay_single,
    "cluster": replay_cluster,
}


def figures(
    trace: Trace, record: Record, sampler: Sampler, seconds: float, waited: Counter[str], started: int
) -> Figures:
    """One side's figures. ``waited``: acquires by outcome (``new started``, ``resume live``, ...)."""
    followed = trace.followed_bursts()
    burst = [
        record.first_tokens[u.index] for u in trace.users if u.burst in followed and u.index in record.first_tokens
    ]
    single = statistics.median(record.warm_creates) * 1000 if record.warm_creates else None
    burst_p95 = percentiles(burst).get("p95_ms")
    known = not (waited["unprobed"] or waited["new unknown"] or waited["resume unknown"])
    starts = waited["new started"] + waited["resume started"]
    turns = len(record.turns)
    return {
        "seconds": seconds,
        "turn": percentiles(record.turns),
        "first_token": percentiles(list(record.first_tokens.values())),
        "burst": {
            "n": len(burst),
            "p95_ms": burst_p95,
            "single_warm_median_ms": single,
            "ratio": burst_p95 / single if burst_p95 is not None and single else None,
        },
        "bursts_first_token": [
            percentiles(
                [record.first_tokens[u.index] for u in trace.users if u.burst == b and u.index in record.first_tokens]
            )
            for b in range(len(trace.bursts))
        ],
        "turns_live_share": 1 - starts / turns if known and turns else None,
        "waited": {"new": waited["new started"], "resumed": waited["resume started"]},
        "acquired": dict(waited),
        "clis_started": started,
        "clis_per_minute": started / (seconds / 60),
        **sampler.memory(),
        "errors": dict(record.errors),
    }


async def replay(profile: Profile, sides: tuple[str, ...] = SIDES) -> Figures:
    """The trace ``profile`` makes, against each of ``sides`` in turn; a side that fails says why."""
    trace = make_trace(profile)
    began = time.monotonic()
    results: Figures = {
        "profile": profile.name,
        "seed": profile.seed,
        "minutes": profile.minutes,
        "idle_release_minutes": profile.idle_release_minutes,
        "trace": trace.describe(),
        "sides": {},
    }
    for side in sides:
        started = time.monotonic()
        say(f"{LABELS[side]}: starting")
        try:
            found = await RUNNERS[side](trace)
        except Exception as error:
            traceback.print_exc()
            found = {"skipped": f"failed: {error!r}"}
        results["sides"][side] = {**found, "wall_s": time.monotonic() - started}
        say(f"{LABELS[side]}: done in {results['sides'][side]['wall_s']:.0f} s")
    results["wall_s"] = time.monotonic() - began
    return results


async def for_bench() -> Figures:
    """``bench/run.py``'s replay: the short profile, its JSON line printed."""
    results = await replay(SHORT)
    print(json.dumps({"workload": results}))
    return results


# -- the table -------------------------------------------------------------------------


def _ms(f: dict[str, Any]) -> str:
    return f"{f['p50_ms']:.0f} / {f['p95_ms']:.0f} / {f['p99_ms']:.0f} ({f['n']})" if f["n"] else "n/a"


def _burst(b: dict[str, Any]) -> str:
    if b["p95_ms"] is None or b["single_warm_median_ms"] is None:
        return "n/a"
    return f"{b['p95_ms']:.0f} / {b['single_warm_median_ms']:.0f} ({b['ratio']:.1f}x; {b['n']} creates)"


def _live(f: Figures) -> str:
    share, waited = f["turns_live_share"], f["waited"]
    return "n/a" if share is None else f"{share:.0%} ({waited['new']} / {waited['resumed']})"


def _per_session(f: Figures) -> str:
    per = f["pss_per_session_mb"]
    return "n/a" if per is None else f"{per:.0f} MB ({f['registered_mean']:.1f} sessions)"


def _errors(f: Figures) -> str:
    errors = f["errors"]
    return "0" if not errors else ", ".join(f"{kind}: {count}" for kind, count in sorted(errors.items()))


ROWS: list[tuple[str, Callable[[Figures], str]]] = [
    ("a turn, the user's send -> the whole answer: p50 / p95 / p99 ms (turns)", lambda f: _ms(f["turn"])),
    ("a new conversation, create -> first token: p50 / p95 / p99 ms (conversations)", lambda f: _ms(f["first_token"])),
    (
        "a burst of 10 within a minute of the last: p95 create -> first token / one warm create, median ms",
        lambda f: _burst(f["burst"]),
    ),
    ("turns served by a live CLI (waited for one to start: new / resumed)", _live),
    ("CLIs started per minute (in all)", lambda f: f"{f['clis_per_minute']:.1f} ({f['clis_started']})"),
    (
        "memory, PSS of the server's processes (bare: the CLIs): peak / mean MB",
        lambda f: f"{f['pss_peak_mb']:.0f} / {f['pss_mean_mb']:.0f}",
    ),
    ("memory per registered session: mean PSS / mean sessions registered", _per_session),
    ("errors (turns or creates that failed)", _errors),
]


def markdown(results: Figures) -> list[str]:
    """The replay's table and a sentence on its trace."""
    t, sides = results["trace"], results["sides"]
    names = [s for s in SIDES if s in sides]
    header = f"| workload replay ({results['profile']} profile, seed {results['seed']})"
    lines = [f"{header} | {' | '.join(LABELS[s] for s in names)} |", f"|---{'|---' * len(names)}|"]
    for label, cell in ROWS:
        cells = ["skipped" if "skipped" in sides[s] else cell(sides[s]) for s in names]
        lines.append(f"| {label} | {' | '.join(cells)} |")
    release = results["idle_release_minutes"] * 60
    bursts = f"at {', '.join(f'{b:.0f}' for b in t['bursts_s'])} s" if t["bursts_s"] else "none"
    walls = ", ".join(f"{LABELS[s]} {sides[s]['wall_s']:.0f} s" for s in names)
    lines += [
        "",
        f"The trace: {t['users']} users arriving over {results['minutes'] * 60:.0f} s, {t['burst_users']} of them in "
        f"bursts of 10 within a second ({bursts}), {t['openai_users']} through the OpenAI endpoint, "
        f"{t['leave_early']} leaving early (session deleted); {t['turns']} turns, {t['pauses_past_release']} of the "
        f"{t['pauses']} pauses longer than the idle release ({release:.0f} s). Wall time: {walls}; "
        f"{results['wall_s']:.0f} s in all.",
    ]
    lines += [f"{LABELS[s]} skipped: {sides[s]['skipped']}" for s in names if "skipped" in sides[s]]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="short", help="short: make bench's")
    parser.add_argument("--users", type=int, help="users in the trace (the profile's by default)")
    parser.add_argument("--minutes", type=float, help="the span users arrive in (the profile's by default)")
    parser.add_argument("--seed", type=int, help="the trace's seed (the profile's by default)")
    parser.add_argument("--sides", default=",".join(SIDES), help=f"comma-separated, of {', '.join(SIDES)}")
    args = parser.parse_args()
    sides = tuple(s for s in args.sides.split(",") if s)
    if unknown := set(sides) - set(SIDES):
        parser.error(f"unknown sides: {', '.join(sorted(unknown))}")
    configure_logging("WARNING")
    profile = sized(PROFILES[args.profile], args.users, args.minutes, args.seed)
    with offline_environment():
        results = asyncio.run(replay(profile, sides))
    print("\n".join(markdown(results)))
    print(json.dumps({"workload": results}))


if __name__ == "__main__":
    main()
