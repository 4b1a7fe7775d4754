"""The SDK and CLI facts the design rests on, one test each, on the bare SDK (none of our code).

An SDK upgrade (``make upgrade``) that moves one of these shows here first, by name, before
the tests of the pool, the handler or the isolation rules fail further away.
"""

from __future__ import annotations

import json
import signal
import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
from claude_agent_sdk import (
    AssistantMessage,
    ClaudeSDKClient,
    PermissionResultAllow,
    PermissionResultDeny,
    ProcessError,
    StreamEvent,
    SystemMessage,
    ToolPermissionContext,
)

from claude_sessions.gateway.pricing import cost_usd
from claude_sessions.offline_model import OfflineModel
from conftest import Options
from helpers import ask, connected, reply_text, result_of, wait_no_cli


def transcripts(config_dir: Path) -> list[Path]:
    return sorted((config_dir / "projects").glob("*/*.jsonl"))


async def test_a_session_id_given_up_front_names_the_conversation(options: Options, cli_env: dict[str, str]) -> None:
    fixed = str(uuid.uuid4())
    async with connected(options(session_id=fixed)) as client:
        assert result_of(await ask(client, "hello")).session_id == fixed
    assert [p.stem for p in transcripts(Path(cli_env["CLAUDE_CONFIG_DIR"]))] == [fixed]


async def test_a_transcript_appears_at_the_first_prompt_not_at_connect(
    options: Options, cli_env: dict[str, str]
) -> None:
    config_dir = Path(cli_env["CLAUDE_CONFIG_DIR"])
    async with connected(options()) as client:
        assert transcripts(config_dir) == []
        await ask(client, "hello")
        assert len(transcripts(config_dir)) == 1


async def test_every_turn_has_an_init_naming_model_and_permission_mode(options: Options) -> None:
    async with connected(options(model="haiku")) as client:
        for prompt in ("hello", "/clear"):
            messages = await ask(client, prompt)
            (init,) = [m for m in messages if isinstance(m, SystemMessage) and m.subtype == "init"]
            assert "haiku" in init.data["model"] and init.data["permissionMode"] == "default"


async def test_clear_starts_a_new_conversation_without_earlier_context(options: Options, model: OfflineModel) -> None:
    async with connected(options()) as client:
        first = result_of(await ask(client, "remember kiwi"))
        cleared = result_of(await ask(client, "/clear"))
        assert not cleared.is_error and cleared.num_turns == 0  # no model turn in it
        model.requests.clear()
        after = result_of(await ask(client, "what did I say?"))
    assert after.session_id != first.session_id
    assert not any("kiwi" in text for r in model.message_requests() for text in r.user_texts)


async def test_resume_in_a_new_process_continues_the_conversation_under_its_id(
    options: Options, model: OfflineModel
) -> None:
    conversation = str(uuid.uuid4())
    async with connected(options(session_id=conversation)) as client:
        await ask(client, "remember kiwi")
    model.requests.clear()
    async with connected(options(resume=conversation)) as client:
        resumed = result_of(await ask(client, "what did I say?"))
    assert resumed.session_id == conversation
    assert any("kiwi" in text for text in model.message_requests()[-1].user_texts)


async def test_a_client_composed_message_is_text_never_a_command(options: Options, model: OfflineModel) -> None:
    async def composed() -> AsyncIterator[dict[str, Any]]:
        message = {"role": "user", "content": "/clear"}
        yield {"type": "user", "message": message, "parent_tool_use_id": None, "client_composed": True}

    async with connected(options()) as client:
        first = result_of(await ask(client, "hello"))
        model.requests.clear()
        await client.query(composed())
        messages = [m async for m in client.receive_response()]
    assert result_of(messages).session_id == first.session_id and result_of(messages).num_turns == 1
    assert "/clear" in reply_text(messages)  # the model was asked, and echoed it


async def test_partial_messages_stream_the_text_as_it_arrives(options: Options) -> None:
    async with connected(options(include_partial_messages=True)) as client:
        messages = await ask(client, "one two three four")
    deltas = [
        m.event["delta"]["text"]
        for m in messages
        if isinstance(m, StreamEvent)
        and m.event["type"] == "content_block_delta"
        and m.event["delta"]["type"] == "text_delta"
    ]
    assert len(deltas) > 1 and "".join(deltas) == reply_text(messages)
    first_delta = next(i for i, m in enumerate(messages) if isinstance(m, StreamEvent))
    assert first_delta < next(i for i, m in enumerate(messages) if isinstance(m, AssistantMessage))


async def test_default_rules_decide_before_can_use_tool_is_asked(options: Options) -> None:
    asked: list[str] = []

    async def can_use_tool(
        name: str, tool_input: dict[str, Any], context: ToolPermissionContext
    ) -> PermissionResultAllow | PermissionResultDeny:
        asked.append(name)
        return PermissionResultDeny(message="no")

    ls = json.dumps({"command": "ls", "description": "list"})
    write = json.dumps({"file_path": "note.txt", "content": "x"})
    async with connected(options(can_use_tool=can_use_tool)) as client:
        await ask(client, f"[[tool:Bash:{ls}]]")  # read-only, in the working directory
        assert asked == []
        await ask(client, f"[[tool:Write:{write}]]")
    assert asked == ["Write"]


async def test_total_cost_is_cumulative_over_a_conversation(options: Options) -> None:
    async with connected(options()) as client:
        first = result_of(await ask(client, "one two three"))
        second = result_of(await ask(client, "four five six"))
    assert first.total_cost_usd and second.total_cost_usd
    assert second.total_cost_usd > first.total_cost_usd


async def test_a_resumed_conversations_cost_counts_from_its_start(options: Options, model: OfflineModel) -> None:
    conversation = str(uuid.uuid4())
    model.requests.clear()
    async with connected(options(session_id=conversation)) as client:
        await ask(client, "one two three")
    async with connected(options(resume=conversation)) as client:
        resumed = result_of(await ask(client, "four five six"))
    billed = [cost_usd(r.body["model"], asdict(r.usage)) for r in model.message_requests() if r.usage is not None]
    assert len(billed) == 2 and resumed.total_cost_usd == pytest.approx(sum(billed))  # both turns, not the last


async def test_an_api_error_ends_the_turn_without_raising(options: Options, cli_env: dict[str, str]) -> None:
    env = {**cli_env, "CLAUDE_CODE_MAX_RETRIES": "0"}
    async with connected(options(env=env)) as client:
        ended = result_of(await ask(client, "[[fail:400]]"))
    assert ended.is_error


async def test_a_killed_cli_raises_process_error_from_the_receive_loop(options: Options) -> None:
    client = ClaudeSDKClient(options())
    await client.connect()
    process = client._transport._process  # type: ignore[union-attr]
    try:
        await client.query("[[slow:30]]")
        process.send_signal(signal.SIGKILL)
        with pytest.raises(ProcessError):
            async for _ in client.receive_response():
                pass
    finally:
        await client.disconnect()
    assert wait_no_cli({process.pid}) == []


async def test_config_from_an_sdk_session_is_refused_and_writes_nothing(
    options: Options, cli_env: dict[str, str], model: OfflineModel
) -> None:
    async with connected(options()) as client:
        model.requests.clear()
        messages = await ask(client, "/config permissionMode=acceptEdits")
    assert "Not changed" in reply_text(messages) and model.requests == []
    assert not (Path(cli_env["CLAUDE_CONFIG_DIR"]) / "settings.json").exists()


# Tools the application offers through an in-process SDK MCP server.
