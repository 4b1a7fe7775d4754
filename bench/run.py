"""Benchmarks against the offline model on loopback: what the warm pool buys.

Each comparison runs both sides in the same process, interleaved, and reports
median, p95 and the ratio. Results print as a table and are written to
``bench/results/latest.json``.

    python bench/run.py [--rounds N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psutil
from claude_agent_sdk import AssistantMessage
from rich.console import Console
from rich.table import Table

from claude_sessions import ClaudeHandler, SessionConfig, SystemConfig
from claude_sessions.config import ConnectionPoolConfig
from claude_sessions.logs import configure_logging
from claude_sessions.offline_model import OfflineModelServer

RESULTS = Path(__file__).parent / "results"


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"median_ms": statistics.median(ordered) * 1000, "p95_ms": p95 * 1000, "n": len(ordered)}


async def handler_with(min_size: int, max_size: int) -> ClaudeHandler:
    """A handler with its own data directory (one handler per directory)."""
    config = SystemConfig.from_env()
    config.runtime.DATA_DIR = Path(tempfile.mkdtemp(prefix="handler-", dir=config.runtime.DATA_DIR))
    config.connection_pool = ConnectionPoolConfig(MIN_SIZE=min_size, MAX_SIZE=max_size)
    handler = ClaudeHandler(config)
    await handler.start()
    return handler


async def settle(handler: ClaudeHandler) -> None:
    """Wait until the pool has its spares again (steady state between samples)."""
    for _ in range(200):
        if handler.get_pool_status()["idle"] >= handler.config.connection_pool.MIN_SIZE:
            return
        await asyncio.sleep(0.02)


async def first_token(handler: ClaudeHandler) -> float:
    """Seconds from asking for a new session to its first assistant message."""
    began = time.perf_counter()
    session_id = await handler.create_session()
    elapsed = 0.0
    async for message in handler.send_message(session_id, "hello"):
        if isinstance(message, AssistantMessage) and not elapsed:
            elapsed = time.perf_counter() - began
    await handler.destroy_session(session_id)
    return elapsed


async def take_worker(handler: ClaudeHandler) -> float:
    """Seconds to get a connected worker from the pool (spawned when none is idle)."""
    began = time.perf_counter()
    worker = await handler.pool.acquire(SessionConfig())
    elapsed = time.perf_counter() - began
    await handler.pool.discard(worker)
    return elapsed


async def interleaved(
    rounds: int, bare: Callable[[], Awaitable[float]], pooled: Callable[[], Awaitable[float]]
) -> tuple[list[float], list[float]]:
    a: list[float] = []
    b: list[float] = []
    for _ in range(rounds):
        a.append(await bare())
        b.append(await pooled())
    return a, b


def cli_rss_mb(handler: ClaudeHandler) -> list[float]:
    sizes = []
    for connection in handler.get_pool_status()["connections"]:
        process = psutil.Process(connection["pid"])
        tree = [process, *process.children(recursive=True)]
        sizes.append(sum(p.memory_info().rss for p in tree) / 2**20)
    return sizes


async def main(rounds: int) -> dict[str, Any]:
    cold = await handler_with(min_size=0, max_size=0)
    warm = await handler_with(min_size=2, max_size=4)
    results: dict[str, Any] = {}
    try:

        async def warm_take() -> float:
            await settle(warm)
            return await take_worker(warm)

        async def warm_first_token() -> float:
            await settle(warm)
            return await first_token(warm)

        spawn, take = await interleaved(rounds, lambda: take_worker(cold), warm_take)
        results["worker: cold connect vs warm take"] = (summary(spawn), summary(take))
        bare, pooled = await interleaved(rounds, lambda: first_token(cold), warm_first_token)
        results["new session: time to first token"] = (summary(bare), summary(pooled))
        await settle(warm)
        rss = cli_rss_mb(warm)
        results["rss_per_worker_mb"] = {"median": statistics.median(rss), "max": max(rss), "n": len(rss)}
    finally:
        await cold.close()
        await warm.close()
    return results


def report(results: dict[str, Any], console: Console) -> None:
    table = Table(title="claude-sessions vs a CLI spawned per session (offline model, loopback)")
    for column in ("comparison", "without pool median", "p95", "with pool median", "p95", "ratio"):
        table.add_column(column, justify="right" if column != "comparison" else "left")
    for name, value in results.items():
        if isinstance(value, tuple):
            without, with_pool = value
            table.add_row(
                name,
                f"{without['median_ms']:.1f} ms",
                f"{without['p95_ms']:.1f} ms",
                f"{with_pool['median_ms']:.1f} ms",
                f"{with_pool['p95_ms']:.1f} ms",
                f"{with_pool['median_ms'] / without['median_ms']:.3f}",
            )
    console.print(table)
    rss = results["rss_per_worker_mb"]
    console.print(f"RSS per idle CLI worker: median {rss['median']:.0f} MB, max {rss['max']:.0f} MB (n={rss['n']})")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    python = platform.python_version()
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores ({cpu}), Python {python}"


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    configure_logging("WARNING")
    console = Console(width=120)
    with tempfile.TemporaryDirectory(prefix="claude-sessions-bench-") as scratch, OfflineModelServer() as model:
        os.environ.update(
            {
                "ANTHROPIC_BASE_URL": model.base_url,
                "ANTHROPIC_API_KEY": "sk-offline-bench",
                "DISABLE_TELEMETRY": "1",
                "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
                "CLAUDE_CONFIG_DIR": f"{scratch}/claude",
                "CLAUDE_SESSIONS_DATA_DIR": scratch,
            }
        )
        results = asyncio.run(main(args.rounds))
    report(results, console)
    RESULTS.mkdir(exist_ok=True)
    payload = {"machine": machine(), "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "results": results}
    (RESULTS / "latest.json").write_text(json.dumps(payload, indent=2) + "\n")
    console.print(f"machine: {payload['machine']}; written to {RESULTS / 'latest.json'}")


if __name__ == "__main__":
    run()
