"""How a session's options become the CLI's options and environment."""

from __future__ import annotations

from pathlib import Path

import structlog
from claude_agent_sdk import ClaudeAgentOptions

from .config import SessionConfig, SystemConfig

_cli_log = structlog.get_logger("claude_sessions.cli")


def cli_env(config: SystemConfig) -> dict[str, str]:
    """The environment every CLI process gets on top of the server's own.

    Retries and the per-request timeout are bounded here so that an API outage
    ends a turn with an error instead of hanging it for minutes.
    """
    runtime, opt = config.runtime, config.optimization
    env = {
        "CLAUDE_CONFIG_DIR": str(runtime.config_dir),
        "DISABLE_TELEMETRY": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "CLAUDE_CODE_MAX_RETRIES": str(opt.CLI_MAX_RETRIES),
        "API_TIMEOUT_MS": str(int(opt.CLI_API_TIMEOUT * 1000)),
    }
    if runtime.ANTHROPIC_BASE_URL:
        env["ANTHROPIC_BASE_URL"] = runtime.ANTHROPIC_BASE_URL
    if runtime.ANTHROPIC_API_KEY:
        env["ANTHROPIC_API_KEY"] = runtime.ANTHROPIC_API_KEY
    return env


def session_cwd(session: SessionConfig, config: SystemConfig) -> Path:
    """The CLI's working directory: the session's ``cwd``, inside the workspace root.

    Raises ``ValueError`` for a folder outside the root (``..``, absolute paths
    elsewhere, symlinks leading out).
    """
    root = config.runtime.workspace_root
    if session.cwd is None:
        return root
    candidate = Path(session.cwd)
    resolved = (candidate if candidate.is_absolute() else root / candidate).resolve()
    if not resolved.is_relative_to(root):
        raise ValueError(f"cwd {session.cwd!r} is outside the workspace root")
    return resolved


def build_options(session: SessionConfig, config: SystemConfig, resume: str | None = None) -> ClaudeAgentOptions:
    """SDK options for one worker; ``resume`` continues an existing conversation."""
    cwd = session_cwd(session, config)
    cwd.mkdir(parents=True, exist_ok=True)
    return ClaudeAgentOptions(
        env=cli_env(config),
        cwd=str(cwd),
        system_prompt=session.system_prompt,
        max_turns=session.max_turns,
        model=session.model,
        allowed_tools=list(session.allowed_tools),
        disallowed_tools=list(session.disallowed_tools),
        permission_mode=session.permission_mode,
        resume=resume,
        stderr=lambda line: _cli_log.debug("cli_stderr", line=line.rstrip()),
    )
