"""The model gateway: every CLI reaches the model through it, with a token of its own.

The operator's credentials live only in this process. Each CLI gets the gateway's
loopback address as ``ANTHROPIC_BASE_URL`` and a random token as its key; the
gateway checks the token, swaps in the operator's credentials and relays the call
upstream (the Anthropic API, the operator's ``ANTHROPIC_BASE_URL``, or the offline
model). So a session's Bash that prints its environment finds a token that dies
with its worker and spends only its own tenant's money.

The gateway also meters: it reads the usage of every answer as it streams past
(before the CLI has seen the end of it) and prices it (``pricing``), so a turn's
tokens and cost are what the upstream really billed. A spare's warm-up turn is
answered here, never upstream.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import secrets
import socket
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import structlog
from aiohttp import web
from yarl import URL

from claude_sessions.config import RuntimeConfig
from claude_sessions.gateway.pricing import cost_usd
from claude_sessions.observability.metrics import TurnUsage

log = structlog.get_logger("claude_sessions.gateway")

ANTHROPIC_API = "https://api.anthropic.com"
#: The largest request a CLI may send (the Messages API takes up to 32 MB).
_MAX_REQUEST_BYTES = 64 * 1024 * 1024
#: Headers that describe one hop, or carry a credential: never relayed as they came.
_HOP_HEADERS = frozenset(
    {
        "host",
        "connection",
        "keep-alive",
        "proxy-authorization",
        "proxy-authenticate",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "content-encoding",
        "accept-encoding",
        "x-api-key",
        "authorization",
    }
)


@dataclass
class Tally:
    """What one tenant's calls through this gateway cost, and how much of that the registry
    holds (the handler writes it when a turn ends); both only grow."""

    cost: float = 0.0
    charged: float = 0.0


@dataclass(eq=False)
class Grant:
    """One worker's right to call the model: a token, its tenant, and what it used."""

    tenant: str
    token: str = field(repr=False)
    #: Shared by every grant of the tenant: turns running at once count against one budget.
    tally: Tally
    #: Calls answered by the gateway itself (a spare's warm-up turn): never upstream, never billed.
    warming: bool = False
    used: TurnUsage = field(default_factory=TurnUsage)
    #: What the running turn may spend (the rest of its tenant's day); None: no limit.
    budget: float | None = None
    #: The tally's ``charged`` just before that rest was read: everything metered since, the
    #: tenant's other running turns included, counts against the budget.
    baseline: float = 0.0
    _revoke: Callable[[Grant], None] = field(repr=False, default=lambda grant: None)

    def bill(self, usage: TurnUsage) -> None:
        self.used = self.used + usage
        self.tally.cost += usage.cost

    @property
    def budget_spent(self) -> bool:
        """Whether the tenant's calls since the turn began used up the turn's budget."""
        return self.budget is not None and self.tally.cost - self.baseline >= self.budget

    def take(self) -> TurnUsage:
        """What was used since the last take (one turn's worth, read at its end)."""
        used, self.used = self.used, TurnUsage()
        return used

    def revoke(self) -> None:
        """From now on the token answers 401 (the worker is gone)."""
        self._revoke(self)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _error(status: int, kind: str, message: str) -> web.Response:
    """An error in the Messages API's own shape, so the CLI reports it as such."""
    return web.json_response({"type": "error", "error": {"type": kind, "message": message}}, status=status)


class _UsageReader:
    """Follows one answer's usage as it streams past and bills the difference to a grant.

    ``message_start`` carries the input side, ``message_delta`` the output (cumulative
    within the message); each update bills only what is new, so a cut stream is
    billed for what it got.
    """

    def __init__(self, grant: Grant, model: str) -> None:
        self._grant, self._model = grant, model
        self._usage: dict[str, Any] = {}
        self._billed = TurnUsage()
        self._pending = b""

    def feed(self, chunk: bytes) -> None:
        """Take SSE bytes; bill each complete ``data:`` line."""
        self._pending += chunk
        *lines, self._pending = self._pending.split(b"\n")
        for line in lines:  # only the two events that carry usage are worth parsing
            if line.startswith(b"data:") and (b"message_start" in line or b"message_delta" in line):
                with contextlib.suppress(ValueError):
                    self.event(json.loads(line[5:]))

    def event(self, event: Any) -> None:
        if not isinstance(event, dict):
            return
        if event.get("type") == "message_start" and isinstance(event.get("message"), dict):
            self._model = str(event["message"].get("model") or self._model)
            self.update(event["message"].get("usage"))
        elif event.get("type") == "message_delta":
            self.update(event.get("usage"))

    def update(self, usage: Any) -> None:
        if not isinstance(usage, dict):
            return
        self._usage |= {key: value for key, value in usage.items() if value is not None}
        total = TurnUsage.from_api(self._usage, cost_usd(self._model, self._usage))
        self._grant.bill(total - self._billed)
        self._billed = total


