"""Shared fixtures: the offline model on loopback, handlers on the real CLI, leak checks."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from claude_agent_sdk import ClaudeAgentOptions
from pydantic import SecretStr

from claude_sessions import ClaudeHandler, SystemConfig
from claude_sessions.offline_model import OfflineModel, OfflineModelServer
from cluster import fresh_database
from helpers import offline_env, wait_no_cli
from server_process import STARTED

MakeHandler = Callable[..., Awaitable[ClaudeHandler]]
Options = Callable[..., ClaudeAgentOptions]

#: Fixtures that start real CLIs (directly or through a server): their tests are ``slow``.
CLI_FIXTURES = {"cli_env", "offline_server"}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: starts real CLI processes (make test-fast leaves these out)")
    # A workspace disk and cgroups per handler would only slow tests of other things down (servers
    # inherit this too); test_containment turns the limits on.
    os.environ.setdefault("LIMITS", "off")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if CLI_FIXTURES & set(getattr(item, "fixturenames", ())) or item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def no_server_outlives_its_test() -> Iterator[None]:
    """End the servers a test started (broader fixtures' were started before this one): a
    test that fails midway must not leave a server's CLIs to fail the leak checks that follow."""
    before = len(STARTED)
    yield
    for server in STARTED[before:]:
        server.end()


@pytest.fixture(scope="session")
def offline_server() -> Iterator[OfflineModelServer]:
    with OfflineModelServer() as server:
        yield server


@pytest.fixture
def model(offline_server: OfflineModelServer) -> OfflineModel:
    """The stand-in model, its request log emptied for this test."""
    offline_server.model.requests.clear()
    return offline_server.model


@pytest.fixture
def cli_env(tmp_path: Path, offline_server: OfflineModelServer, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Point every CLI at the offline model with a private config dir (env and options)."""
    env = offline_env(offline_server.base_url, tmp_path)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


@pytest.fixture
def options(cli_env: dict[str, str], tmp_path: Path) -> Options:
    """Bare SDK options on the offline model, in a private workspace (the SDK facts' tests)."""
    workspace = tmp_path / "workspace"
    workspace.mkdir()

    def make(**overrides: Any) -> ClaudeAgentOptions:
        return ClaudeAgentOptions(**{"env": cli_env, "cwd": str(workspace), **overrides})

    return make


@pytest.fixture
async def make_handler(cli_env: dict[str, str]) -> AsyncIterator[MakeHandler]:
    """Build started handlers from the environment plus overrides; prove no CLI is left."""
    handlers: list[ClaudeHandler] = []
    seen: set[int] = set()

    async def make(**sections: dict[str, Any]) -> ClaudeHandler:
        config = SystemConfig.from_env()
        for section, values in sections.items():
            for key, value in values.items():
                setattr(getattr(config, section), key, value)
        handler = ClaudeHandler(config)
        handlers.append(handler)
        await handler.start()
        return handler

    yield make
    for handler in handlers:
        seen.update(c["pid"] for c in handler.get_pool_status()["connections"])
        await handler.close()
    assert wait_no_cli(seen) == [], "CLI processes of this test left behind"
    assert wait_no_cli() == [], "CLI processes left behind"


@pytest.fixture(params=["files", "postgres"])
def transcripts_in(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """Where transcripts live: the CLI's files (one node), or the database (cluster mode); as
    ``make_handler`` overrides. Ask for it before ``make_handler``: the database outlives the handler."""
    if request.param == "files":
        yield {}
        return
    with fresh_database() as url:
        yield {"cluster": {"DATABASE_URL": SecretStr(url)}}
