"""The seed's own examples run as written: every ```python block of the specification, in order,
inside one async function, against the offline model; and the seed's pooled-client call."""

from __future__ import annotations

import ast
import contextlib
import inspect
import io
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
from claude_agent_sdk import ClaudeSDKClient

from claude_sessions import ClaudeHandler, SessionConfig, SessionMetrics, SystemConfig
from conftest import MakeHandler
from helpers import wait_no_cli

SEED = Path(__file__).resolve().parent / "data" / "seed_examples.md"  # the specification's blocks, verbatim
BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


def seed_blocks() -> list[str]:
    return BLOCK.findall(SEED.read_text(encoding="utf-8"))


async def run_block(source: str, namespace: dict[str, Any]) -> None:
    """Run one block as the body of an async function would (top-level ``await`` allowed)."""
    code = compile(source, "<seed block>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    result = eval(code, namespace)  # the seed's own code, as written
    if inspect.iscoroutine(result):
        await result


async def test_every_python_block_of_the_seed_runs_as_written(
    cli_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocks = seed_blocks()
    assert len(blocks) == 9
    # The application's handler owns its own data directory; block 8 builds another from the environment.
    config = SystemConfig.from_env()
    config.runtime.DATA_DIR = tmp_path / "application"
    handler = ClaudeHandler(config)
    namespace: dict[str, Any] = {
        "handler": handler,
        "session_manager": handler.session_manager,
        "session_id": f"seed-{uuid.uuid4().hex[:8]}",
        "config": SessionConfig(),
        "SessionConfig": SessionConfig,
    }
    handlers = [handler]
    printed = io.StringIO()
    try:
        for number, source in enumerate(blocks, start=1):
            with contextlib.redirect_stdout(printed):
                await run_block(source, namespace)
            if namespace["handler"] not in handlers:
                handlers.append(namespace["handler"])
            if number == 3:  # the pooled client and the pool status the comment shows
                assert isinstance(namespace["client"], ClaudeSDKClient)
                status = namespace["status"]
                assert {"pool_size", "healthy_connections", "max_size", "connections"} <= status.keys()
                assert "lent" in {c["state"] for c in status["connections"]}
            if number == 6:
                assert namespace["config"].session_manager.MAX_SESSIONS == 100
            if number == 5:
                metrics = namespace["metrics"]
                assert isinstance(metrics, SessionMetrics)
                for field in ("created_at", "last_activity", "message_count", "total_tokens", "total_cost"):
                    assert hasattr(metrics, field)
                health = namespace["health"]
                assert {"active", "recent", "old"} <= health["sessions"].keys()
                assert {"size", "max_size"} <= health["pool"].keys()
                assert {"messages", "tokens", "cost"} <= health["totals"].keys()
        output = printed.getvalue()
        assert "AssistantMessage" in output and "ResultMessage" in output  # block 8's replies
        assert re.search(r"Sistema usando \d+ sessões", output)  # block 9
    finally:
        pids = {c["pid"] for h in handlers for c in h.get_pool_status()["connections"]}
        for each in handlers:
            await each.close()
    assert len(handlers) == 2
    assert wait_no_cli(pids) == [] and wait_no_cli() == []


async def test_a_pooled_client_is_warm_counted_and_given_back(make_handler: MakeHandler) -> None:
    handler = await make_handler(connection_pool={"MIN_SIZE": 1})
    (spare,) = handler.get_pool_status()["connections"]
    async with handler._get_or_create_pooled_client(SessionConfig()) as client:
        assert handler.lender.lent[id(client)].pid == spare["pid"]
        (lent,) = [c for c in handler.get_pool_status()["connections"] if c["pid"] == spare["pid"]]
        assert lent["state"] == "lent"
        await client.query("hello from the seed")
        replies = [type(m).__name__ async for m in client.receive_response()]
        assert replies[-1] == "ResultMessage"
    (back,) = [c for c in handler.get_pool_status()["connections"] if c["pid"] == spare["pid"]]
    assert back["state"] == "idle"

    kept = await handler._get_or_create_pooled_client()
    await handler.run_maintenance()  # a lent client is no stray
    assert handler.lender.lent[id(kept)].is_alive()
    await handler._return_pooled_client(kept)
    with pytest.raises(ValueError, match="not lent"):
        await handler._return_pooled_client(kept)
    forgotten = await handler._get_or_create_pooled_client()
    pid = handler.lender.lent[id(forgotten)].pid
    await handler.close()  # never given back: closed with everything else
    assert wait_no_cli({pid}) == []
