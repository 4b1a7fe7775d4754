"""A tenant's workspace as a filesystem of its own size: full stops only it, nothing is lost."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from claude_sessions.workers.disks import WorkspaceDisks, usable

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="loop mounts need root")


def test_a_workspace_keeps_what_it_held_refuses_a_write_past_its_size_and_survives_a_remount(
    tmp_path: Path,
) -> None:
    assert usable(tmp_path / "probe") is None
    workspace = tmp_path / "workspaces" / "alice"
    workspace.mkdir(parents=True)
    (workspace / "notes.txt").write_text("before the limit")
    disks = WorkspaceDisks(tmp_path / "disks", 16)
    try:
        disks.ensure(workspace)
        assert os.path.ismount(workspace) and sorted(p.name for p in workspace.iterdir()) == ["notes.txt"]
        with pytest.raises(OSError) as full, (workspace / "big").open("wb") as big:
            for _ in range(32):
                big.write(b"\0" * 2**20)
                big.flush()
                os.fsync(big.fileno())
        assert full.value.errno in (errno.ENOSPC, errno.EDQUOT)
        assert (workspace / "notes.txt").read_text() == "before the limit"
    finally:
        disks.release()
    assert not os.path.ismount(workspace)
    again = WorkspaceDisks(tmp_path / "disks", 16)
    try:
        again.ensure(workspace)
        assert (workspace / "notes.txt").read_text() == "before the limit"  # kept in its image
    finally:
        again.release()
