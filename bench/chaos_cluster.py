"""The cluster a chaos soak runs against: a private PostgreSQL, three ``claude-sessions serve`` nodes and
HAProxy in front; each started, signalled and restarted at will, and every process they start is noted."""

from __future__ import annotations

import concurrent.futures
import contextlib
import glob
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import psycopg

from claude_sessions.offline_model import loopback_env

LEASE = 3.0
ADMIN_KEY = "key-admin"
SCRIPT = str(Path(sys.executable).with_name("claude-sessions"))
HAPROXY_CFG = Path(__file__).resolve().parent.parent / "deploy" / "haproxy.cfg"


def say(line: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {line}", file=sys.stderr, flush=True)


def free_port(rng: random.Random) -> int:
    """A port below the kernel's ephemeral range: a node restarted on it finds it still free."""
    while True:
        with socket.socket() as s, contextlib.suppress(OSError):
            s.bind(("127.0.0.1", port := rng.randrange(30_000, 32_700)))
            return port


class Postgres:
    """A PostgreSQL server of its own (``initdb``, ``pg_ctl`` as the postgres user), to restart at will."""

    def __init__(self, root: Path, port: int) -> None:
        self.root, self.port = root, port
        root.mkdir()
        shutil.chown(root, "postgres", "postgres")
        self._run("initdb", "-A", "trust", "-U", "postgres")

    def _run(self, tool: str, *args: str) -> None:
        found = shutil.which(tool) or max(glob.glob(f"/usr/lib/postgresql/*/bin/{tool}"), default=tool)
        command = ["runuser", "-u", "postgres", "--", found, "-D", str(self.root / "data"), *args]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-o", options, "-l", str(self.root / "log"), "-w", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-m", "fast", "-w", "stop")

    def url(self, name: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"


@dataclass
class Node:
    """One ``claude-sessions serve``: its data directory and port stay across restarts."""

    root: Path
    port: int
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with (self.root / "server.log").open("ab") as log:
            log.write(f"--- started {time.strftime('%H:%M:%S')} ---\n".encode())
            log.flush()
            command = [SCRIPT, "serve", "--online", "--port", str(self.port)]
            self.process = process = subprocess.Popen(command, env=self.env, stdout=log, stderr=log)
        deadline, admin = time.monotonic() + 90, {"Authorization": f"Bearer {ADMIN_KEY}"}
        while process.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"http://127.0.0.1:{self.port}/v1/health", headers=admin, timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"{self.root.name} did not start: see {self.root / 'server.log'}")

    def signal(self, sig: int) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, sig)

    def stop(self, sig: int) -> bool:
        """Signal it and wait up to a minute for it to exit; False (and killed) if it did not."""
        self.signal(sig)
        try:
            return self.process is None or self.process.wait(60) is not None
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            return False

    def descendants(self) -> list[psutil.Process]:
        with contextlib.suppress(psutil.Error, AttributeError):
            return list(psutil.Process(self.process.pid).children(recursive=True))  # type: ignore[union-attr]
        return []


@dataclass
class Cluster:
    nodes: list[Node]
    postgres: Postgres
    workspace: Path
    #: Every process a node started, by (pid, start time): all must be gone at the end.
    seen: set[tuple[int, float]] = field(default_factory=set)

    def sample(self) -> None:
        for process in (p for node in self.nodes for p in node.descendants()):
            with contextlib.suppress(psutil.Error):
                self.seen.add((process.pid, process.create_time()))

    def clis_of(self, tenant: str) -> list[psutil.Process]:
        """The CLIs working in ``tenant``'s folder (so serving its conversation), on every node."""
        found = []
        for process in (p for node in self.nodes for p in node.descendants()):
            with contextlib.suppress(psutil.Error):
                cli = "_bundled/claude" in " ".join(process.cmdline())
                if cli and Path(process.cwd()).is_relative_to(self.workspace / tenant):
                    found.append(process)
        return found

    def sample_until(self, stop: threading.Event) -> None:
        while not stop.wait(0.3):
            self.sample()

    def left_alive(self, timeout: float = 15.0) -> list[int]:
        deadline = time.monotonic() + timeout
        while (alive := [pid for pid, began in self.seen if _running(pid, began)]) and time.monotonic() < deadline:
            time.sleep(0.2)
        return alive


