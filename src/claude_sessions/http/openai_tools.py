"""OpenAI's function calling on a live turn: the client's functions, its tool messages, and the turns waiting.

A request's ``tools`` are offered to the session's CLI beside its own tools (the server's policy
decides those); a function runs on the client only. When the model calls some, the completion
ends with ``tool_calls`` and the CLI's turn waits, parked here by session. The client's next
request (the same history, the assistant's ``tool_calls`` and a ``tool`` message for each) finds it
through the history's digest and continues it: the results go to the waiting CLI, no replay.
A turn no one continues within ``OPENAI_TOOL_TIMEOUT_SECONDS`` gets error results and runs to
its end unread; the session stays usable.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Sequence
from typing import Any, Literal

import anyio
from pydantic import BaseModel, ConfigDict, Field

from claude_sessions.content import Content
from claude_sessions.http.openai_content import invalid
from claude_sessions.sessions.parked_turns import ParkedTurns
from claude_sessions.sessions.replies import Reply
from claude_sessions.sessions.view import SessionView
from claude_sessions.store.history import Turn
from claude_sessions.workers.client_tools import PREFIX, ClientFunction

#: OpenAI's pattern for a function's name, and for a call's id (the CLI's transcript takes it as a tool_use id).
NAME = r"^[A-Za-z0-9_-]{1,64}$"
CALL_ID = r"^[A-Za-z0-9_-]{1,128}$"
#: The prompt of a turn continuing a history that ends in tool results no turn here waits for.
CONTINUE = "(The results of your tool calls are above: continue.)"


class FunctionSpec(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    name: str = Field(pattern=NAME)
    description: str = Field("", max_length=10_000)
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})


class ToolSpec(BaseModel):
    """One of the request's ``tools``: a function the client runs."""

    model_config = ConfigDict(extra="allow", strict=True)

    type: Literal["function"]
    function: FunctionSpec


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    name: str = Field(pattern=NAME)
    arguments: str = Field(max_length=1_000_000)


class ToolCall(BaseModel):
    """A call an assistant message made (``tool_calls``), as the client sends it back."""

    model_config = ConfigDict(extra="allow", strict=True)

    id: str = Field(pattern=CALL_ID)
    type: Literal["function"] = "function"
    function: FunctionCall


# -- what a request offers and says ---------------------------------------------------


def client_functions(tools: Sequence[ToolSpec] | None, tool_choice: Any) -> tuple[ClientFunction, ...]:
    """The functions a request offers the model: none for ``tool_choice: "none"``, only the named one
    for a named choice (400 when no tool has that name)."""
    if not tools or tool_choice == "none":
        return ()
    functions = tuple(
        ClientFunction(t.function.name, t.function.description, json.dumps(t.function.parameters, sort_keys=True))
        for t in tools
    )
    if len({function.name for function in functions}) < len(functions):
        raise invalid("tools", "tools: two functions have the same name")
    named = _named(tool_choice)
    if named is None:
        return functions
    chosen = tuple(function for function in functions if function.name == named)
    if not chosen:
        raise invalid("tool_choice", f"tool_choice names {named!r}, which is not among the tools")
    return chosen


def _named(tool_choice: Any) -> str | None:
    """The function a ``tool_choice`` names, None for ``auto``/``required``/none given; 400 for any other."""
    if tool_choice in (None, "auto", "required"):
        return None
    function = tool_choice.get("function") if isinstance(tool_choice, dict) else None
    if isinstance(function, dict) and tool_choice.get("type") == "function" and isinstance(function.get("name"), str):
        return str(function["name"])
    raise invalid("tool_choice", 'tool_choice must be "none", "auto", "required" or {"type": "function", ...}')


def with_hint(prompt: Content, tool_choice: Any, functions: tuple[ClientFunction, ...]) -> Content:
    """The prompt the CLI gets: the CLI cannot force a call, so ``required`` or a named function is
    asked for in words after the user's text (the conversation's digest keeps the user's own)."""
    if not functions or tool_choice in (None, "auto", "none"):
        return prompt
    names = ", ".join(function.name for function in functions)
    hint = f"(Answer by calling {'the function' if len(functions) == 1 else 'one of the functions'} {names}.)"
    if isinstance(prompt, str):
        return f"{prompt}\n\n{hint}"
    return [*prompt, {"type": "text", "text": hint}]


def assistant_turn(text: str, calls: Sequence[tuple[str, str, dict[str, Any]]]) -> Turn:
    """An assistant message as the history holds it: its text, or its text and calls ``(id, name, input)``
    as tool_use blocks (the form both the digest and an imported transcript take)."""
    if not calls:
        return ("assistant", text)
    uses = [{"type": "tool_use", "id": i, "name": PREFIX + name, "input": given} for i, name, given in calls]
    return ("assistant", [*([{"type": "text", "text": text}] if text else []), *uses])


def results_turn(results: Sequence[tuple[str, str]]) -> Turn:
    """The ``tool`` messages answering an assistant's calls ``(call id, result)``, as one user message."""
    return ("user", [{"type": "tool_result", "tool_use_id": i, "content": text} for i, text in results])


# -- what a completion leaves of its turn ----------------------------------------------


class TurnEnd:
    """What a completion leaves of its turn: parked when it ended with the client's calls, else closed.

    Called when the completion is done and again once its response is over (a stream cut early):
    a parked turn is never closed here, whoever continues it later.
    """

    def __init__(
        self, parked: ParkedTurns, manager: SessionView, completion: Any, turn: AsyncGenerator[Reply, None]
    ) -> None:
        self.parked, self.manager, self.completion, self.turn = parked, manager, completion, turn
        self._parked_it = False

    async def __call__(self) -> None:
        if self._parked_it:
            return
        completion, session = self.completion, self.completion.session
        if not completion.calls_ready:
            await self.turn.aclose()
            return
        self._parked_it = True
        self.parked.park(session, self.turn, frozenset(call.call_id for call in completion.calls))
        with anyio.CancelScope(shield=True):  # its digest: the client's next request finds it, on any node
            await self.manager.save(session)
