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
turn on a CLI started with that schema (structured output); ``user`` is the end user. ``tools`` are the
client's functions, offered to the session's CLI: a completion may end with their calls, and the
next request's ``tool`` messages continue the waiting turn (:mod:`.openai_tools`).
Refused with 400 naming the ``param``: ``n`` > 1, ``functions`` (but with ``tool_choice`` ``"none"``),
images by URL, audio.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncGenerator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.background import BackgroundTask

from claude_sessions.config import ServerConfig, SessionConfig
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
from claude_sessions.http.openai_content import invalid
from claude_sessions.http.openai_history import ChatMessage, Conversation, conversation_of
from claude_sessions.http.openai_tools import (
    CONTINUE,
    ToolSpec,
    TurnEnd,
    client_functions,
    with_hint,
)
from claude_sessions.http.problems import problems
from claude_sessions.http.sessions import workspace_of
from claude_sessions.http.streaming import TurnStream
from claude_sessions.observability.telemetry import DEFAULT_TENANT
from claude_sessions.sessions.handler import ClaudeHandler
from claude_sessions.sessions.leases import held_elsewhere
from claude_sessions.sessions.parked_turns import Parked
from claude_sessions.sessions.replies import Reply
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
    400: "Invalid request: a field, or a feature not offered (n > 1, functions, audio); `param` names it.",
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
    tools: list[ToolSpec] | None = Field(
        None, max_length=128, description="the client's functions, offered to the model"
    )
    functions: list[Any] | None = Field(None, description="OpenAI's deprecated form: refused but with tool_choice none")
    tool_choice: Any = Field(
        None, description='"none" offers no function; "required" or a named one is asked for in words (see docs)'
    )
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
    if body.functions and body.tool_choice != "none":  # with tool_choice "none" they are offered to no one
        raise invalid("functions", "functions (OpenAI's deprecated form) are not supported: send them as tools")
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
    conversation: Conversation,
    explicit: str | None,
) -> tuple[Session, Parked | None]:
    """The session to run the turn on, and its turn waiting for the request's tool results, if one does.

    Results no turn here waits for: their session's node has it (the request is forwarded there),
    or none does, and a new session holds the whole history, the results included.
    """
    digest = history_digest(_tenant(principal), conversation.system, body.model, conversation.earlier)
    session = None
    if explicit is not None:
        session = await service.own_session(request, principal, explicit)
    elif conversation.earlier:
        session = await _holding(service, principal, digest)
    if session is not None and conversation.results:
        waiting = service.parked.waiting(session)
        if waiting is not None and waiting != conversation.answered:
            missing = ", ".join(sorted(waiting - conversation.answered)) or "none"
            raise invalid("messages", f"messages: the tool messages must answer every call of the turn ({missing})")
        parked = service.parked.take(session)
        if parked is not None:
            return session, parked
        holder = await service.handler.holder_of(session.id)
        if holder is not None and not is_forwarded(request):
            raise held_elsewhere(session.id, holder)
        if explicit is not None:
            raise ApiError(409, "no_waiting_turn", f"no turn of session {explicit!r} waits for these tool results")
        session = None
    return session or await _new_session(service, principal, body, conversation, digest), None


async def _holding(service: ServiceDep, principal: Principal, digest: str) -> Session | None:
    """The session of this tenant (the same end user's only) whose conversation is exactly this history."""
    for session in await service.manager.listing(principal.tenant):
        if session.metadata.get("history_digest") == digest and session.config.user == principal.user:
            return session
    return None


async def _new_session(
    service: ServiceDep, principal: Principal, body: ChatCompletionBody, conversation: Conversation, digest: str
) -> Session:
    """A session whose CLI resumes the history (tool results not answered here included) as earlier turns."""
    root = service.config.runtime.workspace_root
    server = service.config.server
    model = server.resolve_model(body.model)
    cwd = workspace_of(root, principal, None)
    options = SessionConfig(system_prompt=conversation.system, model=model, cwd=cwd, user=principal.user)
    key = await service.handler.create_session(
        None,
        resolve_options(options, server),
        {"history_digest": digest},
        owner=principal.tenant,
        owner_limit=server.TENANT_MAX_SESSIONS if principal.tenant is not None else None,
        history=conversation.turns if conversation.results else conversation.earlier,
        origin="openai",
        user_limit=user_limits(principal, server).max_sessions,
    )
    return service.manager.get(key)


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
    conversation = conversation_of(body.messages, service.config.server.IMAGE_MAX_BYTES)
    functions = client_functions(body.tools, body.tool_choice)
    schema = output_schema(body.response_format)
    session, parked = await _session_for(request, service, principal, body, conversation, x_session_id)
    tenant, turns = _tenant(principal), conversation.turns

    def digest_of(reply: Turn) -> str:
        return history_digest(tenant, conversation.system, body.model, [*turns, reply])

    completion = Completion(session, body.model, digest_of, structured=schema is not None)
    if parked is not None:  # the results go to the CLI waiting for them: the same turn goes on
        for call_id, result in conversation.results:
            ClaudeHandler.answer_tool_call(session, call_id, result)
        turn = parked.turn
    else:
        # No one here can answer a permission request: an asked call is denied at once, the model reads why.
        limits = user_limits(principal, service.config.server)
        options = TurnOptions(can_ask=False, limits=limits, output_schema=schema, functions=functions)
        prompt = with_hint(conversation.prompt or CONTINUE, body.tool_choice, functions)
        turn = service.handler.send_message(session, prompt, forwarded=is_forwarded(request), options=options)
    return await _answer(service, body, completion, turn)


async def _answer(
    service: ServiceDep, body: ChatCompletionBody, completion: Completion, turn: AsyncGenerator[Reply, None]
) -> Response:
    """The completion of a turn (new or continued): whole, or streamed; it ends at the turn's end or
    its client's calls (the turn then waits, parked)."""
    session = completion.session
    end = TurnEnd(service.parked, service.manager, completion, turn)
    headers = {"X-Session-ID": session.public_id}
    if not body.stream:
        try:
            async for message in turn:
                completion.take(message)
                if completion.calls_ready:
                    break
        finally:
            await end()
        await service.manager.save(session)
        return JSONResponse(completion.answer(), headers=headers)
    first: list[dict[str, Any]] = []
    try:  # until the first words or the end: a model error still answers with its status
        async for message in turn:
            first += completion.take(message)
            if first or completion.result is not None or completion.calls_ready:
                break
    except BaseException:
        await end()
        raise
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    deadline = time.monotonic() + service.config.optimization.MESSAGE_TIMEOUT
    return TurnStream(
        chunks(completion, turn, first, include_usage, end),
        deadline=deadline,
        headers=headers,
        sep="\n",
        ping=15,
        shutdown_grace_period=service.config.optimization.DESTROY_TIMEOUT,
        background=BackgroundTask(end),  # as the sessions route: freed even if the stream never starts
    )
