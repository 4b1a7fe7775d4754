"""Records an outage kept from the database wait on the node's disk, and a restart writes them, fenced."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from claude_sessions.config import SessionConfig
from claude_sessions.observability.metrics import SessionMetrics
from claude_sessions.sessions.session import Session
from claude_sessions.sessions.unsaved import UnsavedRecords
from claude_sessions.store.records import Lease, RunningTurn, SessionRecord
from claude_sessions.store.sqlite import SqliteRegistry


def record(key: str, count: int, fence: int) -> SessionRecord:
    metrics = SessionMetrics(message_count=count)
    return SessionRecord(key, None, SessionConfig(), {}, metrics, "c", False, True, busy=True, fence=fence)


async def test_a_record_kept_through_a_crash_is_written_at_the_restart_with_its_turn(tmp_path: Path) -> None:
    registry = SqliteRegistry(tmp_path / "sessions.db", "node", 15.0)
    for key in ("kept", "moved"):
        assert await registry.create(record(key, 0, 0), 10, None, hold=True) == "created"
    folder = tmp_path / "spill"
    unsaved = UnsavedRecords(folder)
    turn = RunningTurn("prompt-uuid", "key-1")
    kept, moved = Session(id="kept", config=SessionConfig()), Session(id="moved", config=SessionConfig())
    unsaved.add(kept, dataclasses.replace(record("kept", 1, 1), turn=turn))
    unsaved.add(moved, record("moved", 1, 1))
    registry.node_id = "other"  # another node took "moved" over since: its lease's fence is newer
    assert isinstance(await registry.claim("moved"), Lease)

    restarted = UnsavedRecords(folder)  # the node's next run, on the same data directory
    assert await restarted.write_left(registry) == 1
    saved = await registry.get("kept")
    assert saved is not None and saved.metrics.message_count == 1
    claim = await registry.claim("kept")
    assert isinstance(claim, Lease) and claim.unfinished and claim.turn == turn
    other = await registry.get("moved")
    assert other is not None and other.metrics.message_count == 0  # fenced out
    assert list(folder.iterdir()) == []


async def test_a_save_that_reaches_the_database_clears_only_its_own_wait(tmp_path: Path) -> None:
    folder = tmp_path / "spill"
    unsaved = UnsavedRecords(folder)
    waiting, saved = Session(id="waiting", config=SessionConfig()), Session(id="saved", config=SessionConfig())
    unsaved.add(waiting, record("waiting", 1, 1))
    unsaved.discard(saved)  # never waited: nothing written
    assert list(unsaved) == [waiting] and len(list(folder.iterdir())) == 1
    unsaved.discard(waiting)
    assert list(unsaved) == [] and list(folder.iterdir()) == []
