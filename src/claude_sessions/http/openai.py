"""The OpenAI-compatible endpoint: ``/v1/chat/completions`` and ``/v1/models`` on live conversations.

A chat client resends the whole history each time. When the earlier messages are
exactly a conversation this tenant's session holds (a digest of them, per tenant),
only the new user message reaches that session's CLI. Any other history starts a new
session whose CLI resumes the earlier messages as real earlier turns
(:mod:`.conversations`). Errors keep OpenAI's shape, so its clients raise their own types.

Accepted and ignored (the CLI decides): ``temperature``, ``top_p``, ``max_tokens``,
``max_completion_tokens``, ``presence_penalty``, ``frequency_penalty``, ``stop``, ``seed``,
``logit_bias``, ``logprobs``, ``top_logprobs``, ``parallel_tool_calls``, ``metadata``, ``store``,
``service_tier``, ``reasoning_effort``. ``response_format`` ``json_schema`` and ``json_object`` run the
turn on a CLI started with that schema (structured output); ``user`` is the end user.
Refused with 400 naming the ``param``: ``n`` > 1, ``tools`` / ``functions``, images, audio.
"""

from __future__ import annotations

import contextlib
import json
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.background import BackgroundTask

from claude_sessions.config import ServerConfig, SessionConfig
from claude_sessions.content import Content
from claude_sessions.http.auth import Principal
from claude_sessions.http.common import (
    ApiError,
    Caller,
    ServiceDep,
    Surface,
    acting_for,
    is_forwarded,
    resolve_options,
    user_limits,
)
from claude_sessions.http.openai_answers import Completion, chunks, openai_response
from claude_sessions.http.openai_content import invalid, text_content, user_content
from claude_sessions.http.problems import problems
from claude_sessions.http.sessions import workspace_of
from claude_sessions.http.streaming import TurnStream
from claude_sessions.observability.telemetry import DEFAULT_TENANT
from claude_sessions.sessions.session import Session
from claude_sessions.sessions.turn_options import TurnOptions
from claude_sessions.store.history import Turn, history_digest

router = APIRouter(tags=["openai"])

PATHS = ("/v1/chat/completions", "/v1/models")


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str = Field(description="invalid_request_error, authentication_error, rate_limit_error, server_error, ...")
    param: str | None = Field(description="the request field at fault, when one is")
    code: str | None = Field(description="this server's stable name of the error (model_error, session_busy, ...)")


class OpenAIErrorBody(BaseModel):
    """Every error of this surface, in OpenAI's shape."""

    error: OpenAIErrorDetail


_DESCRIPTIONS = {
    400: "Invalid request: a field, or a feature not offered (n > 1, tools, images, audio); `param` names it.",
    401: "Missing or unknown API key.",
    403: "The key is bound to another end user than X-End-User or the body's user names.",
    404: "X-Session-ID names no session of this tenant (or of this end user).",
    409: "The session is running a turn.",
    410: "The session lost its transcript.",
    413: "The request body is too large.",
    429: "A session limit, the tenant's daily budget or its turn rate is reached; see Retry-After.",
    502: "The model call failed after the CLI's retries, or the session's CLI died.",
    503: "At capacity, no worker could start, or the server is shutting down; see Retry-After.",
    504: "The turn ran past OPT_MESSAGE_TIMEOUT.",
}


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": OpenAIErrorBody, "description": _DESCRIPTIONS[status]} for status in (*statuses, 503)}


def validation_error(error: RequestValidationError) -> ApiError:
    """OpenAI names one field per error: the first problem, in words."""
    first = problems(error.errors())[0]
    return ApiError(400, "invalid_request", first.message, extra={"param": first.param})


#: How this endpoint answers errors: OpenAI's shape, a bad request as its 400.
SURFACE = Surface(openai_response, validation_error)


# -- bodies ---------------------------------------------------------------------------


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    role: Literal["system", "developer", "user", "assistant"] = Field(
        description="tool and function messages are not supported (no tools are offered here)"
    )
    content: str | list[dict[str, Any]] | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    include_usage: bool = False


