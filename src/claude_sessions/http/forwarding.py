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


class Forwarder:
    """One connection pool to the other nodes, kept for the life of the app.

    A holder that stops answering (paused, cut off) still looks alive until its lease
    lapses; a forwarded request waits for its answer no longer than that, then answers
    503 so the retry finds the session free to take over here.
    """

    def __init__(
        self,
        holder_of: Callable[[str], Awaitable[Holder | None]],
        lease_seconds: float,
        turn_seconds: float,
        retry_after: int,
        mark: str,
    ) -> None:
        self._holder_of, self._lease_seconds = holder_of, lease_seconds
        self._mark = mark  # FORWARDED_HEADER's value: the other node knows it came from a node
        # No read timeout beyond the turn's own: the holder bounds every turn.
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=2.0, sock_read=turn_seconds + 30.0)
        self._client: aiohttp.ClientSession | None = None
        self._retry_after = retry_after

    async def forward(self, request: Request, held: SessionHeldElsewhereError) -> Response:
        """Send ``request`` to the holder as it came (its bearer key decides there too), stream the answer."""
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
            self._client.request(
                request.method,
                URL(target, encoded=True),
                headers=headers,
                data=await request.body(),
            )
        )
        try:
            while not (await asyncio.wait({sending}, timeout=self._lease_seconds / 3))[0]:
                holder = await self._holder_of(held.session_key)
                if holder is None or holder.node_id != held.node_id:
                    log.warning("forward_abandoned", node_id=held.node_id, reason="its lease lapsed")
                    raise self._unavailable()
            answer = sending.result()
        except (aiohttp.ClientError, TimeoutError) as error:
            raise self._failed(held, error) from None
        finally:
            if not sending.done():
                sending.cancel()
                with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
                    await sending
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

    def _failed(self, held: SessionHeldElsewhereError, error: Exception) -> ApiError:
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
