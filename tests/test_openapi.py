"""The OpenAPI schema tells the truth: each route declares every error status it can answer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from claude_sessions import ClaudeHandler, SystemConfig
from claude_sessions.http.app import create_app

#: What each route can answer besides success (503: any request while the server drains).
ERRORS = {
    ("post", "/v1/sessions"): {401, 403, 409, 413, 422, 429, 503},
    ("get", "/v1/sessions"): {401, 403, 422, 503},
    ("get", "/v1/sessions/{session_id}"): {401, 403, 404, 422, 503},
    ("delete", "/v1/sessions/{session_id}"): {401, 403, 404, 422, 503},
    ("post", "/v1/sessions/{session_id}/interrupt"): {401, 403, 404, 422, 503},
    ("get", "/v1/sessions/{session_id}/history"): {401, 403, 404, 422, 503},
    ("post", "/v1/sessions/{session_id}/messages"): {401, 403, 404, 409, 410, 413, 422, 502, 503, 504},
    ("get", "/v1/sessions/{session_id}/permissions"): {401, 403, 404, 422, 503},
    ("post", "/v1/sessions/{session_id}/permissions/{request_id}"): {401, 403, 404, 409, 410, 422, 503},
    ("get", "/v1/me"): {401, 403, 422, 503},
    ("get", "/v1/health"): {401, 403, 422, 503},
    ("get", "/v1/pool"): {401, 403, 422, 503},
    ("get", "/metrics"): {401, 403, 422, 503},
    ("post", "/v1/admin/cleanup"): {401, 403, 422, 503},
    ("get", "/v1/admin/sessions"): {401, 403, 422, 503},
    ("get", "/v1/usage/timeseries"): {401, 403, 422, 503},
    ("get", "/v1/usage"): {401, 403, 422, 503},
    ("post", "/v1/chat/completions"): {400, 401, 403, 404, 409, 410, 413, 429, 502, 503, 504},
    ("post", "/v1/admin/keys"): {401, 403, 422, 503},
    ("get", "/v1/admin/keys"): {401, 403, 422, 503},
    ("delete", "/v1/admin/keys/{key_id}"): {401, 403, 404, 422, 503},
    ("get", "/v1/models"): {400, 401, 403, 503},
}
#: The OpenAI-compatible surface answers errors in OpenAI's shape.
OPENAI = {("post", "/v1/chat/completions"), ("get", "/v1/models")}
#: The probes: no key, and only the node's own state (``/readyz``'s 503 lists reasons, not an error).
PROBES = {("get", "/livez"): {200}, ("get", "/readyz"): {200, 503}}
SUCCESS = {
    ("post", "/v1/sessions"): 201,
    ("post", "/v1/admin/keys"): 201,
    ("delete", "/v1/admin/keys/{key_id}"): 204,
    ("delete", "/v1/sessions/{session_id}"): 204,
    ("post", "/v1/sessions/{session_id}/interrupt"): 202,
}


def schema_of(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, **env: str) -> dict[str, Any]:
    monkeypatch.setenv("CLAUDE_SESSIONS_DATA_DIR", str(tmp_path))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return create_app(ClaudeHandler(SystemConfig.from_env())).openapi()


def test_every_route_declares_each_error_status_with_the_error_shape(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    schema = schema_of(monkeypatch, tmp_path)
    routes = {(method, path): op for path, item in schema["paths"].items() for method, op in item.items()}
    assert set(routes) == set(ERRORS) | set(PROBES)
    for probe, statuses in PROBES.items():
        assert {int(status) for status in routes.pop(probe)["responses"]} == statuses
        assert "security" not in schema["paths"][probe[1]]["get"]
    for route, operation in routes.items():
        statuses = {int(status) for status in operation["responses"]}
        assert statuses == ERRORS[route] | {SUCCESS.get(route, 200)}, route
        shape = "OpenAIErrorBody" if route in OPENAI else "ErrorBody"
        for status in ERRORS[route]:
            content = operation["responses"][str(status)]["content"]
            assert content == {"application/json": {"schema": {"$ref": f"#/components/schemas/{shape}"}}}
        assert operation["security"] == [{"HTTPBearer": []}]
    error = schema["components"]["schemas"]["ErrorDetail"]
    assert set(error["required"]) == {"type", "message"} and "status" in error["properties"]
    turn = routes[("post", "/v1/sessions/{session_id}/messages")]["responses"]["200"]["content"]
    assert set(turn) == {"application/json", "text/event-stream"}
    assert "error" in turn["text/event-stream"]["schema"]["properties"]["event"]["enum"]


def test_the_schema_states_the_servers_policy(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    schema = schema_of(
        monkeypatch,
        tmp_path,
        TOOLS_ALLOWED="Read,Grep",
        TOOLS_ASK="WebFetch",
        PERMISSION_MODES_ALLOWED="plan",
        SLASH_COMMANDS_ALLOWED="",
    )
    body = schema["components"]["schemas"]["CreateSessionBody"]["properties"]
    assert body["ask_tools"]["items"]["enum"] == ["WebFetch"]
    assert [c["enum"] for c in body["permission_mode"]["anyOf"] if "enum" in c] == [["plan"]]
    assert body["allowed_tools"]["items"]["enum"] == ["Grep", "Read"]
    assert body["session_id"]["anyOf"][0]["pattern"].startswith("^") and body["cwd"]["anyOf"][0]["maxLength"] == 255
    content = schema["components"]["schemas"]["MessageBody"]["properties"]["content"]
    assert content["pattern"] == r"^(?!\s*/)"
    default = schema_of(
        monkeypatch, tmp_path / "default", TOOLS_ALLOWED="", TOOLS_ASK="", SLASH_COMMANDS_ALLOWED="compact"
    )
    body = default["components"]["schemas"]["CreateSessionBody"]["properties"]
    assert body["allowed_tools"]["maxItems"] == body["ask_tools"]["maxItems"] == 0
    assert default["components"]["schemas"]["MessageBody"]["properties"]["content"]["pattern"] == (
        r"^(?!\s*/(?!(?:compact)(?:\s|$)))"
    )
