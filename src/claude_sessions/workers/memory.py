"""What a worker's processes hold in memory, counted so that the figures add up.

A process's resident set (RSS) counts in full every page it shares with others: the CLI
runtime's code, the libraries. Summed over N CLIs, RSS counts those pages N times. The
proportional set (PSS) charges each shared page to its sharers in equal parts, so PSS sums across
processes to what they hold together. The unique set (USS) is what the process alone holds:
what ending it frees. RSS minus USS is the shared part it maps.

Reading them (``/proc/<pid>/smaps_rollup``, through psutil's ``memory_full_info``) walks the
process's page tables: about a millisecond a process. It is done when asked (``/v1/pool``), never
on a metrics scrape or a health report.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psutil


@dataclass(frozen=True)
class Footprint:
    """Memory of a set of processes, in bytes, each figure summed over them."""

    rss: int
    pss: int
    uss: int
    processes: int

    @property
    def shared(self) -> int:
        """Resident but not unique: the pages these processes share (with each other or others)."""
        return self.rss - self.uss

    def __add__(self, other: Footprint) -> Footprint:
        return Footprint(
            self.rss + other.rss, self.pss + other.pss, self.uss + other.uss, self.processes + other.processes
        )


def tree_footprint(pid: int) -> Footprint | None:
    """RSS, PSS and USS of ``pid`` and all its descendants, summed.

    None when ``pid`` is gone, or when it or a descendant may not be read (a figure that
    silently leaves out a process would understate it), or where the system has no PSS. A
    descendant that ends while it is read counts nothing: it holds nothing any more.
    """
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
        total = _footprint(root)
        if total is None:
            return None
        for child in processes[1:]:
            try:
                figures = _footprint(child)
            except psutil.NoSuchProcess:  # ended meanwhile (a zombie too)
                continue
            if figures is None:
                return None
            total += figures
    except psutil.Error:  # the root gone, or a process we may not read
        return None
    return total


def tree_pss(pid: int) -> int | None:
    """PSS in bytes of ``pid`` and its descendants; None when it cannot be read (see :func:`tree_footprint`)."""
    figures = tree_footprint(pid)
    return figures.pss if figures is not None else None


def add_pss(connections: list[dict[str, Any]]) -> None:
    """Give each of a pool status's connections that shows a pid (the admin's view) its ``pss_bytes``:
    the PSS of its CLI and the processes the CLI started. Blocking: a millisecond or so a worker."""
    for connection in connections:
        if connection.get("pid") is not None:
            connection["pss_bytes"] = tree_pss(connection["pid"])


def _footprint(process: psutil.Process) -> Footprint | None:
    info = process.memory_full_info()
    pss = getattr(info, "pss", None)  # Linux only
    if pss is None:
        return None
    return Footprint(rss=info.rss, pss=pss, uss=info.uss, processes=1)
