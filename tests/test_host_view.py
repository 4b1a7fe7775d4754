"""A sandboxed command's view of ``/etc``: what any user may read, and no secret whatever its mode."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from claude_sessions.workers.host_view import view_args


def test_etc_is_copied_without_what_others_cannot_read_and_without_secrets(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    (etc / "ssl" / "private").mkdir(parents=True)
    (etc / "ssl" / "certs").mkdir()
    files = {"passwd": 0o644, "shadow": 0o640, "sudoers": 0o644, "ssl/private/key.pem": 0o600}
    files["ssl/certs/ca.pem"] = 0o644
    for name, mode in files.items():
        (etc / name).write_text(name)
        (etc / name).chmod(mode)
    (etc / "ssl" / "private").chmod(0o700)
    (etc / "locked").mkdir(mode=0o700)
    (etc / "alternatives-python").symlink_to("/usr/bin/python3")
    args = view_args(tmp_path / "cache", etc)
    copy = Path(args[-4])
    assert args[-5:] == ["--ro-bind", str(copy), str(etc), "--tmpfs", "/tmp"] and copy.parent == tmp_path / "cache"
    assert (copy / "passwd").read_text() == "passwd" and (copy / "ssl" / "certs" / "ca.pem").exists()
    for hidden in ("shadow", "sudoers", "ssl/private", "locked"):
        assert not (copy / hidden).exists(), hidden
    assert os.readlink(copy / "alternatives-python") == "/usr/bin/python3"  # a symlink stays one
    assert args[:3] == ["--ro-bind", "/usr", "/usr"]  # programs and their libraries
    assert view_args(tmp_path / "cache", etc) == args  # the same state of /etc: the same copy, made once
    (etc / "hosts").write_text("127.0.0.1 localhost")
    (etc / "hosts").chmod(0o644)
    again = Path(view_args(tmp_path / "cache", etc)[-4])
    assert again != copy and (again / "hosts").exists()  # a changed /etc: a new copy


def test_a_file_removed_while_etc_is_copied_is_left_out_and_the_copy_is_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A package manager at work replaces files in /etc (``*.dpkg-new``) under a starting server."""
    etc = tmp_path / "etc"
    etc.mkdir()
    for name in ("passwd", "fuse.conf.dpkg-new"):
        (etc / name).write_text(name)
    copy2 = shutil.copy2

    def removed_meanwhile(source: str, target: str) -> object:
        if source.endswith(".dpkg-new"):
            Path(source).unlink()
        return copy2(source, target)

    monkeypatch.setattr(shutil, "copy2", removed_meanwhile)
    copy = Path(view_args(tmp_path / "cache", etc)[-4])
    assert sorted(p.name for p in copy.iterdir()) == ["passwd"]
