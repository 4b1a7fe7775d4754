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
import contextlib
import itertools
import json
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from chaos_checks import check_conversations, marks, runs, stop_and_count_leaks
from chaos_cluster import LEASE, Cluster, missing_tools, running, say
from claude_sessions.offline_model import OfflineModelServer

SLOW = 1.5  # seconds a slow turn's model call waits: a CLI to kill mid-turn
KINDS = ("kill9_node", "sigstop_node", "sigterm_node", "restart_postgres", "kill9_cli")
#: Refusals no retry changes: the request itself is wrong (a bug of this soak's).
FINAL = (" invalid_request", " unauthorized", " forbidden")


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
    if not set(args.faults.split(",")) <= set(KINDS):
        parser.error(f"--faults: some of {','.join(KINDS)}")
    if missing := missing_tools():
        parser.exit(2, f"chaos: needs {'; '.join(missing)}\n")
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
