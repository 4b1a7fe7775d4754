"""An OpenAI request's messages as a conversation: its system prompt, the history a session must hold
already, and what is new (a user message, or the ``tool`` messages answering the last calls).

Assistant calls and their results keep their form (``tool_use`` and ``tool_result`` blocks): the
history's digest is taken over it, and an imported transcript holds them as real tool use.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from claude_sessions.content import Content
from claude_sessions.http.openai_content import invalid, text_content, user_content
from claude_sessions.http.openai_tools import CALL_ID, ToolCall, assistant_turn, results_turn
from claude_sessions.store.history import Turn


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    role: Literal["system", "developer", "user", "assistant", "tool"] = Field(
        description="tool: the result of one of the calls of the assistant message before it"
    )
    content: str | list[dict[str, Any]] | None = None
    tool_calls: list[ToolCall] | None = Field(None, max_length=128)
    tool_call_id: str | None = Field(None, pattern=CALL_ID)


@dataclass(frozen=True)
class Conversation:
    """A request's conversation; exactly one of ``prompt`` and ``results`` is new."""

    system: str | None
    #: What a session continuing it must hold already.
    earlier: list[Turn]
    #: The new user message, or None when ``results`` are new.
    prompt: Content | None
    #: The results ``(call id, text)`` answering the last assistant message's calls.
    results: list[tuple[str, str]]

    @property
    def turns(self) -> list[Turn]:
        """The whole history the request sends."""
        new: Turn = ("user", self.prompt) if self.prompt is not None else results_turn(self.results)
        return [*self.earlier, new]

    @property
    def answered(self) -> frozenset[str]:
        return frozenset(call_id for call_id, _ in self.results)


def _calls(message: ChatMessage, index: int) -> list[tuple[str, str, dict[str, Any]]]:
    """An assistant message's calls as ``(id, name, input)``; the arguments must be a JSON object."""
    calls = []
    for j, call in enumerate(message.tool_calls or []):
        try:
            given = json.loads(call.function.arguments)
        except ValueError:
            given = None
        if not isinstance(given, dict):
            param = f"messages.{index}.tool_calls.{j}.function.arguments"
            raise invalid(param, f"{param} must be a JSON object")
        calls.append((call.id, call.function.name, given))
    return calls


def conversation_of(messages: list[ChatMessage], image_max_bytes: int) -> Conversation:
    """Split a request's messages; a ``tool`` message answering no open call, a call left without one,
    or a last message that is neither a user's nor a tool's is a 400 naming it."""
    system: list[str] = []
    turns: list[Turn] = []
    results: list[tuple[str, str]] = []
    open_calls: set[str] = set()
    for index, message in enumerate(messages):
        if message.role == "tool":
            if message.tool_call_id not in open_calls:
                param = f"messages.{index}.tool_call_id"
                raise invalid(param, f"{param} answers no open call of the assistant message before it")
            open_calls.discard(str(message.tool_call_id))
            results.append((str(message.tool_call_id), text_content(message.content, index)))
            continue
        if open_calls:
            raise invalid(
                f"messages.{index}", f"messages.{index}: calls before it have no tool message: {sorted(open_calls)}"
            )
        if results:
            turns.append(results_turn(results))
            results = []
        if message.role in ("system", "developer"):
            system.append(text_content(message.content, index))
        elif message.role == "assistant":
            calls = _calls(message, index)
            open_calls = {call_id for call_id, _, _ in calls}
            turns.append(assistant_turn(text_content(message.content, index), calls))
        else:
            turns.append(("user", user_content(message.content, index, image_max_bytes)))
    if open_calls:
        raise invalid(
            "messages", f"messages: the last assistant message's calls need a tool message each: {sorted(open_calls)}"
        )
    prompt = turns[-1][1] if turns and turns[-1][0] == "user" and not results else None
    if results:
        return Conversation("\n\n".join(system) or None, turns, None, results)
    if prompt is None or (isinstance(prompt, str) and not prompt.strip()):
        raise invalid("messages", "messages: the last message must be a non-empty user message or tool results")
    return Conversation("\n\n".join(system) or None, turns[:-1], prompt, [])