def _running(pid: int, began: float) -> bool:
    with contextlib.suppress(psutil.Error):
        process = psutil.Process(pid)
        return bool(process.create_time() == began and process.status() != psutil.STATUS_ZOMBIE)
    return False


def node_env(root: Path, model_url: str, dsn: str, workspace: Path, clients: int) -> dict[str, str]:
    """The environment tests/cluster.py's nodes get, each client a tenant, limits off, turns bounded to 60 s."""
    prefixes = ("SM_", "CP_", "OPT_", "API_KEYS", "ADMIN_", "CLAUDE_SESSIONS_", "CLUSTER_", "TENANT_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)} | loopback_env(model_url)
    env |= {"CLAUDE_CONFIG_DIR": str(root / "claude"), "CLAUDE_SESSIONS_DATA_DIR": str(root / "data")}
    env |= {"WORKSPACE_ROOT": str(workspace), "CLAUDE_SESSIONS_DATABASE_URL": dsn, "CLUSTER_LEASE_SECONDS": str(LEASE)}
    env |= {"API_KEYS": ",".join(f"c{i}:key-c{i}" for i in range(clients)), "ADMIN_API_KEY": ADMIN_KEY}
    return env | {"CP_MIN_SIZE": "0", "LIMITS": os.environ.get("LIMITS", "off"), "OPT_MESSAGE_TIMEOUT": "60"}


@contextlib.contextmanager
def running(scratch: Path, rng: random.Random, model_url: str, clients: int) -> Iterator[tuple[Cluster, str]]:
    """PostgreSQL, three nodes and HAProxy; whatever is left of them is ended afterwards."""
    postgres = Postgres(scratch / "pg", free_port(rng))
    postgres.start()
    cluster = Cluster([], postgres, scratch / "workspaces")
    balancer: subprocess.Popen[bytes] | None = None
    try:
        with psycopg.connect(postgres.url("postgres"), autocommit=True) as admin:
            admin.execute("CREATE DATABASE chaos")
        cluster.workspace.mkdir()
        for i in range(3):
            (root := scratch / f"node{i}").mkdir()
            env = node_env(root, model_url, postgres.url("chaos"), cluster.workspace, clients)
            cluster.nodes.append(Node(root, free_port(rng), env))
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            list(pool.map(Node.start, cluster.nodes))
        balancer, base_url = start_haproxy(cluster, scratch, rng)
        yield cluster, base_url
    finally:
        if balancer is not None:
            balancer.terminate()
        for node in cluster.nodes:
            node.signal(signal.SIGCONT)
            node.signal(signal.SIGKILL)
        for pid in cluster.left_alive(timeout=0):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.CalledProcessError):
            postgres.stop()


def start_haproxy(cluster: Cluster, scratch: Path, rng: random.Random) -> tuple[subprocess.Popen[bytes], str]:
    """``deploy/haproxy.cfg`` in front of the nodes; its URL once every node answers through it."""
    port = free_port(rng)
    nodes = {f"NODE{i + 1}": f"127.0.0.1:{node.port}" for i, node in enumerate(cluster.nodes)}
    command = [shutil.which("haproxy") or "/usr/sbin/haproxy", "-db", "-f", str(HAPROXY_CFG)]
    with (scratch / "haproxy.log").open("wb") as log:
        process = subprocess.Popen(
            command, env=os.environ | nodes | {"LISTEN": f"127.0.0.1:{port}"}, stdout=log, stderr=log
        )
    base_url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 15
    while process.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):  # 401 from each node: the health checks let all in
            if {httpx.get(f"{base_url}/v1/models", timeout=2).status_code for _ in range(6)} == {401}:
                return process, base_url
        time.sleep(0.2)
    process.kill()
    raise RuntimeError("haproxy did not start")


def missing_tools() -> list[str]:
    """What the soak needs of the machine and does not find: root, PostgreSQL's binaries, haproxy."""
    missing = [] if os.geteuid() == 0 else ["root (PostgreSQL runs as its own user)"]
    for tool in ("initdb", "pg_ctl"):
        if not (shutil.which(tool) or glob.glob(f"/usr/lib/postgresql/*/bin/{tool}")):
            missing.append(f"{tool} (Debian: apt-get install postgresql)")
    if not (shutil.which("haproxy") or Path("/usr/sbin/haproxy").exists()):
        missing.append("haproxy (Debian: apt-get install haproxy)")
    return missing
