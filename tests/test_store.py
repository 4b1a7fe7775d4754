"""The SQLite registry: round trips, one owner per data directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from claude_sessions import ConfigError, SessionConfig
from claude_sessions.metrics import SessionMetrics
from claude_sessions.store import SessionRecord, SessionStore


def test_sessions_round_trip(tmp_path: Path) -> None:
    store = SessionStore(tmp_path / "sessions.db")
    metrics = SessionMetrics(message_count=3, input_tokens=10, total_cost=0.5)
    record = SessionRecord("acme/s1", "acme", SessionConfig(system_prompt="hi"), {"k": [1]}, metrics, "uuid-1", False)
    store.save(record)
    store.close()
    reopened = SessionStore(tmp_path / "sessions.db")
    assert reopened.load() == [record]
    reopened.delete("acme/s1")
    assert reopened.load() == []
    reopened.close()


def test_one_owner_per_data_directory(tmp_path: Path) -> None:
    first = SessionStore(tmp_path / "sessions.db")
    with pytest.raises(ConfigError, match="in use"):
        SessionStore(tmp_path / "sessions.db")
    first.close()
    SessionStore(tmp_path / "sessions.db").close()


def test_workers_replies_and_retired_transcripts(tmp_path: Path) -> None:
    store = SessionStore(tmp_path / "sessions.db")
    store.add_worker(123, 1000.5)
    assert store.take_workers() == [(123, 1000.5)] and store.take_workers() == []
    store.save_reply("s", "key-1", "hello", [{"type": "result"}])
    assert store.reply("s", "key-1") == ("hello", [{"type": "result"}]) and store.reply("s", "other") is None
    store.retire_transcript(tmp_path / "t.jsonl")
    assert store.take_retired_transcripts(retired_before=0) == []
    assert store.take_retired_transcripts(retired_before=9e12) == [tmp_path / "t.jsonl"]
    store.close()
