"""claude-sessions: many concurrent Claude Code conversations, kept healthy."""

from claude_sessions.config import SessionConfig, SystemConfig
from claude_sessions.errors import (
    CapacityError,
    ClaudeSessionsError,
    ConfigError,
    HandlerClosedError,
    ImageTooLargeError,
    InvalidContentError,
    InvalidImageError,
    ModelError,
    PermissionDecidedError,
    PermissionExpiredError,
    PermissionNotFoundError,
    SessionBusyError,
    SessionExistsError,
    SessionLimitError,
    SessionNotFoundError,
    SessionOrphanedError,
    SlashCommandRefusedError,
    ToolCallNotFoundError,
    TurnTimeoutError,
    WorkerDiedError,
    WorkerError,
    WorkerStartError,
)
from claude_sessions.observability.metrics import SessionMetrics
from claude_sessions.sessions.handler import ClaudeHandler
from claude_sessions.sessions.manager import ClaudeCodeSessionManager
from claude_sessions.sessions.permissions import PermissionRequest, PermissionResolved
from claude_sessions.sessions.turn_options import TurnOptions
from claude_sessions.store.transcripts import PostgresTranscriptStore

__all__ = [
    "CapacityError",
    "ClaudeCodeSessionManager",
    "ClaudeHandler",
    "ClaudeSessionsError",
    "ConfigError",
    "HandlerClosedError",
    "ImageTooLargeError",
    "InvalidContentError",
    "InvalidImageError",
    "ModelError",
    "PermissionDecidedError",
    "PermissionExpiredError",
    "PermissionNotFoundError",
    "PermissionRequest",
    "PermissionResolved",
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
    "ToolCallNotFoundError",
    "TurnOptions",
    "TurnTimeoutError",
    "WorkerDiedError",
    "WorkerError",
    "WorkerStartError",
]
