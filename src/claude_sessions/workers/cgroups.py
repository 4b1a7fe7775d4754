"""Control groups for sessions' tools: one group per worker, under one parent per server.

A worker serves one session at a time, so its group holds that session's tools: memory
(``SESSION_MEMORY_MB``, swap included), processes and threads (``SESSION_PIDS_MAX``), and the
default CPU weight, which gives every busy session an equal share (groups compete as one, however
many processes each runs). The CLI itself stays in the server's group: only what the bwrap shim
starts joins a worker's group.

cgroup v2 is used where the server's own group offers the controllers (a delegated subtree:
systemd ``Delegate=yes``, a container); there the server first moves itself into a leaf, since
v2 lets no group both hold processes and hand controllers down. Else v1, where the memory, pids
and cpu hierarchies are mounted writable.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import structlog

log = structlog.get_logger("claude_sessions.limits")

Version = Literal["v2", "v1"]
#: Controllers a session's group needs; ``cpu`` gives the equal share.
CONTROLLERS = ("memory", "pids", "cpu")


@dataclass(frozen=True)
class WorkerGroup:
    """One worker's group: where the shim moves each command, and the counters it reads after."""

    dirs: tuple[Path, ...]
    oom_events: Path
    pids_events: Path


@dataclass(frozen=True)
class Hierarchy:
    """Where this server's session groups live, in one cgroup version."""

    version: Version
    #: The parent group per controller (v2: the same directory for all three).
    parents: dict[str, Path]

    def create(self, key: str, memory_mb: int, pids_max: int) -> WorkerGroup:
        """A new group for worker ``key`` with its limits set."""
        memory = str(memory_mb * 1024 * 1024)
        dirs = {name: parent / key for name, parent in self.parents.items()}
        for folder in dict.fromkeys(dirs.values()):
            folder.mkdir(exist_ok=True)
        if self.version == "v2":
            group = dirs["memory"]
            _write(group / "memory.max", memory)
            _write(group / "memory.swap.max", "0", optional=True)
            _write(group / "pids.max", str(pids_max))
            return WorkerGroup((group,), group / "memory.events", group / "pids.events")
        _write(dirs["memory"] / "memory.limit_in_bytes", memory)
        _write(dirs["memory"] / "memory.memsw.limit_in_bytes", memory, optional=True)
        _write(dirs["pids"] / "pids.max", str(pids_max))
        return WorkerGroup(
            tuple(dict.fromkeys(dirs.values())), dirs["memory"] / "memory.oom_control", dirs["pids"] / "pids.events"
        )

    def remove(self, key: str) -> None:
        """End whatever still runs in worker ``key``'s group, then remove the group."""
        _remove([parent / key for parent in dict.fromkeys(self.parents.values())])

    def close(self) -> None:
        """Remove every worker group and the parents themselves (what this server made)."""
        self.clear()
        for parent in dict.fromkeys(self.parents.values()):
            with contextlib.suppress(OSError):
                parent.rmdir()

    def clear(self) -> list[str]:
        """Remove every worker group left under the parents (an earlier run's); their names."""
        found = sorted({child.name for parent in set(self.parents.values()) for child in _children(parent)})
        for key in found:
            self.remove(key)
        return found


def find_hierarchy(name: str, mounts: Path = Path("/proc/mounts"), own: Path = Path("/proc/self/cgroup")) -> Hierarchy:
    """This server's parent group ``name`` in v2 or else v1, created; ``OSError`` says why neither works."""
    lines = own.read_text().splitlines()
    groups = {
        controller: path
        for _, controllers, path in (line.split(":", 2) for line in lines)
        for controller in controllers.split(",")
    }
    mounted = [line.split() for line in mounts.read_text().splitlines()]
    v2_root = next((Path(fields[1]) for fields in mounted if fields[2] == "cgroup2"), None)
    problems = []
    if v2_root is not None and "" in groups:
        try:
            return _v2(v2_root / groups[""].lstrip("/"), name)
        except OSError as error:
            problems.append(f"cgroup v2: {error.strerror or error}")
    try:
        return _v1(mounted, groups, name)
    except OSError as error:
        problems.append(f"cgroup v1: {error.strerror or error}")
    raise OSError(errno.ENOTSUP, "; ".join(problems))


def _v2(own: Path, name: str) -> Hierarchy:
    offered = set((own / "cgroup.controllers").read_text().split())
    missing = [c for c in CONTROLLERS if c not in offered]
    if missing:
        raise OSError(errno.ENOTSUP, f"the server's group {own} does not offer {', '.join(missing)}")
    enable = " ".join(f"+{c}" for c in CONTROLLERS)
    try:
        _write(own / "cgroup.subtree_control", enable)
    except OSError as error:
        if error.errno != errno.EBUSY:
            raise
        leaf = own / "server"  # v2: a group handing controllers down holds no process itself
        leaf.mkdir(exist_ok=True)
        for pid in (own / "cgroup.procs").read_text().split():
            with contextlib.suppress(ProcessLookupError, OSError):
                _write(leaf / "cgroup.procs", pid)
        _write(own / "cgroup.subtree_control", enable)
    parent = own / name
    parent.mkdir(exist_ok=True)
    _write(parent / "cgroup.subtree_control", enable)
    return Hierarchy("v2", dict.fromkeys(CONTROLLERS, parent))


def _v1(mounted: list[list[str]], groups: dict[str, str], name: str) -> Hierarchy:
    parents = {}
    for controller in CONTROLLERS:
        mount = next(
            (Path(f[1]) for f in mounted if f[2] == "cgroup" and controller in f[3].split(",")),
            None,
        )
        if mount is None:
            raise OSError(errno.ENOTSUP, f"no {controller} hierarchy is mounted")
        parent = mount / groups.get(controller, "/").lstrip("/") / name
        parent.mkdir(exist_ok=True)  # PermissionError, read-only file system: not ours to use
        parents[controller] = parent
    if "memory" in parents:
        _write(parents["memory"] / "memory.use_hierarchy", "1", optional=True)
    return Hierarchy("v1", parents)


def _write(path: Path, value: str, optional: bool = False) -> None:
    """Write a control file; ``optional``: one a kernel may lack (swap accounting) is skipped."""
    try:
        path.write_text(value)
    except OSError:
        if not optional:
            raise


def _children(parent: Path) -> Iterable[Path]:
    try:
        return [child for child in parent.iterdir() if child.is_dir()]
    except OSError:
        return []


def _remove(groups: list[Path]) -> None:
    """Kill every process of ``groups`` and remove them (a group with processes cannot go)."""
    for _ in range(50):
        alive = False
        for group in groups:
            for pid in _procs(group):
                alive = True
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        if not alive:
            break
        time.sleep(0.02)
    for group in groups:
        with contextlib.suppress(FileNotFoundError):
            try:
                group.rmdir()
            except OSError as error:
                log.warning("cgroup_not_removed", group=str(group), error=error.strerror)


def _procs(group: Path) -> list[int]:
    try:
        return [int(pid) for pid in (group / "cgroup.procs").read_text().split()]
    except (FileNotFoundError, ValueError):
        return []
