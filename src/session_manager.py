"""The seed's module name for the session manager (``from session_manager import ...``).

Only re-exports :mod:`claude_sessions`.
"""

from claude_sessions import ClaudeCodeSessionManager, SessionLimitError, SessionMetrics, SessionNotFoundError

__all__ = ["ClaudeCodeSessionManager", "SessionLimitError", "SessionMetrics", "SessionNotFoundError"]
