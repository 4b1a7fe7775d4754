"""Requests for a session whose live CLI runs on another node: served there, streamed back.

A round-robin load balancer sends a conversation's messages to any node; the node
holding the CLI answers them (a turn costs the holder's time plus a few
milliseconds) instead of every node respawning the conversation. A forwarded request
carries ``X-Claude-Sessions-Forwarded`` and is never forwarded again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import structlog
from fastapi import Request
from starlette.background import BackgroundTask
from starlette.responses import Response, StreamingResponse
from yarl import URL

from claude_sessions.config import ServerConfig
from claude_sessions.errors import SessionHeldElsewhereError
from claude_sessions.http.common import ApiError
from claude_sessions.store.records import Holder

log = structlog.get_logger("claude_sessions.api")

#: Marks a request another node forwarded here: it is served here or refused, never sent on.
FORWARDED_HEADER = "x-claude-sessions-forwarded"


def forwarding_mark(server: ServerConfig) -> str:
    """The value of ``FORWARDED_HEADER`` on this cluster's own forwards.

    Derived from every key (the nodes share them, a tenant knows only its own), so a
    client cannot pass a request off as forwarded and change how a node treats it.
    """
    admin = server.ADMIN_API_KEY.get_secret_value() if server.ADMIN_API_KEY is not None else ""
    keys = f"{server.API_KEYS.get_secret_value()}\0{admin}".encode()
    return hmac.new(keys, b"claude-sessions forwarded request", hashlib.sha256).hexdigest()


#: Per-connection headers, and the ones the other node sets for itself.
_HOP_BY_HOP = {"host", "content-length", "connection", "keep-alive", "transfer-encoding", "te", "upgrade"}
_OWN_HEADERS = _HOP_BY_HOP | {"x-request-id", "date", "server"}
#: What a forward sets itself, whatever the client sent.
_SET_HERE = _HOP_BY_HOP | {FORWARDED_HEADER, "x-request-id"}


class _HolderGone(Exception):
    """The holder refused the connection, dropped it without an answer, or lost its lease while it was awaited."""


#: How often a stream waiting for a dead holder's lease to lapse tells its client it is still there.
KEEPALIVE_SECONDS = 4.0


class Forwarder:
    """One connection pool to the other nodes, kept for the life of the app.

    A holder that is gone (the connection refused or dropped without an answer, or its lease
    lapsing while it is awaited: killed, paused, cut off) is waited out: once its lease lapses,
    the request is served here (sent to this node itself, marked forwarded, so the route takes
    the session over and resumes it), or by the node that took the session meanwhile. The client
    sees one slower answer; a stream gets an SSE comment every ``KEEPALIVE_SECONDS`` meanwhile. A
    holder that is merely slow keeps its lease and is waited for.
    """

    def __init__(
        self,
        holder_of: Callable[[str], Awaitable[Holder | None]],
        node_alive: Callable[[str], Awaitable[bool]],
        own_url: Callable[[], str],
        lease_seconds: float,
        turn_seconds: float,
        retry_after: int,
        mark: str,
    ) -> None:
        self._holder_of, self._own_url, self._lease_seconds = holder_of, own_url, lease_seconds
        #: Whether a node still beats (a holder that let the session go while answering is not gone).
        self._node_alive = node_alive
        self._turn_seconds = turn_seconds
        self._mark = mark  # FORWARDED_HEADER's value: the other node knows it came from a node
        # No read timeout beyond the turn's own: the holder bounds every turn.
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=2.0, sock_read=turn_seconds + 30.0)
        self._client: aiohttp.ClientSession | None = None
        self._retry_after = retry_after

    async def forward(self, request: Request, held: SessionHeldElsewhereError) -> Response:
        """Send ``request`` to the holder as it came (its bearer key decides there too), stream the answer."""
        body = await request.body()
        answering = asyncio.ensure_future(self._answer(request, held, body))
        try:
            if expects_stream(request, body):  # a client kept waiting past a few seconds hears from us
                await asyncio.wait({answering}, timeout=KEEPALIVE_SECONDS)
                if not answering.done():
                    return StreamingResponse(
                        self._kept_alive(answering, held, request.url.path),
                        media_type="text/event-stream",
                        background=BackgroundTask(answering.cancel),  # a stream that never started
                    )
            answer = await answering
        except BaseException:
            answering.cancel()
            raise
        return await self._relay(answer, held)

    async def _answer(self, request: Request, held: SessionHeldElsewhereError, body: bytes) -> aiohttp.ClientResponse:
        """The holder's answer; a gone holder's lease is waited out and the request sent where the session is then."""
        try:
            answer = await self._send(request, held, body, watch=True)
            if answer.status != 503 or not holder_draining(await answer.read()):
                return answer
            answer.release()  # the holder began draining: it hands the session over, served where it goes
            log.info("forward_holder_draining", node_id=held.node_id)
        except _HolderGone as gone:
            log.warning("forward_holder_gone", node_id=held.node_id, reason=str(gone))
        holder = await self._lapsed(held)
        url = self._own_url() if holder is None else holder.url
        node_id = "" if holder is None else holder.node_id
        log.info("forward_taken_over", session_key=held.session_key, by=node_id or "this node")
        then = SessionHeldElsewhereError(str(held), held.session_key, node_id, url)
        try:
            return await self._send(request, then, body, watch=holder is not None)
        except _HolderGone as gone:
            raise self._failed(then, gone) from None

    async def _lapsed(self, held: SessionHeldElsewhereError) -> Holder | None:
        """Wait until ``held``'s node no longer holds the session (its lease lapsed): the holder then, or None."""
        deadline = asyncio.get_running_loop().time() + self._turn_seconds
        while asyncio.get_running_loop().time() < deadline:
            holder = await self._holder_of(held.session_key)
            if holder is None or holder.node_id != held.node_id:
                return holder
            await asyncio.sleep(min(0.25, self._lease_seconds / 10))
        raise self._unavailable()

    async def _send(
        self, request: Request, held: SessionHeldElsewhereError, body: bytes, *, watch: bool
    ) -> aiohttp.ClientResponse:
        """The answer's head from ``held``'s node; ``watch``: give up once that node no longer holds the session."""
        if self._client is None:  # made on the serving loop, at first use
            # No cap on connections: each open turn holds one, and a capped pool would make the next wait unbounded.
            self._client = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0), timeout=self._timeout, auto_decompress=False
            )
        # The path and query exactly as they came, still percent-encoded.
        target = held.node_url + request.scope["raw_path"].decode("ascii")
        if query := request.scope["query_string"].decode("ascii"):
            target += "?" + query
        headers = [(k, v) for k, v in request.headers.items() if k not in _SET_HERE]
        request_id = request.scope.get("state", {}).get("request_id", "")
        headers += [(FORWARDED_HEADER, self._mark), ("x-request-id", request_id)]
        sending = asyncio.ensure_future(
            self._client.request(request.method, URL(target, encoded=True), headers=headers, data=body)
        )
        try:
            while not (await asyncio.wait({sending}, timeout=self._lease_seconds / 3))[0]:
                if watch and not await self._node_alive(held.node_id):
                    raise _HolderGone("its lease lapsed while it was awaited")
            return sending.result()
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            raise _HolderGone(repr(error)) from None
        finally:
            if not sending.done():
                sending.cancel()
                with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
                    await sending

    async def _relay(self, answer: aiohttp.ClientResponse, held: SessionHeldElsewhereError) -> Response:
        relayed = {k: v for k, v in answer.headers.items() if k.lower() not in _OWN_HEADERS}
        if answer.content_length is not None:  # a whole answer (JSON, an error): relayed whole, at once
            try:
                body = await answer.read()
            except (aiohttp.ClientError, TimeoutError) as error:
                raise self._failed(held, error) from None
            finally:
                answer.release()
            return Response(body, status_code=answer.status, headers=relayed)
        return StreamingResponse(
            self._relayed(answer, held),
            status_code=answer.status,
            headers=relayed,
            background=BackgroundTask(answer.release),
        )

    async def _kept_alive(
        self, answering: asyncio.Future[aiohttp.ClientResponse], held: SessionHeldElsewhereError, path: str
    ) -> AsyncIterator[bytes]:
        """An SSE stream begun before its answer: comments while the answer is awaited, then the answer
        (a refusal as an ``error`` event, in the shape of the endpoint asked)."""
        try:
            while not answering.done():
                yield b": waiting for the node holding this session\n\n"
                await asyncio.wait({answering}, timeout=KEEPALIVE_SECONDS)
            answer = answering.result()
        except ApiError as refusal:
            yield _error_event(json.dumps(refusal.body(), separators=(",", ":")).encode(), path)
            return
        finally:
            if not answering.done():
                answering.cancel()
        try:
            if answer.status != 200 or answer.content_length is not None:
                yield _error_event(await answer.read(), path)
                return
            async for chunk in self._relayed(answer, held):
                yield chunk
        finally:
            answer.release()

    @staticmethod
    async def _relayed(answer: aiohttp.ClientResponse, held: SessionHeldElsewhereError) -> AsyncIterator[bytes]:
        """The holder's stream as it comes; cut by the holder's end, it ends with an ``error`` event
        (``node_failed``): the turn, and any request of it waiting for its user, is lost with that node."""
        try:
            async for chunk in answer.content.iter_any():
                yield chunk
        except (aiohttp.ClientError, TimeoutError) as error:
            log.warning("forward_cut", node_url=held.node_url, error=repr(error))
            failed = ApiError(502, "node_failed", "the node running this turn failed; the turn is lost, send it again")
            yield f"\n\nevent: error\ndata: {json.dumps(failed.body(), separators=(',', ':'))}\n\n".encode()

    def _failed(self, held: SessionHeldElsewhereError, error: BaseException) -> ApiError:
        log.warning("forward_failed", node_url=held.node_url, error=repr(error))
        return self._unavailable()

    def _unavailable(self) -> ApiError:
        return ApiError(
            503,
            "node_unavailable",
            "the node running this session does not answer; retry shortly",
            {"Retry-After": str(self._retry_after)},
        )

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()


