"""The HTTP API through a real server process on a loopback port."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

import claude_sessions
from claude_sessions.offline_model import OfflineModel, OfflineModelServer
from helpers import image_block, images_seen, png, wait_no_cli
from server_process import ADMIN_KEY, KEYS, ServerProcess, bearer, raw_request, sse, start_server


@pytest.fixture(scope="module")
def server(offline_server: OfflineModelServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = start_server(
        tmp_path_factory.mktemp("api"),
        offline_server.base_url,
        SM_MAX_SESSIONS="5",
        TENANT_MAX_SESSIONS="3",
        OPT_MESSAGE_TIMEOUT="3",
        OPT_CLI_MAX_RETRIES="0",  # a model error ends its turn at once
        CLAUDE_SESSIONS_MAX_BODY_BYTES="1048576",
        IMAGE_MAX_BYTES="65536",
    )
    yield process
    assert process.stop() in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after a clean shutdown
    assert wait_no_cli() == []


@pytest.fixture
def alice(server: ServerProcess) -> Iterator[httpx.Client]:
    yield from server.tenant("alice")


@pytest.fixture
def bob(server: ServerProcess) -> Iterator[httpx.Client]:
    yield from server.tenant("bob")


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
        assert set(error) <= {"type", "message", "param"} and error["message"]
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


def test_health_pool_and_request_ids(alice: httpx.Client, admin: httpx.Client, server: ServerProcess) -> None:
    health = alice.get("/v1/health")
    body = health.json()
    assert health.status_code == 200 and body["status"] == "ok" and body["reasons"] == []
    assert {"sessions", "pool", "totals"} <= body.keys() and "limits" not in body  # the operator's business
    limits = admin.get("/v1/health").json()["limits"]  # off in this suite (conftest); test_containment has them on
    assert limits == {
        "mode": "off",
        "reason": "LIMITS=off",
        "memory_mb": 2048,
        "pids_max": 256,
        "workspace_max_mb": 1024,
        "workspace": "off",
    }
    pool = alice.get("/v1/pool").json()
    assert {"pool_size", "healthy_connections", "max_size", "min_size", "connections"} <= pool.keys()
    assert len(health.headers["X-Request-ID"]) == 32
    echoed = alice.get("/v1/pool", headers={"X-Request-ID": "trace-123"})
    assert echoed.headers["X-Request-ID"] == "trace-123"
    time.sleep(0.2)
    access = [e for e in server.log_lines() if e.get("event") == "http_request" and e.get("request_id") == "trace-123"]
    assert access and access[0]["status"] == 200 and access[0]["tenant"] == "alice"


def test_the_admin_sees_each_workers_memory_a_tenant_does_not(
    alice: httpx.Client, admin: httpx.Client, server: ServerProcess
) -> None:
    assert alice.post("/v1/sessions", json={"session_id": "weighed"}).status_code == 201
    try:
        assert alice.post("/v1/sessions/weighed/messages?stream=false", json={"content": "hi"}).status_code == 200
        resident_before = {pid: _tree_rss(pid) for pid in server.cli_worker_pids()}
        connections = admin.get("/v1/pool").json()["connections"]
        resident = {pid: max(rss, _tree_rss(pid)) for pid, rss in resident_before.items()}
        live = [c for c in connections if c["pid"] in resident]
        assert live, (connections, resident)  # the session's worker at least
        for connection in live:
            # PSS divides the pages the CLIs (and libc's other users) share: below the resident size.
            assert isinstance(connection["pss_bytes"], int), connection
            assert 0 < connection["pss_bytes"] < resident[connection["pid"]], (connection, resident)
        tenants = alice.get("/v1/pool").json()["connections"]
        assert tenants and all("pid" not in c and "pss_bytes" not in c for c in tenants)
    finally:
        assert alice.delete("/v1/sessions/weighed").status_code == 204


def _tree_rss(pid: int) -> int:
    """The resident size of a process and its descendants, summed (0 once it is gone)."""
    total = 0
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(pid)
        for process in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                total += process.memory_info().rss
    return total


def test_openapi_schema_is_served(server: ServerProcess) -> None:
    schema = httpx.get(f"{server.base_url}/openapi.json").json()
    assert "/v1/sessions/{session_id}/messages" in schema["paths"]


def test_schemathesis_finds_no_server_error(server: ServerProcess, admin: httpx.Client) -> None:
    """Every check: no 500, every status and content type documented, answers as described."""
    done = subprocess.run(
        [
            str(Path(sys.executable).with_name("schemathesis")),
            "--config-file",
            str(Path(__file__).with_name("schemathesis.toml")),
            "run",
            f"{server.base_url}/openapi.json",
            "--checks",
            "all",
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
    for session in admin.get("/v1/sessions").json()["sessions"]:  # what it created holds the session limit
        admin.delete(f"/v1/sessions/{session['session_id']}")
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


def test_tool_lists_are_json_arrays_and_the_policy_names_what_is_refused(alice: httpx.Client) -> None:
    narrowed = alice.post(
        "/v1/sessions", json={"session_id": "narrow", "allowed_tools": [], "disallowed_tools": ["Bash"]}
    )
    assert narrowed.status_code == 201, narrowed.text
    assert narrowed.json()["options"]["disallowed_tools"] == ["Bash"]
    widened = alice.post("/v1/sessions", json={"allowed_tools": ["Bash"]})  # TOOLS_ALLOWED is empty here
    assert widened.status_code == 422
    assert (
        widened.json()["error"]["message"]
        == "allowed_tools: Bash not permitted on this server; TOOLS_ALLOWED offers none"
    )
    still_strict = alice.post("/v1/sessions", json={"allowed_tools": "Bash"})
    assert still_strict.status_code == 422 and "allowed_tools" in still_strict.json()["error"]["message"]


def test_omitted_permission_mode_is_stored_resolved(alice: httpx.Client) -> None:
    created = alice.post("/v1/sessions", json={"session_id": "mode"}).json()
    assert created["options"]["permission_mode"] == "default"
    assert alice.get("/v1/sessions/mode").json()["options"]["permission_mode"] == "default"
    events = stream_turn(alice, "mode", "which mode?")
    init = next(data for kind, data in events if kind == "system" and data["subtype"] == "init")
    assert init["data"]["permission_mode"] == "default"  # type: ignore[index]


def test_model_error_ends_the_stream_with_an_error_event_and_json_with_502(
    alice: httpx.Client, model: OfflineModel
) -> None:
    assert alice.post("/v1/sessions", json={"session_id": "overloaded"}).status_code == 201
    events = stream_turn(alice, "overloaded", "[[fail:529]] streamed")
    kind, data = events[-1]
    assert kind == "error" and "result" not in [k for k, _ in events]
    error: dict[str, Any] = data["error"]  # type: ignore[assignment]
    assert error["type"] == "model_error" and error["status"] == 529 and "529" in error["message"]
    assert not any("API Error" in json.dumps(d) for k, d in events if k == "assistant")  # no synthetic reply

    key = {"Idempotency-Key": "retry-me"}
    for _ in range(2):  # a failed turn is not kept for replay: the same key runs it again
        answer = alice.post(
            "/v1/sessions/overloaded/messages?stream=false", json={"content": "[[fail:529]] j"}, headers=key
        )
        assert answer.status_code == 502
        assert answer.json()["error"]["type"] == "model_error" and answer.json()["error"]["status"] == 529
    assert sum(1 for r in model.message_requests() if r.last_user_text == "[[fail:529]] j") == 2

    assert stream_turn(alice, "overloaded", "fine again")[-1][0] == "result"  # the session stays usable
    metrics = alice.get("/v1/sessions/overloaded").json()["metrics"]
    assert metrics["api_errors"] == 3 and metrics["message_count"] == 4


def test_slash_command_outside_the_allow_list_is_422(alice: httpx.Client, model: OfflineModel) -> None:
    assert alice.post("/v1/sessions", json={"session_id": "slash"}).status_code == 201
    answer = alice.post("/v1/sessions/slash/messages", json={"content": "/config permissionMode=acceptEdits"})
    assert answer.status_code == 422
    assert answer.json()["error"]["type"] == "slash_command_refused" and "/config" in answer.json()["error"]["message"]
    assert alice.get("/v1/sessions/slash").json()["metrics"]["message_count"] == 0


def test_bad_input_is_4xx_never_500(alice: httpx.Client, server: ServerProcess) -> None:
    auth = {"Authorization": f"Bearer {KEYS['alice']}", "Content-Type": "application/json"}
    for dots in (".", "..", "..."):
        created = alice.post("/v1/sessions", json={"session_id": dots})
        assert created.status_code == 422 and "session_id" in created.json()["error"]["message"]
        for method, suffix in [("GET", ""), ("DELETE", ""), ("GET", "/history"), ("POST", "/interrupt")]:
            status, _, _ = raw_request(server.base_url, method, f"/v1/sessions/{dots}{suffix}", auth)
            assert 400 <= status < 500, (method, dots, suffix, status)
        status, _, _ = raw_request(server.base_url, "POST", f"/v1/sessions/{dots}/messages", auth, b'{"content": "x"}')
        assert 400 <= status < 500
    assert alice.post("/v1/sessions", json={"session_id": "s1"}).status_code == 201
    for path in ["/v1/sessions/s1%0A", "/v1/sessions/s1%0A/history", "/v1/sessions/%20s1"]:
        answer = alice.get(path)
        assert answer.status_code == 422 and answer.json()["error"]["type"] == "invalid_request", path
    bodies = {
        b'{"session_id": "\xff\xfe"}': "UTF-8",
        b"[" * 100_000 + b"]" * 100_000: "nested",
        b'{"metadata": {"deep": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}": "nested",
    }
    for body, problem in bodies.items():
        status, _, payload = raw_request(server.base_url, "POST", "/v1/sessions", auth, body)
        assert status == 422 and problem in json.loads(payload)["error"]["message"], payload[:200]
    status, _, payload = raw_request(server.base_url, "POST", "/v1/sessions/s1/messages", auth, b'{"content": "\xc3"}')
    assert status == 422 and json.loads(payload)["error"]["type"] == "invalid_request"
    home = server.root / "workspaces" / "alice"  # what a tenant with Bash or Write could leave there
    home.mkdir(parents=True, exist_ok=True)
    (home / "a-file").write_text("not a folder")
    (home / "loop").symlink_to("loop")
    for cwd in ("a-file", "a-file/below", "loop", "loop/below"):
        refused = alice.post("/v1/sessions", json={"cwd": cwd})
        assert refused.status_code == 422, (cwd, refused.text)
        assert cwd.split("/")[0] in refused.json()["error"]["message"] and str(home) not in refused.text


def test_405_lists_every_allowed_method(alice: httpx.Client) -> None:
    for method, path, allowed in [
        ("PUT", "/v1/sessions", "GET, POST"),
        ("PATCH", "/v1/sessions/x", "GET, DELETE"),
        ("GET", "/v1/sessions/x/messages", "POST"),
        ("DELETE", "/v1/health", "GET"),
    ]:
        answer = alice.request(method, path)
        assert answer.status_code == 405 and answer.headers["Allow"] == allowed, (method, path, answer.headers)
        assert answer.json()["error"]["type"] == "method_not_allowed"


def _forbidden_in(text: str, server: ServerProcess, offline_server: OfflineModelServer) -> list[str]:
    """What a tenant must not see, found in ``text``."""
    address = offline_server.base_url.removeprefix("http://")
    secrets = {
        "server root": str(server.root),
        "server root, resolved": str(server.root.resolve()),
        "virtualenv": sys.prefix,
        "package": str(Path(claude_sessions.__file__).parent),
        "model address": address,
        "registry key": "alice/",
    }
    found = [name for name, secret in secrets.items() if secret in text]
    if re.search(r'"pid"\s*:\s*\d', text) or re.search(r"/\d+\.sock", text):
        found.append("pid")
    return found


def test_tenant_views_carry_no_pid_path_address_or_key(
    alice: httpx.Client,
    bob: httpx.Client,
    admin: httpx.Client,
    server: ServerProcess,
    offline_server: OfflineModelServer,
) -> None:
    answers: list[str] = []
    answers.append(alice.post("/v1/sessions", json={"session_id": "seen", "cwd": "sub"}).text)
    assert bob.post("/v1/sessions", json={"session_id": "other"}).status_code == 201
    with alice.stream("POST", "/v1/sessions/seen/messages", json={"content": "hello"}) as response:
        answers.append(response.read().decode())
    assert '"subtype":"init"' in answers[-1] and '"cwd"' not in answers[-1]  # the init names no path at all
    slow = threading.Thread(target=stream_turn, args=(alice, "seen", "[[slow:1.5]] busy now"))
    slow.start()
    time.sleep(0.5)
    busy = alice.post("/v1/sessions/seen/messages", json={"content": "me too"})
    slow.join()
    assert busy.status_code == 409 and busy.json()["error"]["message"] == "session 'seen' is running a turn"
    model_error = alice.post("/v1/sessions/seen/messages?stream=false", json={"content": "[[fail:529]] x"})
    assert model_error.status_code == 502 and "(<model-endpoint>)" in model_error.json()["error"]["message"]
    with alice.stream("POST", "/v1/sessions/seen/messages", json={"content": "[[fail:529]] y"}) as response:
        answers.append(response.read().decode())
    answers += [model_error.text, busy.text]
    answers += [alice.get(p).text for p in ["/v1/sessions/seen", "/v1/sessions", "/v1/sessions/seen/history"]]
    health, pool = alice.get("/v1/health").json(), alice.get("/v1/pool").json()
    answers += [json.dumps(health), json.dumps(pool)]
    for text in answers:
        assert _forbidden_in(text, server, offline_server) == [], text[:2000]

    # Only alice's own: her session, the workers of her workspace.
    assert health["sessions"]["active"] == 1 and health["totals"]["messages"] == 4
    everything = admin.get("/v1/pool").json()["connections"]
    bobs = {c["id"] for c in bob.get("/v1/pool").json()["connections"]}
    alices = {c["id"] for c in pool["connections"]}
    assert alices and bobs and not alices & bobs and alices | bobs <= {c["id"] for c in everything}
    assert health["pool"]["size"] == pool["pool_size"] == len(alices)
    # The admin sees everything as it is, pids included.
    assert {c["pid"] for c in everything} <= server.cli_pids()
    assert admin.get("/v1/health").json()["sessions"]["active"] >= 2


def test_a_session_may_name_its_model_by_a_full_claude_id(alice: httpx.Client) -> None:
    created = alice.post("/v1/sessions", json={"session_id": "full-id", "model": "claude-haiku-4-5"})
    assert created.status_code == 201 and created.json()["options"]["model"] == "claude-haiku-4-5"
    refused = alice.post("/v1/sessions", json={"model": "gpt-9"})
    assert refused.status_code == 422 and refused.json()["error"]["param"] == "model"
    assert "'gpt-9' is not offered here; ask for one of opus, sonnet, haiku" in refused.json()["error"]["message"]


def test_history_as_a_chat_shows_who_said_what_and_the_tools_between(
    alice: httpx.Client, server: ServerProcess
) -> None:
    (server.root / "workspaces" / "alice").mkdir(parents=True, exist_ok=True)
    (server.root / "workspaces" / "alice" / "todo.txt").write_text("buy milk\n")
    assert alice.post("/v1/sessions", json={"session_id": "chat"}).status_code == 201
    for content in ["hello", '[[tool:Read:{"file_path": "todo.txt"}]]']:
        assert alice.post("/v1/sessions/chat/messages?stream=false", json={"content": content}).status_code == 200
    chat = alice.get("/v1/sessions/chat/history?format=messages").json()["messages"]
    assert [m["role"] for m in chat] == ["user", "assistant", "user", "assistant", "user", "assistant"]
    assert chat[0] == {"role": "user", "content": "hello"} and "You said: hello" in chat[1]["content"]
    assert chat[3]["tool_calls"][0]["name"] == "Read" and chat[3]["tool_calls"][0]["input"]["file_path"] == "todo.txt"
    (result,) = chat[4]["tool_results"]
    assert "buy milk" in result["content"] and result["is_error"] is False
    assert "buy milk" in chat[5]["content"]
    raw = alice.get("/v1/sessions/chat/history").json()["messages"]
    assert {m["type"] for m in raw} == {"user", "assistant"}  # the raw form stays the default


def test_me_says_who_calls_and_which_limits_apply(
    alice: httpx.Client, admin: httpx.Client, server: ServerProcess
) -> None:
    unset = {"daily_usd": None, "turns_per_minute": None}
    me = {"tenant": "alice", "user": None, "admin": False, "limits": {"max_sessions": 3, **unset}}
    assert alice.get("/v1/me").json() == me
    assert admin.get("/v1/me").json()["admin"] is True
    anonymous = httpx.get(f"{server.base_url}/v1/me")
    assert anonymous.status_code == 401 and anonymous.json()["error"]["type"] == "unauthorized"


def test_a_reply_streams_as_text_deltas_while_the_model_writes_it(alice: httpx.Client) -> None:
    assert alice.post("/v1/sessions", json={"session_id": "drip"}).status_code == 201
    content = "[[drip:0.08]] one two three four five six seven eight"  # about 1.3 s: OPT_MESSAGE_TIMEOUT is 3 here
    arrivals: list[tuple[float, str, dict[str, Any]]] = []
    with alice.stream("POST", "/v1/sessions/drip/messages", json={"content": content}) as stream:
        arrivals += [(time.monotonic(), kind, data) for kind, data in sse(stream)]
    deltas = [
        (at, data["event"]["delta"]["text"])
        for at, kind, data in arrivals
        if kind == "stream_event" and data["event"].get("delta", {}).get("type") == "text_delta"
    ]
    (assistant,) = [data for _, kind, data in arrivals if kind == "assistant"]
    assert len(deltas) > 5 and "".join(text for _, text in deltas) == assistant["content"][0]["text"]
    assert deltas[-1][0] - deltas[0][0] > 0.5  # each word as it came, not the reply at once
    assert [kind for _, kind, _ in arrivals][-1] == "result"
    inits = [data for _, kind, data in arrivals if kind == "system" and data.get("subtype") == "init"]
    assert len(inits) == 1, [(k, d.get("subtype")) for _, k, d in arrivals if k != "stream_event"]
    (init,) = inits
    assert set(init["data"]) == {"session_id", "model", "tools", "permission_mode"} and len(json.dumps(init)) <= 1024
    assert init["data"]["session_id"] == "drip"  # ours, not the CLI's
    (result,) = [data for _, kind, data in arrivals if kind == "result"]
    assert 0 < result["turn_cost_usd"] <= result["total_cost_usd"] + 1e-8  # its first turn: the same, rounded
    whole = alice.post("/v1/sessions/drip/messages?stream=false", json={"content": "again"}).json()
    # The SDK's total is the conversation's running total; the turn's own cost is beside it.
    assert whole["result"]["total_cost_usd"] > whole["result"]["turn_cost_usd"] > 0
    assert "You said: again" in whole["text"] and {m["type"] for m in whole["messages"]} <= {
        "system",
        "assistant",
        "user",
        "result",
    }


STALLING = "[[big:1024]] more than the socket buffers hold"  # a turn's SSE carries the reply twice
# One delta of the reply: 768K characters, 9 MB once JSON-escaped, more than any socket buffers here
# (tcp_wmem's 4 MB), still under the SDK's line limit of 1M characters.
OPENAI_STALLING = {"model": "sonnet", "stream": True, "messages": [{"role": "user", "content": "[[big:3072]] stall"}]}


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/sessions/stalled/messages", {"content": STALLING}),
        ("/v1/chat/completions", OPENAI_STALLING),
    ],
    ids=["sessions", "openai"],
)
def test_a_client_that_stops_reading_frees_the_session_at_the_turn_deadline(
    alice: httpx.Client, admin: httpx.Client, server: ServerProcess, path: str, body: dict[str, Any]
) -> None:
    if "stalled" in path:
        assert alice.post("/v1/sessions", json={"session_id": "stalled"}).status_code == 201
    payload = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: test\r\n"
        f"Authorization: Bearer {KEYS['alice']}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    )
    host, _, port = server.base_url.removeprefix("http://").partition(":")
    with socket.socket() as stalled:
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect((host, int(port)))
        stalled.sendall(head.encode() + payload)  # and never reads a byte
        began = time.monotonic()
        while not (listed := alice.get("/v1/sessions").json()["sessions"]):  # the completion makes one
            assert time.monotonic() - began < 10
            time.sleep(0.05)
        (session_id,) = [s["session_id"] for s in listed]
        began = time.monotonic()  # the turn's deadline runs from about now (a loaded machine is slow to get here)
        states: list[tuple[float, str]] = []
        while (state := alice.get(f"/v1/sessions/{session_id}").json()["state"]) == "busy" or not states:
            states.append((round(time.monotonic() - began, 1), state))
            assert time.monotonic() - began < 3 + 3, f"the stalled client held the session: {states}"
            time.sleep(0.1)
        assert states[0][1] == "busy", f"the turn was not held by the stalled client at all: {states}"
        reply = alice.post(f"/v1/sessions/{session_id}/messages?stream=false", json={"content": "next"})
        assert reply.status_code == 200 and "You said: next" in reply.json()["text"]
    time.sleep(0.3)
    assert any(e.get("event") == "sse_client_stalled" for e in server.log_lines())
    # No CLI is left behind: every CLI process of the server is a worker the pool knows.
    deadline = time.monotonic() + 5
    while (known := {c["pid"] for c in admin.get("/v1/pool").json()["connections"]}) != server.cli_worker_pids():
        assert time.monotonic() < deadline, (known, server.cli_worker_pids())
        time.sleep(0.1)


def test_every_live_worker_mid_turn_answers_503_with_retry_after(
    offline_server: OfflineModelServer, tmp_path: Path
) -> None:
    # One live CLI at most: "hog" runs a long turn on it, so "waiting" finds no worker to take.
    # OPT_CREATE_TIMEOUT also bounds a CLI's start (up to ~4 s on a loaded machine).
    full = start_server(tmp_path, offline_server.base_url, CP_MIN_SIZE="0", CP_MAX_LIVE="1", OPT_CREATE_TIMEOUT="5")
    with full.client("alice") as alice:
        for session_id in ("waiting", "hog"):
            assert alice.post("/v1/sessions", json={"session_id": session_id}).status_code == 201
        with alice.stream("POST", "/v1/sessions/hog/messages", json={"content": "[[slow:10]] hold it"}) as stream:
            events = sse(stream)
            assert next(events)[0] == "system"  # the turn runs on the only live worker
            began = time.monotonic()
            refused = alice.post("/v1/sessions/waiting/messages?stream=false", json={"content": "no room"})
            assert 4.9 < time.monotonic() - began < 9, "the wait is OPT_CREATE_TIMEOUT, then an answer"
            assert refused.status_code == 503 and int(refused.headers["Retry-After"]) > 0
            assert refused.json()["error"]["type"] == "at_capacity"
            assert len(full.cli_worker_pids()) == 1
            assert list(events)[-1][1]["is_error"] is False
        reply = alice.post("/v1/sessions/waiting/messages?stream=false", json={"content": "my turn"})
        assert reply.status_code == 200 and "You said: my turn" in reply.json()["text"]
    workers = full.cli_pids()
    assert full.stop() in (0, -signal.SIGTERM)
    assert wait_no_cli(workers) == []


def test_a_session_shows_its_title_origin_and_model(alice: httpx.Client) -> None:
    created = alice.post("/v1/sessions", json={"session_id": "titled"}).json()
    assert (created["title"], created["origin"], created["model"]) == (None, "sessions", "opus")  # MODELS_ALLOWED[0]
    first = "Plan   a trip\nto Lisbon: " + "sights, food and trams " * 10
    assert alice.post("/v1/sessions/titled/messages?stream=false", json={"content": first}).status_code == 200
    assert alice.post("/v1/sessions/titled/messages?stream=false", json={"content": "and Porto"}).status_code == 200
    title = alice.get("/v1/sessions/titled").json()["title"]
    assert title.startswith("Plan a trip to Lisbon: sights") and len(title) == 80 and title.endswith("\u2026")
    console = alice.post("/v1/sessions", json={"origin": "console", "model": "haiku"}).json()
    assert (console["origin"], console["model"]) == ("console", "haiku")
    listed = {s["session_id"]: s for s in alice.get("/v1/sessions").json()["sessions"]}
    assert listed["titled"]["title"] == title and listed[console["session_id"]]["origin"] == "console"
    refused = alice.post("/v1/sessions", json={"origin": "openai"})  # only that endpoint makes its sessions
    assert refused.status_code == 422 and refused.json()["error"]["param"] == "origin"


def test_images_reach_the_model_as_image_blocks_and_bad_ones_are_refused_in_words(
    alice: httpx.Client, model: OfflineModel
) -> None:
    assert alice.post("/v1/sessions", json={"session_id": "eyes"}).status_code == 201
    content = [{"type": "text", "text": "what colour is this?"}, image_block(png(4, 4))]
    answer = alice.post("/v1/sessions/eyes/messages?stream=false", json={"content": content})
    assert answer.status_code == 200 and "[images seen: image/png]" in answer.json()["text"]
    (seen,) = images_seen(model.message_requests()[-1])
    assert seen["source"] == content[1]["source"]  # the very bytes, as an image block
    assert alice.get("/v1/sessions/eyes").json()["title"] == "what colour is this?"
    chat = alice.get("/v1/sessions/eyes/history?format=messages").json()["messages"]
    assert chat[0]["content"].startswith("what colour is this?") and chat[0]["images"] == 1
    calls = len(model.message_requests())
    refusals = [
        ([image_block(b"\x89PNG\r\n\x1a\n" + bytes(70_000))], 413, "image_too_large", "content.0.source.data"),
        ([image_block(png())] * 21, 413, "image_too_large", "content"),
        ([image_block(png(), "image/bmp")], 422, "invalid_image", "content.0.source.media_type"),
        ([image_block(png(), "image/gif")], 422, "invalid_image", "content.0.source.data"),
        ([{"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}], 422, "invalid_image", ""),
        ([{"type": "audio"}], 422, "invalid_request", "content.0"),
    ]
    for blocks, status, kind, param in refusals:
        refused = alice.post("/v1/sessions/eyes/messages", json={"content": blocks})
        error = refused.json()["error"]
        assert (refused.status_code, error["type"]) == (status, kind), refused.text[:300]
        assert error["param"].startswith(param or "content.0.source") and error["message"].startswith(error["param"])
    assert len(model.message_requests()) == calls  # nothing refused reached the model


def test_errors_say_in_words_what_is_wrong_and_what_is_allowed(alice: httpx.Client) -> None:
    raw = ("Input should", "JSON decode", "[A-Za-z", "^", "Value error", "loc")
    cases = [
        (alice.post("/v1/sessions", json={"cwd": "../x"}), "cwd", "cwd must be a folder inside the workspace"),
        (
            alice.post("/v1/sessions", content=b'{"model": ', headers={"content-type": "application/json"}),
            None,
            "the body is not valid JSON",
        ),
        (alice.post("/v1/sessions", json={"max_turns": "5"}), "max_turns", "max_turns must be an integer"),
        (alice.post("/v1/sessions", json={"permission_mode": "yolo"}), "permission_mode", "it must be one of"),
        (alice.post("/v1/sessions/x/messages", json={"content": 5}), "content", "content must be a string or"),
        (alice.get("/v1/sessions/x/history?format=html"), "format", "'html'; it must be one of 'raw' or 'messages'"),
    ]
    for answer, param, words in cases:
        error = answer.json()["error"]
        assert answer.status_code == 422 and error.get("param") == param and words in error["message"], error
        assert not any(text in error["message"] for text in raw), error["message"]
