"""How a session's options become the CLI's options and environment."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import structlog
from claude_agent_sdk import ClaudeAgentOptions, SessionStore

from claude_sessions.config import SessionConfig, SystemConfig
from claude_sessions.workers.containment import Containment, worker_key
from claude_sessions.workers.processes import MARK_VARIABLE, data_dir_mark
from claude_sessions.workers.sandbox import scoped_tools, session_settings
from claude_sessions.workers.workspaces import session_cwd

_cli_log = structlog.get_logger("claude_sessions.cli")

#: What a CLI process may inherit from the server; every other variable is blanked,
#: so no server secret (API_KEYS, database or Redis URLs, ...) reaches a session's tools.
#: Of Anthropic's variables only model choices pass: the endpoint and the key are the gateway's.
CLI_ENV_ALLOWED = re.compile(
    r"PATH|HOME|USER|LOGNAME|SHELL|LANG|LANGUAGE|TERM|TZ|TMPDIR|LC_\w+|XDG_\w+"
    r"|ANTHROPIC_\w*MODEL\w*|CLAUDE_CODE_\w+|CLAUDE_CONFIG_DIR|DISABLE_\w+"
    r"|(?i:https?_proxy|no_proxy)|SSL_CERT_\w+|NODE_EXTRA_CA_CERTS"
)
#: Never inherited, whatever the allow-list says: credentials, and ways around the gateway.
CLI_ENV_DENIED = re.compile(r"(?:\w+_)?(?:KEY|TOKEN|SECRET|PASSWORD)(?:_\w+)?|CLAUDE_CODE_USE_\w+|CLAUDE_CODE_API_\w+")


#: Features that let work outlive its session on a pooled worker or reach another CLI:
#: every CLI on a host listens on a socket other CLIs can message (ListAgents, SendMessage),
#: and scheduled or background work answers later, in another session's turns.
SESSION_BOUND = {
    "CLAUDE_CODE_HARBOR_KITE": "0",
    "CLAUDE_CODE_DISABLE_CRON": "1",
    "CLAUDE_CODE_DISABLE_BACKGROUND_TASKS": "1",
}
#: The same tools, denied again by rule (depth, should a CLI version ignore a variable).
UNBOUND_TOOLS = ("ListAgents", "SendMessage", "CronCreate", "ScheduleWakeup", "Monitor", "Workflow")


def cli_env(config: SystemConfig, gateway_url: str, token: str) -> dict[str, str]:
    """The CLI's environment: the server's, minus what it must not see, plus ours.

    The SDK starts the CLI with the server's whole environment and lets these
    values override it, so variables outside ``CLI_ENV_ALLOWED`` are set empty.
    The model is reached through the gateway with the worker's own ``token``; the
    operator's credentials never reach a CLI. Retries and the per-request timeout
    are bounded so that an API outage ends a turn with an error instead of hanging
    it for minutes.
    """
    runtime, opt = config.runtime, config.optimization
    env = {name: "" for name in os.environ if not CLI_ENV_ALLOWED.fullmatch(name) or CLI_ENV_DENIED.fullmatch(name)}
    env |= {
        "ANTHROPIC_BASE_URL": gateway_url,
        "ANTHROPIC_API_KEY": token,
        MARK_VARIABLE: data_dir_mark(runtime.DATA_DIR),
        "CLAUDE_CONFIG_DIR": str(runtime.config_dir),
        "DISABLE_TELEMETRY": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "CLAUDE_CODE_MAX_RETRIES": str(opt.CLI_MAX_RETRIES),
        "API_TIMEOUT_MS": str(int(opt.CLI_API_TIMEOUT * 1000)),
        **SESSION_BOUND,
    }
    # The operator's proxy serves the CLI's own web tools, never its way to the gateway on loopback.
    bypass = ",".join(filter(None, [os.environ.get("NO_PROXY") or os.environ.get("no_proxy"), "127.0.0.1,localhost"]))
    env |= {"NO_PROXY": bypass, "no_proxy": bypass}
    return env


def make_private_dirs(root: Path, path: Path) -> None:
    """Create ``root`` and ``path`` below it, each new folder readable by its owner only."""
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    current = root
    for part in path.relative_to(root).parts:
        current = current / part
        current.mkdir(mode=0o700, exist_ok=True)


def operator_settings(config: SystemConfig, cwd: Path, tmp: Path) -> str:
    """The settings a CLI working in ``cwd`` runs with, given on its command line (the highest user layer).

    Whatever the tools allow, the CLI's config directory (every tenant's transcripts), the
    data directory, the server's code, the operator's home and other tenants' workspaces
    stay unreadable and unwritable (``sandbox.permission_deny``), no hook runs, no tool
    reaches beyond its own session (``UNBOUND_TOOLS``), and with ``SANDBOX`` on, commands
    run in bubblewrap (``sandbox.sandbox_settings``).
    """
    settings = session_settings(config, cwd, tmp)
    settings["permissions"]["deny"] += list(UNBOUND_TOOLS)
    return json.dumps({**settings, "disableAllHooks": True})


def build_options(
    session: SessionConfig,
    config: SystemConfig,
    gateway_url: str,
    token: str,
    containment: Containment,
    resume: str | None = None,
    session_store: SessionStore | None = None,
) -> ClaudeAgentOptions:
    """SDK options for one worker; ``resume`` continues an existing conversation.

    With a ``session_store`` (cluster mode) the CLI's transcript is mirrored there and
    a resume reads it from there, so any node continues any conversation.

    Everything that decides what the CLI may do is pinned here: model, permission
    mode and tools explicitly, and no settings file is read (``setting_sources=[]``,
    no ``.mcp.json``). So neither a settings file a CLI wrote (``/config``) nor one
    a tenant put in its workspace (``.claude/settings.json``, hooks, MCP servers)
    reaches any CLI.
    """
    cwd = session_cwd(session, config)
    root = config.runtime.workspace_root
    if cwd != root:  # a tenant's workspace: a filesystem of its own size, with limits on
        containment.ensure_workspace(root / cwd.relative_to(root).parts[0])
    make_private_dirs(root, cwd)
    worker_env = containment.worker_env(worker_key(token))
    return ClaudeAgentOptions(
        env=cli_env(config, gateway_url, token) | worker_env,
        cwd=str(cwd),
        system_prompt=session.system_prompt,
        max_turns=session.max_turns,
        # One that names none runs the first allowed (the CLI's own default may not be).
        model=session.model or config.server.default_model,
        allowed_tools=scoped_tools(session.allowed_tools, cwd),
        disallowed_tools=list(session.disallowed_tools),
        permission_mode=session.permission_mode or "default",
        setting_sources=[],
        settings=operator_settings(config, cwd, Path(worker_env["TMPDIR"])),
        strict_mcp_config=True,
        include_partial_messages=True,  # the model's text as it is generated, on every surface
        output_format=None
        if session.output_schema is None
        else {
            "type": "json_schema",
            "schema": json.loads(session.output_schema),
        },
        resume=resume,
        session_store=session_store,
        stderr=lambda line: _cli_log.debug("cli_stderr", line=line.rstrip()),
    )