class ChatCompletionBody(BaseModel):
    """OpenAI's request; sampling fields and unknown ones are accepted and ignored (module docstring).

    Strict: what the schema calls an integer or a boolean must be one (``1.0`` is refused).
    """

    model_config = ConfigDict(extra="allow", strict=True)

    model: str = Field(min_length=1, max_length=200)
    messages: list[ChatMessage] = Field(min_length=1, max_length=10_000)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(None, description="at most 1: one conversation answers once")
    tools: list[Any] | None = Field(None, description="not supported: the session's tools are Claude Code's own")
    functions: list[Any] | None = Field(None, description="not supported, as tools")
    tool_choice: Any = Field(None, description='"none" lets tools come along unused; any other is refused with them')
    audio: dict[str, Any] | None = None
    modalities: list[str] | None = None
    response_format: dict[str, Any] | None = None
    user: str | None = None


def _refuse_unsupported(body: ChatCompletionBody, server: ServerConfig) -> None:
    if server.resolve_model(body.model) is None:
        names = server.model_names()
        raise invalid("model", f"model {body.model!r} is not offered here; GET /v1/models lists {names}")
    if body.n is not None and body.n > 1:
        raise invalid("n", "n > 1 is not supported: one conversation answers once")
    for name in ("tools", "functions"):  # with tool_choice "none" they are offered to no one: answered as text
        if getattr(body, name) and body.tool_choice != "none":
            raise invalid(name, f"{name} are not supported (but with tool_choice none): the tools are Claude Code's")
    if body.audio or "audio" in (body.modalities or []):
        raise invalid("audio" if body.audio else "modalities", "audio is not supported")
    output_schema(body.response_format)  # 400 for one not offered


#: The longest schema a ``response_format`` may carry (as SessionConfig.output_schema takes it).
SCHEMA_MAX_CHARS = 100_000


