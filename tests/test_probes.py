"""``/livez`` and ``/readyz`` over a real socket: no key, no tenant data, and readiness that fails
while the pool warms and from a SIGTERM on, before the running turn ends."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from claude_sessions.offline_model import OfflineModel, OfflineModelServer
from server_process import ServerProcess, sse, start_server

pytestmark = pytest.mark.slow


@pytest.fixture
def server(tmp_path: Path, offline_server: OfflineModelServer) -> Iterator[ServerProcess]:
    server = start_server(tmp_path, offline_server.base_url)
    yield server
    server.end()


def test_probes_answer_without_a_key_and_with_nothing_but_the_nodes_state(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.base_url) as anonymous:
        live, ready = anonymous.get("/livez"), anonymous.get("/readyz")
        assert (live.status_code, live.json()) == (200, {"status": "ok"})
        assert (ready.status_code, ready.json()) == (200, {"status": "ready"})
        assert anonymous.get("/v1/health").status_code == 401  # the rest still asks for a key


def test_readiness_waits_for_the_pools_first_spares_while_liveness_answers(
    tmp_path: Path, offline_server: OfflineModelServer
) -> None:
    server = start_server(tmp_path, offline_server.base_url, ready=False, CP_MIN_SIZE="2")
    try:
        first = httpx.get(f"{server.base_url}/readyz")  # the process just began to answer: CLIs take seconds
        assert (first.status_code, first.json()) == (503, {"status": "not_ready", "reasons": ["pool_warming"]})
        assert httpx.get(f"{server.base_url}/livez").status_code == 200
        deadline = time.monotonic() + 60
        while (ready := httpx.get(f"{server.base_url}/readyz")).status_code != 200:
            assert time.monotonic() < deadline, ready.text
            time.sleep(0.1)
        idle = server.client("admin").get("/v1/pool").json()["idle"]
        assert idle >= 2  # ready means the spares are there
    finally:
        server.end()


def test_a_sigterm_makes_readiness_fail_at_once_while_the_running_turn_still_ends(
    server: ServerProcess, model: OfflineModel
) -> None:
    alice = server.client("alice")
    assert alice.post("/v1/sessions", json={"session_id": "long"}).status_code == 201
    kinds: list[str] = []

    def talk() -> None:
        with alice.stream("POST", "/v1/sessions/long/messages", json={"content": "[[slow:4]] hello"}) as stream:
            kinds.extend(kind for kind, _ in sse(stream))

    turn = threading.Thread(target=talk)
    turn.start()
    deadline = time.monotonic() + 20
    while not any("hello" in " ".join(r.user_texts) for r in model.message_requests()):
        assert time.monotonic() < deadline, "the turn never reached the model"
        time.sleep(0.05)
    server.process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    while (ready := httpx.get(f"{server.base_url}/readyz")).status_code == 200:
        assert time.monotonic() - signalled < 1.0, "readiness did not fail within a second"
        time.sleep(0.05)
    assert ready.status_code == 503 and ready.json() == {"status": "not_ready", "reasons": ["draining"]}
    assert httpx.get(f"{server.base_url}/livez").status_code == 200  # it still serves
    assert turn.is_alive(), "the turn should still be running when readiness fails"
    refused = alice.get("/v1/sessions")
    assert refused.status_code == 503 and refused.json()["error"]["type"] == "shutting_down"
    turn.join(30)
    assert kinds[-1] == "result"  # the running turn ended with its answer
    assert server.process.wait(30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after a clean drain
