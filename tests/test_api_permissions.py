"""Tool approval over HTTP, through a real server process: the SSE events, the answer routes, every refusal.

The real CLI asks; the answer comes from another connection, as a chat app's button press would;
the test reads the tenant's workspace to see what really ran.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from claude_sessions.offline_model import OfflineModelServer
from claude_sessions.workers.sandbox import bubblewrap_usable
from helpers import tool, wait_no_cli
from server_process import KEYS, ServerProcess, sse, start_server

ASKED = "Write,Edit,Bash" if bubblewrap_usable() else "Write,Edit"
TIMEOUT = 4.0


@pytest.fixture(scope="module")
def server(offline_server: OfflineModelServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = start_server(
        tmp_path_factory.mktemp("permissions"),
        offline_server.base_url,
        TOOLS_ASK=ASKED,
        PERMISSION_TIMEOUT_SECONDS=str(TIMEOUT),
        OPT_MESSAGE_TIMEOUT="60",
        CP_MIN_SIZE="0",
    )
    yield process
    process.stop()
    assert wait_no_cli() == []


@pytest.fixture
def alice(server: ServerProcess) -> Iterator[httpx.Client]:
    yield from server.tenant("alice")


def workspace(server: ServerProcess, tenant: str = "alice") -> Path:
    return server.root / "workspaces" / tenant


def asking(client: httpx.Client, session_id: str, tools: tuple[str, ...] = ("Write", "Edit")) -> None:
    created = client.post("/v1/sessions", json={"session_id": session_id, "ask_tools": list(tools)})
    assert created.status_code == 201, created.text
    assert created.json()["options"]["ask_tools"] == list(tools)


def write(server: ServerProcess, name: str, text: str = "hello") -> str:
    return tool("Write", file_path=str(workspace(server) / name), content=text)


def answer(client: httpx.Client, session_id: str, request_id: str, **body: Any) -> httpx.Response:
    return client.post(f"/v1/sessions/{session_id}/permissions/{request_id}", json=body)


def answered_turn(
    server: ServerProcess, session_id: str, content: str, **decision: Any
) -> list[tuple[str, dict[str, Any]]]:
    """A streamed turn whose requests are answered from a second connection as they arrive."""
    events = []
    path = f"/v1/sessions/{session_id}/messages"
    with (
        server.client("alice") as stream,
        server.client("alice") as buttons,
        stream.stream("POST", path, json={"content": content}) as response,
    ):
        assert response.status_code == 200
        for event, data in sse(response):
            events.append((event, data))
            if event == "permission_request":
                decided = answer(buttons, session_id, data["request_id"], **decision)
                assert decided.status_code == 200, decided.text
    return events


def kinds(events: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return [event for event, _ in events if event not in ("stream_event", "system", "user", "assistant")]


def reply(events: list[tuple[str, dict[str, Any]]]) -> str:
    return "".join(b.get("text", "") for e, d in events if e == "assistant" for b in d["content"])


def test_an_allowed_write_streams_its_request_and_runs(server: ServerProcess, alice: httpx.Client) -> None:
    asking(alice, "allow")
    events = answered_turn(server, "allow", write(server, "allowed.txt"), behavior="allow")
    assert kinds(events) == ["permission_request", "permission_resolved", "result"]
    request = next(d for e, d in events if e == "permission_request")
    assert request["tool"] == "Write" and request["input"]["content"] == "hello" and request["title"]
    assert {"request_id", "display_name", "description", "suggestions", "expires_at"} <= request.keys()
    assert request["session_grant"] == "every Write call of this session"
    resolved = next(d for e, d in events if e == "permission_resolved")
    assert (resolved["behavior"], resolved["by"], resolved["scope"]) == ("allow", "user", "once")
    assert (workspace(server) / "allowed.txt").read_text() == "hello"


def test_a_denied_edit_leaves_the_file_and_the_model_reads_the_reason(
    server: ServerProcess, alice: httpx.Client
) -> None:
    asking(alice, "deny")
    (workspace(server) / "keep.txt").write_text("original")
    edit = tool("Edit", file_path=str(workspace(server) / "keep.txt"), old_string="original", new_string="changed")
    events = answered_turn(server, "deny", edit, behavior="deny", message="leave keep.txt alone")
    assert (workspace(server) / "keep.txt").read_text() == "original"
    assert "leave keep.txt alone" in reply(events)


def pending_request(client: httpx.Client, session_id: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        requests = client.get(f"/v1/sessions/{session_id}/permissions").json()["requests"]
        if requests:
            return dict(requests[0])
        time.sleep(0.05)
    raise AssertionError("no request became pending")


def in_background(client: httpx.Client, session_id: str, content: str, stream: bool) -> dict[str, Any]:
    """Send a turn from another thread; the dict gets its status and body (or events) when it ends."""
    outcome: dict[str, Any] = {}

    def send() -> None:
        path = f"/v1/sessions/{session_id}/messages?stream={str(stream).lower()}"
        answer_ = client.post(path, json={"content": content}, timeout=90)
        outcome.update(status=answer_.status_code, text=answer_.text)

    outcome["thread"] = threading.Thread(target=send, daemon=True)
    outcome["thread"].start()
    return outcome


def test_a_non_streamed_turn_is_answered_from_another_connection(server: ServerProcess, alice: httpx.Client) -> None:
    asking(alice, "plain")
    with server.client("alice") as sender:
        outcome = in_background(sender, "plain", write(server, "plain.txt"), stream=False)
        request = pending_request(alice, "plain")
        assert answer(alice, "plain", request["request_id"], behavior="allow").json() == {
            "request_id": request["request_id"],
            "behavior": "allow",
            "scope": "once",
        }
        outcome["thread"].join(60)
    assert outcome["status"] == 200 and "File created successfully" in json.loads(outcome["text"])["text"]
    assert (workspace(server) / "plain.txt").read_text() == "hello"


def test_a_lost_stream_is_answered_from_another_connection_and_the_turn_goes_on(
    server: ServerProcess, alice: httpx.Client
) -> None:
    asking(alice, "lost")
    content = write(server, "lost.txt")
    once = {"Idempotency-Key": "lost-1"}
    with (
        server.client("alice") as stream,
        stream.stream("POST", "/v1/sessions/lost/messages", json={"content": content}, headers=once) as sent,
    ):
        request = next(data for event, data in sse(sent) if event == "permission_request")
    # The stream is gone; the turn waits for its user, who finds the request again.
    assert pending_request(alice, "lost")["request_id"] == request["request_id"]
    assert answer(alice, "lost", request["request_id"], behavior="allow").status_code == 200
    deadline = time.monotonic() + 30
    while alice.get("/v1/sessions/lost").json()["state"] == "busy" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (workspace(server) / "lost.txt").read_text() == "hello"
    history = alice.get("/v1/sessions/lost/history", params={"format": "messages"}).json()["messages"]
    assert "File created successfully" in json.dumps(history)
    # The answer was kept for its key, unread as it was: a retry replays it, it never runs twice.
    turns = alice.get("/v1/sessions/lost").json()["metrics"]["message_count"]
    retried = alice.post("/v1/sessions/lost/messages?stream=false", json={"content": content}, headers=once)
    assert retried.status_code == 200 and "File created successfully" in retried.json()["text"]
    assert alice.get("/v1/sessions/lost").json()["metrics"]["message_count"] == turns


def test_answers_are_taken_once_expire_and_are_refused_to_another_tenant(
    server: ServerProcess, alice: httpx.Client
) -> None:
    asking(alice, "once")
    with server.client("alice") as sender, server.client("bob") as bob:
        outcome = in_background(sender, "once", write(server, "once.txt"), stream=True)
        request_id = pending_request(alice, "once")["request_id"]
        foreign = answer(bob, "once", request_id, behavior="allow")
        unknown = answer(alice, "once", "perm_0000", behavior="allow")
        assert foreign.status_code == unknown.status_code == 404
        assert foreign.json()["error"]["type"] == unknown.json()["error"]["type"] == "not_found"
        assert bob.get("/v1/sessions/once/permissions").status_code == 404
        assert answer(alice, "once", request_id, behavior="allow").status_code == 200
        again = answer(alice, "once", request_id, behavior="deny")
        assert again.status_code == 409 and again.json()["error"]["type"] == "permission_decided"
        outcome["thread"].join(60)
        late = in_background(sender, "once", write(server, "late.txt"), stream=True)
        expiring = pending_request(alice, "once")["request_id"]
        late["thread"].join(TIMEOUT + 30)
        expired = answer(alice, "once", expiring, behavior="allow")
    assert expired.status_code == 410 and expired.json()["error"]["type"] == "permission_expired"
    assert "event: permission_resolved" in late["text"] and '"by":"timeout"' in late["text"]
    assert not (workspace(server) / "late.txt").exists() and (workspace(server) / "once.txt").exists()


def test_bad_answers_and_unoffered_tools_are_clear_4xx(server: ServerProcess, alice: httpx.Client) -> None:
    refused = alice.post("/v1/sessions", json={"ask_tools": ["WebFetch"]})
    assert refused.status_code == 422 and refused.json()["error"]["param"] == "ask_tools"
    assert "TOOLS_ASK offers" in refused.json()["error"]["message"]
    asking(alice, "bad")
    assert answer(alice, "bad", "perm_1", behavior="maybe").status_code == 422
    assert answer(alice, "bad", "perm_1", behavior="allow", scope="forever").status_code == 422
    assert answer(alice, "bad", "perm_1", behavior="allow").status_code == 404
    assert alice.get("/v1/sessions/bad/permissions").json() == {"requests": []}


def test_the_openai_endpoint_denies_an_asked_call_at_once(server: ServerProcess, alice: httpx.Client) -> None:
    asking(alice, "chat")
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=KEYS["alice"], max_retries=0)
    completion = client.chat.completions.with_raw_response.create(
        model="sonnet",
        messages=[{"role": "user", "content": write(server, "openai.txt")}],
        extra_headers={"X-Session-ID": "chat"},
    )
    text = completion.parse().choices[0].message.content or ""
    assert "cannot be asked here" in text and not (workspace(server) / "openai.txt").exists()


@pytest.mark.skipif("Bash" not in ASKED, reason="bubblewrap (bwrap, socat) is not usable here")
def test_bash_allowed_for_the_session_runs_that_prefix_unasked_and_nothing_chained(
    server: ServerProcess, alice: httpx.Client
) -> None:
    asking(alice, "shell", ("Bash",))

    def bash(command: str, **decision: Any) -> list[tuple[str, dict[str, Any]]]:
        return answered_turn(server, "shell", tool("Bash", command=command, description="probe"), **decision)

    # The CLI's own suggestion is the prefix remembered ("touch one *" here, "npm test *" for "npm test -w").
    first = bash("touch one", behavior="allow", scope="session")
    (request,) = [d for e, d in first if e == "permission_request"]
    assert {"toolName": "Bash", "ruleContent": "touch one *"} in request["suggestions"][0]["rules"]
    assert request["session_grant"] == "Bash commands starting with 'touch one' and holding no shell operator"
    assert kinds(first)[:2] == ["permission_request", "permission_resolved"] and (workspace(server) / "one").exists()
    second = bash("touch one two", behavior="deny")
    assert "permission_request" not in kinds(second) and (workspace(server) / "two").exists()
    for command in ("touch three", "touch one && touch sneaky", "touch one; touch sneaky", "touch one $(touch sneaky)"):
        assert "permission_request" in kinds(bash(command, behavior="deny")), command
    assert not (workspace(server) / "three").exists() and not (workspace(server) / "sneaky").exists()


def test_decisions_are_counted_and_logged_without_the_input(server: ServerProcess, alice: httpx.Client) -> None:
    asking(alice, "seen")
    answered_turn(server, "seen", write(server, "secret-name.txt", "top secret text"), behavior="allow")
    with server.client("admin") as admin:
        metrics = admin.get("/metrics").text
    assert (
        'claude_sessions_permission_decisions_total{behavior="allow",by="user",tenant="alice",tool="Write"}' in metrics
    )
    assert 'claude_sessions_permission_wait_seconds_count{tenant="alice"}' in metrics
    lines = [e for e in server.log_lines() if e.get("event") == "permission_decided" and e.get("session_id") == "seen"]
    assert lines and {"tenant", "tool", "behavior", "by", "waited_ms"} <= lines[-1].keys()
    logged = json.dumps(lines)
    assert "top secret text" not in logged and "secret-name" not in logged
