"""The seed's ``session_optimization_example``: every feature at work, as a report.

Sessions are created on warm workers, talk, are metered, are destroyed so their
worker serves the next session, hit the session limit, go idle and are cleaned
up, and the handler closes without leaving a process behind.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psutil
from claude_agent_sdk import AssistantMessage, TextBlock
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from claude_sessions.config import SystemConfig
from claude_sessions.errors import SessionLimitError
from claude_sessions.sessions.handler import ClaudeHandler


async def _ask(handler: ClaudeHandler, session_id: str, prompt: str) -> str:
    parts: list[str] = []
    async for message in handler.send_message(session_id, prompt):
        if isinstance(message, AssistantMessage):
            parts.extend(b.text for b in message.content if isinstance(b, TextBlock))
    return escape("".join(parts))


def _pool_table(status: dict[str, Any], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("worker", "pid", "state", "age (s)", "uses", "healthy"):
        table.add_column(column)
    for c in status["connections"]:
        table.add_row(c["id"], str(c["pid"]), c["state"], f"{c['age_seconds']:.1f}", str(c["uses"]), str(c["healthy"]))
    return table


def _metrics_table(handler: ClaudeHandler) -> Table:
    table = Table(title="Per-session metrics", title_justify="left")
    for column in ("session", "msgs", "input", "output", "cache read", "cache write", "cost USD", "last turn"):
        table.add_column(column, justify="right" if column != "session" else "left")
    for session_id, m in handler.session_manager.get_all_session_metrics().items():
        table.add_row(
            session_id,
            str(m.message_count),
            str(m.input_tokens),
            str(m.output_tokens),
            str(m.cache_read_tokens),
            str(m.cache_creation_tokens),
            f"{m.total_cost:.6f}",
            f"{m.last_turn_ms:.0f} ms" if m.last_turn_ms else "-",
        )
    return table


def _health_table(report: dict[str, dict[str, Any]]) -> Table:
    table = Table(title="Health report (session_manager.get_session_health_report())", title_justify="left")
    table.add_column("section")
    table.add_column("figures")
    for section, figures in report.items():
        table.add_row(section, ", ".join(f"{k}={v}" for k, v in figures.items()))
    return table


class _Report:
    """The demo's numbered chapters on the console."""

    def __init__(self, console: Console) -> None:
        self.console, self.step = console, 0

    def heading(self, text: str) -> None:
        self.step += 1
        self.console.rule(f"[bold]{self.step}. {text}")


async def run_demo(config: SystemConfig, console: Console | None = None) -> None:
    """Walk through the features; ``config`` decides limits and where the model is."""
    report = _Report(console or Console())
    report.heading("Start the handler: the pool warms CP_MIN_SIZE workers before anyone asks")
    began = time.perf_counter()
    handler = ClaudeHandler(config)
    try:
        await handler.start()
        report.console.print(
            f"Started in {time.perf_counter() - began:.2f} s (cold CLI processes connected in parallel)."
        )
        report.console.print(_pool_table(handler.get_pool_status(), "Pool after start"))
        await _create_and_talk(handler, report)
        await _reuse(handler, report)
        await _limits(handler, config, report)
        await _cleanup(handler, config, report)
        report.heading("Health report")
        report.console.print(_health_table(handler.session_manager.get_session_health_report()))
    finally:
        pids = [c["pid"] for c in handler.get_pool_status()["connections"]]
        report.heading("Close: maintenance stops, every CLI process ends")
        await handler.close()
        alive = [pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
        report.console.print(f"CLI processes before close: {len(pids)}, alive after close: {len(alive)}")


async def _create_and_talk(handler: ClaudeHandler, report: _Report) -> None:
    console = report.console
    report.heading("Create sessions: warm workers are taken at once")
    ids = []
    for name in ("alice", "bob", "carol"):
        began = time.perf_counter()
        ids.append(await handler.create_session(name))
        console.print(f"created [cyan]{name}[/] in {(time.perf_counter() - began) * 1000:.0f} ms")
    report.heading("Talk: replies stream back, usage and cost are metered")
    for session_id in ids:
        reply = await _ask(handler, session_id, f"Hello, I am {session_id}.")
        console.print(f"[cyan]{session_id}[/] <- {reply}")
    reply = await _ask(handler, "alice", "Do you remember my name?")
    console.print(f"[cyan]alice[/] <- {reply}")
    console.print(_metrics_table(handler))


async def _reuse(handler: ClaudeHandler, report: _Report) -> None:
    console = report.console
    report.heading("Pool reuse: a destroyed session's worker is reset (/clear) and serves the next one")
    bob = handler.session_manager.get("bob").worker
    bob_pid = bob.pid if bob else None
    await handler.destroy_session("bob")
    await handler.create_session("dave")
    dave = handler.session_manager.get("dave").worker
    reused = dave is not None and dave.pid == bob_pid
    console.print(f"bob's worker pid {bob_pid} -> dave's worker pid {dave.pid if dave else '-'}: reused={reused}")
    reply = await _ask(handler, "dave", "Who spoke to you before me?")
    console.print(f"[cyan]dave[/] <- {reply}")
    console.print("(message 1 of dave's conversation: nothing of bob's reached the model)")


async def _limits(handler: ClaudeHandler, config: SystemConfig, report: _Report) -> None:
    report.heading(f"Limits: at most SM_MAX_SESSIONS={config.session_manager.MAX_SESSIONS} sessions")
    index = 0
    while True:
        try:
            await handler.create_session(f"extra-{index}")
            index += 1
        except SessionLimitError as error:
            report.console.print(f"session {len(handler.session_manager) + 1} refused: [red]{error}[/]")
            break
    report.console.print(f"registered sessions: {len(handler.session_manager)}")


async def _cleanup(handler: ClaudeHandler, config: SystemConfig, report: _Report) -> None:
    console = report.console
    timeout = config.session_manager.TIMEOUT_MINUTES * 60
    report.heading(f"Cleanup: sessions idle longer than {timeout:g} s are removed, their workers released")
    await asyncio.sleep(timeout / 2)
    await _ask(handler, "alice", "I am still here.")
    await asyncio.sleep(timeout / 2 + 0.5)
    removed = await handler.session_manager.cleanup_inactive_sessions()
    console.print(f"removed {len(removed)} inactive sessions: {removed}")
    console.print(f"still registered: {[s.id for s in handler.session_manager.sessions()]}")
    console.print(_pool_table(handler.get_pool_status(), "Pool after cleanup"))
