"""Containment: what one session's tools may take of the host, decided once at start (``LIMITS``).

Every sandboxed command starts through our bwrap shim (``bwrap.sh``, first on each worker's
``PATH``), which shows it an allowlist view of the host (``host_view``) and, with limits on,
puts it in its worker's cgroup (``cgroups``). Each tenant's workspace is a filesystem of its own
size (``disks``). Each worker has a temporary folder of its own (the CLI's sockets, shell state,
task output), removed when the worker ends: nothing of an ended worker stays in ``/tmp``.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import structlog

from claude_sessions.config import SystemConfig
from claude_sessions.errors import ConfigError
from claude_sessions.workers.cgroups import Hierarchy, find_hierarchy
from claude_sessions.workers.disks import WorkspaceDisks, usable
from claude_sessions.workers.host_view import view_args
from claude_sessions.workers.sandbox import NO_SANDBOX, temp_root

log = structlog.get_logger("claude_sessions.limits")


@functools.cache
def _view() -> str:
    """The view's arguments, one per line, as the shim reads them: read once per process (a
    server's handler, or the many handlers of a test run), so ``/etc`` as it was at start."""
    return "".join(f"{arg}\n" for arg in view_args(temp_root()))


def worker_key(token: str) -> str:
    """A worker's name for its cgroup and temporary folder, from its gateway token (never the token)."""
    return hashlib.sha256(token.encode()).hexdigest()[:16]


@dataclass
class Containment:
    """The limits in force on this node, and each worker's share of them."""

    config: SystemConfig
    mark: str
    #: ``v2``, ``v1`` or ``off`` (with ``reason``), and the workspace's ``loop`` or ``off``.
    mode: Literal["v2", "v1", "off"] = "off"
    reason: str | None = None
    workspace: Literal["loop", "off"] = "off"
    workspace_reason: str | None = None
    hierarchy: Hierarchy | None = None
    disks: WorkspaceDisks | None = None
    #: The shim's folder (first on workers' ``PATH``), the view's arguments, the real bwrap.
    shim_dir: Path | None = None
    view_file: Path | None = None
    bwrap: str | None = None
    _keys: set[str] = field(default_factory=set)

    @classmethod
    def prepare(cls, config: SystemConfig, mark: str, sandbox: bool) -> Containment:
        """Set up what the host can enforce; ``LIMITS=on`` where it cannot raises :class:`ConfigError`."""
        runtime = config.runtime
        found = cls(config, mark)
        run = runtime.DATA_DIR.resolve() / "run"
        for folder in temp_root().glob(f"{mark}-*"):  # an earlier run's workers' temp folders
            shutil.rmtree(folder, ignore_errors=True)
        if sandbox:
            found._install_shim(run)
        if runtime.LIMITS == "off":
            found.reason = found.workspace_reason = "LIMITS=off"
            return found
        found._find_cgroups(sandbox)
        found.workspace_reason = usable(run / "probe")
        if found.workspace_reason is None:
            found.disks = WorkspaceDisks(runtime.DATA_DIR.resolve() / "disks", runtime.WORKSPACE_MAX_MB)
            found.workspace = "loop"
        found._settle(runtime.LIMITS)
        return found

    def _find_cgroups(self, sandbox: bool) -> None:
        if not sandbox:
            self.reason = NO_SANDBOX
            return
        try:
            self.hierarchy = find_hierarchy(f"claude-sessions-{self.mark}")
        except OSError as error:
            self.reason = str(error.strerror or error)
            return
        self.mode = self.hierarchy.version
        if stale := self.hierarchy.clear():
            log.info("stale_cgroups_removed", count=len(stale))

    def _install_shim(self, run: Path) -> None:
        self.bwrap = shutil.which("bwrap")
        run.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.shim_dir = run / "bin"
        self.shim_dir.mkdir(exist_ok=True)
        shim = self.shim_dir / "bwrap"
        shim.write_text((resources.files("claude_sessions.workers") / "bwrap.sh").read_text(encoding="utf-8"))
        shim.chmod(0o755)
        self.view_file = run / "view.args"
        self.view_file.write_text(_view())

    def _settle(self, limits: str) -> None:
        """``on``: every limit holds or start-up stops; ``auto``: say what was turned off."""
        problems = [p for p in (self.reason if self.mode == "off" else None, self.workspace_reason) if p]
        if limits == "on" and problems:
            raise ConfigError(f"LIMITS=on: the limits cannot be enforced here: {'; '.join(problems)}")
        if limits == "auto" and problems:
            log.warning(
                "limits_reduced",
                cgroups=self.mode,
                reason=self.reason,
                workspace=self.workspace,
                workspace_reason=self.workspace_reason,
            )

    def worker_env(self, key: str) -> dict[str, str]:
        """What one worker's CLI adds to its environment: its temp folder, and the shim with its limits."""
        tmp = temp_root() / f"{self.mark}-{key}"
        tmp.parent.mkdir(mode=0o700, exist_ok=True)
        tmp.mkdir(mode=0o700, exist_ok=True)
        self._keys.add(key)
        env = {"TMPDIR": str(tmp), "CLAUDE_CODE_TMPDIR": str(tmp)}
        if self.shim_dir is None or self.bwrap is None or self.view_file is None:
            return env
        env |= {
            "PATH": f"{self.shim_dir}:{os.environ.get('PATH', os.defpath)}",
            "CLAUDE_SESSIONS_BWRAP": self.bwrap,
            "CLAUDE_SESSIONS_VIEW": str(self.view_file),
        }
        if self.hierarchy is not None:
            runtime = self.config.runtime
            group = self.hierarchy.create(key, runtime.SESSION_MEMORY_MB, runtime.SESSION_PIDS_MAX)
            env |= {
                "CLAUDE_SESSIONS_CGROUPS": " ".join(map(str, group.dirs)),
                "CLAUDE_SESSIONS_OOM": str(group.oom_events),
                "CLAUDE_SESSIONS_PIDS": str(group.pids_events),
                "CLAUDE_SESSIONS_MEMORY_MB": str(runtime.SESSION_MEMORY_MB),
                "CLAUDE_SESSIONS_PIDS_MAX": str(runtime.SESSION_PIDS_MAX),
            }
        return env

    def ensure_workspace(self, folder: Path) -> None:
        """Give a tenant's workspace its own filesystem (``WORKSPACE_MAX_MB``) when limits are on."""
        if self.disks is not None:
            self.disks.ensure(folder)

    def worker_ended(self, key: str) -> None:
        """Everything of an ended worker goes: what its commands left running, its group, its temp folder."""
        self._keys.discard(key)
        if self.hierarchy is not None:
            self.hierarchy.remove(key)
        shutil.rmtree(temp_root() / f"{self.mark}-{key}", ignore_errors=True)

    def close(self) -> None:
        """At shutdown: every worker's leftovers, then the groups' parents and the workspace mounts."""
        for key in list(self._keys):
            self.worker_ended(key)
        if self.hierarchy is not None:
            self.hierarchy.close()
        if self.disks is not None:
            self.disks.release()

    def report(self) -> dict[str, Any]:
        """``/v1/health``'s ``limits``: which hold, and how."""
        runtime = self.config.runtime
        report: dict[str, Any] = {"mode": self.mode}
        if self.mode == "off" and self.reason:
            report["reason"] = self.reason
        return {
            **report,
            "memory_mb": runtime.SESSION_MEMORY_MB,
            "pids_max": runtime.SESSION_PIDS_MAX,
            "workspace_max_mb": runtime.WORKSPACE_MAX_MB,
            "workspace": self.workspace,
        }
