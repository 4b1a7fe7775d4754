"""Keys made at run time: what authenticating a request costs with 10,000 of them in the registry.

A presented key is hashed (SHA-256) and looked up in the dictionary of configured keys
(``API_KEYS``, ``ADMIN_API_KEY``); a run-time key then in a per-node cache, and past
``KEY_CACHE_SECONDS`` in the registry (``KeyStore.find``, one indexed read). Two parts:

- in process: ``Authenticator.authenticate`` alone, one call timed at a time, every case
  interleaved call by call, on private SQLite registries holding 10 to 100,000 keys made
  directly by ``KeyStore.create``. The cold case sets ``KEY_CACHE_SECONDS`` to 0 for its calls,
  so each reads the registry, as a key's first request past the cache's life does; a key's first
  use on a node also writes its ``last_used_at`` (once a minute per key and node). A tight loop:
  the CPU's caches are warm, so these are the lower bounds;
- over HTTP: ``GET /v1/me`` from one keep-alive connection to a real server, with an
  ``API_KEYS`` key, a key made over ``POST /v1/admin/keys`` and, cold, another run-time key
  each request (marked used, so none is written), interleaved (the order turns every round),
  over 10,000 run-time keys written into the server's registry file before it starts. The
  server runs with a probe (:func:`serve_with_probe`) timing its ``authenticate`` calls: what
  they cost within a real request, the CPU's caches cold from the wait between requests.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr

import claude_sessions.http.auth as auth
from claude_sessions.config import ServerConfig
from claude_sessions.http.auth import Authenticator
from claude_sessions.store.records import UserLimits
from claude_sessions.store.sqlite import SqliteRegistry
from common import probe_log, serve_probed, served_by, summary

WARM_UP = 20
TENANT, CONFIGURED, ADMIN = "bench", "bench-key", "bench-admin-key"
#: Run-time keys in the registry for the target's figures, and for the HTTP part.
TARGET_KEYS = 10_000
#: The cache's life as the server has it (the cold case sets it to 0 for its calls).
KEY_CACHE_SECONDS = auth.KEY_CACHE_SECONDS
#: Where the server's probe notes each ``authenticate``: one ``<ns> <key_id or ->`` a line.
LOG_VARIABLE = "BENCH_KEYS_LOG"
#: The server: ``claude-sessions`` with the probe installed first.
LAUNCHER = [
    sys.executable,
    "-c",
    f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
    "import keys_scenarios; keys_scenarios.serve_with_probe()",
]


def _registry(path: Path) -> SqliteRegistry:
    return SqliteRegistry(path, "bench-keys", 15.0)


async def make_keys(registry: SqliteRegistry, count: int) -> list[str]:
    """``count`` run-time keys of ``TENANT``, straight into the registry; their secrets."""
    made = [await registry.keys.create(TENANT, None, None, None, UserLimits()) for _ in range(count)]
    return [secret for _, secret in made]


async def mark_used(registry: SqliteRegistry, when: float) -> None:
    """Every key's ``last_used_at``: a key used since ``when - LAST_USED_EVERY`` is not written again."""
    async with registry.transaction() as tx:
        await tx.run("UPDATE api_keys SET last_used_at = ?", (when,))


def _always(key: str) -> Callable[[], str]:
    return lambda: key


@dataclass
class Case:
    """One kind of call: whose authenticator, which key (``next_key`` for a fresh one each call)."""

    name: str
    keys: int
    authenticator: Authenticator
    next_key: Callable[[], str]
    cold: bool = False
    #: Rounds it takes part in (warm-up included): a fresh key each call runs out.
    rounds: int | None = None
    seconds: list[float] = field(default_factory=list)


