"""What of the host a sandboxed command sees: an allowlist, not the host minus a list.

The CLI's sandbox settings only hide paths (``denyRead``) from a read-only view of the whole
host: whatever the server's user may read and nobody listed stays readable (the host's ``/tmp``,
``/root``, ``/etc/shadow`` when the server runs as root). The bwrap shim replaces that view's
root with these arguments: the system folders programs need, of ``/etc`` only what any user may
read, and a private ``/tmp``; the CLI's own binds (the workspace, its temp folder, ``/dev``,
``/proc``) come after, as before. ``/etc`` is a copy, checked at each start of the server: a change
to the host's is seen by commands after the next start.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import uuid
from collections.abc import Callable
from pathlib import Path

#: Folders of programs and their libraries (a symlink, as on merged-/usr systems, stays one).
SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
#: Never shown, whatever their mode says.
SECRETS = frozenset({"shadow", "shadow-", "gshadow", "gshadow-", "sudoers", "sudoers.d", "ssl/private"})


def view_args(cache: Path, etc: Path = Path("/etc")) -> list[str]:
    """bwrap arguments building the view's root: system folders, ``/etc`` as any user may read it
    (a copy: one mount keeps a command's start fast, and what is left out is not there at all),
    and a private ``/tmp``."""
    args: list[str] = []
    for top in SYSTEM:
        path = Path(top)
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), top]
        elif path.is_dir():
            args += ["--ro-bind", top, top]
    return [*args, "--ro-bind", str(readable_copy(etc, cache)), str(etc), "--tmpfs", "/tmp"]


def readable_copy(etc: Path, cache: Path) -> Path:
    """The copy of ``etc`` without what any user could not read, made once per state of ``etc``
    (every server on the host shares it: copying takes ~0.5 s, reading the state ~15 ms)."""
    left_out = _unreadable(etc)
    state = hashlib.sha256()
    for root, dirs, files in os.walk(etc):
        dirs[:] = sorted(set(dirs) - left_out(root, dirs))
        for name in sorted(set(files) - left_out(root, files)):
            info = (Path(root) / name).lstat()
            state.update(f"{root}/{name}\0{info.st_mode}\0{info.st_size}\0{info.st_mtime_ns}\0".encode())
    copy = cache / f"etc-{state.hexdigest()[:16]}"
    if copy.is_dir():
        return copy
    cache.mkdir(mode=0o700, parents=True, exist_ok=True)
    partial = cache / f".etc-{uuid.uuid4().hex}"
    shutil.copytree(
        etc, partial, symlinks=True, ignore=left_out, ignore_dangling_symlinks=True, copy_function=_copy_if_there
    )
    partial.chmod(0o755)
    try:
        partial.rename(copy)
    except OSError:  # another server made it meanwhile
        shutil.rmtree(partial, ignore_errors=True)
    return copy


def _copy_if_there(source: str, target: str) -> None:
    """A file a package manager removes while the copy runs is left out, not a failed start."""
    with contextlib.suppress(FileNotFoundError):
        shutil.copy2(source, target)


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
