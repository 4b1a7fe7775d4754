"""Workspaces: where a session's CLI works, and so whose session it is.

Every tenant's workspace is a first-level folder of ``WORKSPACE_ROOT``; a session's ``cwd``
lies inside one. It is read again at every turn and spawn: a tenant with Bash can swap a
folder for a symlink at any time, and no spelling may lead a session out of its workspace.
"""

from __future__ import annotations

import os
from pathlib import Path

from claude_sessions.config import SessionConfig, SystemConfig
from claude_sessions.observability.telemetry import DEFAULT_TENANT

#: The longest file name Linux accepts; a longer folder name is bad input, not a server error.
NAME_MAX = 255


def resolve_folder(path: Path, shown: str) -> Path:
    """``path`` with every symlink followed; ``ValueError`` naming ``shown`` (never the server's
    path) for a symlink loop or a file on the way."""
    try:
        resolved = path.resolve()
        existing = next(p for p in (resolved, *resolved.parents) if p.exists())
    except RuntimeError:  # a symlink loop (before Python 3.13)
        raise ValueError(f"cwd {shown!r} cannot be resolved (a symlink loop)") from None
    except OSError as error:  # a folder on the way its owner made unreadable, a loop since 3.13
        raise ValueError(f"cwd {shown!r} cannot be resolved ({error.strerror})") from None
    if not existing.is_dir():
        raise ValueError(f"cwd {shown!r} names a file, not a folder")
    return resolved


def session_cwd(session: SessionConfig, config: SystemConfig) -> Path:
    """The CLI's working directory: the session's ``cwd``, inside the workspace root.

    Checked at every turn and spawn, not only at creation: a tenant with Bash can replace
    a folder of its workspace with a symlink afterwards. Raises ``ValueError`` for a
    folder outside the root (``..``, absolute paths elsewhere, symlinks leading out)
    and for one a symlink leads into another first-level folder (another tenant's
    workspace, or the root above them all).
    """
    root = config.runtime.workspace_root
    if session.cwd is None:
        if session.user is not None:
            raise ValueError(f"cwd: a session of user {session.user!r} works in that user's folder; name it")
        return root
    candidate = Path(session.cwd)
    if any(len(os.fsencode(part)) > NAME_MAX for part in candidate.parts):
        raise ValueError(f"cwd: a folder name is longer than {NAME_MAX} bytes")
    named = candidate if candidate.is_absolute() else root / candidate
    written = Path(os.path.normpath(named))
    shown = str(written.relative_to(root)) if written.is_relative_to(root) else session.cwd  # never our path
    resolved = resolve_folder(named, shown)
    if not resolved.is_relative_to(root):
        raise ValueError(f"cwd {shown!r} is outside the workspace root")
    # A tenant's workspace is its first-level folder; an end user's, the user's folder in it.
    levels = 1 if session.user is None else 2
    workspace = resolved.relative_to(root).parts[:levels]
    if _named_workspace(named, root, levels) != workspace:
        raise ValueError(f"cwd {shown!r} leads into another workspace")
    if session.user is not None and workspace[1:] != (session.user,):
        raise ValueError(f"cwd {shown!r} is not in the workspace of user {session.user!r}")
    return resolved


def _named_workspace(named: Path, root: Path, levels: int) -> tuple[str, ...] | None:
    """The first ``levels`` folders below the root that ``named`` spells out (empty: the root
    itself), read component by component; None when it reaches them only through
    ``..`` or not at all."""
    if ".." not in named.parts and named.is_relative_to(root):  # the usual case: read as written
        return named.relative_to(root).parts[:levels]
    parts = named.parts
    for end in range(1, len(parts) + 1):
        if Path(*parts[:end]).resolve() == root:  # a symlinked spelling of the root counts
            rest = parts[end : end + levels]
            return None if ".." in rest else rest
    return None


def tenant_of(session: SessionConfig, config: SystemConfig) -> str:
    """The tenant whose workspace a session's CLI works in (a worker serves one workspace only)."""
    inside = session_cwd(session, config).relative_to(config.runtime.workspace_root).parts
    return inside[0] if inside else DEFAULT_TENANT
