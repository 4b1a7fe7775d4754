"""The handler end to end on the real CLI: sessions, turns, timeouts, dead workers."""

from __future__ import annotations

from helpers import reply_text, result_of, turn

from conftest import MakeHandler


async def test_create_send_destroy_round_trip(make_handler: MakeHandler) -> None:
    handler = await make_handler()
    session_id = await handler.create_session("round-trip")
    messages = await turn(handler, session_id, "hello there")
    assert "You said: hello there" in reply_text(messages)
    assert not result_of(messages).is_error
    metrics = handler.session_manager.get_session_metrics(session_id)
    assert metrics is not None and metrics.message_count == 1
    await handler.destroy_session(session_id)
    assert handler.session_manager.get_session_metrics(session_id) is None
