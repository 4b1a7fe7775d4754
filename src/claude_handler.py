"""The seed's module name for the handler (``from claude_handler import ClaudeHandler``).

Code written against the original specification imports from here; everything
lives in :mod:`claude_sessions`, this module only re-exports it.
"""

from claude_sessions import ClaudeHandler, SessionConfig, SystemConfig

__all__ = ["ClaudeHandler", "SessionConfig", "SystemConfig"]
