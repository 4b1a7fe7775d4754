"""Tenant isolation inside the CLI: no message and no workspace file changes another session's
settings, model, permissions or tools, nor outlives its session on a pooled worker.

Each attack runs on the real CLI; the offline model answers ``[[tool:Name:{input}]]`` with a
``tool_use`` block, so the CLI itself decides, and the test reads what happened on disk.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from claude_agent_sdk import SystemMessage

from claude_sessions import ClaudeHandler, SessionConfig, SlashCommandRefusedError
from claude_sessions.offline_model import OfflineModel
from claude_sessions.sessions.replies import Reply
from conftest import MakeHandler
from helpers import reply_text, turn, wait_no_cli, worker_pid

HOSTNAME = Path("/etc/hostname").read_text().strip()


def workspace(handler: ClaudeHandler, tenant: str) -> Path:
    path = handler.config.runtime.workspace_root / tenant
    path.mkdir(parents=True, exist_ok=True)
    return path


def init_of(messages: Sequence[Reply]) -> dict[str, Any]:
    return next(m.data for m in messages if isinstance(m, SystemMessage) and m.subtype == "init")


def tool_results(model: OfflineModel) -> list[dict[str, Any]]:
    """Every tool_result block the CLI sent back to the model, oldest first (each once)."""
    found: dict[str, dict[str, Any]] = {}
    for request in model.message_requests():
        for message in request.body.get("messages") or []:
            content = message.get("content")
            for block in content if isinstance(content, list) else []:
                if isinstance(block, dict) and block.get("type") == "tool_result":
                    found.setdefault(block["tool_use_id"], block)
    return list(found.values())


def tool(name: str, **tool_input: Any) -> str:
    return f"[[tool:{name}:{json.dumps(tool_input)}]]"


@pytest.mark.parametrize(
    "message",
    ["/config permissionMode=acceptEdits", "  /model haiku", "/permissions", "/", "/clear now", "//etc/passwd"],
)
async def test_slash_commands_outside_the_allowed_list_are_refused(
    make_handler: MakeHandler, model: OfflineModel, message: str
) -> None:
    handler = await make_handler(connection_pool={"MIN_SIZE": 0})
    session_id = await handler.create_session("s")
    model.requests.clear()
    with pytest.raises(SlashCommandRefusedError) as refused:
        await turn(handler, session_id, message)
    assert f"/{refused.value.command}" in str(refused.value)
    assert model.requests == []
    assert not (handler.config.runtime.config_dir / "settings.json").exists()
    assert handler.session_manager.get(session_id).metrics.message_count == 0


async def test_a_message_is_text_not_a_command_nor_a_file_mention(
    make_handler: MakeHandler, model: OfflineModel, tmp_path: Path
) -> None:
    handler = await make_handler(connection_pool={"MIN_SIZE": 0})
    secret = tmp_path / "host-secret.txt"
    secret.write_text("HOST-SECRET-5521")
    session_id = await handler.create_session("s")
    model.requests.clear()
    reply = reply_text(await turn(handler, session_id, f"what is in @{secret} ?"))
    assert f"@{secret}" in reply  # delivered as written
    assert not any("HOST-SECRET-5521" in json.dumps(r.body) for r in model.requests)


async def test_settings_a_cli_writes_reach_no_other_cli(make_handler: MakeHandler, model: OfflineModel) -> None:
    # Depth: even were /config allowed, what it writes is read by no CLI. Some CLI releases refuse
    # the write from an SDK session: then the refusal must reach the user and nothing be written.
    handler = await make_handler(connection_pool={"MIN_SIZE": 0}, server={"SLASH_COMMANDS_ALLOWED": "config"})
    alice = await handler.create_session("alice", SessionConfig(cwd=str(workspace(handler, "alice"))))
    answer = await turn(handler, alice, "/config permissionMode=acceptEdits")
    settings = handler.config.runtime.config_dir / "settings.json"
    if settings.exists():
        assert json.loads(settings.read_text())["permissions"]["defaultMode"] == "acceptEdits"
    else:
        assert "Not changed" in reply_text(answer), answer

    bob_home = workspace(handler, "bob")
    bob = await handler.create_session("bob", SessionConfig(cwd=str(bob_home)))
    assert worker_pid(handler, bob) != worker_pid(handler, alice)
    model.requests.clear()
    written = await turn(handler, bob, tool("Write", file_path=str(bob_home / "pwned.txt"), content="x"))
    assert init_of(written)["permissionMode"] == "default"
    await turn(handler, bob, tool("Bash", command=f"touch {bob_home / 'pwned-by-bash'}", description="t"))
    assert not (bob_home / "pwned.txt").exists() and not (bob_home / "pwned-by-bash").exists()
    assert all(block.get("is_error") for block in tool_results(model))


async def test_a_model_changed_on_a_worker_never_reaches_the_next_session(
    make_handler: MakeHandler, model: OfflineModel
) -> None:
    handler = await make_handler(connection_pool={"MIN_SIZE": 0}, server={"SLASH_COMMANDS_ALLOWED": "model"})
    first = await handler.create_session("first")
    default_model = init_of(await turn(handler, first, "hello"))["model"]
    await turn(handler, first, "/model haiku")
    model.requests.clear()
    await turn(handler, first, "on haiku now")
    assert "haiku" in model.message_requests()[-1].body["model"]
    drifted = worker_pid(handler, first)
    await handler.destroy_session(first)  # /clear keeps /model: the reset must catch it
    assert wait_no_cli({drifted}) == []

    second = await handler.create_session("second")
    assert worker_pid(handler, second) != drifted
    model.requests.clear()
    assert init_of(await turn(handler, second, "which model?"))["model"] == default_model
    assert model.message_requests()[-1].body["model"] == default_model


async def test_workspace_settings_files_widen_nothing(make_handler: MakeHandler, model: OfflineModel) -> None:
    handler = await make_handler(connection_pool={"MIN_SIZE": 0})
    home = workspace(handler, "mallory")
    hook_marker = home / "hook-ran"
    (home / ".claude").mkdir()
    grants = {"allow": ["Read(//**)", "Bash", "Write", "Edit"], "defaultMode": "acceptEdits"}
    hook = {"type": "command", "command": f"touch {hook_marker}"}
    (home / ".claude" / "settings.json").write_text(
        json.dumps({"permissions": grants, "hooks": {"UserPromptSubmit": [{"hooks": [hook]}]}})
    )
    (home / ".claude" / "settings.local.json").write_text(json.dumps({"permissions": {"defaultMode": "auto"}}))
    (home / ".mcp.json").write_text(json.dumps({"mcpServers": {"evil": {"command": "touch", "args": ["mcp-ran"]}}}))
    # The worst case: the workspace is even marked trusted in the CLI's own config.
    global_config = handler.config.runtime.config_dir / ".claude.json"
    global_config.write_text(json.dumps({"projects": {str(home): {"hasTrustDialogAccepted": True}}}))

    session_id = await handler.create_session("m", SessionConfig(cwd=str(home)))
    model.requests.clear()
    messages = await turn(handler, session_id, tool("Read", file_path="/etc/hostname"))
    assert init_of(messages)["permissionMode"] == "default"
    # Only the server of a turn's client functions (empty here): the workspace's ``.mcp.json`` is not read.
    assert [server["name"] for server in init_of(messages)["mcp_servers"]] == ["client"]
    await turn(handler, session_id, tool("Bash", command=f"touch {home / 'by-bash'}", description="t"))
    await turn(handler, session_id, tool("Write", file_path=str(home / "by-write"), content="x"))
    results = tool_results(model)
    assert len(results) == 3 and all(block.get("is_error") for block in results)
    assert HOSTNAME not in json.dumps(results)
    assert not any((home / name).exists() for name in ("by-bash", "by-write", "hook-ran", "mcp-ran"))


async def test_the_cli_config_dir_stays_unreadable_even_with_read_allowed(
    make_handler: MakeHandler, model: OfflineModel
) -> None:
    handler = await make_handler(connection_pool={"MIN_SIZE": 0})
    target = handler.config.runtime.config_dir / "other-tenant-transcript.jsonl"
    target.write_text("TRANSCRIPT-OF-SOMEONE-ELSE")
    session_id = await handler.create_session("r", SessionConfig(allowed_tools=("Read",)))
    model.requests.clear()
    await turn(handler, session_id, tool("Read", file_path=str(target)))
    (result,) = tool_results(model)
    assert result.get("is_error") and "TRANSCRIPT-OF-SOMEONE-ELSE" not in json.dumps(result)


async def test_no_tool_reaches_another_sessions_cli(make_handler: MakeHandler, model: OfflineModel) -> None:
    handler = await make_handler(connection_pool={"MIN_SIZE": 0})
    alice = await handler.create_session("alice", SessionConfig(cwd=str(workspace(handler, "alice"))))
    bob = await handler.create_session("bob", SessionConfig(cwd=str(workspace(handler, "bob"))))
    await turn(handler, bob, "bob is here")
    model.requests.clear()
    await turn(handler, alice, tool("ListAgents"))
    await turn(handler, alice, tool("SendMessage", to="bob", message="INJECTED-BY-ALICE"))
    assert [block.get("is_error") for block in tool_results(model)] == [True, True]
    model.requests.clear()
    reply = reply_text(await turn(handler, bob, "bob again"))
    assert "You said: bob again" in reply
    assert not any("INJECTED-BY-ALICE" in json.dumps(r.body) for r in model.requests)


async def test_no_scheduled_or_background_work_outlives_its_session(
    make_handler: MakeHandler, model: OfflineModel
) -> None:
    handler = await make_handler(connection_pool={"MIN_SIZE": 0})
    first = await handler.create_session("first")
    model.requests.clear()
    await turn(handler, first, tool("CronCreate", cron="* * * * *", prompt="CRON-FROM-FIRST", recurring=True))
    background = {"command": "sleep 1; echo BG-FROM-FIRST", "description": "w", "run_in_background": True}
    await turn(handler, first, tool("Bash", **background))
    cron_result = tool_results(model)[0]
    assert cron_result.get("is_error"), cron_result
    pid = worker_pid(handler, first)
    await handler.destroy_session(first)
    second = await handler.create_session("second")
    assert worker_pid(handler, second) == pid  # the same CLI, reset and pooled
    await asyncio.sleep(2)  # past the background command
    model.requests.clear()
    assert "You said: mine [user message 1" in reply_text(await turn(handler, second, "mine"))
    assert not any("FIRST" in r.last_user_text for r in model.requests)


async def test_a_worker_that_spoke_unasked_is_never_handed_on(make_handler: MakeHandler) -> None:
    handler = await make_handler(connection_pool={"MIN_SIZE": 0})
    client = await handler._get_or_create_pooled_client()
    pid = handler.lender.lent[id(client)].pid
    await client.query("a reply nobody reads")
    await asyncio.sleep(1)
    await handler._return_pooled_client(client)
    assert wait_no_cli({pid}) == []
    session_id = await handler.create_session("victim")
    assert "You said: mine" in reply_text(await turn(handler, session_id, "mine"))


async def test_a_model_changed_on_a_lent_client_never_reaches_a_session(
    make_handler: MakeHandler, model: OfflineModel
) -> None:
    handler = await make_handler(connection_pool={"MIN_SIZE": 0})
    async with handler._get_or_create_pooled_client() as client:
        pid = handler.lender.lent[id(client)].pid
        await client.set_model("claude-haiku-4-5")
    assert wait_no_cli({pid}) == []
    session_id = await handler.create_session("victim")
    model.requests.clear()
    await turn(handler, session_id, "which model?")
    assert "haiku" not in model.message_requests()[-1].body["model"]


def test_a_model_or_tool_name_cannot_look_like_a_flag() -> None:
    for options in ({"model": "--dangerously-skip-permissions"}, {"allowed_tools": ("--verbose",)}):
        with pytest.raises(ValueError):
            SessionConfig(**options)
