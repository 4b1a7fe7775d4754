"""The seed's module name for configuration (``from session_config import SystemConfig``).

Only re-exports :mod:`claude_sessions.config`.
"""

from claude_sessions.config import (
    ConnectionPoolConfig,
    OptimizationConfig,
    SessionConfig,
    SessionManagerConfig,
    SystemConfig,
)

__all__ = ["ConnectionPoolConfig", "OptimizationConfig", "SessionConfig", "SessionManagerConfig", "SystemConfig"]
