"""The server process: signals, restarts after a crash, degraded health."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from claude_sessions.offline_model import OfflineModel, OfflineModelServer
from helpers import wait_no_cli
from server_process import free_port, sse, start_server


def test_sigterm_drains_refusing_new_requests_while_the_running_turn_finishes(
    offline_server: OfflineModelServer, tmp_path: Path
) -> None:
    # --offline: the server's own in-process model must keep serving the turn while it drains.
    server = start_server(tmp_path, offline_server.base_url, offline=True)
    with server.client("alice") as alice:
        assert alice.post("/v1/sessions", json={"session_id": "last"}).status_code == 201
        with alice.stream("POST", "/v1/sessions/last/messages", json={"content": "[[slow:3]] finish me"}) as stream:
            events = sse(stream)
            assert next(events)[0] == "system"
            workers = server.cli_pids()
            assert workers
            server.process.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            with server.client("bob") as bob:  # a new connection: the socket still accepts
                late = [bob.post("/v1/sessions", json={}), bob.get("/v1/health")]
            for answer in late:
                assert answer.status_code == 503, answer.text
                assert answer.json()["error"]["type"] == "shutting_down" and int(answer.headers["Retry-After"]) > 0
            rest = list(events)
        assert rest[-1][0] == "result" and rest[-1][1]["is_error"] is False
        assert any("finish me" in str(data) for kind, data in rest if kind == "assistant")
    assert server.stop() in (0, -signal.SIGTERM)
    assert wait_no_cli(workers) == []
    drained = [e["event"] for e in server.log_lines() if e.get("event", "").startswith(("server_drain", "drain_"))]
    assert drained[:2] == ["server_draining", "drain_started"] and "drain_interrupting_turns" not in drained


def test_sigterm_interrupts_a_turn_that_outlasts_the_drain(offline_server: OfflineModelServer, tmp_path: Path) -> None:
    server = start_server(tmp_path, offline_server.base_url, OPT_DESTROY_TIMEOUT="1")
    with server.client("alice") as alice:
        assert alice.post("/v1/sessions", json={"session_id": "long"}).status_code == 201
        with alice.stream("POST", "/v1/sessions/long/messages", json={"content": "[[slow:60]] too long"}) as stream:
            events = sse(stream)
            assert next(events)[0] == "system"
            workers = server.cli_pids()
            began = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            rest = list(events)
        assert rest[-1][0] in ("result", "error"), rest[-1]  # the stream ends with an event, not a cut
        assert time.monotonic() - began < 10
    assert server.stop() in (0, -signal.SIGTERM)
    assert wait_no_cli(workers) == []


@pytest.mark.slow  # a server process, waiting out an unreachable endpoint
def test_health_is_degraded_when_the_model_endpoint_is_unreachable(tmp_path: Path) -> None:
    dead_url = f"http://127.0.0.1:{free_port()}"
    server = start_server(tmp_path, dead_url)
    try:
        with server.client("bob") as bob:
            body = bob.get("/v1/health").json()
        assert body["status"] == "degraded"
        assert any("unreachable" in reason for reason in body["reasons"])
    finally:
        server.stop()


def test_kill_9_then_restart_loses_no_session_metric_or_conversation(
    offline_server: OfflineModelServer, model: OfflineModel, tmp_path: Path
) -> None:
    server = start_server(tmp_path, offline_server.base_url)
    with server.client("alice") as alice:
        for name in ("keep", "also"):
            assert alice.post("/v1/sessions", json={"session_id": name, "metadata": {"n": name}}).status_code == 201
        alice.post("/v1/sessions/keep/messages?stream=false", json={"content": "the secret is mango"})
        before = alice.get("/v1/sessions/keep").json()
    strays = server.cli_pids()
    assert strays
    server.stop(signal.SIGKILL)

    restarted = start_server(tmp_path, offline_server.base_url)
    try:
        assert wait_no_cli(strays) == []  # the killed run's CLI processes were ended
        with restarted.client("alice") as alice:
            listed = {s["session_id"]: s for s in alice.get("/v1/sessions").json()["sessions"]}
            assert set(listed) == {"keep", "also"} and listed["also"]["metadata"] == {"n": "also"}
            after = alice.get("/v1/sessions/keep").json()
            assert after["state"] == "idle" and after["metrics"] == before["metrics"]
            model.requests.clear()
            reply = alice.post("/v1/sessions/keep/messages?stream=false", json={"content": "what is the secret?"})
            assert reply.status_code == 200
            assert any("mango" in text for text in model.message_requests()[-1].user_texts)
            assert alice.get("/v1/sessions/keep").json()["metrics"]["message_count"] == 2
        workers = restarted.cli_pids()
    finally:
        restarted.stop()
    assert wait_no_cli(strays | workers) == []


def test_each_tenant_finds_warm_workers_in_its_own_workspace(
    offline_server: OfflineModelServer, tmp_path: Path
) -> None:
    server = start_server(tmp_path, offline_server.base_url)
    try:
        with server.client("admin") as admin:
            spares = admin.get("/v1/pool").json()["connections"]
        assert len(spares) == 3  # CP_MIN_SIZE=1 for alice, bob and admin
        with server.client("alice") as alice:
            assert alice.post("/v1/sessions", json={"session_id": "first"}).status_code == 201
            # A tenant's pool view lists only workers working in its own workspace: this one is.
            bound = [c["id"] for c in alice.get("/v1/pool").json()["connections"] if c["state"] == "bound"]
            assert bound and set(bound) <= {c["id"] for c in spares}  # taken warm, not spawned
            reply = alice.post("/v1/sessions/first/messages?stream=false", json={"content": "where?"}).json()
        init = next(m for m in reply["messages"] if m.get("subtype") == "init")
        assert init["data"]["permission_mode"] == "default"  # the resolved mode, pinned on the spare too
    finally:
        server.stop()
