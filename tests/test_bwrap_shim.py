"""The bwrap shim every sandboxed command starts through: the view swapped in, the cgroup joined,
a limit that stopped the command said in words, the command's own status kept."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import pytest

Shim = Callable[..., subprocess.CompletedProcess[str]]
SHIM = resources.files("claude_sessions.workers") / "bwrap.sh"
#: A stand-in for the real bwrap: prints its arguments, counts an OOM kill if asked, exits 3.
FAKE_BWRAP = """#!/bin/sh
for arg do echo "$arg"; done
[ -n "$BUMP" ] && echo "oom_kill 1" > "$BUMP"
exit 3
"""


@pytest.fixture
def run(tmp_path: Path) -> Shim:
    fake = tmp_path / "bwrap"
    fake.write_text(FAKE_BWRAP)
    fake.chmod(0o755)
    view = tmp_path / "view.args"
    view.write_text("--ro-bind\n/usr\n/usr\n--tmpfs\n/tmp\n")
    group = tmp_path / "group"
    group.mkdir()
    (group / "cgroup.procs").write_text("")
    events = tmp_path / "memory.events"
    events.write_text("oom_kill 0\n")

    def shim(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        variables = {
            "PATH": os.environ["PATH"],
            "CLAUDE_SESSIONS_BWRAP": str(fake),
            "CLAUDE_SESSIONS_VIEW": str(view),
            "CLAUDE_SESSIONS_CGROUPS": str(group),
            "CLAUDE_SESSIONS_OOM": str(events),
            "CLAUDE_SESSIONS_MEMORY_MB": "128",
            **env,
        }
        return subprocess.run(["sh", str(SHIM), *args], env=variables, capture_output=True, text=True, check=False)

    return shim


def test_the_hosts_root_is_replaced_by_the_view_and_the_rest_kept(run: Shim, tmp_path: Path) -> None:
    done = run("--new-session", "--ro-bind", "/", "/", "--bind", "/w", "/w", "--", "sh", "-c", "--ro-bind / /")
    assert done.returncode == 3  # the command's own status
    assert done.stdout.splitlines() == [
        "--new-session",
        "--ro-bind",
        "/usr",
        "/usr",
        "--tmpfs",
        "/tmp",
        "--bind",
        "/w",
        "/w",
        "--",
        "sh",
        "-c",
        "--ro-bind / /",
    ]
    assert (tmp_path / "group" / "cgroup.procs").read_text().strip().isdigit()  # it joined the group first


def test_a_kill_by_the_memory_limit_is_said_on_stderr(run: Shim, tmp_path: Path) -> None:
    done = run("--ro-bind", "/", "/", "--", "true", BUMP=str(tmp_path / "memory.events"))
    assert "SESSION_MEMORY_MB (128 MB)" in done.stderr and done.returncode == 3


def test_a_group_it_cannot_join_runs_nothing(run: Shim, tmp_path: Path) -> None:
    done = run("--ro-bind", "/", "/", "--", "true", CLAUDE_SESSIONS_CGROUPS=str(tmp_path / "gone"))
    assert done.returncode == 126 and done.stdout == "" and "limits could not be applied" in done.stderr


def test_the_clis_probe_passes_straight_through(run: Shim) -> None:
    assert run("--version").stdout.splitlines() == ["--version"]
