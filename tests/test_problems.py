"""Validation failures are told in words: the field, what is wrong, what is allowed; never pydantic's text."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from claude_sessions.http.keys import CreateKeyBody
from claude_sessions.http.openai import ChatCompletionBody
from claude_sessions.http.problems import problems
from claude_sessions.http.sessions import CreateSessionBody, MessageBody

#: What a validator's own text looks like: none of it may reach a user.
RAW = ("Input should", "JSON decode", "^[", "[A-Za-z", "loc", "type=", "pydantic", "Value error")


def told(model: type[BaseModel], body: dict[str, Any]) -> list[tuple[str | None, str]]:
    """The problems a body has, as the API tells them (the request's errors are under ``body``)."""
    with pytest.raises(ValidationError) as failed:
        model.model_validate(body)
    errors = [{**error, "loc": ("body", *error["loc"])} for error in failed.value.errors()]
    found = [(p.param, p.message) for p in problems(errors)]
    for _, message in found:
        assert not any(raw in message for raw in RAW), message
    return found


def test_a_folder_outside_the_workspace_is_told_what_a_folder_may_be() -> None:
    ((param, message),) = told(CreateSessionBody, {"cwd": "../x"})
    assert param == "cwd" and message.startswith("cwd must be a folder inside the workspace")


def test_types_lengths_and_unknown_fields_are_named() -> None:
    found = dict(told(CreateSessionBody, {"max_turns": "5", "colour": "blue", "session_id": "x" * 200}))
    assert found["max_turns"] == "max_turns must be an integer"
    assert found["colour"] == "colour is not a field of this request"
    assert found["session_id"] == "session_id must have at most 128 characters"
    ((_, message),) = told(CreateSessionBody, {"max_turns": 0})
    assert message == "max_turns must be at least 1"
    ((_, message),) = told(CreateSessionBody, {"allowed_tools": ["Bash;rm"]})
    assert "a tool name or rule such as 'Read'" in message


def test_a_union_is_told_as_its_choices() -> None:
    assert told(MessageBody, {"content": 5}) == [("content", "content must be a string or a JSON array")]
    assert told(MessageBody, {}) == [("content", "content is required")]


def test_a_function_message_is_told_which_roles_there_are() -> None:
    body = {"model": "sonnet", "messages": [{"role": "user", "content": "a"}, {"role": "function", "content": "b"}]}
    ((param, message),) = told(ChatCompletionBody, body)
    assert param == "messages.1.role"
    roles = "'system', 'developer', 'user', 'assistant' or 'tool'"
    assert message == f"messages.1.role is 'function'; it must be one of {roles}"


def test_bad_json_is_about_the_body_not_a_position() -> None:
    error = {"type": "json_invalid", "loc": ("body", 15), "msg": "JSON decode error", "ctx": {"error": "Expecting"}}
    assert [(p.param, p.message) for p in problems([error])] == [
        (None, "the body is not valid JSON: check its quotes, commas and brackets")
    ]


def test_our_own_validators_words_pass_without_pydantics_prefix() -> None:
    ((param, message),) = told(CreateSessionBody, {"system_prompt": "a\x00b"})
    assert (param, message) == ("system_prompt", "system_prompt: must not contain NUL characters")


def test_a_keys_tenant_user_and_expiry_are_told_what_they_may_be() -> None:
    found = dict(told(CreateKeyBody, {"tenant": "a b", "user": ".hidden", "expires_at": "2026-12-31T10:00:00"}))
    assert found["tenant"] == "tenant must be a name of 1 to 64 letters, digits, '_' or '-'"
    assert "not starting with '.'" in found["user"] and "with its offset" in found["expires_at"]
    ((_, message),) = told(CreateKeyBody, {"tenant": "x", "expires_at": "tomorrow"})
    assert message == "expires_at must be an RFC 3339 date and time, such as 2026-12-31T23:59:00Z"
