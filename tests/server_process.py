"""A real ``claude-sessions serve`` process on a loopback port, for HTTP tests."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil

from helpers import is_cli, offline_env

SCRIPT = str(Path(sys.executable).with_name("claude-sessions"))
KEYS = {"alice": "key-alice", "bob": "key-bob"}
ADMIN_KEY = "key-admin"


#: Ports for the servers tests start: a child binds its port seconds after it was picked, so a
#: port from the kernel (bind to 0) could meanwhile go to another xdist worker's server. These
#: lie below the kernel's ephemeral range (32768-60999), in one block per worker, each handed
#: out once per run.
_PORT_BLOCK = 1000
_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
_ports = iter(range(20_000 + _PORT_BLOCK * _WORKER, 20_000 + _PORT_BLOCK * (_WORKER + 1)))

#: Every server started in this run, so a test that fails midway leaves none behind.
STARTED: list[ServerProcess] = []


def free_port() -> int:
    """A loopback port free now that no other test of this run is handed."""
    for port in _ports:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("this test worker used up its block of ports")


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path
    root: Path  # holds claude/ (CLAUDE_CONFIG_DIR), data/ and workspaces/

    def transcript(self, claude_session_id: str) -> Path:
        (path,) = (self.root / "claude" / "projects").glob(f"*/{claude_session_id}.jsonl")
        return path

    def cli_pids(self) -> set[int]:
        """Every process the server started, directly or not (CLIs and their helpers)."""
        return {p.pid for p in psutil.Process(self.process.pid).children(recursive=True)}

    def cli_worker_pids(self) -> set[int]:
        """The CLI processes themselves (a sandboxed CLI has helpers of its own)."""
        return {p.pid for p in psutil.Process(self.process.pid).children() if is_cli(p)}

    def client(self, tenant: str) -> httpx.Client:
        """A client holding ``tenant``'s key ("admin" holds the admin key)."""
        key = ADMIN_KEY if tenant == "admin" else KEYS[tenant]
        return httpx.Client(base_url=self.base_url, headers=bearer(key), timeout=30)

    def tenant(self, tenant: str) -> Iterator[httpx.Client]:
        """A tenant's client for a fixture; the sessions it left are deleted afterwards."""
        with self.client(tenant) as client:
            yield client
            for session in client.get("/v1/sessions").json()["sessions"]:
                client.delete(f"/v1/sessions/{session['session_id']}")

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.log_path.read_text().splitlines():
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return lines

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout)

    def end(self) -> None:
        """Stop it and every process it started, whatever state a failed test left it in."""
        if self.process.poll() is not None:
            return
        children = psutil.Process(self.process.pid).children(recursive=True)
        try:
            self.stop()
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for child in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()


def start_server(tmp: Path, model_url: str, *, offline: bool = False, ready: bool = True, **env: str) -> ServerProcess:
    """Start the server against ``model_url`` and wait until it is ready (its pool warm), or only
    until it answers (``ready=False``).

    ``offline`` runs the server's own in-process offline model instead (``--offline``).
    """
    port = free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SM_", "CP_", "OPT_", "API_KEYS", "ADMIN_"))}
    full_env = {
        **base,
        **offline_env(model_url, tmp),
        "API_KEYS": ",".join(f"{t}:{k}" for t, k in KEYS.items()),
        "ADMIN_API_KEY": ADMIN_KEY,
        "CP_MIN_SIZE": "1",
        **env,
    }
    log_path = tmp / f"server-{port}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [SCRIPT, "serve", "--offline" if offline else "--online", "--port", str(port)],
            env=full_env,
            stdout=log_file,
            stderr=log_file,
        )
    server = ServerProcess(process, f"http://127.0.0.1:{port}", log_path, tmp)
    STARTED.append(server)
    deadline = time.monotonic() + 60
    while True:
        assert process.poll() is None, log_path.read_text()
        try:
            if httpx.get(f"{server.base_url}/{'readyz' if ready else 'livez'}", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.1)


def raw_request(
    base_url: str, method: str, target: str, headers: dict[str, str] | None = None, body: bytes = b""
) -> tuple[int, dict[str, str], bytes]:
    """One request written byte for byte (no client normalises its path or body): status, headers, body."""
    host, _, port = base_url.removeprefix("http://").partition(":")
    head = {"Host": host, "Content-Length": str(len(body)), "Connection": "close", **(headers or {})}
    request = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in head.items()) + "\r\n"
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(request.encode() + body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    header_block, _, payload = data.partition(b"\r\n\r\n")
    status_line, *lines = header_block.decode("latin-1").split("\r\n")
    fields = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), fields, payload


def sse(response: httpx.Response) -> Iterator[tuple[str, dict[str, Any]]]:
    """(event, data) pairs of a streamed response, as they arrive."""
    event = ""
    for line in response.iter_lines():
        if line.startswith("event:"):
            event = line.partition(":")[2].strip()
        elif line.startswith("data:") and event:
            yield event, json.loads(line.partition(":")[2].strip())
            event = ""
