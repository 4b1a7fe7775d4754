"""Runs the HTTP API with uvicorn: loopback only without keys, graceful on SIGTERM."""

from __future__ import annotations

import ipaddress

import structlog
import uvicorn

from .api import create_app
from .auth import Authenticator
from .config import SystemConfig
from .handler import ClaudeHandler

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


def run_server(config: SystemConfig, host: str | None = None, port: int | None = None) -> None:
    """Serve until SIGTERM/SIGINT, then let running turns finish and close every worker."""
    host = host or config.server.HOST
    port = config.server.PORT if port is None else port
    if Authenticator(config.server).is_open and not is_loopback(host):
        log.warning("no_api_keys_loopback_only", requested_host=host, host="127.0.0.1")
        host = "127.0.0.1"
    elif Authenticator(config.server).is_open:
        log.warning("no_api_keys", detail="no API_KEYS or ADMIN_API_KEY: listening on loopback only", host=host)
    app = create_app(ClaudeHandler(config))
    log.info("server_starting", host=host, port=port)
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(config.optimization.DESTROY_TIMEOUT + SHUTDOWN_MARGIN),
    )
