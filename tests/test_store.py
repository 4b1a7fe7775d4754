"""The SQLite registry: round trips, one owner per data directory."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import asdict
from pathlib import Path

import pytest

from claude_sessions import ConfigError, SessionConfig
from claude_sessions.metrics import SessionMetrics
from claude_sessions.store import _MIGRATIONS, SessionRecord, SessionStore


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
    store.save(SessionRecord("s", None, SessionConfig(), {}, SessionMetrics(), None, False))
    store.save_reply("s", "key-1", "hello", [{"type": "result"}])
    assert store.reply("s", "key-1") == ("hello", [{"type": "result"}]) and store.reply("s", "other") is None
    store.retire_transcript(tmp_path / "t.jsonl")
    assert store.take_retired_transcripts(retired_before=0) == []
    assert store.take_retired_transcripts(retired_before=9e12) == [tmp_path / "t.jsonl"]
    store.close()


def test_no_reply_is_kept_for_a_deleted_session(tmp_path: Path) -> None:
    store = SessionStore(tmp_path / "sessions.db")
    store.save(SessionRecord("s", None, SessionConfig(), {}, SessionMetrics(), None, False))
    store.delete("s")  # deleted while its turn was still running
    store.save_reply("s", "key-1", "hello", [{"type": "result"}])
    assert store.reply("s", "key-1") is None
    store.close()


def test_a_database_of_the_first_schema_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "sessions.db"
    with sqlite3.connect(path) as old:  # as the first release wrote it: learned ids were recorded ones
        old.executescript(_MIGRATIONS[0])
        row = ("s1", None, SessionConfig().model_dump_json(), "{}", json.dumps(asdict(SessionMetrics())), "uuid-1", 0)
        old.execute("INSERT INTO sessions VALUES (?, ?, ?, ?, ?, ?, ?)", row)
    old.close()
    store = SessionStore(path)
    (record,) = store.load()
    assert record.claude_session_id == "uuid-1" and record.recorded
    assert store._db.execute("PRAGMA user_version").fetchone() == (len(_MIGRATIONS),)
    store.close()
