"""An earlier run's CLI processes: found by the pid ledger, or by the mark mark in their environment."""

from __future__ import annotations

import fcntl
import hashlib
import os
from pathlib import Path

import psutil
import structlog

from claude_sessions.errors import ConfigError

log = structlog.get_logger("claude_sessions.processes")

#: psutil's start times are rounded; a pid reused by another process starts later than this.
_SAME_START = 0.05


def process_started_at(pid: int) -> float:
    """The process's start time (seconds since the epoch), or 0 if it is gone."""
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return 0.0


#: Set in every CLI's environment: which data directory's server started it.
MARK_VARIABLE = "CLAUDE_SESSIONS_OWNER"


def data_dir_mark(data_dir: Path) -> str:
    """The mark of one data directory (one server owns it at a time, by its lock)."""
    return hashlib.sha256(os.fsencode(data_dir.resolve())).hexdigest()[:16]


def _marked(mark: str) -> list[psutil.Process]:
    """Live processes carrying ``mark``'s mark (looked for before this run starts any).

    The ledger misses a CLI the server was still connecting when it died; the mark
    in its environment does not.
    """
    return [
        process
        for process in psutil.process_iter(["environ"], ad_value=None)
        if (process.info["environ"] or {}).get(MARK_VARIABLE) == mark and process.pid != os.getpid()
    ]


def end_stray_processes(recorded: list[tuple[int, float]], mark: str) -> list[int]:
    """Kill an earlier run's CLIs: the recorded ones still running (a pid now used by
    another process is left alone) and any other carrying this data directory's mark."""
    ended = []
    processes = []
    for pid, started_at in recorded:
        try:
            process = psutil.Process(pid)
            if abs(process.create_time() - started_at) <= _SAME_START:  # else the pid was reused: not ours
                processes.append(process)
        except psutil.Error:
            continue
    known = {p.pid for p in processes}
    processes += [p for p in _marked(mark) if p.pid not in known]
    for process in processes:
        try:
            process.kill()
            process.wait(5)
            ended.append(process.pid)
        except psutil.Error:
            continue
    if ended:
        log.warning("stray_cli_processes_ended", pids=ended)
    return ended


class DataDirLock:
    """One server per data directory: a second one would end the first one's CLIs at start."""

    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self._file = (data_dir / "sessions.lock").open("a")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.close()
            raise ConfigError(f"data directory {data_dir} is in use by another claude-sessions handler") from None

    def release(self) -> None:
        self._file.close()  # releases the flock
