"""Turns parked for their caller's next request: taken once, or run out with error results at the timeout."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

import pytest

from claude_sessions.sessions.client_calls import ClientCalls, ClientToolCall
from claude_sessions.sessions.parked_turns import ParkedTurns
from claude_sessions.sessions.replies import Reply


class FakeSession:
    """What a parked turn needs of a session: its id and its turn's waiting calls."""

    def __init__(self) -> None:
        self.id = "s"
        self.client_calls = ClientCalls("s", asyncio.Queue())


def turn_of(session: FakeSession, seen: list[Any]) -> AsyncGenerator[Reply, None]:
    """A turn whose CLI waits on one call, then makes another, then ends: what it was answered is ``seen``."""

    async def run() -> AsyncGenerator[Reply, None]:
        first = asyncio.ensure_future(session.client_calls.ask("f", {"n": 1}))
        yield await session.client_calls._events.get()
        seen.append(await first)
        second = asyncio.ensure_future(session.client_calls.ask("f", {"n": 2}))
        yield await session.client_calls._events.get()
        seen.append(await second)

    return run()


@dataclass
class Waiting:
    """A turn stopped at its first call, not parked yet; ``seen``: what its calls were answered."""

    session: Any
    turn: AsyncGenerator[Reply, None]
    call: ClientToolCall
    seen: list[Any]

    def park(self, timeout: float) -> ParkedTurns:
        parked = ParkedTurns(timeout=timeout)
        parked.park(self.session, self.turn, frozenset({self.call.call_id}))
        return parked


@pytest.fixture
async def waiting() -> Waiting:
    session, seen = FakeSession(), list[Any]()
    turn = turn_of(session, seen)
    call = await anext(turn)
    assert isinstance(call, ClientToolCall)
    return Waiting(session, turn, call, seen)


async def test_a_turn_no_one_takes_gets_error_results_for_every_call_and_runs_to_its_end(waiting: Waiting) -> None:
    parked = waiting.park(timeout=0.1)
    assert parked.waiting(waiting.session) == frozenset({waiting.call.call_id})
    await asyncio.sleep(0.5)
    expected = "The client did not return this call's result within 0.1 s."
    assert waiting.seen == [(expected, True), (expected, True)] and parked.waiting(waiting.session) is None


async def test_a_taken_turn_is_not_run_out_and_is_the_takers_to_continue(waiting: Waiting) -> None:
    parked = waiting.park(timeout=0.1)
    taken = parked.take(waiting.session)
    assert taken is not None and taken.turn is waiting.turn and parked.take(waiting.session) is None
    await asyncio.sleep(0.3)
    assert waiting.seen == []  # the timer is off: the taker answers
    waiting.session.client_calls.answer(waiting.call.call_id, "one")
    assert isinstance(await anext(waiting.turn), ClientToolCall) and waiting.seen == [("one", False)]
    await waiting.turn.aclose()


async def test_closing_runs_out_every_parked_turn(waiting: Waiting) -> None:
    parked = waiting.park(timeout=60)
    await parked.close()
    expected = "The server shut down before the client returned this call's result."
    assert [text for text, _ in waiting.seen] == [expected] * 2
