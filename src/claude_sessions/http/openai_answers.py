"""OpenAI's shapes of a turn: the completion, its stream of chunks, and its errors.

:class:`Completion` follows one turn's SDK messages and tells them as a chat completion; with a
``response_format``, the content is the structured output's JSON, whole, when the turn ends. When
the model calls the client's functions, the completion ends with them (``tool_calls``) once every
call of the model's message is here: the message's stream says how many it makes.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from claude_agent_sdk import AssistantMessage, ResultMessage, StreamEvent, TextBlock
from fastapi.responses import JSONResponse

from claude_sessions.errors import ClaudeSessionsError
from claude_sessions.http.common import ApiError, api_error
from claude_sessions.http.openai_tools import assistant_turn
from claude_sessions.http.streaming import dumps
from claude_sessions.observability.metrics import SessionMetrics, model_error
from claude_sessions.sessions.client_calls import ClientToolCall
from claude_sessions.sessions.replies import Reply
from claude_sessions.sessions.session import Session
from claude_sessions.store.history import Turn
from claude_sessions.workers.client_tools import PREFIX

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    410: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


def status_of(error: ApiError) -> int:
    return 400 if error.status == 422 else error.status  # OpenAI's bad request is a 400


def openai_body(error: ApiError) -> dict[str, Any]:
    """OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}``."""
    kind = _TYPES.get(status_of(error), "server_error")
    return {"error": {"message": error.message, "type": kind, "param": error.extra.get("param"), "code": error.kind}}


def openai_response(error: ApiError) -> JSONResponse:
    return JSONResponse(openai_body(error), status_code=status_of(error), headers=error.headers)


def _usage(before: SessionMetrics, after: SessionMetrics) -> dict[str, int]:
    prompt = (after.input_tokens + after.cache_read_tokens + after.cache_creation_tokens) - (
        before.input_tokens + before.cache_read_tokens + before.cache_creation_tokens
    )
    completion = after.output_tokens - before.output_tokens
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _text_delta(message: Reply) -> str | None:
    """The text a stream event adds to the reply, if it is a text delta."""
    if isinstance(message, StreamEvent) and message.event.get("type") == "content_block_delta":
        delta = message.event.get("delta") or {}
        if delta.get("type") == "text_delta":
            return str(delta.get("text", ""))
    return None


class Completion:
    """One turn of a session (or the part of it up to its client's calls), told as an OpenAI completion."""

    def __init__(
        self, session: Session, model: str, digest_of: Callable[[Turn], str], *, structured: bool = False
    ) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.session, self.model = session, model
        self.before = dataclasses.replace(session.metrics)
        self.text: list[str] = []
        self.result: ResultMessage | None = None
        #: The model's calls of the client's functions, as they reached the turn.
        self.calls: list[ClientToolCall] = []
        self._digest_of = digest_of
        #: Deltas of the message being generated were taken: its whole form adds nothing.
        self._streamed = False
        #: A ``response_format`` asked for JSON: the content is the structured output, at the end.
        self.structured = structured
        #: Client calls the model's current message makes before any tool of the CLI's own, whether one
        #: of those came after them, and whether the message is whole (none is being generated).
        self._expected, self._run_over, self._whole = 0, False, True

    @property
    def calls_ready(self) -> bool:
        """The client calls the CLI runs at once are here: the completion ends with them.

        The CLI runs the calls of one answer together, but one of its own tools that is not read-only
        waits for those before it, and the calls after it for it: such later calls come in the next
        completion (a call still waiting in the turn is its first event).
        """
        return bool(self.calls) and self._whole and len(self.calls) >= self._expected

    def take(self, message: Reply) -> list[dict[str, Any]]:
        """Follow one SDK message; the deltas it adds (text, a tool call). A model error raises (502),
        and so does an answer that does not fit the asked schema."""
        if isinstance(message, ClientToolCall):
            self.calls.append(message)
            deltas: list[dict[str, Any]] = [{"tool_calls": [{"index": len(self.calls) - 1, **_tool_call(message)}]}]
        else:
            deltas = [{"content": text} for text in self._take_message(message)]
        if self.calls_ready:
            calls = [(call.call_id, call.name, call.input) for call in self.calls]
            self.session.metadata["history_digest"] = self._digest_of(assistant_turn("".join(self.text), calls))
        return deltas

    def _take_message(self, message: Reply) -> list[str]:
        if isinstance(message, StreamEvent):
            self._follow(message.event)
        texts = [] if self.structured else self._texts(message)
        if isinstance(message, ResultMessage):
            if (failed := model_error(message)) is not None:
                raise api_error(failed, 1)
            self.result = message
            if self.structured:
                texts = [self._structured(message)]
            self.session.metadata["history_digest"] = self._digest_of(("assistant", "".join([*self.text, *texts])))
        self.text += texts
        return texts

    def _follow(self, event: dict[str, Any]) -> None:
        """Count the client calls of the model's message from its stream."""
        kind, block = event.get("type"), event.get("content_block") or {}
        if kind == "message_start":
            self._expected, self._run_over, self._whole = 0, False, False
        elif kind == "content_block_start" and block.get("type") == "tool_use":
            if str(block.get("name", "")).startswith(PREFIX):
                self._expected += not self._run_over
            elif self._expected:
                self._run_over = True
        self._whole = self._whole or kind == "message_stop"

    def finish_reason(self) -> str:
        if self.calls_ready:
            return "tool_calls"
        return "length" if self.result is not None and self.result.subtype == "error_max_turns" else "stop"

    @staticmethod
    def _structured(result: ResultMessage) -> str:
        if result.structured_output is None:
            message = "the model's answer did not fit the response_format's schema, also when asked again"
            raise ApiError(502, "invalid_structured_output", message)
        return json.dumps(result.structured_output, ensure_ascii=False)

    def _texts(self, message: Reply) -> list[str]:
        """Text as it streams; a whole assistant message adds only what no delta brought (a CLI's own reply)."""
        if (delta := _text_delta(message)) is not None:
            self._streamed = True
            return [delta]
        if isinstance(message, AssistantMessage):
            streamed, self._streamed = self._streamed, False
            if message.error is None and not streamed:
                return [block.text for block in message.content if isinstance(block, TextBlock)]
        return []

    def usage(self) -> dict[str, int]:
        return _usage(self.before, self.session.metrics)

    def answer(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": self._message(),
                    "finish_reason": self.finish_reason(),
                    "logprobs": None,
                }
            ],
            "usage": self.usage(),
        }

    def _message(self) -> dict[str, Any]:
        text = "".join(self.text)
        if not self.calls:
            return {"role": "assistant", "content": text, "refusal": None}
        calls = [_tool_call(call) for call in self.calls]
        return {"role": "assistant", "content": text or None, "refusal": None, "tool_calls": calls}

    def chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        }