class ModelGateway:
    """A loopback relay to the model, on the event loop of the handler that owns it.

    aiohttp on both sides (its C parser and its client): it adds under 1 ms to a call where
    uvicorn and httpx added about 2. A CLI that hangs up (an interrupt) cancels its call,
    and so the upstream request (``handler_cancellation``).
    """

    def __init__(
        self,
        upstream: str | None,
        credentials: Mapping[str, str],
        timeout: float,
        permits_model: Callable[[str], bool] = lambda model: True,
    ) -> None:
        self.upstream = (upstream or ANTHROPIC_API).rstrip("/")
        #: ``MODELS_ALLOWED``, enforced on every call: a tool's own model choice (the Agent
        #: tool's ``model``) is the tenant's input too.
        self._permits_model = permits_model
        self._credentials = dict(credentials)
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=10.0, sock_read=timeout)
        self._proxy = _proxy_for(self.upstream)
        self._grants: dict[bytes, Grant] = {}
        self._tallies: dict[str, Tally] = {}
        self._client: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        #: Bound now, so the address is known (to the CLI options, to redaction) before serving.
        #: No Nagle (connections inherit it): a request's second segment must not wait 40 ms for an ACK.
        self._socket = socket.create_server(("127.0.0.1", 0))
        self._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.base_url = f"http://127.0.0.1:{self._socket.getsockname()[1]}"

    # -- tokens -------------------------------------------------------------------

    def point_at(self, upstream: str, credentials: Mapping[str, str]) -> None:
        """Relay to another upstream (the offline model a handler started for itself); before ``start``."""
        self.upstream = upstream.rstrip("/")
        self._proxy = _proxy_for(self.upstream)
        self._credentials = dict(credentials)

    def issue(self, tenant: str) -> Grant:
        """A new token for one worker of ``tenant``."""
        grant = Grant(tenant, "csg-" + secrets.token_urlsafe(32), self.tally(tenant), _revoke=self._forget)
        self._grants[_digest(grant.token)] = grant
        return grant

    def tally(self, tenant: str) -> Tally:
        return self._tallies.setdefault(tenant, Tally())

    def _forget(self, grant: Grant) -> None:
        self._grants.pop(_digest(grant.token), None)

    def grant_of(self, headers: Mapping[str, str]) -> Grant | None:
        """The live grant a request presents (``x-api-key`` or a bearer token), or None."""
        token = headers.get("x-api-key") or headers.get("authorization", "").removeprefix("Bearer ").strip()
        return self._grants.get(_digest(token)) if token else None

    @property
    def live_tokens(self) -> int:
        return len(self._grants)

    # -- serving ------------------------------------------------------------------

    async def start(self) -> None:
        """Serve on the loopback socket bound at construction (``base_url``)."""
        self._client = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            timeout=self._timeout,
            # An upstream (a proxy) may compress whatever was asked: decoded here, for the meter
            # and the CLI alike, as its encoding header is not passed on.
            auto_decompress=True,
        )
        app = web.Application(client_max_size=_MAX_REQUEST_BYTES)
        app.router.add_route("*", "/{path:.*}", self._relay)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        await web.SockSite(self._runner, self._socket).start()
        log.info("gateway_started", upstream=self.upstream, base_url=self.base_url)

    async def close(self) -> None:
        self._grants.clear()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._client is not None:
            await self._client.close()
        self._socket.close()

    # -- one call -----------------------------------------------------------------

    async def _relay(self, request: web.Request) -> web.StreamResponse:
        grant = self.grant_of(request.headers)
        if grant is None:
            return _error(401, "authentication_error", "invalid or revoked token")
        body = await request.read()
        if grant.warming and request.path.startswith("/v1/messages"):
            return _warm_reply(request.path, body)
        messages = request.path == "/v1/messages"  # a billed call (count_tokens is not)
        model = _model_of(body) if messages else ""
        if messages and not self._permits_model(model):
            log.warning("gateway_model_refused", tenant=grant.tenant, model=model[:100])
            return _error(400, "invalid_request_error", f"model {model[:100]!r} is not permitted here (MODELS_ALLOWED)")
        if messages and grant.budget_spent:
            # A 400, which the CLI does not retry: the turn ends with this message as its error.
            return _error(400, "invalid_request_error", "the tenant's daily budget (TENANT_DAILY_USD) is spent")
        assert self._client is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        call = functools.partial(
            self._client.request,
            request.method,
            URL(self.upstream + request.rel_url.raw_path_qs, encoded=True),  # as it came, still encoded
            headers={**headers, **self._credentials, "accept-encoding": "identity"},
            data=body,
            proxy=self._proxy,
        )
        try:
            try:
                upstream = await call()
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
                # A kept-alive connection the upstream closed (idle) just as it was reused, found
                # reading the answer or writing the call. Once more, on a new connection (httpx did it).
                upstream = await call()
        except (aiohttp.ClientError, TimeoutError) as error:
            log.warning("gateway_upstream_failed", error=repr(error))
            return _error(502, "api_error", "the model endpoint could not be reached")
        async with upstream:
            relayed = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_HEADERS}
            reader = None
            if messages and upstream.status == 200:
                reader = _UsageReader(grant, model)
            if reader is not None and not upstream.content_type.startswith("text/event-stream"):
                content = await upstream.read()  # whole: billed before the CLI can see the answer
                with contextlib.suppress(ValueError):
                    answer = json.loads(content)
                    if isinstance(answer, dict):
                        reader.event({"type": "message_start", "message": answer})
                return web.Response(body=content, status=upstream.status, headers=relayed)
            return await _stream(request, upstream, relayed, reader)


