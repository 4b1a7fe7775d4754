"""The workload replay's server: ``claude-sessions serve`` with one probe, noting for every worker the
pool hands a session (a new conversation's, or a resume's) whether its CLI was running when asked.

The probe wraps ``WorkerPool.acquire``, through which a session gets its CLI: a worker connected
(``Worker.created_at``) after the call began made its caller wait for a CLI to start, whatever the
pool did meanwhile (start one, wait for a spare). It notes ``<monotonic> <new|resume> <live|started>``
a line into ``$BENCH_WORKLOAD_LOG`` (the machine's monotonic clock: the replay's too). Should the
pool lose ``acquire``, the server runs unprobed and says so in the file (``unprobed``).
"""

from __future__ import annotations

import functools
import math
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from common import probe_log, serve_probed

LOG_VARIABLE = "BENCH_WORKLOAD_LOG"
#: ``claude-sessions``, the probe installed first.
LAUNCHER = [
    sys.executable,
    "-c",
    f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import workload_probe; workload_probe.serve()",
]


def install() -> None:
    note = probe_log(LOG_VARIABLE)
    from claude_sessions.workers.pool import WorkerPool

    acquire = getattr(WorkerPool, "acquire", None)
    if acquire is None:
        note(f"{time.monotonic()} unprobed -")
        return

    @functools.wraps(acquire)
    async def probed(self: Any, config: Any, resume: str | None = None, *args: Any, **kwargs: Any) -> Any:
        asked = time.monotonic()
        worker = await acquire(self, config, resume, *args, **kwargs)
        made = getattr(worker, "created_at", None)
        outcome = "unknown" if not isinstance(made, float) else "started" if made >= asked else "live"
        note(f"{asked} {'new' if resume is None else 'resume'} {outcome}")
        return worker

    WorkerPool.acquire = probed  # type: ignore[method-assign]


def serve() -> None:
    install()
    serve_probed()


def outcomes(logs: list[Path], since: float, until: float = math.inf) -> Counter[str]:
    """``new live``, ``resume started``, ...: how many acquires asked from ``since`` to ``until`` (monotonic)
    had each outcome."""
    seen: Counter[str] = Counter()
    for log in logs:
        for line in log.read_text().splitlines() if log.exists() else []:
            at, kind, outcome = line.split(" ", 2)
            if kind == "unprobed" or since <= float(at) < until:
                seen[f"{kind} {outcome}"] += 1
    return seen