def _tool_call(call: ClientToolCall) -> dict[str, Any]:
    return {"id": call.call_id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}


async def chunks(
    completion: Completion,
    turn: AsyncIterator[Reply],
    first: list[dict[str, Any]],
    include_usage: bool,
    settle: Callable[[], Awaitable[None]],
) -> AsyncIterator[dict[str, str]]:
    """SSE data of a streamed completion, ending with ``[DONE]`` (or an error object).

    ``settle`` ends the turn's part in it: parks a turn waiting for its client's results, closes any other.
    """
    try:
        try:
            yield {"data": dumps(completion.chunk({"role": "assistant", "content": ""}))}
            for delta in first:
                yield {"data": dumps(completion.chunk(delta))}
            while not completion.calls_ready:  # a turn waiting for its client's results sends nothing more
                message = await anext(turn, None)
                if message is None:
                    break
                for delta in completion.take(message):
                    yield {"data": dumps(completion.chunk(delta))}
        finally:
            await settle()
        yield {"data": dumps(completion.chunk({}, completion.finish_reason()))}
        if include_usage:
            yield {"data": dumps({**completion.chunk({}), "choices": [], "usage": completion.usage()})}
        yield {"data": "[DONE]"}
    except (ApiError, ClaudeSessionsError) as error:
        failure = error if isinstance(error, ApiError) else api_error(error, 1)
        yield {"data": dumps(openai_body(failure))}
