"""Tool and workspace safety, through the real server and the real CLI's permission checks.

The offline model answers ``[[tool:Name:{input}]]`` with a ``tool_use`` block; the CLI
decides whether to run it and sends the ``tool_result`` back, which the model's request
log shows exactly.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from claude_sessions import ConfigError, SystemConfig
from claude_sessions.offline_model import OfflineModel, OfflineModelServer
from claude_sessions.workers.options import cli_env
from helpers import wait_no_cli
from server_process import ServerProcess, start_server

SECRET = "s3cr3t-of-bob"


@pytest.fixture(scope="module")
def server(offline_server: OfflineModelServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = start_server(tmp_path_factory.mktemp("security"), offline_server.base_url, DATABASE_URL="postgres://x")
    yield process
    process.stop()
    assert wait_no_cli() == []


@pytest.fixture(scope="module")
def alice(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client("alice") as client:
        assert client.post("/v1/sessions", json={"session_id": "probe"}).status_code == 201
        bob_home = server.root / "workspaces" / "bob"
        with server.client("bob") as bob:
            assert bob.post("/v1/sessions", json={"session_id": "mine"}).status_code == 201
        (bob_home / "secret.txt").write_text(SECRET)
        (server.root / "workspaces" / "alice" / "notes.txt").write_text("alice's own notes")
        yield client


def tool_result(client: httpx.Client, model: OfflineModel, tool: str, tool_input: dict[str, Any]) -> dict[str, Any]:
    """Ask the model to call ``tool``; return the tool_result block the CLI sent back."""
    model.requests.clear()
    marker = f"[[tool:{tool}:{json.dumps(tool_input)}]]"
    reply = client.post("/v1/sessions/probe/messages?stream=false", json={"content": marker})
    assert reply.status_code == 200, reply.text
    for request in reversed(model.message_requests()):
        last = request.body.get("messages", [])[-1]
        blocks = last.get("content") if isinstance(last.get("content"), list) else []
        for block in blocks:
            if block.get("type") == "tool_result":  # the answer to this turn's tool_use
                content = block.get("content")
                text = content if isinstance(content, str) else json.dumps(content)
                return {"is_error": bool(block.get("is_error")), "text": text}
    raise AssertionError("the CLI sent no tool_result")


def test_read_in_another_tenants_workspace_is_refused(
    alice: httpx.Client, server: ServerProcess, model: OfflineModel
) -> None:
    result = tool_result(alice, model, "Read", {"file_path": str(server.root / "workspaces/bob/secret.txt")})
    assert result["is_error"] and SECRET not in result["text"]


def test_read_in_the_cli_config_dir_is_refused(alice: httpx.Client, server: ServerProcess, model: OfflineModel) -> None:
    target = server.root / "claude" / "probe.txt"
    target.write_text(SECRET)
    result = tool_result(alice, model, "Read", {"file_path": str(target)})
    assert result["is_error"] and SECRET not in result["text"]


def test_read_of_a_host_file_is_refused(alice: httpx.Client, model: OfflineModel) -> None:
    result = tool_result(alice, model, "Read", {"file_path": "/etc/hostname"})
    hostname = Path("/etc/hostname").read_text().strip()
    assert result["is_error"] and hostname not in result["text"]


def test_shell_printenv_of_a_server_secret_is_refused(alice: httpx.Client, model: OfflineModel) -> None:
    result = tool_result(alice, model, "Bash", {"command": "printenv API_KEYS", "description": "show"})
    assert result["is_error"] and "key-alice" not in result["text"]


def test_read_inside_the_own_workspace_works(alice: httpx.Client, server: ServerProcess, model: OfflineModel) -> None:
    result = tool_result(alice, model, "Read", {"file_path": str(server.root / "workspaces/alice/notes.txt")})
    assert not result["is_error"] and "alice's own notes" in result["text"], result


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"allowed_tools": ["Bash"]}, "allowed_tools"),
        ({"permission_mode": "bypassPermissions"}, "permission_mode"),
        ({"permission_mode": "acceptEdits"}, "permission_mode"),
        ({"cwd": "../bob"}, "cwd"),
        ({"cwd": "/etc"}, "cwd"),
    ],
)
def test_asking_for_more_than_the_policy_is_422(alice: httpx.Client, body: dict[str, Any], field: str) -> None:
    answer = alice.post("/v1/sessions", json=body)
    message = answer.json()["error"]["message"]
    assert answer.status_code == 422 and field in message
    if field != "cwd":  # refused by the policy, not by the body's shape
        assert "not permitted" in message, message


def test_symlink_leading_out_of_the_workspace_is_422(alice: httpx.Client, server: ServerProcess) -> None:
    (server.root / "workspaces" / "alice" / "door").symlink_to(server.root / "workspaces" / "bob")
    answer = alice.post("/v1/sessions", json={"cwd": "door"})
    assert answer.status_code == 422 and "cwd" in answer.json()["error"]["message"]


def test_workspaces_are_per_tenant_and_owner_only(alice: httpx.Client, server: ServerProcess) -> None:
    for tenant in ("alice", "bob"):
        mode = stat.S_IMODE((server.root / "workspaces" / tenant).stat().st_mode)
        assert mode == 0o700, oct(mode)
    pool = alice.get("/v1/pool").json()
    assert pool["connections"]  # workers exist; none is shared: options (cwd) differ per tenant
    turn = alice.post("/v1/sessions/probe/messages?stream=false", json={"content": "where am I?"}).json()
    (init,) = [m for m in turn["messages"] if m["type"] == "system" and m["subtype"] == "init"]
    assert "cwd" not in init["data"] and "/" not in json.dumps(init["data"])  # no path of the server at all


def test_cli_environment_carries_no_server_secret(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CLAUDE_SESSIONS_DATA_DIR", str(tmp_path))
    secrets: tuple[str, ...] = (
        "API_KEYS",
        "ADMIN_API_KEY",
        "DATABASE_URL",
        "REDIS_URL",
        "SOME_SECRET",
        "ANTHROPIC_API_KEY",
    )
    secrets += ("ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN", "ANTHROPIC_CUSTOM_HEADERS")
    secrets += ("CLAUDE_CODE_USE_BEDROCK",)
    for name in secrets:
        monkeypatch.setenv(name, "value-that-must-not-leak")
    monkeypatch.setenv("API_KEYS", "t:k")
    monkeypatch.setenv("CLAUDE_CODE_MAX_OUTPUT_TOKENS", "4096")  # a setting, not a credential
    env = cli_env(SystemConfig.from_env(), "http://127.0.0.1:1", "csg-worker-token")
    merged = {**os.environ, **env}  # what the SDK hands the CLI
    leaked = [k for k, v in merged.items() if "must-not-leak" in v or v == "t:k"]
    assert leaked == []
    assert merged["PATH"] and merged["HOME"] and merged["CLAUDE_CODE_MAX_OUTPUT_TOKENS"] == "4096"
    assert (merged["ANTHROPIC_BASE_URL"], merged["ANTHROPIC_API_KEY"]) == ("http://127.0.0.1:1", "csg-worker-token")


@pytest.mark.parametrize("inside", ["CLAUDE_CONFIG_DIR", "CLAUDE_SESSIONS_DATA_DIR"])
def test_workspace_root_containing_our_files_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, inside: str
) -> None:
    monkeypatch.setenv("WORKSPACE_ROOT", str(tmp_path))
    monkeypatch.setenv("CLAUDE_SESSIONS_DATA_DIR", str(tmp_path / "elsewhere-data"))
    monkeypatch.setenv("CLAUDE_CONFIG_DIR", str(tmp_path / "elsewhere-claude"))
    if inside == "CLAUDE_CONFIG_DIR":
        monkeypatch.setenv("CLAUDE_SESSIONS_DATA_DIR", "/tmp/claude-sessions-not-inside")
    else:
        monkeypatch.setenv("CLAUDE_CONFIG_DIR", "/tmp/claude-config-not-inside")
    with pytest.raises(ConfigError, match=f"WORKSPACE_ROOT .* must not contain {inside}"):
        SystemConfig.from_env()
