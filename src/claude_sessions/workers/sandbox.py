"""The CLI's OS sandbox (bubblewrap) for one session, and the rules that keep its file tools home.

Measured on CLI 2.1.332 (``tests/test_sandbox.py`` proves each point): with ``sandbox.enabled``
every Bash command runs in bwrap with ``/`` read-only, only its working directory and the CLI's
temp folder writable, a fresh ``/proc`` (no server's ``environ``), no network namespace of its own
but a proxy that, with ``network.strictAllowlist`` and no allowed domain, refuses every host,
loopback included. ``filesystem.denyRead`` mounts an empty tmpfs over a path and ``allowRead``
binds a path back inside it, so denying the workspace root and allowing the session's own folder
hides every other workspace, also those created after the CLI started. Write, Edit and Read run
inside the CLI, outside bwrap: permission rules scoped to the workspace hold them instead (an
unscoped ``Write`` allow rule writes anywhere on the host).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from claude_sessions.config import RuntimeConfig, SystemConfig, tools_needing_sandbox
from claude_sessions.errors import ConfigError

#: Bare allow rules for these reach the whole host; they are narrowed to the workspace.
_EDIT_TOOLS = frozenset({"Write", "Edit", "MultiEdit", "NotebookEdit"})
_READ_TOOLS = frozenset({"Read", "Glob", "Grep"})
_PACKAGE_DIR = Path(__file__).resolve().parents[1]  # claude_sessions/, not workers/


#: Why limits cannot hold without the sandbox: they apply to what runs in bwrap.
NO_SANDBOX = "the sandbox is off (SANDBOX), so no command runs in bwrap"


def bubblewrap_usable() -> bool:
    """Whether the CLI's sandbox can run here; decided by running bwrap once per ``PATH``."""
    return _bubblewrap_runs(os.environ.get("PATH", os.defpath))


def sandbox_on(runtime: RuntimeConfig) -> bool:
    """Whether sessions' CLIs run sandboxed: ``SANDBOX=on``, or ``auto`` on a host where bwrap runs."""
    return runtime.SANDBOX == "on" or (runtime.SANDBOX == "auto" and bubblewrap_usable())


def check_host(config: SystemConfig) -> None:
    """Refuse to start on a host that cannot hold what the configuration asks for (:class:`ConfigError`).

    Configuration is read without probing the host; this runs bwrap once, at start-up.
    """
    if config.runtime.LIMITS == "on" and not sandbox_on(config.runtime):
        raise ConfigError(f"LIMITS=on: the limits cannot be enforced here: {NO_SANDBOX}")
    if bubblewrap_usable():
        return
    if config.runtime.SANDBOX == "on":
        raise ConfigError(
            "SANDBOX=on: the sandbox cannot run here: it needs bwrap and socat on PATH and user namespaces"
        )
    for name, tools in (("TOOLS_ALLOWED", config.server.tools_allowed), ("TOOLS_ASK", config.server.tools_ask)):
        if unsafe := tools_needing_sandbox(tools):
            raise ConfigError(f"invalid {name}: {unsafe} need the sandbox, which cannot run here (SANDBOX=auto)")


@functools.cache
def _bubblewrap_runs(path: str) -> bool:
    bwrap = shutil.which("bwrap", path=path)
    if bwrap is None or shutil.which("socat", path=path) is None:  # the CLI needs both on Linux
        return False
    probe = [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--unshare-all"]
    try:  # namespaces can be forbidden (containers, sysctls): only a real run tells
        subprocess.run([*probe, "--die-with-parent", "--", "true"], capture_output=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return False
    return True


def scoped_tools(rules: Iterable[str], cwd: Path) -> list[str]:
    """The session's allow rules with bare file tools narrowed to its workspace.

    The CLI matches every editing tool with ``Edit(...)`` rules (a ``Write(path)`` rule
    allows nothing), and the read tools each with their own.
    """
    inside = f"/{cwd}/**"  # "//abs/path/**": an absolute path in the CLI's rule syntax
    scoped = []
    for rule in rules:
        if rule in _EDIT_TOOLS:
            scoped.append(f"Edit({inside})")
        elif rule in _READ_TOOLS:
            scoped.append(f"{rule}({inside})")
        else:
            scoped.append(rule)
    return list(dict.fromkeys(scoped))


def temp_root() -> Path:
    """Where workers' temporary folders live (one per worker, see ``containment``): one folder per user."""
    return Path(tempfile.gettempdir()).resolve() / f"claude-sessions-{os.getuid()}"


def _server_paths(config: SystemConfig) -> list[Path]:
    """What a tenant must not read: our state, our code and environment, the operator's home."""
    runtime = config.runtime
    paths = [runtime.config_dir, runtime.DATA_DIR.resolve(), _PACKAGE_DIR, Path.home().resolve()]
    if sys.prefix != sys.base_prefix:  # the virtualenv we run from
        paths.append(Path(sys.prefix).resolve())
    return paths


def _around(outer: Path, inner: Path) -> list[Path]:
    """``outer`` itself, or when it holds ``inner``, everything in it but the way to ``inner``."""
    if not inner.is_relative_to(outer):
        return [outer]
    if inner == outer:
        return []
    step = outer / inner.relative_to(outer).parts[0]
    try:
        others = [entry for entry in outer.iterdir() if entry != step]
    except OSError:
        others = []
    return sorted(others) + _around(step, inner)


def permission_deny(config: SystemConfig, cwd: Path) -> list[str]:
    """``Read``/``Edit`` deny rules for the file tools: every path a session must not touch.

    Deny rules win over allow rules, so a denied folder holding the workspace (a data
    directory holding the workspace root, say) is denied entry by entry around it.
    Other tenants' workspaces are listed at each spawn; one created later is still refused
    by the scoped allow rules and, for commands, by the sandbox.
    """
    paths = [p for path in _server_paths(config) for p in _around(path, cwd)]
    paths += _around(config.runtime.workspace_root, cwd)
    return [f"{tool}(/{path}/**)" for path in dict.fromkeys(paths) for tool in ("Read", "Edit")]


def sandbox_settings(config: SystemConfig, cwd: Path, tmp: Path) -> dict[str, Any]:
    """The ``sandbox`` settings of one session's CLI: Bash writes only its workspace (and the
    worker's ``tmp``), reads none of ours or other tenants', and reaches no host."""
    hidden = [*_server_paths(config), config.runtime.workspace_root, temp_root()]
    return {
        "enabled": True,
        "failIfUnavailable": True,  # never fall back to unsandboxed commands
        "allowUnsandboxedCommands": False,  # the model's dangerouslyDisableSandbox is ignored
        "autoAllowBashIfSandboxed": False,  # Bash only for sessions whose allowed_tools name it
        "network": {"strictAllowlist": True, "allowedDomains": []},  # refuse every host, never ask
        "filesystem": {
            "denyRead": [str(path) for path in dict.fromkeys(hidden)],
            "allowRead": [str(cwd), str(tmp)],
        },
    }


def session_settings(config: SystemConfig, cwd: Path, tmp: Path) -> dict[str, Any]:
    """Permission rules, and when the sandbox is on its settings, for one session's CLI."""
    settings: dict[str, Any] = {"permissions": {"deny": permission_deny(config, cwd)}}
    if sandbox_on(config.runtime):
        settings["sandbox"] = sandbox_settings(config, cwd, tmp)
    return settings
