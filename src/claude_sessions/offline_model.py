"""A loopback stand-in for the Anthropic Messages API.

The real bundled Claude Code CLI talks to it through ``ANTHROPIC_BASE_URL``, so
demos and tests exercise the genuine SDK and CLI without any network access or
billing. Replies are deterministic (they echo the last user text), usage is
derived from the text, and every request is logged so tests can see exactly
what the CLI sent.

Faults are injected per turn with markers in the last user text, so that
concurrent tests never disturb each other:

``[[fail:500]]`` (any status)  answer that HTTP status with an API error body
``[[hang]]``                  accept the request and never answer
``[[slow:1.5]]``              wait that many seconds before the first token
``[[drip:0.2]]``              wait that many seconds between the reply's text deltas
``[[big:64]]``                add that many KiB (UTF-8) to the reply, in words of 1 KiB of a
                              4-byte character: one character against the SDK's line limit,
                              12 bytes once JSON-escaped (a surrogate pair)
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from typing import Any

import uvicorn
from sse_starlette import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

_TOKEN = re.compile(r"\w+|[^\w\s]")
_FAIL = re.compile(r"\[\[fail:(\d{3})\]\]")
_SLOW = re.compile(r"\[\[slow:([0-9.]+)\]\]")
_DRIP = re.compile(r"\[\[drip:([0-9.]+)\]\]")
_HANG = "[[hang]]"
_BIG = re.compile(r"\[\[big:(\d{1,5})\]\]")
_BIG_WORD = "\U0001d465" * 256  # 1 KiB of UTF-8: a mathematical italic x, outside the BMP

#: Test control: the last user text asks the model to call a tool: ``[[tool:Name:{json input}]]``; a name
#: an MCP server offers (``mcp__client__Name``) is called by its own name too.
TOOL_MARKER = re.compile(r"\[\[tool:([\w-]+):(?=\{)")
#: An OpenAI function a client may offer, which ``[[tool:get_weather:{"city": ...}]]`` has the model call:
#: the tests' and benchmarks' one example.
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def count_tokens(text: str) -> int:
    """Deterministic token count: words and punctuation marks."""
    return len(_TOKEN.findall(text))


def _text_of(content: Any) -> str:
    """Flatten Messages-API content (str or blocks) into plain text."""
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for block in content or []:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text":
            parts.append(str(block.get("text", "")))
        elif block.get("type") == "tool_result":
            parts.append(_text_of(block.get("content")))
        elif block.get("type") == "tool_use":
            parts.append(json.dumps(block.get("input", {})))
    return "\n".join(parts)


def last_user_text(body: dict[str, Any]) -> str:
    """The text of the last user message, without system reminders."""
    for message in reversed(body.get("messages") or []):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, list):
            texts = [
                str(b.get("text", ""))
                for b in content
                if isinstance(b, dict)
                and b.get("type") == "text"
                and not str(b.get("text", "")).startswith("<system-reminder>")
            ]
            if texts:
                return texts[-1]
            return _text_of(content)
        return _text_of(content)
    return ""


@dataclass(frozen=True)
class Usage:
    """What one request was charged, in the Messages API's own terms."""

    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0


@dataclass
class LoggedRequest:
    """One request as the model received it, and what it answered."""

    seq: int
    path: str
    body: dict[str, Any]
    received_at: float
    #: Request headers, lower-case names (tests check which credentials reached the model).
    headers: dict[str, str] = field(default_factory=dict)
    status: int = 200
    usage: Usage | None = None
    reply: str = ""
    #: When its first text delta was sent (``time.monotonic``), on a streamed reply.
    first_text_at: float | None = None

    @property
    def user_texts(self) -> list[str]:
        """Every user message's text, oldest first (what the model 'sees')."""
        return [_text_of(m.get("content")) for m in self.body.get("messages") or [] if m.get("role") == "user"]

    @property
    def last_user_text(self) -> str:
        return last_user_text(self.body)


@dataclass
class ModelSettings:
    """Latency knobs; faults are per turn (see the module docstring)."""

    first_token_delay: float = 0.0
    token_delay: float = 0.0


