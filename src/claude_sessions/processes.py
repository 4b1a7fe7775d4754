"""CLI processes by pid and start time: enough to end an earlier run's strays, and nothing else."""

from __future__ import annotations

import psutil
import structlog

log = structlog.get_logger("claude_sessions.processes")

#: psutil's start times are rounded; a pid reused by another process starts later than this.
_SAME_START = 0.05


def process_started_at(pid: int) -> float:
    """The process's start time (seconds since the epoch), or 0 if it is gone."""
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return 0.0


def end_stray_processes(recorded: list[tuple[int, float]]) -> list[int]:
    """Kill the recorded processes still running; a pid now used by another process is left alone."""
    ended = []
    for pid, started_at in recorded:
        try:
            process = psutil.Process(pid)
            if abs(process.create_time() - started_at) > _SAME_START:
                continue  # the pid was reused: not ours
            process.kill()
            process.wait(5)
            ended.append(pid)
        except psutil.Error:
            continue
    if ended:
        log.warning("stray_cli_processes_ended", pids=ended)
    return ended
