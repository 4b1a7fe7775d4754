"""Turns whose end was never told: settled by the transcript, and their answers kept for the retry.

A turn's prompt carries a uuid of ours, saved with its start (``RunningTurn``). When its CLI or
node dies before the turn's end is saved, whoever runs the session next looks that prompt up in the
transcript: a final answer there stands, and the retry with the turn's ``Idempotency-Key`` gets it;
anything less is undone, and the retry runs it once. A turn's result goes out only once its
transcript is stored, so that an answer its caller saw is never only on one node.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

from claude_sessions.content import Content
from claude_sessions.errors import DatabaseUnavailableError
from claude_sessions.sessions.conversations import Conversations, answer_of
from claude_sessions.sessions.replies import Reply
from claude_sessions.sessions.session import KeptAnswer, Session
from claude_sessions.store.archive import TranscriptArchive


class Settling:
    """Settles unfinished turns and holds answers back until their transcript is stored."""

    def __init__(self, conversations: Conversations, archive: TranscriptArchive, message_timeout: float) -> None:
        self.conversations, self.archive, self.message_timeout = conversations, archive, message_timeout

    async def settle(self, session: Session) -> None:
        """Settle the session's turn that never ended by its transcript: undone (count and messages)
        if its answer is not all there, so that a retry runs it once; else kept, its answer held for
        the retry with its Idempotency-Key."""
        turn = session.turn
        entries = await self.conversations.settle_unfinished(session, turn.prompt if turn else None)
        if entries is not None and turn is not None and turn.key is not None:
            prompt: Content = (entries[0].get("message") or {}).get("content") or ""
            session.answer = KeptAnswer(turn.key, prompt, answer_of(entries, session))

    async def stored(self, session: Session, deadline: float, answer: KeptAnswer | None) -> None:
        """Return once the session's transcript is in the store: an answer seen is an answer stored. The
        database still away at ``deadline``: 503, and ``answer`` waits here for the retry with its key."""
        if session.claude_session_id is None:
            return
        try:
            async with asyncio.timeout_at(deadline):
                await self.archive.written(session.claude_session_id, (session.id, session.fence))
        except TimeoutError:
            session.answer = answer
            message = "the answer is not stored yet (the database is away); send the message again with its key"
            raise DatabaseUnavailableError(message) from None

    async def replayed(self, session: Session, answer: KeptAnswer) -> AsyncGenerator[Reply, None]:
        """A kept answer, once it is stored."""
        await self.stored(session, asyncio.get_running_loop().time() + self.message_timeout, answer)
        for message in answer.messages:
            yield message
