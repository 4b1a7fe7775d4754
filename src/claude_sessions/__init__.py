"""claude-sessions: many concurrent Claude Code conversations, kept healthy."""

from .config import SessionConfig, SystemConfig
from .errors import (
    CapacityError,
    ClaudeSessionsError,
    ConfigError,
    HandlerClosedError,
    SessionBusyError,
    SessionExistsError,
    SessionLimitError,
    SessionNotFoundError,
    SessionOrphanedError,
    SlashCommandRefusedError,
    TurnTimeoutError,
    WorkerDiedError,
    WorkerError,
    WorkerStartError,
)
from .handler import ClaudeHandler
from .manager import ClaudeCodeSessionManager
from .metrics import SessionMetrics
from .transcripts import PostgresTranscriptStore

__all__ = [
    "CapacityError",
    "ClaudeCodeSessionManager",
    "ClaudeHandler",
    "ClaudeSessionsError",
    "ConfigError",
    "HandlerClosedError",
    "PostgresTranscriptStore",
    "SessionBusyError",
    "SessionConfig",
    "SessionExistsError",
    "SessionLimitError",
    "SessionMetrics",
    "SessionNotFoundError",
    "SessionOrphanedError",
    "SlashCommandRefusedError",
    "SystemConfig",
    "TurnTimeoutError",
    "WorkerDiedError",
    "WorkerError",
    "WorkerStartError",
]
