"""Helpers for tests that drive the real CLI."""

from __future__ import annotations

import base64
import json
import struct
import time
import zlib
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import openai
import psutil
import pytest
from claude_agent_sdk import AssistantMessage, ClaudeAgentOptions, ClaudeSDKClient, Message, ResultMessage, TextBlock

from claude_sessions import ClaudeHandler, ModelError
from claude_sessions.content import Content
from claude_sessions.offline_model import OfflineModel, loopback_env
from claude_sessions.sessions.replies import Reply
from claude_sessions.sessions.session import Session
from claude_sessions.workers.sandbox import bubblewrap_usable

if TYPE_CHECKING:  # server_process imports this module
    from server_process import ServerProcess


def cli_processes() -> list[psutil.Process]:
    """Live Claude Code CLI processes started (directly or not) by this test process."""
    return [child for child in psutil.Process().children(recursive=True) if is_cli(child)]


def is_cli(process: psutil.Process) -> bool:
    """A live Claude Code CLI (one that just ended, a zombie, is none)."""
    try:
        return "_bundled/claude" in " ".join(process.cmdline())
    except psutil.Error:
        return False


def wait_no_cli(pids: set[int] | None = None, timeout: float = 10.0) -> list[int]:
    """Which of ``pids`` (default: every CLI child of this process) are alive after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        alive = (
            sorted(pid for pid in pids if _is_running(pid)) if pids is not None else [p.pid for p in cli_processes()]
        )
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


def _is_running(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def pids_of(handler: ClaudeHandler) -> set[int]:
    return {c["pid"] for c in handler.get_pool_status()["connections"]}


def worker_pid(handler: ClaudeHandler, session_id: str) -> int:
    """The pid of the CLI a session holds now."""
    worker = handler.session_manager.get(session_id).worker
    assert worker is not None, f"session {session_id!r} holds no worker"
    return worker.pid


def offline_env(model_url: str, root: Path) -> dict[str, str]:
    """What points a CLI at the offline model, with private config, data and workspaces under ``root``."""
    return {
        **loopback_env(model_url),
        "CLAUDE_CONFIG_DIR": str(root / "claude"),
        "CLAUDE_SESSIONS_DATA_DIR": str(root / "data"),
        "WORKSPACE_ROOT": str(root / "workspaces"),
    }


async def turn(handler: ClaudeHandler, session: str | Session, prompt: Content) -> list[Reply]:
    """Every message of one turn, of a session by id or as read."""
    return [m async for m in handler.send_message(session, prompt)]


async def failed_turn(handler: ClaudeHandler, session: str | Session, prompt: str) -> tuple[list[Reply], ModelError]:
    """Every message of a turn whose model call failed, and the ``ModelError`` raised after them."""
    messages: list[Reply] = []
    try:
        async for message in handler.send_message(session, prompt):
            messages.append(message)
    except ModelError as error:
        return messages, error
    raise AssertionError(f"the turn raised no ModelError: {messages[-1:]!r}")


def result_of(messages: Sequence[Reply]) -> ResultMessage:
    last = messages[-1]
    assert isinstance(last, ResultMessage), f"turn did not end with a ResultMessage: {last!r}"
    return last


def reply_text(messages: Sequence[Reply]) -> str:
    return "".join(
        block.text
        for m in messages
        if isinstance(m, AssistantMessage)
        for block in m.content
        if isinstance(block, TextBlock)
    )


def transcript_file(handler: ClaudeHandler, session_id: str) -> Path | None:
    """Where the CLI wrote a session's conversation on this node (None before its first prompt)."""
    session = handler.session_manager.get(session_id)
    if session.claude_session_id is None:
        return None
    project = handler.session_manager.conversations.project_of(session.config)
    return handler.config.runtime.config_dir / "projects" / project / f"{session.claude_session_id}.jsonl"


