"""Crash hygiene: recorded processes are ended, a reused pid is left alone."""

from __future__ import annotations

import subprocess

from claude_sessions.processes import end_stray_processes, process_started_at


def test_recorded_process_is_ended_and_a_reused_pid_is_not() -> None:
    stray = subprocess.Popen(["sleep", "60"])
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        recorded = [
            (stray.pid, process_started_at(stray.pid)),
            (bystander.pid, process_started_at(bystander.pid) - 100),  # same pid, another process
        ]
        assert end_stray_processes(recorded) == [stray.pid]
        stray.wait(5)  # ended (psutil reaped it, so the exit status is gone)
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()
        stray.kill()
        stray.wait()


def test_gone_processes_are_skipped() -> None:
    assert end_stray_processes([(2**22 + 12345, 1.0)]) == []