def output_schema(response_format: dict[str, Any] | None) -> str | None:
    """The JSON schema a ``response_format`` asks the answer to fit (canonical JSON text), or None for text.

    ``json_object`` is any JSON object; ``json_schema`` its ``schema`` (``strict`` or not, the CLI checks
    the answer against it and asks the model again once).
    """
    kind = (response_format or {}).get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return json.dumps({"type": "object"})
    spec = (response_format or {}).get("json_schema")
    if kind != "json_schema":
        raise invalid("response_format.type", "response_format.type must be text, json_object or json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
        raise invalid("response_format.json_schema", "response_format.json_schema must be {name, schema, strict?}")
    schema = json.dumps(spec.get("schema", {"type": "object"}), sort_keys=True, separators=(",", ":"))
    if len(schema) > SCHEMA_MAX_CHARS:  # it goes on the CLI's command line, one argument
        raise invalid("response_format.json_schema", f"the schema must be at most {SCHEMA_MAX_CHARS} characters")
    return schema


def _conversation(body: ChatCompletionBody, image_max_bytes: int) -> tuple[str | None, list[Turn], Content]:
    """(system prompt, earlier turns, the new user message) of a request."""
    system: list[str] = []
    turns: list[Turn] = []
    for index, message in enumerate(body.messages):
        if message.role in ("system", "developer"):
            system.append(text_content(message.content, index))
        elif message.role == "assistant":
            turns.append(("assistant", text_content(message.content, index)))
        else:
            turns.append(("user", user_content(message.content, index, image_max_bytes)))
    last = turns[-1] if turns else None
    if last is None or last[0] != "user" or (isinstance(last[1], str) and not last[1].strip()):
        raise invalid("messages", "messages: the last message must be a non-empty user message")
    *earlier, (_, prompt) = turns
    return ("\n\n".join(system) or None), earlier, prompt


# -- the session a request continues ----------------------------------------------------


def _tenant(principal: Principal) -> str:
    """Whose conversations a history is looked up among: the tenant's, or its end user's."""
    tenant = principal.tenant or DEFAULT_TENANT
    return tenant if principal.user is None else f"{tenant}/{principal.user}"


async def _session_for(
    request: Request,
    service: ServiceDep,
    principal: Principal,
    body: ChatCompletionBody,
    conversation: tuple[str | None, list[Turn], Content],
    explicit: str | None,
) -> tuple[Session, str]:
    """The session to run the turn on, and the digest of the history it now continues."""
    system, earlier, _ = conversation
    digest = history_digest(_tenant(principal), system, body.model, earlier)
    if explicit is not None:
        return await service.own_session(request, principal, explicit), digest
    if earlier:
        for session in await service.manager.listing(principal.tenant):
            # The same end user's only: the tenant's own key continues the tenant's own sessions.
            if session.metadata.get("history_digest") == digest and session.config.user == principal.user:
                return session, digest
    root = service.config.runtime.workspace_root
    server = service.config.server
    model = server.resolve_model(body.model)
    cwd = workspace_of(root, principal, None)
    options = SessionConfig(system_prompt=system, model=model, cwd=cwd, user=principal.user)
    key = await service.handler.create_session(
        None,
        resolve_options(options, server),
        {"history_digest": digest},
        owner=principal.tenant,
        owner_limit=server.TENANT_MAX_SESSIONS if principal.tenant is not None else None,
        history=earlier,
        origin="openai",
        user_limit=user_limits(principal, server).max_sessions,
    )
    return service.manager.get(key), digest


# -- routes -----------------------------------------------------------------------------


@router.get("/v1/models", response_model=None, responses=_errors(400, 401, 403))
async def list_models(_: Caller, service: ServiceDep) -> dict[str, Any]:
    """The models a session may ask for: ``MODELS_ALLOWED``, then ``MODEL_ALIASES``' names."""
    return {
        "object": "list",
        "data": [
            {"id": model, "object": "model", "created": 0, "owned_by": "anthropic"}
            for model in service.config.server.model_names()
        ],
    }


@router.post(
    "/v1/chat/completions",
    response_model=None,
    responses={
        200: {
            "description": "A `chat.completion`, or with `stream`, `chat.completion.chunk` events and `data: [DONE]`.",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        **_errors(400, 401, 403, 404, 409, 410, 413, 429, 502, 504),
    },
)
async def chat_completions(
    request: Request,
    body: ChatCompletionBody,
    principal: Caller,
    service: ServiceDep,
    x_session_id: Annotated[str | None, Header(alias="X-Session-ID", max_length=128)] = None,
) -> Response:
    """A completion on a live conversation; ``X-Session-ID`` names the session used."""
    _refuse_unsupported(body, service.config.server)
    if body.user is not None and body.user != principal.user:  # the end user, as X-End-User says it
        if principal.user is not None:
            raise ApiError(403, "forbidden", "user: the key or X-End-User names another user")
        principal = acting_for(principal, body.user, "user")
    conversation = _conversation(body, service.config.server.IMAGE_MAX_BYTES)
    system, earlier, prompt = conversation
    session, _ = await _session_for(request, service, principal, body, conversation, x_session_id)
    tenant = _tenant(principal)

    def digest_of(reply: str) -> str:
        return history_digest(tenant, system, body.model, [*earlier, ("user", prompt), ("assistant", reply)])

    schema = output_schema(body.response_format)
    completion = Completion(session, body.model, digest_of, structured=schema is not None)
    headers = {"X-Session-ID": session.public_id}
    # No one here can answer a tool call the session asks about: it is denied at once, the model reads why.
    limits = user_limits(principal, service.config.server)
    options = TurnOptions(can_ask=False, limits=limits, output_schema=schema)
    turn = service.handler.send_message(session, prompt, forwarded=is_forwarded(request), options=options)
    if not body.stream:
        async with contextlib.aclosing(turn):
            async for message in turn:
                completion.take(message)
        await service.manager.save(session)
        return JSONResponse(completion.answer(), headers=headers)
    first: list[str] = []
    try:  # until the first words or the end: a model error still answers with its status
        async for message in turn:
            first += completion.take(message)
            if first or completion.result is not None:
                break
    except BaseException:
        await turn.aclose()
        raise
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    deadline = time.monotonic() + service.config.optimization.MESSAGE_TIMEOUT
    return TurnStream(
        chunks(completion, turn, first, include_usage),
        deadline=deadline,
        headers=headers,
        sep="\n",
        ping=15,
        shutdown_grace_period=service.config.optimization.DESTROY_TIMEOUT,
        background=BackgroundTask(turn.aclose),  # as the sessions route: freed even if the stream never starts
    )
