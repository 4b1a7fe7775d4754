"""The ``claude-sessions`` console script."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from typing import Annotated

import structlog
import typer

from claude_sessions.config import SystemConfig
from claude_sessions.errors import ClaudeSessionsError, ConfigError
from claude_sessions.observability.logs import configure_logging
from claude_sessions.offline_model import ModelSettings, OfflineModelServer, loopback_env
from claude_sessions.offline_model import serve as serve_offline_model
from claude_sessions.workers.sandbox import check_host

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
log = structlog.get_logger("claude_sessions.cli")

OfflineOption = Annotated[
    bool | None,
    typer.Option(
        "--offline/--online",
        help="Use the offline model on loopback (default: when no Anthropic credentials are set).",
    ),
]


def wants_offline(flag: bool | None, config: SystemConfig) -> bool:
    return flag if flag is not None else not config.runtime.has_model_credentials


@contextlib.contextmanager
def model_endpoint(offline: bool) -> Iterator[None]:
    """Start the offline model and point the CLI at it, or leave the environment alone."""
    if not offline:
        yield
        return
    with OfflineModelServer() as server:
        os.environ.update(loopback_env(server.base_url))
        log.info("offline_model_started", base_url=server.base_url)
        yield


def load_config() -> SystemConfig:
    try:
        config = SystemConfig.from_env()
        check_host(config)
        return config
    except ConfigError as error:
        typer.echo(f"claude-sessions: {error}", err=True)
        raise typer.Exit(2) from None


@app.command("offline-model")
def offline_model(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 8765,
    first_token_delay: Annotated[float, typer.Option(min=0, help="Seconds before the first token.")] = 0.0,
    token_delay: Annotated[float, typer.Option(min=0, help="Seconds between tokens.")] = 0.0,
) -> None:
    """Run the stand-in Anthropic Messages API alone."""
    serve_offline_model(port, ModelSettings(first_token_delay, token_delay))


@app.command()
def serve(
    offline: OfflineOption = None,
    host: Annotated[str | None, typer.Option(help="Interface (default CLAUDE_SESSIONS_HOST or 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default CLAUDE_SESSIONS_PORT or 8000).")] = None,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING...")] = "INFO",
) -> None:
    """The HTTP chat API."""
    from claude_sessions.http.server import run_server

    configure_logging(log_level)
    offline = wants_offline(offline, load_config())  # the whole configuration is checked before anything starts
    try:
        with model_endpoint(offline):
            run_server(load_config(), host, port, offline=offline)
    except ConfigError as error:  # what only the host can say (LIMITS=on where they cannot hold)
        typer.echo(f"claude-sessions: {error}", err=True)
        raise typer.Exit(2) from None


@app.command()
def migrate() -> None:
    """Create or migrate the registry's schema (the nodes also do it themselves at start)."""
    from claude_sessions.store.backends import open_registry

    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)  # its retries would print a line each

    async def run() -> str:
        registry, archive = open_registry(load_config(), "migrate")
        try:
            await registry.open()
            await archive.open()
        finally:
            await archive.close()
            await registry.close()
        return registry.kind

    try:
        backend = asyncio.run(run())
    except ClaudeSessionsError as error:
        typer.echo(f"claude-sessions: {error}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"claude-sessions: the {backend} registry is up to date")


@app.command()
def demo(offline: OfflineOption = None) -> None:
    """The seed's demonstration: pool, metrics, limits and cleanup at work."""
    from claude_sessions.demo import run_demo

    configure_logging("WARNING")
    with (
        tempfile.TemporaryDirectory(prefix="claude-sessions-demo-") as scratch,
        model_endpoint(wants_offline(offline, load_config())),
    ):
        os.environ.setdefault("CLAUDE_SESSIONS_DATA_DIR", scratch)
        os.environ.setdefault("SM_MAX_SESSIONS", "6")
        os.environ.setdefault("SM_TIMEOUT_MINUTES", "0.05")
        os.environ.setdefault("CP_MIN_SIZE", "2")
        config = load_config()
        asyncio.run(run_demo(config))


if __name__ == "__main__":  # pragma: no cover
    app()
