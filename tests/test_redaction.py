"""What a tenant must not see is replaced in every answer: paths, addresses, pids, keys."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from claude_agent_sdk import project_key_for_directory

import claude_sessions
from claude_sessions import SystemConfig
from claude_sessions.http.redaction import Redactor


@pytest.fixture
def redactor(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Redactor:
    monkeypatch.setenv("CLAUDE_SESSIONS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CLAUDE_CONFIG_DIR", str(tmp_path / "claude"))
    monkeypatch.setenv("WORKSPACE_ROOT", str(tmp_path / "ws"))
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://127.0.0.1:41257")
    return Redactor(SystemConfig.from_env())


def test_server_paths_become_neutral_tokens(redactor: Redactor, tmp_path: Path) -> None:
    text = json.dumps(
        {
            "cwd": f"{tmp_path}/ws/acme/sub",
            "other": f"{tmp_path}/ws/globex",
            "memory": f"{tmp_path}/claude/projects/{project_key_for_directory(tmp_path / 'ws' / 'acme')}/memory/",
            "db": f"{tmp_path}/data/sessions.db",
            "cli": f"{sys.prefix}/lib/python3/site-packages/claude_agent_sdk/_bundled/claude",
            "code": str(Path(claude_sessions.__file__)),
        }
    )
    clean = json.loads(redactor.redact(text, "acme"))
    assert clean == {
        "cwd": "<workspace>/sub",
        "other": "<workspaces>/globex",
        "memory": "<config-dir>/projects/<workspace>/memory/",
        "db": "<data-dir>/sessions.db",
        "cli": "<server>/lib/python3/site-packages/claude_agent_sdk/_bundled/claude",
        "code": "<server>/__init__.py",
    }
    assert str(tmp_path) not in redactor.redact(text, None)


def test_a_path_inside_a_longer_name_is_left_alone(redactor: Redactor, tmp_path: Path) -> None:
    longer = f"{tmp_path}/wsx/acme and x{tmp_path}/ws"
    assert redactor.redact(longer, "acme") == longer
    assert redactor.redact(f"see {tmp_path}/ws.", "acme") == "see <workspaces>."
    assert redactor.redact(f"{tmp_path}/ws/acmeco/f", "acme") == "<workspaces>/acmeco/f"


def test_model_address_pids_and_session_keys(redactor: Redactor) -> None:
    error = "check your inference gateway (127.0.0.1:41257) or localhost:41257; http://127.0.0.1:41257/v1"
    assert redactor.redact(error, "acme") == (
        "check your inference gateway (<model-endpoint>) or <model-endpoint>; <model-endpoint>/v1"
    )
    assert redactor.redact("127.0.0.1:412570", "acme") == "127.0.0.1:412570"
    assert redactor.redact('{"pid": 4242, "messaging_socket_path": "/tmp/cc-socks/4242.sock"}', "acme") == (
        '{"pid": null, "messaging_socket_path": "<socket>"}'
    )
    assert redactor.redact("worker close forced (pid=4242)", "acme") == "worker close forced (pid=<pid>)"
    assert redactor.redact("session 'acme/c1' is busy", "acme", [("acme/c1", "c1")]) == "session 'c1' is busy"


def test_non_ascii_paths_are_found_as_json_escapes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CLAUDE_SESSIONS_DATA_DIR", str(tmp_path / "données"))
    monkeypatch.setenv("WORKSPACE_ROOT", str(tmp_path / "ws"))
    redactor = Redactor(SystemConfig.from_env())
    escaped = json.dumps({"db": f"{tmp_path}/données/sessions.db"})  # ensure_ascii: \u00e9
    assert json.loads(redactor.redact(escaped, "acme")) == {"db": "<data-dir>/sessions.db"}


def test_an_internal_gateway_without_a_port_is_hidden_by_name(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CLAUDE_SESSIONS_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "https://llm-gateway.corp.internal")
    redactor = Redactor(SystemConfig.from_env())
    assert redactor.redact("check your inference gateway (llm-gateway.corp.internal)", "acme") == (
        "check your inference gateway (<model-endpoint>)"
    )
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "https://api.anthropic.com")
    assert Redactor(SystemConfig.from_env()).redact("api.anthropic.com", "acme") == "api.anthropic.com"  # public
