"""Finding where sessions' groups live: cgroup v2 where the server's group offers the controllers, else v1."""

from __future__ import annotations

from pathlib import Path

import pytest

from claude_sessions.workers.cgroups import find_hierarchy


def fake_v2(tmp_path: Path, controllers: str) -> tuple[Path, Path, Path]:
    """A delegated v2 subtree as files: the mount table, the server's own group, its controllers."""
    root = tmp_path / "cgroup2"
    own = root / "system.slice" / "svc"
    own.mkdir(parents=True)
    (own / "cgroup.controllers").write_text(controllers)
    (own / "cgroup.procs").write_text("")
    mounts = tmp_path / "mounts"
    mounts.write_text(f"cgroup2 {root} cgroup2 rw,nosuid 0 0\n")
    self_cgroup = tmp_path / "cgroup"
    self_cgroup.write_text("0::/system.slice/svc\n")
    return mounts, self_cgroup, own


def test_a_delegated_v2_subtree_holds_each_workers_limits(tmp_path: Path) -> None:
    mounts, self_cgroup, own = fake_v2(tmp_path, "cpuset cpu io memory pids")
    hierarchy = find_hierarchy("claude-sessions-x", mounts, self_cgroup)
    parent = own / "claude-sessions-x"
    assert hierarchy.version == "v2" and set(hierarchy.parents.values()) == {parent}
    assert (own / "cgroup.subtree_control").read_text() == "+memory +pids +cpu"
    assert (parent / "cgroup.subtree_control").read_text() == "+memory +pids +cpu"
    group = hierarchy.create("w1", memory_mb=128, pids_max=64)
    assert group.dirs == (parent / "w1",) and group.oom_events == parent / "w1" / "memory.events"
    assert (parent / "w1" / "memory.max").read_text() == str(128 * 2**20)
    assert (parent / "w1" / "pids.max").read_text() == "64"
    assert (parent / "w1" / "memory.swap.max").read_text() == "0"


def test_without_the_controllers_neither_version_is_used_and_the_reason_says_why(tmp_path: Path) -> None:
    mounts, self_cgroup, _ = fake_v2(tmp_path, "hugetlb")
    with pytest.raises(OSError, match=r"cgroup v2: .* does not offer memory, pids, cpu; cgroup v1: no memory"):
        find_hierarchy("claude-sessions-x", mounts, self_cgroup)
