"""A cluster on loopback for tests: fresh PostgreSQL databases, a private PostgreSQL server, three nodes."""

from __future__ import annotations

import concurrent.futures
import contextlib
import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psutil
import psycopg

from server_process import ServerProcess, free_port, start_server

LOCAL_SERVER = "postgresql://postgres@127.0.0.1:{port}/{name}"


T = TypeVar("T")


@contextmanager
def fresh_database(port: int = 5432) -> Iterator[str]:
    """A new, empty database on a PostgreSQL server; dropped (with its connections) afterwards."""
    name = f"cluster_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(LOCAL_SERVER.format(port=port, name="postgres"), autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        yield LOCAL_SERVER.format(port=port, name=name)
    finally:
        with psycopg.connect(LOCAL_SERVER.format(port=port, name="postgres"), autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _pg_tool(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))), None)
    assert found, f"{name} not found: install postgresql"
    return found


class PrivatePostgres:
    """A PostgreSQL server of its own (``initdb`` + ``pg_ctl`` as the postgres user), so a test may stop it.

    Its folder is outside pytest's (which only root may enter); ``remove()`` stops it and deletes it.
    """

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="claude-sessions-pg-"))
        shutil.chown(self.root, "postgres", "postgres")
        self.port = free_port()
        self._as_postgres(_pg_tool("initdb"), "-D", str(self.root / "data"), "-A", "trust", "-U", "postgres")

    def _as_postgres(self, *command: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *command], check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        """Start it; its output goes to a file (on our pipe, the server would keep ``run`` waiting)."""
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = str(self.root / "log")
        self._as_postgres(_pg_tool("pg_ctl"), "-D", str(self.root / "data"), "-o", options, "-l", log, "-w", "start")

    def stop(self) -> None:
        self._as_postgres(_pg_tool("pg_ctl"), "-D", str(self.root / "data"), "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, name: str = "postgres") -> str:
        return LOCAL_SERVER.format(port=self.port, name=name)


@dataclass
class Cluster:
    nodes: list[ServerProcess]
    database_url: str
    workspace: Path
    #: CLI processes of killed nodes: ended (if still there) and proven gone at the end.
    orphans: set[int] = field(default_factory=set)

    def node(self, index: int) -> ServerProcess:
        return self.nodes[index]

    def kill(self, index: int) -> set[int]:
        """``kill -9`` a node; its CLIs outlive it (what a restart on its data directory ends)."""
        strays = self.nodes[index].cli_pids()
        self.orphans |= strays
        self.nodes[index].stop(signal.SIGKILL)
        return strays

    def all_cli_pids(self) -> set[int]:
        return {pid for node in self.nodes if node.process.poll() is None for pid in node.cli_worker_pids()}


def node_env(database_url: str, workspace: Path, lease: float, **env: str) -> dict[str, str]:
    return {
        "CLAUDE_SESSIONS_DATABASE_URL": database_url,
        "WORKSPACE_ROOT": str(workspace),
        "CLUSTER_LEASE_SECONDS": str(lease),
        "CP_MIN_SIZE": "0",
        **env,
    }


def start_node(
    root: Path, model_url: str, database_url: str, workspace: Path, lease: float, env: dict[str, str] | None = None
) -> ServerProcess:
    """One node with its own config and data directories (only the database carries transcripts)."""
    root.mkdir(exist_ok=True)
    variables: dict[str, Any] = node_env(database_url, workspace, lease, **(env or {}))
    return start_server(root, model_url, **variables)


@contextmanager
def running_cluster(
    tmp: Path, model_url: str, database_url: str, count: int = 3, lease: float = 3.0, env: dict[str, str] | None = None
) -> Iterator[Cluster]:
    """``count`` nodes started at once; all stopped, and every CLI they started proven gone, afterwards."""
    workspace = tmp / "shared-workspaces"
    workspace.mkdir()
    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        futures = [
            pool.submit(start_node, tmp / f"node{i}", model_url, database_url, workspace, lease, env)
            for i in range(count)
        ]
        nodes = [f.result() for f in futures]
    cluster = Cluster(nodes, database_url, workspace)
    seen: set[int] = set()
    try:
        yield cluster
    finally:
        for node in cluster.nodes:
            if node.process.poll() is None:
                seen |= node.cli_pids()
                os.kill(node.process.pid, 18)  # SIGCONT, should a test have left it stopped
                node.stop()
        for pid in cluster.orphans:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        left = _wait_gone(seen | cluster.orphans)
        assert left == [], f"CLI processes left behind: {left}"


def _wait_gone(pids: set[int], timeout: float = 15.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        alive = [pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


def settled(read: Callable[[], T], wanted: Callable[[T], bool], timeout: float = 10.0) -> T:
    """``read()`` until ``wanted`` holds of it (what heartbeats and background resets settle), or the last read."""
    deadline = time.monotonic() + timeout
    while not wanted(value := read()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return value


def retry_until_ok(call: object, timeout: float) -> tuple[httpx.Response, float]:
    """Call until it answers 2xx (503s while a node's lease lapses); the answer and how long it took."""
    assert callable(call)
    began = time.monotonic()
    while True:
        response: httpx.Response = call()
        if response.is_success or time.monotonic() - began > timeout:
            return response, time.monotonic() - began
        assert response.status_code == 503, response.text
        time.sleep(0.2)


@contextmanager
def haproxy(cluster: Cluster) -> Iterator[str]:
    """``deploy/haproxy.cfg`` in front of the cluster's three nodes; its base URL once every node is in."""
    port = free_port()
    nodes = {f"NODE{i + 1}": node.base_url.removeprefix("http://") for i, node in enumerate(cluster.nodes)}
    config = Path(__file__).parent.parent / "deploy" / "haproxy.cfg"
    binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
    process = subprocess.Popen(
        [binary, "-db", "-f", str(config)],
        env={**os.environ, **nodes, "LISTEN": f"127.0.0.1:{port}"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        while True:  # every node answers through it: the health checks have let them all in
            assert process.poll() is None, "haproxy exited"
            with contextlib.suppress(httpx.TransportError):
                answered = {httpx.get(f"{base_url}/v1/models", timeout=2).status_code for _ in range(6)}
                if answered == {401}:
                    break
            assert time.monotonic() < deadline, "haproxy did not start"
            time.sleep(0.2)
        yield base_url
    finally:
        process.terminate()
        process.wait(10)
