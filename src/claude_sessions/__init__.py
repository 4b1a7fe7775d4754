"""claude-sessions: many concurrent Claude Code conversations, kept healthy."""

from .config import SessionConfig, SystemConfig
from .errors import (
    ClaudeSessionsError,
    ConfigError,
    HandlerClosedError,
    SessionBusyError,
    SessionExistsError,
    SessionLimitError,
    SessionNotFoundError,
    TurnTimeoutError,
    WorkerDiedError,
    WorkerError,
    WorkerStartError,
)
from .handler import ClaudeHandler
from .manager import ClaudeCodeSessionManager
from .metrics import SessionMetrics

__all__ = [
    "ClaudeCodeSessionManager",
    "ClaudeHandler",
    "ClaudeSessionsError",
    "ConfigError",
    "HandlerClosedError",
    "SessionBusyError",
    "SessionConfig",
    "SessionExistsError",
    "SessionLimitError",
    "SessionMetrics",
    "SessionNotFoundError",
    "SystemConfig",
    "TurnTimeoutError",
    "WorkerDiedError",
    "WorkerError",
    "WorkerStartError",
]
