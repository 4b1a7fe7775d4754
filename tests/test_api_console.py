"""The console page and its assets: served from the package, locked down, no key needed to load them."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from claude_sessions import ClaudeHandler, SystemConfig
from claude_sessions.http.app import create_app


def app_with(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, **env: str) -> FastAPI:
    """The application, not started: the page needs no handler running."""
    monkeypatch.setenv("CLAUDE_SESSIONS_DATA_DIR", str(tmp_path))
    for name in ("API_KEYS", "ADMIN_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return create_app(ClaudeHandler(SystemConfig.from_env()))


def test_the_page_and_its_assets_are_served_with_a_strict_policy(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    client = TestClient(app_with(monkeypatch, tmp_path, API_KEYS="alice:key-alice"))
    page = client.get("/console")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "connect-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert 'data-auth="keys"' in page.text  # keys configured: the operator must sign in
    assert 'src="/console/app.js"' in page.text and "http" not in page.text.split("<body", 1)[0].lower()
    assert 'src="/console/markdown.js"' in page.text and 'src="/console/approvals.js"' in page.text
    kinds = {
        "app.js": "text/javascript",
        "markdown.js": "text/javascript",
        "approvals.js": "text/javascript",
        "keys.js": "text/javascript",
        "console.css": "text/css",
    }
    for name, kind in kinds.items():
        asset = client.get(f"/console/{name}")
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(kind)
        assert asset.headers["x-content-type-options"] == "nosniff"
    missing = client.get("/console/secrets.txt")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found"
    assert all(not path.startswith("/console") for path in client.get("/openapi.json").json()["paths"])


def test_without_keys_the_operator_goes_straight_in(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    page = TestClient(app_with(monkeypatch, tmp_path)).get("/console")
    assert 'data-auth="none"' in page.text


def test_the_page_loads_nothing_from_elsewhere() -> None:
    """No CDN: every asset ships in the package, and the script talks to its own origin only."""
    folder = resources.files("claude_sessions.http") / "static"
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["app.js", "approvals.js", "console.css", "index.html", "keys.js", "markdown.js"]
    for path in folder.iterdir():
        text = path.read_text()
        assert "https://" not in text and "//cdn" not in text, path.name
        assert "innerHTML" not in text and "eval(" not in text, path.name
