"""Structured logs: JSON lines for machines."""

from __future__ import annotations

import json
import logging

import pytest
import structlog

from claude_sessions.observability.logs import configure_logging


def test_json_lines_carry_the_event_and_its_fields(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", json=True)
    try:
        structlog.get_logger("claude_sessions.test").info("session_created", session_id="s1", pool_size=3)
        logging.getLogger("some.library").warning("plain %s", "record")
        lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers.clear()
    first, second = lines
    assert first["event"] == "session_created" and first["session_id"] == "s1" and first["pool_size"] == 3
    assert first["level"] == "info" and "timestamp" in first
    assert second["event"] == "plain record" and second["logger"] == "some.library"
