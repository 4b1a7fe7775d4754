"""The operator's policy over HTTP, on a server that allows a tool and only the plan mode."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import httpx
import pytest

from claude_sessions.offline_model import OfflineModelServer
from helpers import wait_no_cli
from server_process import ServerProcess, sse, start_server


@pytest.fixture(scope="module")
def server(offline_server: OfflineModelServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = start_server(
        tmp_path_factory.mktemp("policy"),
        offline_server.base_url,
        TOOLS_ALLOWED="Read",
        PERMISSION_MODES_ALLOWED="plan",
    )
    yield process
    assert process.stop() in (0, -signal.SIGTERM)
    assert wait_no_cli() == []


@pytest.fixture
def alice(server: ServerProcess) -> Iterator[httpx.Client]:
    yield from server.tenant("alice")


def test_a_permitted_tool_and_a_narrowing_list_are_accepted(alice: httpx.Client) -> None:
    created = alice.post(
        "/v1/sessions", json={"session_id": "tools", "allowed_tools": ["Read"], "disallowed_tools": ["Bash"]}
    )
    assert created.status_code == 201, created.text
    options = created.json()["options"]
    assert options["allowed_tools"] == ["Read"] and options["disallowed_tools"] == ["Bash"]
    reply = alice.post("/v1/sessions/tools/messages?stream=false", json={"content": "tools?"})
    assert reply.status_code == 200 and "You said: tools?" in reply.json()["text"]


def test_a_tool_beyond_tools_allowed_is_422_not_permitted(alice: httpx.Client) -> None:
    answer = alice.post("/v1/sessions", json={"allowed_tools": ["Read", "Bash", "Write"]})
    assert answer.status_code == 422
    assert answer.json()["error"] == {
        "type": "invalid_request",
        "message": "allowed_tools: Bash, Write not permitted on this server; TOOLS_ALLOWED offers Read",
        "param": "allowed_tools",
    }


def test_an_omitted_permission_mode_is_the_first_allowed_one_pinned_on_a_warm_worker(
    alice: httpx.Client, server: ServerProcess
) -> None:
    with server.client("admin") as admin:
        spares = {c["pid"] for c in admin.get("/v1/pool").json()["connections"] if c["state"] == "idle"}
        created = alice.post("/v1/sessions", json={"session_id": "planned"})
        assert created.status_code == 201 and created.json()["options"]["permission_mode"] == "plan"
        bound = {c["pid"] for c in admin.get("/v1/pool").json()["connections"] if c["state"] == "bound"}
    assert bound and bound <= spares  # the spare, warmed with the same resolved options, was taken
    with alice.stream("POST", "/v1/sessions/planned/messages", json={"content": "which mode?"}) as response:
        init = next(data for kind, data in sse(response) if data.get("subtype") == "init")
    assert init["data"]["permission_mode"] == "plan"
    refused = alice.post("/v1/sessions", json={"permission_mode": "default"})
    assert refused.status_code == 422 and "permission_mode" in refused.json()["error"]["message"]
