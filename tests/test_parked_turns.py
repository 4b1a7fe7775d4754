"""Turns parked for their caller's next request: taken once, or run out with error results at the timeout."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

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


async def parked_call(turn: AsyncGenerator[Reply, None]) -> ClientToolCall:
    call = await anext(turn)
    assert isinstance(call, ClientToolCall)
    return call


async def test_a_turn_no_one_takes_gets_error_results_for_every_call_and_runs_to_its_end() -> None:
    session: Any = FakeSession()
    seen: list[Any] = []
    turn = turn_of(session, seen)
    call = await parked_call(turn)
    parked = ParkedTurns(timeout=0.1)
    parked.park(session, turn, frozenset({call.call_id}))
    assert parked.waiting(session) == frozenset({call.call_id})
    await asyncio.sleep(0.5)
    expected = "The client did not return this call's result within 0.1 s."
    assert seen == [(expected, True), (expected, True)] and parked.waiting(session) is None


async def test_a_taken_turn_is_not_run_out_and_is_the_takers_to_continue() -> None:
    session: Any = FakeSession()
    seen: list[Any] = []
    turn = turn_of(session, seen)
    call = await parked_call(turn)
    parked = ParkedTurns(timeout=0.1)
    parked.park(session, turn, frozenset({call.call_id}))
    taken = parked.take(session)
    assert taken is not None and taken.turn is turn and parked.take(session) is None
    await asyncio.sleep(0.3)
    assert seen == []  # the timer is off: the taker answers
    session.client_calls.answer(call.call_id, "one")
    assert isinstance(await anext(turn), ClientToolCall) and seen == [("one", False)]
    await turn.aclose()


async def test_closing_runs_out_every_parked_turn() -> None:
    session: Any = FakeSession()
    seen: list[Any] = []
    turn = turn_of(session, seen)
    call = await parked_call(turn)
    parked = ParkedTurns(timeout=60)
    parked.park(session, turn, frozenset({call.call_id}))
    await parked.close()
    assert [text for text, _ in seen] == ["The server shut down before the client returned this call's result."] * 2
