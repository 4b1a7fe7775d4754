"""The chaos soak (bench/chaos.py) for a minute, every kind of fault: nothing acknowledged is lost,
doubled, reordered or forked, and nothing is left behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parent.parent / "bench"


@pytest.mark.slow
@pytest.mark.timeout(480)  # a minute of faults, three nodes started and stopped, the clients' last turns
def test_a_minute_of_faults_loses_doubles_reorders_forks_and_leaks_nothing() -> None:
    soak = subprocess.run(
        [
            sys.executable,
            "chaos.py",
            "--minutes",
            "1",
        ],
        cwd=BENCH,
        capture_output=True,
        text=True,
        timeout=450,
    )
    line = soak.stdout.strip().splitlines()[-1] if soak.stdout.strip() else ""
    print(line)
    assert line, soak.stderr[-4000:]
    outcome = json.loads(line)
    wrong = {k: outcome[k] for k in ("lost", "duplicated", "reordered", "forked", "leaked") if outcome[k]}
    assert wrong == {}, soak.stderr[-4000:]
    assert outcome["acknowledged"] > 0 and sum(outcome["faults"].values()) > 0, line
    assert soak.returncode == 0, soak.stderr[-4000:]
