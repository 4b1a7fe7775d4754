"""The HTTP API through a real server process on a loopback port."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from claude_sessions.offline_model import OfflineModel, OfflineModelServer
from helpers import wait_no_cli
from server_process import ADMIN_KEY, ServerProcess, bearer, sse, start_server


@pytest.fixture(scope="module")
def server(offline_server: OfflineModelServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = start_server(
        tmp_path_factory.mktemp("api"),
        offline_server.base_url,
        SM_MAX_SESSIONS="5",
        TENANT_MAX_SESSIONS="3",
        OPT_MESSAGE_TIMEOUT="3",
    )
    yield process
    assert process.stop() in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after a clean shutdown
    assert wait_no_cli() == []


def tenant(server: ServerProcess, name: str) -> Iterator[httpx.Client]:
    """A tenant's client; the sessions it made are deleted afterwards."""
    with server.client(name) as client:
        yield client
        for session in client.get("/v1/sessions").json()["sessions"]:
            client.delete(f"/v1/sessions/{session['session_id']}")


@pytest.fixture
def alice(server: ServerProcess) -> Iterator[httpx.Client]:
    yield from tenant(server, "alice")


@pytest.fixture
def bob(server: ServerProcess) -> Iterator[httpx.Client]:
    yield from tenant(server, "bob")


