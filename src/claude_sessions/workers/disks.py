"""Each tenant's workspace a filesystem of its own, of ``WORKSPACE_MAX_MB``: a full one stops only it.

The CLI's ``Write`` and ``Edit`` write from the CLI process itself, outside any sandbox, so the
size must hold at the filesystem: a sparse ext4 image per tenant in the data directory, loop-mounted
on its workspace folder. A write past the size fails with ``ENOSPC`` and what was written before
stays. What a folder held before its first mount is copied in first; a mount survives a restart of
the server (it is found again), and ``release`` unmounts them all.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import structlog

log = structlog.get_logger("claude_sessions.limits")

#: Seconds a mount or mkfs may take before it counts as failed.
COMMAND_SECONDS = 30


class WorkspaceDisks:
    """The loop-mounted workspaces of one data directory."""

    def __init__(self, images: Path, size_mb: int) -> None:
        self.images, self.size_mb = images, size_mb
        self._lock = threading.Lock()
        self._mounted: set[Path] = set()

    def ensure(self, folder: Path) -> None:
        """Give ``folder`` (a tenant's workspace) its own filesystem unless it has one; ``OSError`` if it cannot."""
        if folder in self._mounted:
            return
        with self._lock:
            if os.path.ismount(folder):
                self._mounted.add(folder)
                return
            image = self.images / f"{folder.name}.ext4"
            if not image.exists():
                _make_image(image, self.size_mb)
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            if any(folder.iterdir()):
                _fill(image, folder)
            _run("mount", "-o", "loop,nosuid,nodev", str(image), str(folder))
            folder.chmod(0o700)
            with contextlib.suppress(OSError):  # mkfs's, empty: not the tenant's to see
                (folder / "lost+found").rmdir()
            self._mounted.add(folder)
            log.info("workspace_disk_mounted", workspace=folder.name, size_mb=self.size_mb)

    def release(self) -> None:
        """Unmount every workspace this process mounted (lazily: a process still inside keeps it until it ends)."""
        with self._lock:
            for folder in sorted(self._mounted):
                try:
                    _run("umount", "--lazy", str(folder))
                except OSError as error:
                    log.warning("workspace_disk_not_unmounted", workspace=folder.name, error=str(error))
            self._mounted.clear()


def usable(scratch: Path) -> str | None:
    """Why workspace disks cannot be made here (None: they can), tried once on a 1 MB image."""
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch) as folder:
        probe = WorkspaceDisks(Path(folder) / "images", 8)
        try:
            probe.ensure(Path(folder) / "probe")
        except OSError as error:
            return str(error)
        finally:
            probe.release()
    return None


def _make_image(image: Path, size_mb: int) -> None:
    image.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    partial = image.with_suffix(".partial")
    with partial.open("wb") as file:
        file.truncate(size_mb * 1024 * 1024)  # sparse: takes disk space only as it fills
    # No blocks reserved for root: every byte is the tenant's.
    _run("mkfs.ext4", "-q", "-F", "-m", "0", "-E", "root_owner=0:0", str(partial))
    partial.rename(image)


def _fill(image: Path, folder: Path) -> None:
    """Copy what ``folder`` holds into the new filesystem, so mounting over it hides nothing."""
    with tempfile.TemporaryDirectory(dir=image.parent) as staging:
        _run("mount", "-o", "loop", str(image), staging)
        try:
            shutil.copytree(folder, staging, symlinks=True, dirs_exist_ok=True)
        finally:
            _run("umount", staging)
    for entry in folder.iterdir():  # the copy is what the tenant sees from now on
        shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()


def _run(*command: str) -> None:
    """Run a system command; its failure is an ``OSError`` saying what it printed."""
    if shutil.which(command[0]) is None:
        raise OSError(f"{command[0]} is not installed")
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=COMMAND_SECONDS, check=False)
    except subprocess.TimeoutExpired:
        raise OSError(f"{command[0]} did not finish within {COMMAND_SECONDS} s") from None
    if done.returncode != 0:
        raise OSError(f"{command[0]} failed: {(done.stderr or done.stdout).strip()[:200]}")