def expects_stream(request: Request, body: bytes) -> bool:
    """Whether the request asks for an SSE stream: a session's message (but ``?stream=false``), or an
    OpenAI completion with ``"stream": true``."""
    if request.method != "POST":
        return False
    if request.url.path.endswith("/messages"):
        return request.query_params.get("stream", "true").lower() not in ("false", "0")
    if request.url.path == "/v1/chat/completions":
        with contextlib.suppress(ValueError):
            return json.loads(body).get("stream") is True
    return False


def holder_draining(body: bytes) -> bool:
    """Whether a holder's 503 body is its ``shutting_down`` refusal (it began draining): our error's ``type``,
    or on the OpenAI endpoint its ``code`` (``type`` there is OpenAI's own). Any other body, JSON or not, is not."""
    try:
        error = json.loads(body).get("error")
    except (ValueError, AttributeError):  # not JSON (a proxy's page, say), or JSON but no object
        return False
    return isinstance(error, dict) and "shutting_down" in (error.get("type"), error.get("code"))


def _error_event(body: bytes, path: str) -> bytes:
    """An error's JSON body as the stream's last event: OpenAI's ``data:`` line on its endpoint, ours elsewhere."""
    if path == "/v1/chat/completions":
        return b"data: " + body + b"\n\n"
    return b"event: error\ndata: " + body + b"\n\n"