@pytest.fixture
def admin(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client("admin") as client:
        yield client


def stream_turn(client: httpx.Client, session_id: str, content: str) -> list[tuple[str, dict[str, object]]]:
    with client.stream("POST", f"/v1/sessions/{session_id}/messages", json={"content": content}) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        return list(sse(response))


def test_full_session_lifecycle_over_sse_and_json(alice: httpx.Client) -> None:
    created = alice.post("/v1/sessions", json={"session_id": "life", "metadata": {"user": "ana"}})
    assert created.status_code == 201
    body = created.json()
    assert body["session_id"] == "life" and body["state"] == "active" and body["metadata"] == {"user": "ana"}
    assert {"created_at", "last_activity"} <= body.keys()

    events = stream_turn(alice, "life", "Hello over SSE")
    kinds = [kind for kind, _ in events]
    assert kinds[-1] == "result" and "assistant" in kinds and kinds[0] == "system"
    assistant = next(data for kind, data in events if kind == "assistant")
    assert assistant["content"][0]["type"] == "text"  # type: ignore[index]
    assert "You said: Hello over SSE" in assistant["content"][0]["text"]  # type: ignore[index]

    reply = alice.post("/v1/sessions/life/messages?stream=false", json={"content": "and in JSON"})
    assert reply.status_code == 200
    data = reply.json()
    assert data["session_id"] == "life" and "You said: and in JSON [user message 2" in data["text"]
    assert data["result"]["type"] == "result" and data["result"]["is_error"] is False
    assert data["messages"][-1]["type"] == "result"

    listed = alice.get("/v1/sessions").json()["sessions"]
    assert [s["session_id"] for s in listed] == ["life"]
    detail = alice.get("/v1/sessions/life").json()
    assert detail["metrics"]["message_count"] == 2 and detail["metrics"]["total_tokens"] > 0

    history = alice.get("/v1/sessions/life/history").json()["messages"]
    users = [m["message"]["content"] for m in history if m["type"] == "user"]
    assert users == ["Hello over SSE", "and in JSON"]
    assert sum(1 for m in history if m["type"] == "assistant") == 2

    assert alice.post("/v1/sessions/life/interrupt").status_code == 202
    assert alice.delete("/v1/sessions/life").status_code == 204
    assert alice.get("/v1/sessions/life").status_code == 404
    assert alice.delete("/v1/sessions/life").status_code == 404


def test_errors_have_one_shape(alice: httpx.Client, server: ServerProcess) -> None:
    cases = [
        (alice.post("/v1/sessions", json={"colour": "blue"}), 422),
        (alice.post("/v1/sessions", json={"max_turns": "5"}), 422),
        (alice.post("/v1/sessions", json={"session_id": "no/slash"}), 422),
        (alice.post("/v1/sessions", content=b"{not json", headers={"content-type": "application/json"}), 422),
        (alice.post("/v1/sessions", json={"system_prompt": "x" * 2_000_000}), 413),
        (alice.get("/v1/sessions/ghost"), 404),
        (alice.post("/v1/sessions/ghost/messages", json={"content": "hi"}), 404),
        (alice.post("/v1/sessions/ghost/messages", json={"content": ""}), 422),
        (alice.get("/v1/nowhere"), 404),
        (alice.put("/v1/sessions"), 405),
    ]
    for response, status in cases:
        assert response.status_code == status, (response.request.url, response.text)
        error = response.json()["error"]
        assert set(error) == {"type", "message"} and error["message"]
    unknown = alice.post("/v1/sessions", json={"colour": "blue"}).json()["error"]["message"]
    assert "colour" in unknown
    chunked = alice.post(  # no Content-Length: counted as it arrives
        "/v1/sessions",
        content=iter([b'{"system_prompt": "', b"x" * 1_100_000, b'"}']),
        headers={"content-type": "application/json"},
    )
    assert chunked.status_code == 413 and chunked.json()["error"]["type"] == "body_too_large"


def test_auth_keys_and_admin_routes(server: ServerProcess, alice: httpx.Client, admin: httpx.Client) -> None:
    with httpx.Client(base_url=server.base_url) as anonymous:
        assert anonymous.get("/v1/sessions").status_code == 401
        assert anonymous.get("/v1/sessions", headers=bearer("wrong")).status_code == 401
        assert anonymous.get("/v1/sessions", headers={"Authorization": "Basic key-alice"}).status_code == 401
    assert alice.post("/v1/admin/cleanup").status_code == 403
    assert alice.get("/metrics").status_code == 403
    cleaned = admin.post("/v1/admin/cleanup")
    assert cleaned.status_code == 200 and set(cleaned.json()) == {"inactive", "orphaned"}
    log = server.log_path.read_text()
    assert "key-alice" not in log and ADMIN_KEY not in log and "wrong" not in log


def test_tenants_see_and_touch_only_their_own_sessions(alice: httpx.Client, bob: httpx.Client) -> None:
    assert alice.post("/v1/sessions", json={"session_id": "mine"}).status_code == 201
    assert bob.get("/v1/sessions/theirs").json() == {
        "error": {"type": "not_found", "message": "session 'theirs' not found"}
    }
    for response in [
        bob.get("/v1/sessions/mine"),
        bob.post("/v1/sessions/mine/messages", json={"content": "let me in"}),
        bob.post("/v1/sessions/mine/interrupt"),
        bob.get("/v1/sessions/mine/history"),
        bob.delete("/v1/sessions/mine"),
    ]:
        assert response.status_code == 404
        assert response.json() == {"error": {"type": "not_found", "message": "session 'mine' not found"}}
    assert bob.get("/v1/sessions").json() == {"sessions": []}
    # The same id in bob's namespace is another session.
    assert bob.post("/v1/sessions", json={"session_id": "mine"}).status_code == 201
    assert alice.get("/v1/sessions/mine").status_code == 200


def test_limits_answer_429_with_retry_after(alice: httpx.Client, bob: httpx.Client) -> None:
    for i in range(3):
        assert alice.post("/v1/sessions", json={"session_id": f"a{i}"}).status_code == 201
    tenant_full = alice.post("/v1/sessions", json={"session_id": "a3"})
    assert tenant_full.status_code == 429 and int(tenant_full.headers["Retry-After"]) > 0
    assert "tenant" in tenant_full.json()["error"]["message"]
    for i in range(2):
        assert bob.post("/v1/sessions", json={"session_id": f"b{i}"}).status_code == 201
    global_full = bob.post("/v1/sessions", json={"session_id": "b2"})
    assert global_full.status_code == 429 and global_full.headers["Retry-After"]
    assert global_full.json()["error"]["type"] == "session_limit"


def test_taken_id_is_409_and_busy_session_is_409(alice: httpx.Client) -> None:
    assert alice.post("/v1/sessions", json={"session_id": "dup"}).status_code == 201
    assert alice.post("/v1/sessions", json={"session_id": "dup"}).status_code == 409
    slow = threading.Thread(target=stream_turn, args=(alice, "dup", "[[slow:1.5]] take your time"))
    slow.start()
    time.sleep(0.5)
    busy = alice.post("/v1/sessions/dup/messages", json={"content": "me too"})
    slow.join()
    assert busy.status_code == 409 and busy.json()["error"]["type"] == "session_busy"


def test_turn_timeout_is_504_or_an_error_event(alice: httpx.Client) -> None:
    assert alice.post("/v1/sessions", json={"session_id": "slowpoke"}).status_code == 201
    response = alice.post("/v1/sessions/slowpoke/messages?stream=false", json={"content": "[[hang]] json"})
    assert response.status_code == 504 and response.json()["error"]["type"] == "turn_timeout"
    events = stream_turn(alice, "slowpoke", "[[hang]] sse")
    assert events[-1][0] == "error" and events[-1][1]["error"]["type"] == "turn_timeout"  # type: ignore[index]
    assert stream_turn(alice, "slowpoke", "fine now")[-1][0] == "result"


def test_client_disconnect_mid_stream_frees_the_session(alice: httpx.Client, model: OfflineModel) -> None:
    assert alice.post("/v1/sessions", json={"session_id": "leaver"}).status_code == 201
    with alice.stream("POST", "/v1/sessions/leaver/messages", json={"content": "[[slow:20]] bye"}) as response:
        first = next(sse(response))
        assert first[0] == "system"
    # The server notices, interrupts the turn and frees the session.
    deadline = time.monotonic() + 10
    while alice.get("/v1/sessions/leaver").json()["state"] == "busy":
        assert time.monotonic() < deadline, "session stayed busy after the client left"
        time.sleep(0.1)
    events = stream_turn(alice, "leaver", "back again")
    assert events[-1][0] == "result" and events[-1][1]["is_error"] is False


def test_metrics_change_as_messages_are_sent(alice: httpx.Client, admin: httpx.Client) -> None:
    def sample(name: str) -> float:
        for line in admin.get("/metrics").text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
        return 0.0

    messages = 'claude_sessions_messages_total{tenant="alice"}'
    output = 'claude_sessions_tokens_total{kind="output",tenant="alice"}'
    cost = 'claude_sessions_cost_usd_total{tenant="alice"}'
    before = (sample(messages), sample(output), sample(cost))
    assert alice.post("/v1/sessions", json={"session_id": "counted"}).status_code == 201
    stream_turn(alice, "counted", "count me")
    text = admin.get("/metrics").text
    assert sample(messages) == before[0] + 1
    assert sample(output) > before[1] and sample(cost) > before[2]
    assert 'claude_sessions_sessions{state="active",tenant="alice"}' in text
    assert "claude_sessions_pool_workers" in text and "claude_sessions_worker_connect_duration_seconds_count" in text
    assert 'claude_sessions_turn_duration_seconds_count{tenant="alice"}' in text
    assert "session_id" not in text


def test_health_pool_and_request_ids(alice: httpx.Client, server: ServerProcess) -> None:
    health = alice.get("/v1/health")
    body = health.json()
    assert health.status_code == 200 and body["status"] == "ok" and body["reasons"] == []
    assert {"sessions", "pool", "totals"} <= body.keys()
    pool = alice.get("/v1/pool").json()
    assert {"pool_size", "healthy_connections", "max_size", "min_size", "connections"} <= pool.keys()
    assert len(health.headers["X-Request-ID"]) == 32
    echoed = alice.get("/v1/pool", headers={"X-Request-ID": "trace-123"})
    assert echoed.headers["X-Request-ID"] == "trace-123"
    time.sleep(0.2)
    access = [e for e in server.log_lines() if e.get("event") == "http_request" and e.get("request_id") == "trace-123"]
    assert access and access[0]["status"] == 200 and access[0]["tenant"] == "alice"


def test_openapi_schema_is_served(server: ServerProcess) -> None:
    schema = httpx.get(f"{server.base_url}/openapi.json").json()
    assert "/v1/sessions/{session_id}/messages" in schema["paths"]


def test_schemathesis_finds_no_server_error(server: ServerProcess) -> None:
    done = subprocess.run(
        [
            str(Path(sys.executable).with_name("schemathesis")),
            "run",
            f"{server.base_url}/openapi.json",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "25",
            "--header",
            f"Authorization: Bearer {ADMIN_KEY}",
            "--request-timeout",
            "20",
        ],
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:]


def test_idempotent_submission_replays_instead_of_running_again(alice: httpx.Client, model: OfflineModel) -> None:
    assert alice.post("/v1/sessions", json={"session_id": "idem"}).status_code == 201
    key = {"Idempotency-Key": "order-42"}
    first = alice.post("/v1/sessions/idem/messages?stream=false", json={"content": "charge once"}, headers=key)
    again = alice.post("/v1/sessions/idem/messages?stream=false", json={"content": "charge once"}, headers=key)
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json()
    with alice.stream("POST", "/v1/sessions/idem/messages", json={"content": "charge once"}, headers=key) as stream:
        replayed = list(sse(stream))
    assert [data for _, data in replayed] == first.json()["messages"]
    assert sum(1 for r in model.message_requests() if r.last_user_text == "charge once") == 1
    assert alice.get("/v1/sessions/idem").json()["metrics"]["message_count"] == 1
    reused = alice.post("/v1/sessions/idem/messages", json={"content": "charge twice"}, headers=key)
    assert reused.status_code == 422 and "Idempotency-Key" in reused.json()["error"]["message"]


def test_session_whose_transcript_vanished_answers_410(alice: httpx.Client, server: ServerProcess) -> None:
    assert alice.post("/v1/sessions", json={"session_id": "lost"}).status_code == 201
    result = alice.post("/v1/sessions/lost/messages?stream=false", json={"content": "hi"}).json()["result"]
    server.transcript(result["session_id"]).unlink()
    assert alice.post("/v1/sessions/lost/interrupt").status_code == 202
    with server.client("admin") as admin:
        admin.post("/v1/admin/cleanup")  # detects the orphan, gives its worker back
    assert alice.get("/v1/sessions/lost").json()["state"] == "orphaned"
    answer = alice.post("/v1/sessions/lost/messages", json={"content": "still there?"})
    assert answer.status_code == 410 and answer.json()["error"]["type"] == "session_orphaned"


def test_delete_with_purge_removes_the_transcript(alice: httpx.Client, server: ServerProcess) -> None:
    for name in ("purge-me", "keep-me"):
        assert alice.post("/v1/sessions", json={"session_id": name}).status_code == 201
    purged = alice.post("/v1/sessions/purge-me/messages?stream=false", json={"content": "x"}).json()
    kept = alice.post("/v1/sessions/keep-me/messages?stream=false", json={"content": "y"}).json()
    assert alice.delete("/v1/sessions/purge-me?purge=true").status_code == 204
    assert alice.delete("/v1/sessions/keep-me").status_code == 204
    with pytest.raises(ValueError):
        server.transcript(purged["result"]["session_id"])
    assert server.transcript(kept["result"]["session_id"]).exists()
