"""A transcript as a chat shows it: who said what, the model's tool calls and the tools' results."""

from __future__ import annotations

from typing import Any

from claude_sessions.sessions.conversations import chat_messages, unfinished_from


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


def test_the_unfinished_turn_begins_at_the_last_prompt_without_a_final_answer() -> None:
    prompt = {"type": "user", "message": {"role": "user", "content": "hi"}}
    answer = {"type": "assistant", "message": {"role": "assistant", "stop_reason": "end_turn", "content": []}}
    call = {"type": "assistant", "message": {"role": "assistant", "stop_reason": "tool_use", "content": []}}
    result = {"type": "user", "message": {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t"}]}}
    reminder = {"type": "user", "isMeta": True, "message": {"role": "user", "content": "note"}}
    assert unfinished_from([prompt, answer]) is None
    assert unfinished_from([prompt, answer, prompt]) == 2
    assert unfinished_from([prompt, answer, prompt, call, result, reminder]) == 2
    assert unfinished_from([prompt, call]) == 0 and unfinished_from([]) is None