async def in_process(levels: list[int], calls: int) -> dict[str, Any]:
    """``Authenticator.authenticate`` per call: configured, warm, cold and first-use, by registry size."""
    scratch = Path(tempfile.mkdtemp(prefix="keys-", dir=os.environ["CLAUDE_SESSIONS_DATA_DIR"]))
    server = ServerConfig(API_KEYS=SecretStr(f"{TENANT}:{CONFIGURED}"), ADMIN_API_KEY=SecretStr(ADMIN))
    registries = [_registry(scratch / "empty.db")]
    cases = [Case("configured", 0, Authenticator(server, registries[0].keys), _always(CONFIGURED))]
    made_s: dict[int, float] = {}
    try:
        for level in levels:
            registry = _registry(scratch / f"keys-{level}.db")
            registries.append(registry)
            began = time.perf_counter()
            secrets = await make_keys(registry, level)
            made_s[level] = time.perf_counter() - began
            warm, cold = Authenticator(server, registry.keys), Authenticator(server, registry.keys)
            cases += [
                Case("configured", level, warm, _always(CONFIGURED)),
                Case("warm", level, warm, _always(secrets[0])),
                Case("cold", level, cold, _always(secrets[0]), cold=True),
            ]
            if level >= 1_000:  # a fresh key each call, as long as they last
                fresh = iter(secrets[1:])
                first = Authenticator(server, registry.keys)
                cases.append(Case("first", level, first, fresh.__next__, rounds=level - 1))
        for i in range(WARM_UP + calls):
            turn = i % len(cases)
            for case in cases[turn:] + cases[:turn]:
                if case.rounds is not None and i >= case.rounds:
                    continue
                header = f"Bearer {case.next_key()}"
                if case.cold:
                    auth.KEY_CACHE_SECONDS = 0.0  # every call past the cache's life: the registry read
                try:
                    began = time.perf_counter()
                    principal = await case.authenticator.authenticate(header)
                    elapsed = time.perf_counter() - began
                finally:
                    auth.KEY_CACHE_SECONDS = KEY_CACHE_SECONDS
                assert principal is not None and principal.tenant == TENANT, (case.name, principal)
                if i >= WARM_UP:
                    case.seconds.append(elapsed)
    finally:
        for registry in registries:
            await registry.close()
    return {
        "calls": calls,
        "levels": levels,
        "made_s": made_s,
        "cases": [{"case": c.name, "keys": c.keys, **summary(c.seconds)} for c in cases],
    }


def serve_with_probe() -> None:
    """The server's process (``LAUNCHER``): ``Authenticator.authenticate`` timed into ``$BENCH_KEYS_LOG``."""
    write = probe_log(LOG_VARIABLE)
    authenticate = Authenticator.authenticate

    async def timed(self: Authenticator, authorization: str | None) -> auth.Principal | None:
        began = time.perf_counter_ns()
        principal = await authenticate(self, authorization)
        elapsed = time.perf_counter_ns() - began
        write(f"{elapsed} {(principal and principal.key_id) or '-'}")
        return principal

    Authenticator.authenticate = timed  # type: ignore[method-assign]
    serve_probed()


def _in_server(log: Path, skip: int, runtime_id: str) -> dict[str, list[float]]:
    """The server's ``authenticate`` times (s) past the first ``skip`` lines, by kind of key."""
    seconds: dict[str, list[float]] = {"configured": [], "warm": [], "cold": []}
    for line in log.read_text().splitlines()[skip:]:
        ns, key_id = line.split()
        kind = "configured" if key_id == "-" else "warm" if key_id == runtime_id else "cold"
        seconds[kind].append(int(ns) / 1e9)
    return seconds


async def over_http(rounds: int, creates: int) -> dict[str, Any]:
    """``GET /v1/me`` end to end: an ``API_KEYS`` key against run-time keys, 10,000 in the registry."""
    name = "keys-server"
    data_dir = Path(os.environ["CLAUDE_SESSIONS_DATA_DIR"])
    log = data_dir / "keys-probe.log"
    registry = _registry((data_dir / name).resolve() / "sessions.db")
    try:
        secrets = await make_keys(registry, TARGET_KEYS)
        # Used, as far as the server knows, for the next hour: a cold request reads, never writes.
        await mark_used(registry, time.time() + 3600)
    finally:
        await registry.close()
    assert WARM_UP + rounds <= len(secrets), "a fresh key for every cold request"
    env = {"API_KEYS": f"{TENANT}:{CONFIGURED}", "ADMIN_API_KEY": ADMIN, "CP_MIN_SIZE": "0", LOG_VARIABLE: str(log)}
    admin = {"Authorization": f"Bearer {ADMIN}"}
    created: list[float] = []
    seconds: dict[str, list[float]] = {"configured": [], "warm": [], "cold": []}
    async with (
        served_by(LAUNCHER, name, **env) as server,
        httpx.AsyncClient(base_url=server.url, timeout=30) as client,
    ):
        for i in range(creates):
            began = time.perf_counter()
            made = await client.post("/v1/admin/keys", json={"tenant": TENANT, "name": f"bench {i}"}, headers=admin)
            created.append(time.perf_counter() - began)
            assert made.status_code == 201, made.text
        listed = await client.get("/v1/admin/keys", params={"tenant": TENANT}, headers=admin)
        assert len(listed.json()["keys"]) == TARGET_KEYS + creates, "the server reads another registry"
        runtime, runtime_id = made.json()["key"], made.json()["key_id"]
        fresh = iter(secrets)
        keys = {"configured": _always(CONFIGURED), "warm": _always(runtime), "cold": fresh.__next__}
        kinds = list(keys)
        for i in range(WARM_UP + rounds):
            if i == WARM_UP:
                skip = len(log.read_text().splitlines())
            turn = i % len(kinds)
            for kind in kinds[turn:] + kinds[:turn]:
                headers = {"Authorization": f"Bearer {keys[kind]()}"}
                began = time.perf_counter()
                me = await client.get("/v1/me", headers=headers)
                elapsed = time.perf_counter() - began
                assert me.status_code == 200 and me.json()["tenant"] == TENANT, me.text
                if i >= WARM_UP:
                    seconds[kind].append(elapsed)
    server_side = _in_server(log, skip, runtime_id)
    assert all(len(server_side[kind]) == rounds for kind in kinds), "a request the probe did not see"
    base = seconds["configured"]
    return {
        "rounds": rounds,
        "keys": TARGET_KEYS + creates,
        "create": summary(created),
        **{kind: summary(s) for kind, s in seconds.items()},
        "in_server": {kind: summary(s) for kind, s in server_side.items()},
        # Each round's difference from the configured key's request of the same round.
        **{
            f"{kind}_paired_ms": statistics.median(a - b for a, b in zip(seconds[kind], base, strict=True)) * 1000
            for kind in ("warm", "cold")
        },
    }


