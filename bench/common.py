"""What every benchmark needs: figures, a private environment, both sides' clients."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
from claude_agent_sdk import AssistantMessage, ClaudeAgentOptions, ClaudeSDKClient

from claude_sessions import ClaudeHandler, SystemConfig
from claude_sessions.config import ConnectionPoolConfig
from claude_sessions.offline_model import OfflineModelServer, loopback_env
from claude_sessions.workers.memory import Footprint, tree_footprint

#: Bytes in a mebibyte: the benchmarks' memory unit (printed as MB).
MB = 2**20


def nearest_rank(ordered: list[float], q: float) -> float:
    """The ``q`` quantile of sorted figures, by nearest rank."""
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(seconds: list[float]) -> dict[str, float]:
    """Median and p95 in milliseconds."""
    ordered = sorted(seconds)
    return {
        "median_ms": statistics.median(ordered) * 1000,
        "p95_ms": nearest_rank(ordered, 0.95) * 1000,
        "n": len(ordered),
    }


@dataclass
class Comparison:
    """Both sides of one comparison, measured in the same run."""

    name: str
    baseline_label: str
    baseline: dict[str, float]
    ours_label: str
    ours: dict[str, float]
    target: str = ""

    @property
    def ratio(self) -> float:
        return self.ours["median_ms"] / self.baseline["median_ms"]

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "baseline_label": self.baseline_label,
            "baseline": self.baseline,
            "ours_label": self.ours_label,
            "ours": self.ours,
            "ratio": self.ratio,
            "target": self.target,
        }


@contextmanager
def offline_environment() -> Iterator[OfflineModelServer]:
    """The offline model on loopback and a private CLAUDE_CONFIG_DIR, in os.environ."""
    with tempfile.TemporaryDirectory(prefix="claude-sessions-bench-") as scratch, OfflineModelServer() as model:
        os.environ.update(
            {
                **loopback_env(model.base_url),
                "CLAUDE_CONFIG_DIR": f"{scratch}/claude",
                "CLAUDE_SESSIONS_DATA_DIR": scratch,
            }
        )
        yield model


def make_handler(
    min_size: int = 2, max_size: int = 10, max_sessions: int = 100, limits: str | None = None
) -> ClaudeHandler:
    """A handler with its own data directory (one handler per directory); ``limits``: ``LIMITS``'s value."""
    config = SystemConfig.from_env()
    if limits is not None:
        config.runtime.LIMITS = limits  # type: ignore[assignment]
    config.runtime.DATA_DIR = Path(tempfile.mkdtemp(prefix="handler-", dir=config.runtime.DATA_DIR))
    config.session_manager.MAX_SESSIONS = max_sessions
    config.connection_pool = ConnectionPoolConfig(MIN_SIZE=min_size, MAX_SIZE=max_size)
    # 50 sandboxed CLIs starting at once on 2 cores take longer than the default 30 s.
    config.optimization.CREATE_TIMEOUT = 180
    return ClaudeHandler(config)


def bare_client() -> ClaudeSDKClient:
    """What a service without claude-sessions does: one SDK client per session, straight to the model."""
    config = SystemConfig.from_env()
    cwd = config.runtime.workspace_root
    cwd.mkdir(parents=True, exist_ok=True)
    env = {**loopback_env(os.environ["ANTHROPIC_BASE_URL"]), "CLAUDE_CONFIG_DIR": str(config.runtime.config_dir)}
    return ClaudeSDKClient(ClaudeAgentOptions(env=env, cwd=str(cwd)))


async def bare_turn(client: ClaudeSDKClient, prompt: str) -> tuple[float, float]:
    """(seconds to the first assistant message, seconds to the result) of one turn."""
    began = time.perf_counter()
    first = 0.0
    await client.query(prompt)
    async for message in client.receive_response():
        if isinstance(message, AssistantMessage) and not first:
            first = time.perf_counter() - began
    return first, time.perf_counter() - began


async def managed_turn(handler: ClaudeHandler, session_id: str, prompt: str) -> tuple[float, float]:
    began = time.perf_counter()
    first = 0.0
    async for message in handler.send_message(session_id, prompt):
        if isinstance(message, AssistantMessage) and not first:
            first = time.perf_counter() - began
    return first, time.perf_counter() - began


def footprint(pid: int) -> Footprint:
    """RSS, PSS and USS of ``pid`` and every process it started; a process that cannot be read fails the run.

    Report PSS for a total (it adds up across processes) and USS plus the shared part (RSS - USS)
    for one process, never RSS summed: it counts each shared page once per process mapping it.
    """
    figures = tree_footprint(pid)
    if figures is None:
        raise RuntimeError(f"the memory of process {pid} and its descendants cannot be read (no PSS here?)")
    return figures


def is_cli(process: psutil.Process) -> bool:
    """A Claude Code CLI (the SDK's bundled one); False for a process gone or unreadable."""
    with contextlib.suppress(psutil.Error):
        return "_bundled/claude" in " ".join(process.cmdline())
    return False


def cli_pids() -> list[int]:
    return [p.pid for p in psutil.Process().children(recursive=True) if is_cli(p)]


@dataclass
class Served:
    """A ``claude-sessions serve`` process and where it answers."""

    port: int
    process: asyncio.subprocess.Process

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def probe_log(variable: str) -> Callable[[str], None]:
    """A writer of lines into the file ``$variable`` names: a probed server's notes, read back by the bench."""
    fd = os.open(os.environ[variable], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def write(line: str) -> None:
        os.write(fd, f"{line}\n".encode())

    return write


def serve_probed() -> None:
    """The server's CLI app in this process (its probes installed first), as ``claude-sessions serve`` runs it."""
    from claude_sessions.cli import app

    sys.argv[0] = "claude-sessions"
    app()


def served(name: str, **env: str) -> contextlib.AbstractAsyncContextManager[Served]:
    """A ``claude-sessions serve`` process with a data directory of its own, once it answers; stopped after."""
    return served_by([str(Path(sys.executable).with_name("claude-sessions"))], name, **env)


@contextlib.asynccontextmanager
async def served_by(launcher: list[str], name: str, **env: str) -> AsyncIterator[Served]:
    """:func:`served`, ``launcher`` standing for ``claude-sessions`` (a command that patches the server first)."""
    port = free_port()
    data_dir = Path(os.environ["CLAUDE_SESSIONS_DATA_DIR"]) / name
    process = await asyncio.create_subprocess_exec(
        *launcher,
        *["serve", "--online", "--port", str(port), "--log-level", "WARNING"],
        env={**os.environ, "CLAUDE_SESSIONS_DATA_DIR": str(data_dir), "CP_MIN_SIZE": "1", **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = Served(port, process)
    try:
        async with httpx.AsyncClient(base_url=server.url) as client:
            for _ in range(600):
                try:
                    await client.get("/v1/health")  # 401 with keys: it answers all the same
                    break
                except httpx.TransportError:
                    assert process.returncode is None, f"{name} did not start"
                    await asyncio.sleep(0.1)
        yield server
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 60)
