"""Chaos soak: three nodes behind HAProxy on a private PostgreSQL, clients talking through faults.

Clients (each a tenant: its CLI works in its folder) send turns ``c{client}-m{n}``, some slow, each
with an ``Idempotency-Key``, resent on connection errors, 5xx (after ``Retry-After``), 409 and 429
until a 200 acknowledges it. Every few seconds one fault, undone before the next: ``kill -9`` a node
(restarted on its data directory), SIGSTOP a node past its lease, SIGTERM and restart a node,
restart PostgreSQL, ``kill -9`` the CLI of a running turn. Then, from outside:

- **lost** / **duplicated** / **reordered**: an acknowledged message missing, one there twice, one
  before an earlier one, in the conversation as the model last saw it (its longest request) or as
  ``GET .../history`` has it; ``message_count`` below the messages it holds is lost, above is
  duplicated (per conversation the largest of these views: they see the same defect);
- **forked**: two model requests of a conversation, neither's messages a prefix of the other's (two
  CLIs ran it, or its history was rewritten), or one request mixing conversations;
- **leaked**, every node stopped with SIGTERM: processes any node started (a killed node's CLIs
  too) alive 15 s later; rows left in ``nodes`` (a node leaves as it stops), ``sessions`` with a
  ``holder`` (it hands them over) and ``workers`` (it forgets the CLIs it ends).

``FINDING`` lines go to stderr; the last line on stdout is one JSON object, ``{"faults",
"acknowledged", "errors", "lost", "duplicated", "reordered", "forked", "leaked"}``; exit status 1
if one of the last five is not 0 (the scratch folder is kept: node logs, ``model.log``, PostgreSQL).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import glob
import itertools
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg

from claude_sessions.offline_model import OfflineModelServer, loopback_env

LEASE = 3.0
ADMIN_KEY = "key-admin"
SLOW = 1.5  # seconds a slow turn's model call waits: a CLI to kill mid-turn
MARK = re.compile(r"\bc(\d+)-m(\d+)\b")
SCRIPT = str(Path(sys.executable).with_name("claude-sessions"))
HAPROXY_CFG = Path(__file__).resolve().parent.parent / "deploy" / "haproxy.cfg"
KINDS = ("kill9_node", "sigstop_node", "sigterm_node", "restart_postgres", "kill9_cli")
#: Refusals no retry changes: the request itself is wrong (a bug of this soak's).
FINAL = (" invalid_request", " unauthorized", " forbidden")
LEFT_ROWS = """SELECT 'nodes', node_id, status FROM nodes
UNION ALL SELECT 'sessions held', key, holder FROM sessions WHERE holder IS NOT NULL
UNION ALL SELECT 'workers', owner, pid::text FROM workers"""


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


@dataclass
class Client:
    """One conversation, sent turn by turn as a well-behaved client does."""

    index: int
    base_url: str
    stop: threading.Event
    rng: random.Random
    give_up: float
    acked: list[int] = field(default_factory=list)
    given_up: list[int] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    #: When the slow turn now on its way was sent (a CLI to kill mid-turn), else None.
    slow_since: float | None = None

    def __post_init__(self) -> None:
        self.tenant, self.session_id = f"c{self.index}", f"chaos-c{self.index}"

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers={"Authorization": f"Bearer key-{self.tenant}"}, timeout=120)

    def run(self) -> None:
        with self.http() as http:
            if self.attempt(http, "/v1/sessions", {"session_id": self.session_id}, "", slow=False) is None:
                raise RuntimeError(f"{self.session_id} could not be created")
            for number in itertools.count(1):
                if self.stop.is_set():
                    return
                slow = self.rng.random() < 0.3
                content = f"[[slow:{SLOW}]] " * slow + f"c{self.index}-m{number}"
                url, key = (
                    f"/v1/sessions/{self.session_id}/messages?stream=false",
                    f"c{self.index}-m{number}-{id(self)}",
                )
                if (answered := self.attempt(http, url, {"content": content}, key, slow)) is None:
                    self.given_up.append(number)
                    self.errors["gave_up"] += 1
                    continue
                if f"You said: {content}" not in answered.json().get("text", ""):
                    self.errors["wrong_reply"] += 1
                self.acked.append(number)

    def attempt(
        self, http: httpx.Client, url: str, body: dict[str, str], key: str, slow: bool
    ) -> httpx.Response | None:
        """POST until 2xx (or the creation's 409, made by an earlier try); None once it is given up."""
        deadline = time.monotonic() + self.give_up
        while True:
            self.slow_since = time.monotonic() if slow else None
            try:
                response = http.post(url, json=body, headers={"Idempotency-Key": key} if key else {})
            except httpx.TransportError as error:
                kind, delay = type(error).__name__, 0.5
            else:
                if response.is_success or (refusal := _error_type(response)) == "session_exists":
                    return response
                kind = f"{response.status_code} {refusal}"
                delay = min(10.0, float(response.headers.get("Retry-After", 0.5)))  # seconds, as the nodes send it
            finally:
                self.slow_since = None
            self.errors[kind] += 1
            if kind.endswith(FINAL) or time.monotonic() + delay > deadline:
                return None
            time.sleep(delay)


def _error_type(response: httpx.Response) -> str:
    with contextlib.suppress(ValueError, KeyError, TypeError):
        return str(response.json()["error"]["type"])
    return "unknown"


@dataclass
class Faults:
    """One fault at a time, each undone before the next: what it stopped runs again when it returns."""

    cluster: Cluster
    clients: list[Client]
    rng: random.Random

    def _node(self, kind: str) -> str | None:
        """``kill -9`` (restarted a moment later), SIGSTOP past the lease then SIGCONT, or SIGTERM and restart."""
        index = self.rng.randrange(len(self.cluster.nodes))
        node = self.cluster.nodes[index]
        self.cluster.sample()  # a killed node's CLIs outlive it: the restart on its data directory must end them
        if kind == "sigstop_node":
            node.signal(signal.SIGSTOP)
            time.sleep(LEASE * self.rng.uniform(1.5, 3.0))
            node.signal(signal.SIGCONT)
            return f"node{index}"
        if not node.stop(signal.SIGKILL if kind == "kill9_node" else signal.SIGTERM):
            say(f"FINDING node{index} still draining a minute after SIGTERM: killed")
        time.sleep(self.rng.uniform(0.5, 2 * LEASE) if kind == "kill9_node" else 0)
        node.start()
        return f"node{index}"

    def restart_postgres(self) -> str | None:
        self.cluster.postgres.stop()
        time.sleep(self.rng.uniform(0.5, 3.0))
        self.cluster.postgres.start()
        return "postgres"

    def kill9_cli(self) -> str | None:
        """The CLI of a conversation whose slow turn has been on its way a moment (waits up to 10 s for one)."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            running = [c for c in self.clients if (since := c.slow_since) and time.monotonic() - since > 0.4]
            for client in self.rng.sample(running, len(running)):
                if processes := self.cluster.clis_of(client.tenant):
                    for process in processes:
                        with contextlib.suppress(psutil.Error):
                            process.kill()
                    return f"{client.tenant}'s CLI {' '.join(str(p.pid) for p in processes)}"
            time.sleep(0.1)
        return None

    def loop(self, seconds: float, interval: float, kinds: list[str]) -> Counter[str]:
        done: Counter[str] = Counter()
        end = time.monotonic() + seconds
        while (wait := min(end - time.monotonic(), interval * self.rng.uniform(0.6, 1.4))) > 0:
            time.sleep(wait)
            if time.monotonic() >= end:
                break
            kind, began = self.rng.choice(kinds), time.monotonic()
            if (target := self._node(kind) if kind.endswith("_node") else getattr(self, kind)()) is not None:
                done[kind] += 1
                say(f"fault {kind} {target} ({time.monotonic() - began:.1f} s)")
        return done


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


def marks(texts: list[str]) -> list[tuple[int, int]]:
    """The (client, message) numbers in these texts, in order."""
    return [(int(c), int(m)) for text in texts for c, m in MARK.findall(text)]


def model_views(requests: list[list[str]]) -> tuple[dict[int, list[list[int]]], int]:
    """Each conversation's messages in each model request (oldest request first); requests mixing two."""
    views: dict[int, list[list[int]]] = {}
    mixed = 0
    for texts in requests:
        found = marks(texts)
        if len(owners := sorted({c for c, _ in found})) > 1:
            mixed += 1
            say(f"FINDING forked: one model request holds conversations {owners}: {found}")
        for owner in owners:
            views.setdefault(owner, []).append([m for c, m in found if c == owner])
    return views, mixed


def forks(name: str, seen: list[list[int]]) -> int:
    """Requests whose messages are no prefix of the next longer one's: the conversation ran two ways."""
    found = 0
    for shorter, longer in itertools.pairwise(sorted(seen, key=len)):
        if longer[: len(shorter)] != shorter:
            found += 1
            say(f"FINDING forked {name}: {runs(shorter)} | {runs(longer)}")
    return found


def defects(name: str, where: str, seq: list[int], acked: list[int]) -> tuple[int, int, int]:
    """(lost, duplicated, reordered) of one view of a conversation against its acknowledged messages."""
    counts = Counter(seq)
    lost = [n for n in acked if counts[n] == 0]
    twice = {n: c for n, c in counts.items() if c > 1}
    early = [(a, b) for a, b in itertools.pairwise(dict.fromkeys(seq)) if b < a]
    for label, what in (("lost", lost), ("duplicated", twice), ("reordered", early)):
        if what:
            say(f"FINDING {label} {name} ({where}): {what}; {where} has {runs(seq)}")
    return len(lost), sum(c - 1 for c in twice.values()), len(early)


def runs(seq: list[int]) -> str:
    """``1 2 3 5 5 6`` as ``1-3 5 5-6``."""
    cuts = [i for i in range(1, len(seq)) if seq[i] != seq[i - 1] + 1]
    spans = [seq[a:b] for a, b in itertools.pairwise([0, *cuts, len(seq)])]
    return " ".join(f"{s[0]}-{s[-1]}" if len(s) > 1 else str(s[0]) for s in spans if s)


def transcript(client: Client) -> tuple[list[int], int]:
    """The conversation's messages as the API has them, and its ``message_count`` (read again while it settles)."""
    deadline, seq, count = time.monotonic() + 30, list[int](), -1
    with client.http() as http:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError, KeyError, ValueError):
                entries = http.get(f"/v1/sessions/{client.session_id}/history").json()["messages"]
                seq = [m for _, m in marks([_text(e["message"]["content"]) for e in entries if e["type"] == "user"])]
                count = int(http.get(f"/v1/sessions/{client.session_id}").json()["metrics"]["message_count"])
                if set(client.acked) <= set(seq):
                    break
            time.sleep(0.5)
    return seq, count


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "\n".join(str(b.get("text", "")) for b in content or [] if isinstance(b, dict) and b.get("type") == "text")