def png(width: int = 1, height: int = 1) -> bytes:
    """A real PNG of one colour: what a user would attach (the CLI reads what it is sent)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + b"\x20\x80\xc0" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def image_block(data: bytes, media_type: str = "image/png") -> dict[str, Any]:
    """A Messages API image block of ``data``, as a client sends it."""
    return {
        "type": "image",
        "source": {"type": "base64", "media_type": media_type, "data": base64.b64encode(data).decode()},
    }


def images_seen(request: Any) -> list[dict[str, Any]]:
    """The image blocks of the last user message of a logged model request."""
    users = [m for m in request.body["messages"] if m["role"] == "user"]
    content = users[-1]["content"] if users else []
    return [b for b in content if isinstance(b, dict) and b.get("type") == "image"] if isinstance(content, list) else []


#: For tests of the CLI's sandbox: skipped where bubblewrap cannot run.
needs_bubblewrap = pytest.mark.skipif(not bubblewrap_usable(), reason="bubblewrap (bwrap, socat) is not usable here")


def tool(name: str, **tool_input: Any) -> str:
    return f"[[tool:{name}:{json.dumps(tool_input)}]]"


async def run_tool(handler: ClaudeHandler, session_id: str, model: OfflineModel, name: str, **tool_input: Any) -> str:
    """Have the model call a tool; the tool_result the CLI sent back, ``ERROR: `` first if it failed."""
    model.requests.clear()
    await turn(handler, session_id, tool(name, **tool_input))
    for request in reversed(model.message_requests()):
        last = (request.body.get("messages") or [{}])[-1]
        content = last.get("content")
        for block in content if isinstance(content, list) else []:
            if isinstance(block, dict) and block.get("type") == "tool_result":  # the answer to this turn's call
                text = json.dumps(block.get("content"))
                return f"ERROR: {text}" if block.get("is_error") else text
    raise AssertionError("the CLI sent no tool_result")


async def bash(handler: ClaudeHandler, session_id: str, model: OfflineModel, command: str) -> str:
    return await run_tool(handler, session_id, model, "Bash", command=command, description="probe")


def python(code: str) -> str:
    return f"python3 -c {json.dumps(code)}"


@asynccontextmanager
async def connected(options: ClaudeAgentOptions) -> AsyncIterator[ClaudeSDKClient]:
    """A bare SDK client, connected; its CLI is proved gone (by pid) when the block ends."""
    client = ClaudeSDKClient(options)
    await client.connect()
    pid = client._transport._process.pid  # type: ignore[union-attr]
    try:
        yield client
    finally:
        await client.disconnect()
        assert wait_no_cli({pid}) == []


async def ask(client: ClaudeSDKClient, prompt: str) -> list[Message]:
    """One turn of a bare SDK client: every message, to its result."""
    await client.query(prompt)
    return [m async for m in client.receive_response()]


def tool_results(model: OfflineModel) -> list[dict[str, Any]]:
    """Every tool_result block the CLI sent the model, oldest first."""
    return [
        block
        for request in model.message_requests()
        for block in (request.body.get("messages") or [{}])[-1].get("content") or []
        if isinstance(block, dict) and block.get("type") == "tool_result"
    ]


def result_text(block: dict[str, Any]) -> str:
    content = block.get("content")
    return content if isinstance(content, str) else "".join(part.get("text", "") for part in content or [])


def client_for(server: ServerProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0, timeout=60)


def openai_tenant(server: ServerProcess, tenant: str) -> Iterator[openai.OpenAI]:
    """A tenant's ``openai`` client for a fixture; the sessions it made, ordinary ones, are deleted afterwards."""
    from server_process import KEYS  # not at the top: server_process imports this module

    yield client_for(server, KEYS[tenant])
    with server.client(tenant) as http:
        for session in http.get("/v1/sessions").json()["sessions"]:
            http.delete(f"/v1/sessions/{session['session_id']}")


def create(client: openai.OpenAI, **body: Any) -> Any:
    """``chat.completions.create`` with plain dicts (the client's typed overloads want its TypedDicts)."""
    completions: Any = client.chat.completions
    return completions.create(**body)
