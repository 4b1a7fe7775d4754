"""What of the host a sandboxed command sees: an allowlist, not the host minus a list.

The CLI's sandbox settings only hide paths (``denyRead``) from a read-only view of the whole
host: whatever the server's user may read and nobody listed stays readable (the host's ``/tmp``,
``/root``, ``/etc/shadow`` when the server runs as root). The bwrap shim replaces that view's
root with these arguments: the system folders programs need, of ``/etc`` only what any user may
read, and a private ``/tmp``; the CLI's own binds (the workspace, its temp folder, ``/dev``,
``/proc``) come after, as before. ``/etc`` is copied at each start of the server: a change to
the host's is seen by commands after the next start.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

#: Folders of programs and their libraries (a symlink, as on merged-/usr systems, stays one).
SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
#: Never shown, whatever their mode says.
SECRETS = frozenset({"shadow", "shadow-", "gshadow", "gshadow-", "sudoers", "sudoers.d", "ssl/private"})


def view_args(run: Path, etc: Path = Path("/etc")) -> list[str]:
    """bwrap arguments building the view's root: system folders, ``/etc`` as any user may read it
    (a copy made now, in ``run``: one mount keeps a command's start fast, and what is left out is
    not there at all), and a private ``/tmp``."""
    args: list[str] = []
    for top in SYSTEM:
        path = Path(top)
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), top]
        elif path.is_dir():
            args += ["--ro-bind", top, top]
    readable = run / "etc"
    shutil.rmtree(readable, ignore_errors=True)
    shutil.copytree(etc, readable, symlinks=True, ignore=_unreadable(etc), ignore_dangling_symlinks=True)
    return [*args, "--ro-bind", str(readable), str(etc), "--tmpfs", "/tmp"]


def _unreadable(etc: Path) -> Callable[[str, list[str]], set[str]]:
    """``copytree``'s filter: what in ``etc`` any user could not read, or is a secret whatever its mode."""

    def left_out(folder: str, names: list[str]) -> set[str]:
        out = set()
        for name in names:
            path = Path(folder) / name
            try:
                mode = path.lstat().st_mode
            except OSError:
                out.add(name)
                continue
            if stat.S_ISLNK(mode):
                continue
            secret = str(path.relative_to(etc)) in SECRETS
            plain = stat.S_ISDIR(mode) or stat.S_ISREG(mode)
            if secret or not plain or not mode & stat.S_IROTH or (stat.S_ISDIR(mode) and not mode & stat.S_IXOTH):
                out.add(name)
        return out

    return left_out