def check_conversations(clients: list[Client], requests: list[list[str]]) -> dict[str, int]:
    views, mixed = model_views(requests)
    totals = Counter({"lost": 0, "duplicated": 0, "reordered": 0, "forked": mixed})
    for client in clients:
        name, seen = client.session_id, views.get(client.index, [])
        modelled = max(seen, key=len, default=[])
        history, count = transcript(client)
        held = len(set(client.acked) | (set(client.given_up) & set(modelled)))
        if count != held:
            say(f"FINDING message_count {name}: {count}, the conversation holds {held} messages")
        by_model = defects(name, "model", modelled, client.acked)
        by_api = defects(name, "history", history, client.acked)
        totals["lost"] += max(by_model[0], by_api[0], held - count)
        totals["duplicated"] += max(by_model[1], by_api[1], count - held)
        totals["reordered"] += max(by_model[2], by_api[2])
        totals["forked"] += forks(name, seen)
    return dict(totals)


def stop_and_count_leaks(cluster: Cluster) -> int:
    """Every node stopped with SIGTERM: what they left (processes, rows), each counted once."""
    cluster.sample()
    for node in cluster.nodes:
        node.signal(signal.SIGCONT)
    for index, node in enumerate(cluster.nodes):
        if not node.stop(signal.SIGTERM):
            say(f"FINDING node{index} did not stop within a minute of SIGTERM: killed")
    for pid in (alive := cluster.left_alive()):
        with contextlib.suppress(psutil.Error):
            say(f"FINDING leaked process {pid}: {' '.join(psutil.Process(pid).cmdline())[:160]}")
            os.kill(pid, signal.SIGKILL)
    with psycopg.connect(cluster.postgres.url("chaos"), autocommit=True) as db:
        rows = db.execute(LEFT_ROWS).fetchall()
    for row in rows:
        say(f"FINDING leaked row: {row}")
    return len(alive) + len(rows)