async def _stream(
    request: web.Request, upstream: aiohttp.ClientResponse, headers: dict[str, str], reader: _UsageReader | None
) -> web.StreamResponse:
    """Relay an answer chunk by chunk, billing each usage update before passing it on.

    An answer cut upstream is cut here too (the connection closes, no clean end), so
    the CLI sees a broken answer and retries, as it would talking to the API itself.
    """
    answer = web.StreamResponse(status=upstream.status, headers=headers)
    await answer.prepare(request)
    try:
        async for chunk in upstream.content.iter_any():
            if reader is not None:
                reader.feed(chunk)
            await answer.write(chunk)
    except (aiohttp.ClientError, TimeoutError) as error:
        log.warning("gateway_upstream_cut", error=repr(error))
        answer.force_close()
        if request.transport is not None:
            request.transport.close()
        return answer
    await answer.write_eof()
    return answer


def _proxy_for(url: str) -> str | None:
    """The operator's ``HTTPS_PROXY`` / ``HTTP_PROXY`` for ``url`` unless ``NO_PROXY`` exempts it.

    Read once: aiohttp's ``trust_env`` reads it again in a thread on every call (~0.5 ms each).
    """
    parts = urllib.parse.urlsplit(url)
    if parts.hostname is not None and urllib.request.proxy_bypass(parts.hostname):
        return None
    return urllib.request.getproxies().get(parts.scheme)


def _model_of(body: bytes) -> str:
    with contextlib.suppress(ValueError, AttributeError):
        return str(json.loads(body).get("model") or "")
    return ""


def _warm_reply(path: str, body: bytes) -> web.Response:
    """The gateway's own answer to a spare's warm-up turn: one short reply, zero usage."""
    if path != "/v1/messages":
        return web.json_response({"input_tokens": 0})
    usage = {"input_tokens": 0, "output_tokens": 0, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
    message: dict[str, Any] = {
        "id": f"msg_warmup_{secrets.token_hex(8)}",
        "type": "message",
        "role": "assistant",
        "model": _model_of(body) or "warm-up",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": usage,
    }
    with contextlib.suppress(ValueError, AttributeError):
        if not json.loads(body).get("stream"):
            done = {**message, "content": [{"type": "text", "text": "ready"}], "stop_reason": "end_turn"}
            return web.json_response(done)
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": message},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "ready"}},
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None}, "usage": usage},
        {"type": "message_stop"},
    ]
    text = "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events)
    return web.Response(text=text, content_type="text/event-stream")


def credentials_of(runtime: RuntimeConfig) -> dict[str, str]:
    """The headers that carry the operator's credentials upstream."""
    headers = {}
    if runtime.ANTHROPIC_API_KEY:
        headers["x-api-key"] = runtime.ANTHROPIC_API_KEY.get_secret_value()
    if runtime.ANTHROPIC_AUTH_TOKEN:
        headers["authorization"] = f"Bearer {runtime.ANTHROPIC_AUTH_TOKEN.get_secret_value()}"
    return headers
