"""Runs the HTTP API with uvicorn: loopback only without keys, graceful on SIGTERM."""

from __future__ import annotations

import asyncio
import ipaddress
import signal
import socket
from collections.abc import Callable, Coroutine
from types import FrameType
from typing import Any

import structlog
import uvicorn

from claude_sessions.config import SystemConfig
from claude_sessions.http.app import create_app
from claude_sessions.http.auth import Authenticator
from claude_sessions.http.common import Service
from claude_sessions.sessions.handler import ClaudeHandler

log = structlog.get_logger("claude_sessions.server")

#: Extra seconds uvicorn waits beyond a turn's drain time before it gives up.
SHUTDOWN_MARGIN = 5.0


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class DrainingServer(uvicorn.Server):
    """A uvicorn server that drains before it stops.

    uvicorn closes its listener as soon as a signal arrives, so a client learns of
    the shutdown by a refused connection. Here the first SIGTERM/SIGINT starts
    ``drain`` instead: the socket keeps accepting, every new request answers 503
    ``shutting_down``, and the running turns end (each stream with its ``result``
    or ``error``); only then does uvicorn's own shutdown run. A second signal
    skips the rest of the drain.
    """

    def __init__(self, config: uvicorn.Config, drain: Callable[[], Coroutine[Any, Any, None]], banner: str) -> None:
        super().__init__(config)
        self._drain, self._banner = drain, banner
        self._signal: int | None = None
        self._draining: asyncio.Task[None] | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:  # listening, the handler started: say where, for people
            print(self._banner, flush=True)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._signal is None:
            self._signal = sig  # picked up by on_tick, on the event loop
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self._signal is not None and self._draining is None:
            log.info("server_draining", signal=signal.Signals(self._signal).name)
            self._draining = asyncio.get_running_loop().create_task(self._drain())
        if self._draining is not None and self._draining.done() and not self.should_exit:
            if not self._draining.cancelled() and (error := self._draining.exception()) is not None:
                log.error("server_drain_failed", error=repr(error))
            assert self._signal is not None
            super().handle_exit(self._signal, None)  # now uvicorn (and sse-starlette) shut down
        return await super().on_tick(counter)


def run_server(
    config: SystemConfig, host: str | None = None, port: int | None = None, *, offline: bool = False
) -> None:
    """Serve until SIGTERM/SIGINT, then let running turns finish and close every worker.

    ``offline``: the model is the offline stand-in (said in the start-up line).
    """
    host = host or config.server.HOST
    port = config.server.PORT if port is None else port
    if Authenticator(config.server).is_open and not is_loopback(host):
        log.warning("no_api_keys_loopback_only", requested_host=host, host="127.0.0.1")
        host = "127.0.0.1"
    elif Authenticator(config.server).is_open:
        log.warning("no_api_keys", detail="no API_KEYS or ADMIN_API_KEY: listening on loopback only", host=host)
    handler = ClaudeHandler(config)
    handler.serve_at(config.cluster.NODE_URL or f"http://{host}:{port}")
    app = create_app(handler)
    service: Service = app.state.service
    drain_seconds = config.optimization.DESTROY_TIMEOUT
    log.info("server_starting", host=host, port=port)
    server = DrainingServer(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=int(drain_seconds + SHUTDOWN_MARGIN),
        ),
        drain=lambda: service.lifecycle.drain(drain_seconds),
        banner=banner(config, host, port, offline),
    )
    server.run()


def banner(config: SystemConfig, host: str, port: int, offline: bool) -> str:
    """The start-up line: where it listens, the console, which model, who may call."""
    url = f"http://{host}:{port}"
    if offline:
        model = "the offline model (no Anthropic credentials)"
    elif config.runtime.ANTHROPIC_BASE_URL:
        model = f"the model at {config.runtime.ANTHROPIC_BASE_URL}"
    else:
        model = "the Anthropic API"
    callers = "loopback only, no keys" if Authenticator(config.server).is_open else "API keys required"
    return f"claude-sessions listening on {url} (console at {url}/console); model: {model}; {callers}"