def soak(args: argparse.Namespace, rng: random.Random, scratch: Path) -> dict[str, Any]:
    with OfflineModelServer() as model, running(scratch, rng, model.base_url, args.clients) as (cluster, base_url):
        stop = threading.Event()
        clients = [Client(i, base_url, stop, random.Random(rng.random()), args.give_up) for i in range(args.clients)]
        threads = [threading.Thread(target=client.run, name=client.tenant, daemon=True) for client in clients]
        for thread in [*threads, threading.Thread(target=cluster.sample_until, args=(stop,), daemon=True)]:
            thread.start()
        faults = Faults(cluster, clients, rng).loop(args.minutes * 60, args.interval, args.faults.split(","))
        say("faults over: the clients finish their last message")
        stop.set()
        for thread in threads:
            thread.join(args.give_up + 60)
        if hung := [thread.name for thread in threads if thread.is_alive()]:
            say(f"FINDING clients still waiting for an answer: {hung}")
        requests = model.model.message_requests()
        counts = check_conversations(clients, [r.user_texts for r in requests])
        with (scratch / "model.log").open("w") as log:  # when each conversation's messages reached the model
            for r in requests:
                found = marks(r.user_texts)
                log.write(f"{r.seq} {time.strftime('%H:%M:%S', time.localtime(r.received_at))}")
                log.write(f".{int(r.received_at % 1 * 1000):03d} c{found[0][0] if found else '-'}: ")
                log.write(f"{runs([m for _, m in found])}\n")
        counts["leaked"] = stop_and_count_leaks(cluster)
    errors = sum((client.errors for client in clients), Counter[str]())
    acknowledged = sum(len(client.acked) for client in clients)
    return {"faults": dict(faults), "acknowledged": acknowledged, "errors": dict(errors), **counts}


def main() -> int:
    parser = argparse.ArgumentParser(description="Chaos soak of a three-node cluster (see the module's docstring).")
    parser.add_argument("--minutes", type=float, default=1.0, help="how long faults are injected")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between faults, on average")
    parser.add_argument("--give-up", type=float, default=120.0, help="seconds a client resends one message")
    parser.add_argument("--faults", default=",".join(KINDS), help=f"which, comma-separated: {','.join(KINDS)}")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    assert set(args.faults.split(",")) <= set(KINDS), f"--faults: some of {KINDS}"
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    say(f"chaos soak: {args.minutes} min, {args.clients} clients, a fault every ~{args.interval} s, seed {seed}")
    scratch = Path(tempfile.mkdtemp(prefix="claude-sessions-chaos-"))
    scratch.chmod(0o755)  # the postgres user runs its server in a folder inside
    outcome = soak(args, random.Random(seed), scratch)
    if failed := any(outcome[k] for k in ("lost", "duplicated", "reordered", "forked", "leaked")):
        say(f"kept {scratch} (node logs: node*/server.log)")
    else:
        shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps(outcome), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
