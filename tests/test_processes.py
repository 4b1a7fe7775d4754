"""Crash hygiene: recorded or marked processes are ended, a reused pid or another owner's is left alone."""

from __future__ import annotations

import os
import subprocess

from claude_sessions.workers.processes import MARK_VARIABLE, end_stray_processes, process_started_at

OWNER = "0123456789abcdef"


def test_recorded_process_is_ended_and_a_reused_pid_is_not() -> None:
    stray = subprocess.Popen(["sleep", "60"])
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        recorded = [
            (stray.pid, process_started_at(stray.pid)),
            (bystander.pid, process_started_at(bystander.pid) - 100),  # same pid, another process
        ]
        assert end_stray_processes(recorded, OWNER) == [stray.pid]
        stray.wait(5)  # ended (psutil reaped it, so the exit status is gone)
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()
        stray.kill()
        stray.wait()


def test_gone_processes_are_skipped() -> None:
    assert end_stray_processes([(2**22 + 12345, 1.0)], OWNER) == []


def test_an_unrecorded_process_with_this_owners_mark_is_ended_and_others_are_not() -> None:
    """A CLI still connecting when the server died is in no ledger, but carries the mark."""
    mine = subprocess.Popen(["sleep", "60"], env={**os.environ, MARK_VARIABLE: OWNER})
    theirs = subprocess.Popen(["sleep", "60"], env={**os.environ, MARK_VARIABLE: "another-owner"})
    try:
        assert end_stray_processes([], OWNER) == [mine.pid]
        mine.wait(5)
        assert theirs.poll() is None
    finally:
        for process in (mine, theirs):
            process.kill()
            process.wait()
