"""A turn's answer goes out once its transcript is stored; past the deadline, 503, and the answer is kept."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from claude_agent_sdk import ResultMessage

from claude_sessions.config import SessionConfig, SystemConfig
from claude_sessions.errors import DatabaseUnavailableError
from claude_sessions.sessions.conversations import Conversations
from claude_sessions.sessions.session import KeptAnswer, Session
from claude_sessions.sessions.settling import Settling
from claude_sessions.store.archive import FileArchive
from claude_sessions.store.write_behind import Lease


class AwayArchive(FileArchive):
    """A store the database keeps a conversation's batches from, until ``back`` is set."""

    def __init__(self, projects: Path) -> None:
        super().__init__(projects)
        self.back = asyncio.Event()

    async def written(self, claude_session_id: str, lease: Lease) -> None:
        await self.back.wait()


def result() -> ResultMessage:
    return ResultMessage("success", 1, 1, False, 1, "c", result="hi")


async def test_an_answer_not_stored_by_the_deadline_is_a_503_and_waits_for_its_retry(tmp_path: Path) -> None:
    archive = AwayArchive(tmp_path)
    settling = Settling(Conversations(SystemConfig(), archive), archive, message_timeout=0.2)
    session = Session(id="s", config=SessionConfig(), claude_session_id="c")
    kept = KeptAnswer("k", "hello", [result()])
    loop = asyncio.get_running_loop()
    with pytest.raises(DatabaseUnavailableError):
        await settling.stored(session, loop.time() + 0.1, kept)
    assert session.take_answer("k", "hello again") is None  # another message with the key: not this answer
    session.answer = kept
    replay = settling.replayed(session, session.take_answer("k", "hello") or kept)
    with pytest.raises(DatabaseUnavailableError):  # still away: kept again
        await anext(replay)
    assert session.answer == kept
    archive.back.set()
    assert [m async for m in settling.replayed(session, kept)] == kept.messages