@dataclass
class OfflineModel:
    """State of the stand-in: settings, the request log and the prompt cache."""

    settings: ModelSettings = field(default_factory=ModelSettings)
    requests: list[LoggedRequest] = field(default_factory=list)
    _seen_prefixes: set[str] = field(default_factory=set)
    _seq: itertools.count[int] = field(default_factory=itertools.count)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def log(self, path: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> LoggedRequest:
        with self._lock:
            entry = LoggedRequest(next(self._seq), path, body, time.time(), dict(headers or {}))
            self.requests.append(entry)
            return entry

    def message_requests(self) -> list[LoggedRequest]:
        """Logged ``/v1/messages`` calls (the billed ones)."""
        with self._lock:
            return [r for r in self.requests if r.path == "/v1/messages"]

    def charge(self, body: dict[str, Any], reply: str) -> Usage:
        """Usage for a request: the system prompt is 'cached' after first sight."""
        system = _text_of(body.get("system"))
        history = "\n".join(_text_of(m.get("content")) for m in body.get("messages") or [])
        system_tokens = count_tokens(system)
        with self._lock:
            seen = system in self._seen_prefixes
            self._seen_prefixes.add(system)
        return Usage(
            input_tokens=max(1, count_tokens(history)),
            output_tokens=max(1, count_tokens(reply)),
            cache_creation_input_tokens=0 if seen else system_tokens,
            cache_read_input_tokens=system_tokens if seen else 0,
        )


def _images_of(body: dict[str, Any]) -> list[str]:
    """The media types of the images in the last user message, as the model received them."""
    users = [m for m in body.get("messages") or [] if m.get("role") == "user"]
    content = users[-1].get("content") if users else None
    blocks = content if isinstance(content, list) else []
    return [
        str((b.get("source") or {}).get("media_type"))
        for b in blocks
        if isinstance(b, dict) and b.get("type") == "image"
    ]


def _reply_for(body: dict[str, Any]) -> str:
    """Echo the last user text and say how many user messages the model was shown."""
    text = last_user_text(body).strip()
    turns = sum(1 for m in body.get("messages") or [] if m.get("role") == "user")
    if not text:
        return "(offline model) nothing to echo."
    reply = f"(offline model) You said: {text} [user message {turns} of this conversation]"
    if images := _images_of(body):
        reply += f" [images seen: {', '.join(images)}]"
    if big := _BIG.search(text):
        reply += " " + " ".join(_BIG_WORD for _ in range(int(big.group(1))))
    return reply


def _error_body(status: int) -> dict[str, Any]:
    kind = {
        400: "invalid_request_error",
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        429: "rate_limit_error",
        529: "overloaded_error",
    }.get(status, "api_error")
    return {"type": "error", "error": {"type": kind, "message": f"offline model: injected {status}"}}


def tool_markers(text: str) -> list[tuple[str, dict[str, Any]]]:
    """The tools a text asks for, each with its input (any JSON object, nested ones too), in order."""
    found = []
    for match in TOOL_MARKER.finditer(text):
        try:
            tool_input, end = json.JSONDecoder().raw_decode(text, match.end())
        except json.JSONDecodeError:
            continue
        if isinstance(tool_input, dict) and text.startswith("]]", end):
            found.append((match.group(1), tool_input))
    return found


def tool_marker(text: str) -> tuple[str, dict[str, Any]] | None:
    """The first tool a text asks for, if it asks."""
    return next(iter(tool_markers(text)), None)


def _tool_calls(body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The tools the model should call at once: asked for in the last user text, not yet answered.

    A prompt may ride with the tool_result of the call before it (the CLI sends a StructuredOutput
    call's result with the next prompt): a marker in that prompt's own text is a new request. With no
    prompt, a marker in the results asks for the next round (a client's function answering with one).
    """
    messages = body.get("messages") or []
    last = messages[-1].get("content") if messages else None
    if isinstance(last, list) and any(isinstance(b, dict) and b.get("type") == "tool_result" for b in last):
        texts = [str(b.get("text", "")) for b in last if isinstance(b, dict) and b.get("type") == "text"]
        prompts = [text for text in texts if not text.startswith("<system-reminder>")]
        results = "\n".join(_text_of(b.get("content")) for b in last if isinstance(b, dict) and "tool_use_id" in b)
        asked = tool_markers(prompts[-1] if prompts else results)
    else:
        asked = tool_markers(last_user_text(body))
    offered = [str(tool.get("name")) for tool in body.get("tools") or [] if isinstance(tool, dict)]
    return [(_offered_name(name, offered), given) for name, given in asked]


def _offered_name(name: str, offered: list[str]) -> str:
    """A tool asked for by its own name: an MCP server's (``mcp__client__f`` for ``f``) when one such is offered."""
    if name in offered:
        return name
    served = [tool for tool in offered if tool.startswith("mcp__") and tool.endswith(f"__{name}")]
    return served[0] if len(served) == 1 else name


def build_app(model: OfflineModel) -> Starlette:
    """The ASGI application serving ``model``."""

    async def messages(request: Request) -> Response:
        body = await request.json()
        entry = model.log("/v1/messages", body, dict(request.headers))
        text = last_user_text(body)
        if _HANG in text:
            while not await request.is_disconnected():
                await asyncio.sleep(0.05)
            return Response(status_code=499)
        if fail := _FAIL.search(text):
            entry.status = int(fail.group(1))
            return JSONResponse(_error_body(entry.status), status_code=entry.status)
        delay = model.settings.first_token_delay
        if slow := _SLOW.search(text):
            delay = float(slow.group(1))
        tools = _tool_calls(body)
        reply = json.dumps([{"tool": name, "input": given} for name, given in tools]) if tools else _reply_for(body)
        entry.reply = reply
        entry.usage = model.charge(body, reply)
        message_id = f"msg_offline_{entry.seq}"
        content: list[dict[str, Any]] = [{"type": "text", "text": reply}]
        if tools:  # several at once: parallel calls, as a model makes them
            content = [
                {
                    "type": "tool_use",
                    "id": f"toolu_offline_{entry.seq}"
                    + (f"n{i}" if i else ""),  # a "_1" suffix: the CLI loses its result
                    "name": name,
                    "input": given,
                }
                for i, (name, given) in enumerate(tools)
            ]
        stop_reason = "tool_use" if tools else "end_turn"
        if not body.get("stream"):
            await asyncio.sleep(delay)
            message = {"id": message_id, "type": "message", "role": "assistant", "model": body.get("model", "offline")}
            extra = {"stop_reason": stop_reason, "stop_sequence": None, "usage": asdict(entry.usage)}
            return JSONResponse({**message, "content": content, **extra})
        drip = float(found.group(1)) if (found := _DRIP.search(text)) else model.settings.token_delay
        return EventSourceResponse(
            _stream(entry, body, message_id, content, stop_reason, delay, drip),
            ping=600,
        )

    async def count(request: Request) -> Response:
        body = await request.json()
        model.log("/v1/messages/count_tokens", body, dict(request.headers))
        text = _text_of(body.get("system")) + "\n".join(_text_of(m.get("content")) for m in body.get("messages") or [])
        return JSONResponse({"input_tokens": count_tokens(text)})

    async def other(request: Request) -> Response:
        """Anything else the CLI may probe: answered, logged, never an error page."""
        model.log(request.url.path, await _any_body(request), dict(request.headers))
        return JSONResponse({"data": [], "has_more": False})

    return Starlette(
        routes=[
            Route("/v1/messages", messages, methods=["POST"]),
            Route("/v1/messages/count_tokens", count, methods=["POST"]),
            Route("/{path:path}", other, methods=["GET", "POST", "HEAD"]),
        ]
    )


async def _any_body(request: Request) -> dict[str, Any]:
    """A probe's body as logged: its JSON, or its raw text."""
    raw = await request.body() if request.method == "POST" else b""
    try:
        return json.loads(raw) if raw else {}
    except json.JSONDecodeError:
        return {"raw": raw.decode(errors="replace")}


async def _stream(
    entry: LoggedRequest,
    body: dict[str, Any],
    message_id: str,
    blocks: list[dict[str, Any]],
    stop_reason: str,
    first_token_delay: float,
    token_delay: float,
) -> AsyncIterator[dict[str, str]]:
    """The Messages API's SSE sequence for one reply (``entry`` notes when its first text went)."""
    usage = entry.usage or Usage(0, 0)

    def event(kind: str, payload: dict[str, Any]) -> dict[str, str]:
        return {"event": kind, "data": json.dumps({"type": kind, **payload})}

    start_usage = {**asdict(usage), "output_tokens": 1}
    yield event(
        "message_start",
        {
            "message": {
                "id": message_id,
                "type": "message",
                "role": "assistant",
                "model": body.get("model", "offline"),
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": start_usage,
            }
        },
    )
    await asyncio.sleep(first_token_delay)
    for index, content in enumerate(blocks):
        if content["type"] == "text":
            yield event("content_block_start", {"index": index, "content_block": {"type": "text", "text": ""}})
            for piece in re.findall(r"\S+\s*", content["text"]):
                entry.first_text_at = entry.first_text_at or time.monotonic()
                yield event("content_block_delta", {"index": index, "delta": {"type": "text_delta", "text": piece}})
                if token_delay:
                    await asyncio.sleep(token_delay)
        else:
            yield event("content_block_start", {"index": index, "content_block": {**content, "input": {}}})
            partial = {"type": "input_json_delta", "partial_json": json.dumps(content["input"])}
            yield event("content_block_delta", {"index": index, "delta": partial})
        yield event("content_block_stop", {"index": index})
    yield event(
        "message_delta",
        {"delta": {"stop_reason": stop_reason, "stop_sequence": None}, "usage": {"output_tokens": usage.output_tokens}},
    )
    yield event("message_stop", {})


def loopback_env(base_url: str) -> dict[str, str]:
    """What points a CLI at the offline model, with nothing sent anywhere else."""
    return {
        "ANTHROPIC_BASE_URL": base_url,
        "ANTHROPIC_API_KEY": "sk-offline-model",
        "DISABLE_TELEMETRY": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    }


class OfflineModelServer:
    """Runs the stand-in with uvicorn in a background thread, on 127.0.0.1."""

    def __init__(self, port: int = 0, model: OfflineModel | None = None) -> None:
        self.model = model or OfflineModel()
        config = uvicorn.Config(build_app(self.model), host="127.0.0.1", port=port, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="offline-model", daemon=True)

    @property
    def port(self) -> int:
        sockets = self._server.servers[0].sockets
        return int(sockets[0].getsockname()[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> OfflineModelServer:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("offline model did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._server.force_exit = True
        self._thread.join(timeout=5)

    def __enter__(self) -> OfflineModelServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(port: int, settings: ModelSettings | None = None) -> None:
    """Run the stand-in in the foreground (``claude-sessions offline-model``)."""
    model = OfflineModel(settings=settings or ModelSettings())
    uvicorn.run(build_app(model), host="127.0.0.1", port=port, log_level="info")