async def run_all(quick: bool) -> dict[str, Any]:
    levels = [10, TARGET_KEYS] if quick else [10, 1_000, TARGET_KEYS, 100_000]
    return {
        "in_process": await in_process(levels, 2_000 if quick else 10_000),
        "http": await over_http(300 if quick else 2_000, 10 if quick else 50),
    }


def markdown(results: dict[str, Any]) -> list[str]:
    """Two tables: ``authenticate`` in process by registry size (µs), and ``GET /v1/me`` over HTTP (ms)."""
    local, http = results["in_process"], results["http"]
    levels: list[int] = local["levels"]
    figures = {(c["case"], c["keys"]): c for c in local["cases"]}

    def micro(case: str, keys: int) -> str:
        c = figures.get((case, keys))
        if c is None:
            return ""
        fewer = f" ({c['n']:,} calls)" if c["n"] != local["calls"] else ""
        return f"{c['median_ms'] * 1000:.1f} / {c['p95_ms'] * 1000:.1f}{fewer}"

    def row(what: str, case: str) -> str:
        return f"| {what} | {micro(case, 0)} | " + " | ".join(micro(case, keys) for keys in levels) + " |"

    lines = [
        f"| authenticate one request, in process ({local['calls']:,} calls each, median / p95 µs) "
        "| no registry keys | " + " | ".join(f"{keys:,} keys" for keys in levels) + " |",
        "|---|---|" + "---|" * len(levels),
        row("an API_KEYS key", "configured"),
        row("a run-time key, cache warm (the steady state)", "warm"),
        row(f"a run-time key, cache cold (the registry read, every {KEY_CACHE_SECONDS} s)", "cold"),
        row("a run-time key's first use on a node (read + last_used_at write, once a minute)", "first"),
        "",
        "Keys made directly (KeyStore.create, one transaction each): "
        + ", ".join(f"{int(keys):,} in {s:.1f} s" for keys, s in local["made_s"].items())
        + ".",
        "",
    ]
    conf = http["configured"]["median_ms"]

    def ms(kind: str, target: str = "") -> str:
        f, inside = http[kind], http["in_server"][kind]
        delta = (
            "" if kind == "configured" else f"{f['median_ms'] - conf:+.3f} (paired {http[f'{kind}_paired_ms']:+.3f})"
        )
        return (
            f"{f['median_ms']:.3f} / {f['p95_ms']:.3f} | {delta} "
            f"| {inside['median_ms'] * 1000:.1f} / {inside['p95_ms'] * 1000:.1f} | {target} |"
        )

    return [
        *lines,
        f"| GET /v1/me over HTTP, {http['keys']:,} run-time keys in the registry ({http['rounds']:,} rounds, "
        "interleaved) | median / p95 ms | vs the API_KEYS key at p50, ms "
        "| authenticate in the server, median / p95 µs | target |",
        "|---|---|---|---|---|",
        f"| an API_KEYS key | {ms('configured')}",
        f"| a run-time key, cache warm (read again every {KEY_CACHE_SECONDS} s) | {ms('warm', '<= +0.1 ms at p50')}",
        f"| a run-time key, cache cold (another key each request: a registry read each) | {ms('cold')}",
        f"| making a key: POST /v1/admin/keys ({http['create']['n']} keys) "
        f"| {http['create']['median_ms']:.3f} / {http['create']['p95_ms']:.3f} | | | |",
    ]
