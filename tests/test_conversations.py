"""A transcript as a chat shows it: who said what, the model's tool calls and the tools' results."""

from __future__ import annotations

from typing import Any

from claude_agent_sdk import AssistantMessage, ResultMessage, UserMessage

from claude_sessions.config import SessionConfig
from claude_sessions.sessions.conversations import answer_of, chat_messages, turn_in
from claude_sessions.sessions.session import Session


def entry(kind: str, content: Any, message_id: str | None = None) -> dict[str, Any]:
    role = "assistant" if kind == "assistant" else "user"
    message: dict[str, Any] = {"role": role, "content": content}
    if message_id is not None:
        message["id"] = message_id
    return {"type": kind, "uuid": "u", "timestamp": "t", "message": message}


def test_entries_of_one_assistant_message_become_one_chat_message() -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}}
    entries = [
        entry("user", [{"type": "text", "text": "what is in todo.txt?"}, image]),
        entry("assistant", [{"type": "text", "text": "Let me look."}], "m1"),
        entry(
            "assistant", [{"type": "tool_use", "id": "t1", "name": "Read", "input": {"file_path": "todo.txt"}}], "m1"
        ),
        entry("user", [{"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "milk"}]}]),
        entry("assistant", [{"type": "text", "text": "Buy milk."}], "m2"),
    ]
    assert chat_messages(entries) == [
        {"role": "user", "content": "what is in todo.txt?", "images": 1},
        {
            "role": "assistant",
            "content": "Let me look.",
            "tool_calls": [{"id": "t1", "name": "Read", "input": {"file_path": "todo.txt"}}],
        },
        {"role": "user", "content": "", "tool_results": [{"tool_use_id": "t1", "content": "milk", "is_error": False}]},
        {"role": "assistant", "content": "Buy milk."},
    ]


def test_a_plain_string_and_a_failed_tool_read_as_they_were() -> None:
    entries = [
        entry("user", "hello"),
        entry("user", [{"type": "tool_result", "tool_use_id": "t2", "content": "denied", "is_error": True}]),
    ]
    assert chat_messages(entries) == [
        {"role": "user", "content": "hello"},
        {"role": "user", "content": "", "tool_results": [{"tool_use_id": "t2", "content": "denied", "is_error": True}]},
    ]


def test_a_turn_is_found_by_its_prompts_uuid_and_ended_only_by_its_final_answer() -> None:
    def said(uuid: str) -> dict[str, Any]:
        return {"type": "user", "uuid": uuid, "message": {"role": "user", "content": "hi"}}

    answer = {"type": "assistant", "message": {"role": "assistant", "stop_reason": "end_turn", "content": []}}
    call = {"type": "assistant", "message": {"role": "assistant", "stop_reason": "tool_use", "content": []}}
    result = {"type": "user", "message": {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t"}]}}
    assert turn_in([said("a"), answer, said("b"), call, result, answer], "b") == (2, True)
    assert turn_in([said("a"), answer, said("b"), call, result], "b") == (2, False)
    assert turn_in([said("a"), answer], "b") == (None, False)  # the prompt never reached the transcript
    # A row that names no prompt, or a stale one (an older version saved the turn): the last prompt
    # with no final answer after it.
    reminder = {"type": "user", "isMeta": True, "message": {"role": "user", "content": "note"}}
    assert turn_in([said("a"), answer], None) == (None, False)
    for named in (None, "a"):
        assert turn_in([said("a"), answer, said("b"), call, result, reminder], named) == (2, False)
    assert turn_in([said("a"), answer, said("b"), answer], "a") == (None, False)


def test_a_finished_turns_answer_is_its_messages_and_a_result_as_the_sdk_gives_them() -> None:
    session = Session(id="s", config=SessionConfig(), claude_session_id="c")
    session.metrics.total_cost = 0.25
    prompt = {"type": "user", "uuid": "p", "message": {"role": "user", "content": "weather?"}}
    use = {"type": "tool_use", "id": "t", "name": "Read", "input": {}}
    entries: list[dict[str, Any]] = [
        prompt,
        {"type": "attachment", "uuid": "x"},
        {"type": "assistant", "uuid": "a1", "message": {"role": "assistant", "model": "m", "content": [use]}},
        entry("user", [{"type": "tool_result", "tool_use_id": "t", "content": "sun"}]),
        {"type": "user", "isMeta": True, "message": {"role": "user", "content": "note"}},
        {
            "type": "assistant",
            "message": {"role": "assistant", "model": "m", "content": [{"type": "text", "text": "Sunny."}]},
        },
    ]
    *messages, result = answer_of(entries, session)
    assert [type(m) for m in messages] == [AssistantMessage, UserMessage, AssistantMessage]
    assert isinstance(result, ResultMessage) and result.result == "Sunny." and not result.is_error
    assert (result.session_id, result.total_cost_usd, result.user_message_uuid) == ("c", 0.25, "p")
