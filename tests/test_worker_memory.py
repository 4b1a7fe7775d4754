"""A worker's memory: the PSS of a process and every process it started, read from /proc."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from claude_sessions.workers.memory import Footprint, add_pss, tree_footprint, tree_pss

MB = 2**20


@pytest.fixture
def shell_with_sleep() -> Iterator[tuple[int, int]]:
    """(a shell's pid, the pid of the ``sleep`` it started): a process with a child of its own."""
    shell = subprocess.Popen(["sh", "-c", "sleep 30 & wait"])
    try:
        deadline = time.monotonic() + 5
        while not (children := psutil.Process(shell.pid).children()):
            assert time.monotonic() < deadline, "the shell started no sleep"
            time.sleep(0.01)
        yield shell.pid, children[0].pid
    finally:
        for child in psutil.Process(shell.pid).children(recursive=True):
            child.kill()
        shell.kill()
        shell.wait()


def test_a_process_alone_has_its_unique_part_within_its_share_within_its_resident_set(
    shell_with_sleep: tuple[int, int],
) -> None:
    _, sleep = shell_with_sleep
    figures = tree_footprint(sleep)
    assert figures is not None and figures.processes == 1
    assert 0 < figures.uss <= figures.pss <= figures.rss
    assert figures.shared == figures.rss - figures.uss > 0  # libc at least, mapped by others too
    assert tree_pss(sleep) == pytest.approx(figures.pss, abs=MB)


def test_the_figures_cover_the_process_and_its_descendants(shell_with_sleep: tuple[int, int]) -> None:
    shell, sleep = shell_with_sleep
    whole, alone, child = tree_footprint(shell), _one(shell), tree_footprint(sleep)
    assert whole is not None and child is not None
    assert whole.processes == 2
    # Two idle processes: their memory does not move between the reads.
    assert whole.pss == pytest.approx(alone.pss + child.pss, abs=MB)
    assert whole.uss == pytest.approx(alone.uss + child.uss, abs=MB)
    # The test process's own tree holds the shell and the sleep too.
    mine = tree_footprint(psutil.Process().pid)
    assert mine is not None and mine.processes == 1 + len(psutil.Process().children(recursive=True))
    assert mine.pss > whole.pss


def test_a_process_that_is_gone_or_unreadable_has_no_figure(
    shell_with_sleep: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    shell, sleep = shell_with_sleep
    ended = subprocess.Popen(["true"])
    ended.wait()
    assert tree_pss(ended.pid) is None
    read = psutil.Process.memory_full_info

    def denied_for_sleep(process: psutil.Process) -> Any:
        if process.pid == sleep:
            raise psutil.AccessDenied(process.pid)
        return read(process)

    monkeypatch.setattr(psutil.Process, "memory_full_info", denied_for_sleep)
    # A figure leaving out a process it may not read would understate the worker: none at all.
    assert tree_pss(sleep) is None and tree_pss(shell) is None

    def ended_for_sleep(process: psutil.Process) -> Any:
        if process.pid == sleep:
            raise psutil.NoSuchProcess(process.pid)
        return read(process)

    monkeypatch.setattr(psutil.Process, "memory_full_info", ended_for_sleep)
    # A descendant that ends while it is read holds nothing any more; the root ending leaves no figure.
    whole = tree_footprint(shell)
    assert whole is not None and whole.processes == 1
    assert tree_pss(sleep) is None


def test_add_pss_gives_a_figure_to_the_connections_that_show_a_pid(shell_with_sleep: tuple[int, int]) -> None:
    shell, _ = shell_with_sleep
    gone = subprocess.Popen(["true"])
    gone.wait()
    admins = [{"id": "a", "pid": shell}, {"id": "b", "pid": gone.pid}]
    tenants = [{"id": "a"}]
    add_pss(admins)
    add_pss(tenants)
    assert isinstance(admins[0]["pss_bytes"], int) and admins[0]["pss_bytes"] > 0
    assert admins[1]["pss_bytes"] is None
    assert tenants == [{"id": "a"}]  # a tenant's view shows neither pids nor memory


def _one(pid: int) -> Footprint:
    info = psutil.Process(pid).memory_full_info()
    return Footprint(rss=info.rss, pss=info.pss, uss=info.uss, processes=1)
