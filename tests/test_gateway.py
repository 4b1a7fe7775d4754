"""The model gateway: the operator's key never reaches a CLI, tokens die with their worker,
usage is metered from the upstream's answers, and spares warm up for free.

Real CLI and offline model; the offline model's request log shows which credentials and
which calls really reached the upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import psutil
import pytest

from claude_sessions import SessionConfig, WorkerDiedError
from claude_sessions.gateway.relay import ModelGateway
from claude_sessions.offline_model import OfflineModel
from claude_sessions.workers.worker import WARM_UP_ROUNDS
from conftest import MakeHandler
from helpers import bash, failed_turn, needs_bubblewrap, reply_text, result_of, turn, worker_pid

OPERATOR_KEY = "sk-ant-operator-" + uuid.uuid4().hex
TINY_CALL = {"model": "claude-haiku-5-5", "max_tokens": 8, "messages": [{"role": "user", "content": "ping"}]}


async def call(base_url: str, token: str | None, timeout: float = 5.0) -> httpx.Response:
    """One model call as a CLI makes it (straight to the gateway, whatever proxy the environment names)."""
    headers = {"anthropic-version": "2023-06-01"} | ({"x-api-key": token} if token else {})
    async with httpx.AsyncClient(base_url=base_url, timeout=timeout, trust_env=False) as client:
        return await client.post("/v1/messages", json=TINY_CALL, headers=headers)


def environ_of(pid: int) -> bytes:
    return Path(f"/proc/{pid}/environ").read_bytes()


def files_holding(root: Path, secret: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


@needs_bubblewrap
async def test_the_operators_key_is_in_no_cli_environment_tool_or_file(
    make_handler: MakeHandler, model: OfflineModel, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", OPERATOR_KEY)
    handler = await make_handler(connection_pool={"MIN_SIZE": 1})
    session = await handler.create_session("keyless", SessionConfig(cwd="alice", allowed_tools=("Bash",)))
    printed = await bash(handler, session, model, "printenv ANTHROPIC_API_KEY ANTHROPIC_BASE_URL")
    assert OPERATOR_KEY not in printed and "csg-" in printed  # the worker's own token, nothing more
    for pid in {c["pid"] for c in handler.get_pool_status()["connections"]}:
        environ = environ_of(pid)
        assert OPERATOR_KEY.encode() not in environ
        assert f"ANTHROPIC_BASE_URL={handler.gateway.base_url}".encode() in environ.split(b"\0")
    assert files_holding(tmp_path, OPERATOR_KEY) == []  # config dir, data dir, workspaces, transcripts
    calls = model.message_requests()
    assert calls and all(c.headers.get("x-api-key") == OPERATOR_KEY for c in calls)  # swapped in upstream
    assert not any(c.headers.get("x-api-key", "").startswith("csg-") for c in model.requests)


async def test_a_token_works_while_its_worker_lives_and_is_refused_after(
    make_handler: MakeHandler, model: OfflineModel
) -> None:
    handler = await make_handler(connection_pool={"MIN_SIZE": 0})
    await handler.create_session("tokened", SessionConfig(cwd="alice"))
    worker = handler.session_manager.get("tokened").worker
    assert worker is not None and worker.grant.tenant == "alice"  # its tenant's, whoever steals it
    token, gateway = worker.grant.token, handler.gateway.base_url
    live = await call(gateway, token)
    assert live.status_code == 200 and live.json()["content"][0]["text"].startswith("(offline model)")
    assert worker.grant.take().input_tokens > 0  # a stolen token's calls are billed to its worker
    for forged in (None, "csg-" + uuid.uuid4().hex, OPERATOR_KEY):
        refused = await call(gateway, forged)
        assert refused.status_code == 401 and refused.json()["error"]["type"] == "authentication_error"
    await handler.destroy_session("tokened")
    await handler.shutdown_pool()  # the worker's process ends
    assert (await call(gateway, token)).status_code == 401
    assert handler.gateway.live_tokens == 0
    assert len(model.message_requests()) == 1  # only the live call went upstream


async def test_spares_warm_up_without_an_upstream_call_and_start_clean(
    make_handler: MakeHandler, model: OfflineModel
) -> None:
    handler = await make_handler(connection_pool={"MIN_SIZE": 2})
    idle = [w for w in handler.pool.workers() if w.state.value == "idle"]
    assert len(idle) == 2 and all(w.model is not None for w in idle)  # each had its warm-up turn
    assert model.requests == []  # answered by the gateway, never upstream, never billed
    warm_ups = {f"{conversation}.jsonl" for w in idle for conversation in w.warmed_conversations}
    assert len(warm_ups) == 2 * WARM_UP_ROUNDS  # a conversation of its own per round
    left = {p.name for p in (handler.config.runtime.config_dir / "projects").rglob("*.jsonl")}
    assert left.isdisjoint(warm_ups)  # no warm-up transcript; what is left is each spare's next conversation
    session_id = await handler.create_session("first")
    messages = await turn(handler, session_id, "hello")
    assert "[user message 1 of this conversation]" in reply_text(messages)  # the warm-up left no context
    history = await handler.session_manager.conversations.read_transcript(handler.session_manager.get(session_id))
    assert [m["message"]["content"] for m in history if m["type"] == "user"] == ["hello"]


async def test_a_turn_whose_cli_was_killed_is_billed_for_what_the_upstream_used(
    make_handler: MakeHandler, model: OfflineModel
) -> None:
    handler = await make_handler(connection_pool={"MIN_SIZE": 0})
    session_id = await handler.create_session("killed")
    pid = worker_pid(handler, session_id)
    model.requests.clear()
    running = asyncio.create_task(turn(handler, session_id, "[[slow:5]] a long answer"))
    while not model.message_requests():  # the upstream took the call and sent its message_start
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.2)
    psutil.Process(pid).kill()
    with pytest.raises(WorkerDiedError):
        await running
    charged = model.message_requests()[0].usage
    metrics = handler.session_manager.get_session_metrics(session_id)
    assert charged is not None and metrics is not None
    assert metrics.input_tokens == charged.input_tokens > 0 and metrics.total_cost > 0


async def test_a_model_outside_models_allowed_never_reaches_the_upstream(
    make_handler: MakeHandler, model: OfflineModel
) -> None:
    # The tenant names opus in the Agent tool's own ``model`` field, on a haiku-only server.
    handler = await make_handler(connection_pool={"MIN_SIZE": 0}, server={"MODELS_ALLOWED": "haiku"})
    unnamed = await handler.create_session("unnamed")  # runs the first allowed, not the CLI's default
    assert "You said: hello" in reply_text(await turn(handler, unnamed, "hello"))
    assert {r.body["model"] for r in model.message_requests()} == {"claude-haiku-5-5"}
    session = await handler.create_session("agent", SessionConfig(model="haiku"))
    model.requests.clear()
    spawn = {"description": "probe", "prompt": "say hi", "subagent_type": "general-purpose", "model": "opus"}
    await turn(handler, session, f"[[tool:Agent:{json.dumps(spawn)}]]")
    called = [r.body["model"] for r in model.message_requests()]
    assert called and set(called) == {"claude-haiku-5-5"}, called  # the subagent's opus call was refused
    assert "say hi" not in [r.last_user_text for r in model.message_requests()]
    (result,) = [
        block
        for r in model.message_requests()
        for m in r.body["messages"]
        if isinstance(m["content"], list)
        for block in m["content"]
        if block.get("type") == "tool_result"
    ]
    assert "MODELS_ALLOWED" in json.dumps(result["content"]), result


async def test_an_unreachable_upstream_is_a_model_error_not_a_hang(
    make_handler: MakeHandler, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://127.0.0.1:9")  # discard port: nothing listens
    handler = await make_handler(connection_pool={"MIN_SIZE": 0}, optimization={"CLI_MAX_RETRIES": 0})
    session_id = await handler.create_session("nowhere")
    messages, _ = await failed_turn(handler, session_id, "anyone there?")
    assert result_of(messages).is_error
    metrics = handler.session_manager.get_session_metrics(session_id)
    assert metrics is not None and metrics.api_errors == 1 and metrics.total_tokens == 0


Connection = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
ANSWER_200 = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"


@contextlib.asynccontextmanager
async def raw_server(serve: Connection) -> AsyncIterator[str]:
    """A raw TCP server on loopback (the edges the offline model does not reach): its URL."""
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()


@contextlib.asynccontextmanager
async def gateway_to(upstream: str) -> AsyncIterator[ModelGateway]:
    gateway = ModelGateway(upstream, {"x-api-key": OPERATOR_KEY}, timeout=10)
    await gateway.start()
    try:
        yield gateway
    finally:
        await gateway.close()


async def test_an_answer_cut_upstream_is_cut_for_the_cli_and_billed_for_what_came() -> None:
    async def cut_after_start(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        start = {"type": "message_start", "message": {"model": "claude-haiku-5-5", "usage": {"input_tokens": 1000}}}
        event = f"event: message_start\ndata: {json.dumps(start)}\n\n"
        head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
        writer.write(f"{head}{len(event):x}\r\n{event}\r\n".encode())
        await writer.drain()
        writer.close()

    async with raw_server(cut_after_start) as upstream, gateway_to(upstream) as gateway:
        grant = gateway.issue("acme")
        with pytest.raises(httpx.RemoteProtocolError):  # not a clean end the CLI would take as whole
            await call(gateway.base_url, grant.token)
        assert grant.used.input_tokens == 1000 and grant.used.cost > 0


async def test_a_cli_that_hangs_up_cancels_its_upstream_call() -> None:
    hung_up = asyncio.Event()

    async def never_answers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        while await reader.read(1024):  # returns when the gateway hangs up
            pass
        hung_up.set()
        writer.close()

    async with raw_server(never_answers) as upstream, gateway_to(upstream) as gateway:
        grant = gateway.issue("acme")
        with pytest.raises(httpx.ReadTimeout):
            await asyncio.wait_for(call(gateway.base_url, grant.token, timeout=0.3), 5)
        await asyncio.wait_for(hung_up.wait(), 5)  # the interrupt reached the upstream


async def test_upstream_calls_go_through_the_operators_proxy_unless_no_proxy_exempts_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    request_lines: list[str] = []

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request_lines.append((await reader.readuntil(b"\r\n\r\n")).split(b"\r\n")[0].decode())
        writer.write(ANSWER_200)
        await writer.drain()
        writer.close()

    async with raw_server(proxy) as proxy_url:
        for name in ("no_proxy", "NO_PROXY", "http_proxy"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTP_PROXY", proxy_url)
        async with (
            gateway_to("http://upstream.invalid") as gateway,
            httpx.AsyncClient(base_url=gateway.base_url, trust_env=False) as client,  # the CLI's side: direct
        ):
            answer = await client.get("/v1/models", headers={"x-api-key": gateway.issue("acme").token})
        assert answer.status_code == 200
        assert request_lines == ["GET http://upstream.invalid/v1/models HTTP/1.1"]  # absolute form: a proxy's
    monkeypatch.setenv("NO_PROXY", "upstream.invalid")
    assert ModelGateway("http://upstream.invalid", {}, timeout=10)._proxy is None


async def test_a_kept_alive_connection_the_upstream_dropped_is_retried_on_a_new_one() -> None:
    """An upstream closes idle connections (uvicorn after 5 s): a call on one it just closed is sent again."""
    served: list[int] = []

    async def one_call_a_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")  # answers one call, drops the next unanswered
        await reader.readexactly(int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0]))
        served.append(1)
        writer.write(ANSWER_200)
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    async with raw_server(one_call_a_connection) as upstream, gateway_to(upstream) as gateway:
        token = gateway.issue("acme").token
        async with httpx.AsyncClient(base_url=gateway.base_url, trust_env=False) as client:  # one kept-alive client
            answers = [
                await client.post("/v1/messages/count_tokens", json=TINY_CALL, headers={"x-api-key": token})
                for _ in range(3)
            ]
        assert [a.status_code for a in answers] == [200, 200, 200] and len(served) == 3
