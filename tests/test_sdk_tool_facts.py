"""SDK and CLI facts about tools an application offers (in-process MCP servers) and structured output.

The ground for offering a client's functions to a session's CLI and for ``response_format``: one
test each, on the bare SDK (none of our code), so an SDK upgrade that moves one shows here first.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from claude_agent_sdk import (
    AssistantMessage,
    McpSdkServerConfig,
    Message,
    SdkMcpTool,
    SystemMessage,
    ToolUseBlock,
    create_sdk_mcp_server,
    project_key_for_directory,
)
from claude_agent_sdk import tool as sdk_tool
from claude_agent_sdk._internal.sdk_mcp_bridge import SdkMcpBridge
from mcp.server import Server
from mcp.types import CallToolResult, ListToolsResult, TextContent, Tool

from claude_sessions.offline_model import OfflineModel
from claude_sessions.store.history import transcript_entries
from conftest import Options
from helpers import ask, connected, result_of, result_text, tool, tool_results


def transcripts(config_dir: Path) -> list[Path]:
    return sorted((config_dir / "projects").glob("*/*.jsonl"))


class Shelf:
    """An SDK MCP server whose tool list the test changes under a live CLI; counts the CLI's ``tools/list``."""

    def __init__(self, name: str, *tools: str) -> None:
        self.name = name
        self.tools = list(tools)
        self.listed = 0
        server = Server(name, on_list_tools=self._list, on_call_tool=self._call)
        self.config = McpSdkServerConfig(type="sdk", name=name, instance=server)

    async def _list(self, ctx: Any, params: Any) -> ListToolsResult:
        self.listed += 1
        schema = {"type": "object", "properties": {"x": {"type": "string"}}}
        return ListToolsResult(tools=[Tool(name=n, description=f"tool {n}", input_schema=schema) for n in self.tools])

    async def _call(self, ctx: Any, params: Any) -> CallToolResult:
        return CallToolResult(content=[TextContent(type="text", text=f"ran {params.name}")])


def init_tools(messages: list[Message]) -> list[str]:
    (init,) = [m for m in messages if isinstance(m, SystemMessage) and m.subtype == "init"]
    return [name for name in init.data["tools"] if name.startswith("mcp__")]


async def test_an_sdk_tool_that_awaits_holds_the_turn_and_its_answer_is_the_tool_result(
    options: Options, model: OfflineModel
) -> None:
    answer: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    called = asyncio.Event()

    @sdk_tool("weather", "The weather in a city", {"city": str})
    async def weather(args: dict[str, Any]) -> dict[str, Any]:
        called.set()
        return {"content": [{"type": "text", "text": f"{await answer} in {args['city']}"}]}

    app = create_sdk_mcp_server("app", tools=[weather])
    async with connected(options(mcp_servers={"app": app}, allowed_tools=["mcp__app__weather"])) as client:
        turn = asyncio.create_task(ask(client, tool("mcp__app__weather", city="Oslo")))
        await asyncio.wait_for(called.wait(), 5)
        waited = time.monotonic()
        await asyncio.sleep(3)
        assert not turn.done() and len(model.message_requests()) == 1  # the CLI just waits
        answer.set_result("sunny")
        messages = await asyncio.wait_for(turn, 5)
    assert time.monotonic() - waited >= 3 and not result_of(messages).is_error
    (answered,) = tool_results(model)
    assert result_text(answered) == "sunny in Oslo" and not answered.get("is_error")


@pytest.mark.parametrize(("hint", "together"), [(None, False), ({"readOnlyHint": True}, True)])
async def test_sdk_tools_called_in_one_message_run_one_after_another_unless_read_only(
    options: Options, hint: Any, together: bool
) -> None:
    """Two calls in one answer (two tool_use blocks): run in turn, or at once when marked read-only."""
    running: list[str] = []
    overlapped = False

    async def slow(name: str, _: dict[str, Any]) -> dict[str, Any]:
        nonlocal overlapped
        running.append(name)
        overlapped = overlapped or len(running) > 1
        await asyncio.sleep(0.5)
        running.remove(name)
        return {"content": [{"type": "text", "text": f"{name} done"}]}

    tools = [SdkMcpTool(n, "d", {"type": "object", "properties": {}}, partial(slow, n), annotations=hint) for n in "ab"]
    app = create_sdk_mcp_server("app", tools=tools)
    async with connected(options(mcp_servers={"app": app}, allowed_tools=["mcp__app"])) as client:
        messages = await ask(client, tool("mcp__app__a") + " " + tool("mcp__app__b"))
    uses = [b for m in messages if isinstance(m, AssistantMessage) for b in m.content if isinstance(b, ToolUseBlock)]
    assert len(uses) == 2 and overlapped == together  # each block in an AssistantMessage of its own


async def test_mcp_tool_timeout_ends_a_waiting_sdk_tool_with_an_error_result(
    options: Options, model: OfflineModel, cli_env: dict[str, str]
) -> None:
    cancelled = asyncio.Event()

    @sdk_tool("wait", "Waits forever", {"x": str})
    async def wait(args: dict[str, Any]) -> dict[str, Any]:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return {"content": []}

    app = create_sdk_mcp_server("app", tools=[wait])
    env = {**cli_env, "MCP_TOOL_TIMEOUT": "2000"}  # milliseconds; below 1000 is ignored
    async with connected(options(env=env, mcp_servers={"app": app}, allowed_tools=["mcp__app__wait"])) as client:
        started = time.monotonic()  # the turn, not the CLI's start (seconds on a loaded machine)
        messages = await ask(client, tool("mcp__app__wait", x="a"))
        took = time.monotonic() - started
        await asyncio.wait_for(cancelled.wait(), 5)  # the CLI cancels the handler
    assert 2 <= took < 6 and not result_of(messages).is_error  # the turn goes on, the model told
    (timed_out,) = tool_results(model)
    assert timed_out["is_error"] and 'tool "wait" timed out after 2s' in result_text(timed_out)


async def test_sdk_mcp_tools_are_listed_once_at_start_not_per_turn(options: Options, model: OfflineModel) -> None:
    shelf = Shelf("shelf", "one")
    async with connected(options(mcp_servers={"shelf": shelf.config}, allowed_tools=["mcp__shelf"])) as client:
        await ask(client, "hello")
        shelf.tools.append("two")  # the server would now list it
        later = await ask(client, "again")
        model.requests.clear()
        await ask(client, tool("mcp__shelf__two", x="a"))
    assert shelf.listed == 1 and init_tools(later) == ["mcp__shelf__one"]
    (refused,) = tool_results(model)
    assert refused["is_error"] and "No such tool available: mcp__shelf__two" in result_text(refused)


async def test_toggling_an_sdk_mcp_server_off_and_on_lists_its_tools_again(
    options: Options, model: OfflineModel
) -> None:
    shelf = Shelf("shelf", "one")
    async with connected(options(mcp_servers={"shelf": shelf.config}, allowed_tools=["mcp__shelf"])) as client:
        await ask(client, "hello")
        shelf.tools.append("two")
        with pytest.raises(Exception, match=r"SDK servers should be handled in print\.ts"):
            await client.reconnect_mcp_server("shelf")  # refused for an SDK server
        await client.toggle_mcp_server("shelf", False)
        await client.toggle_mcp_server("shelf", True)
        assert shelf.listed == 2  # listed again by the toggle itself
        model.requests.clear()
        after = await ask(client, "hello again")
        announced = json.dumps(model.message_requests()[-1].body)  # the model is told of the new name
        model.requests.clear()
        await ask(client, tool("mcp__shelf__two", x="a"))
    assert init_tools(after) == ["mcp__shelf__one", "mcp__shelf__two"] and "mcp__shelf__two" in announced
    (ran,) = tool_results(model)
    assert result_text(ran) == "ran two" and not ran.get("is_error")


async def test_set_servers_adds_an_sdk_server_to_a_live_cli_and_lists_every_sdk_server_again(
    options: Options, model: OfflineModel
) -> None:
    """The CLI's ``mcp_set_servers`` control request (the TypeScript SDK's ``setMcpServers``; this SDK has no
    method for it, nor a public way to serve a server named after connect: both through its private parts)."""
    shelf, extra = Shelf("shelf", "one"), Shelf("extra", "three")
    async with connected(
        options(mcp_servers={"shelf": shelf.config}, allowed_tools=["mcp__shelf", "mcp__extra"])
    ) as client:
        await ask(client, "hello")
        query = client._query
        assert query is not None
        query.sdk_mcp_servers["extra"] = extra.config["instance"]
        query._sdk_mcp_bridges["extra"] = SdkMcpBridge("extra", extra.config["instance"])
        servers = {name: {"type": "sdk", "name": name} for name in ("shelf", "extra")}  # the whole set, not a diff
        answer = await query._send_control_request({"subtype": "mcp_set_servers", "servers": servers})
        assert answer == {"added": ["extra"], "removed": [], "errors": {}} and extra.listed == 0  # not yet
        after = await ask(client, "hello again")
        model.requests.clear()
        await ask(client, tool("mcp__extra__three", x="a"))
    assert (shelf.listed, extra.listed) == (2, 1)  # at the next turn, the untouched server too
    assert sorted(init_tools(after)) == ["mcp__extra__three", "mcp__shelf__one"]
    assert [result_text(r) for r in tool_results(model)] == ["ran three"]


async def test_parallel_calls_results_both_reach_the_model_unless_one_id_is_the_other_with_a_suffix(
    options: Options, model: OfflineModel
) -> None:
    """Two Glob calls in one answer; the offline model's ids were ``toolu_x`` and ``toolu_x_1``, and the CLI
    then sent the model "[Tool result missing due to internal error]" for the second: ids now differ otherwise."""
    async with connected(options(allowed_tools=["Glob"])) as client:
        await ask(client, tool("Glob", pattern="*.py") + " " + tool("Glob", pattern="*.txt"))
    results = tool_results(model)
    assert len(results) == 2 and all(result_text(r) == "No files found" for r in results)


async def test_a_resumed_transcript_keeps_tool_use_and_results_but_a_prompt_of_results_is_dropped(
    options: Options, model: OfflineModel, cli_env: dict[str, str]
) -> None:
    """Why a history ending in tool results the server never saw is imported whole, then continued by a
    prompt of words: the CLI takes no tool_result blocks as a prompt, and answers a dangling tool_use itself."""
    workspace = Path(options().cwd or "")
    use = {"type": "tool_use", "id": "call_a1", "name": "Glob", "input": {"pattern": "*"}}
    whole = [
        ("user", "find files"),
        ("assistant", [use]),
        ("user", [{"type": "tool_result", "tool_use_id": "call_a1", "content": "a.txt"}]),
    ]
    for turns, prompt in (
        (whole, "go on"),
        (whole[:2], [{"type": "tool_result", "tool_use_id": "call_a1", "content": "a.txt"}]),
    ):
        conversation = str(uuid.uuid4())
        folder = Path(cli_env["CLAUDE_CONFIG_DIR"]) / "projects" / project_key_for_directory(workspace)
        folder.mkdir(parents=True, exist_ok=True)
        entries = transcript_entries(conversation, workspace, turns)  # type: ignore[arg-type]
        (folder / f"{conversation}.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))
        model.requests.clear()

        async def composed(content: Any = prompt) -> Any:
            yield {"type": "user", "message": {"role": "user", "content": content}, "parent_tool_use_id": None}

        async with connected(options(resume=conversation, allowed_tools=["Glob"])) as client:
            await client.query(composed())
            [m async for m in client.receive_response()]
        shown = json.dumps(model.message_requests()[-1].body["messages"])
        assert '"id": "call_a1"' in shown
        if prompt == "go on":  # the CLI answers for the model before the new prompt: "No response requested."
            assert '"content": "a.txt"' in shown and "No response requested." in shown and "go on" in shown
        else:  # the result sent as a prompt is lost; the CLI calls the call interrupted
            assert "a.txt" not in shown and "Tool call interrupted" in shown


def offered(request: Any) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in request.body.get("tools") or []}


async def test_sdk_mcp_tools_reach_the_model_by_name_only_behind_tool_search(
    options: Options, model: OfflineModel
) -> None:
    shelf = Shelf("shelf", "one")
    async with connected(options(mcp_servers={"shelf": shelf.config}, allowed_tools=["mcp__shelf"])) as client:
        await ask(client, "hello")
    request = model.message_requests()[-1]
    tools = offered(request)
    assert "ToolSearch" in tools and not [name for name in tools if name.startswith("mcp__")]
    assert "deferred tools are now available via ToolSearch" in json.dumps(request.body)
    assert "\\nmcp__shelf__one\\n" in json.dumps(request.body)  # its name, in that list


@pytest.mark.parametrize("value", ["false", "0"])
async def test_enable_tool_search_off_sends_sdk_mcp_tool_schemas(
    options: Options, model: OfflineModel, cli_env: dict[str, str], value: str
) -> None:
    shelf = Shelf("shelf", "one")
    env = {**cli_env, "ENABLE_TOOL_SEARCH": value}
    async with connected(options(env=env, mcp_servers={"shelf": shelf.config}, allowed_tools=["mcp__shelf"])) as c:
        await ask(c, "hello")
    tools = offered(model.message_requests()[-1])
    assert "ToolSearch" not in tools
    assert tools["mcp__shelf__one"] == {
        "name": "mcp__shelf__one",
        "description": "tool one",
        "input_schema": {"type": "object", "properties": {"x": {"type": "string"}}},
    }


# Structured output (``output_format``, the CLI's --json-schema).

CITY = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "n": {"type": "integer"}},
    "required": ["city", "n"],
    "additionalProperties": False,
}


def structured(**output: Any) -> str:
    """A prompt the offline model answers by calling the StructuredOutput tool with ``output`` (flat only)."""
    return tool("StructuredOutput", **output)


async def test_structured_output_ends_the_turn_at_the_tool_call_its_result_rides_with_the_next_prompt(
    options: Options, model: OfflineModel
) -> None:
    schema = {"type": "json_schema", "schema": CITY}
    async with connected(options(output_format=schema)) as client:
        first = result_of(await ask(client, structured(city="Oslo", n=3)))
        assert first.structured_output == {"city": "Oslo", "n": 3} and len(model.message_requests()) == 1
        model.requests.clear()
        await ask(client, "thanks")
    last = model.message_requests()[0].body["messages"][-1]["content"]
    assert [b["type"] for b in last] == ["tool_result", "text"]
    assert last[0]["content"] == "Structured output provided successfully" and last[1]["text"] == "thanks"
    tools = offered(model.message_requests()[0])
    assert tools["StructuredOutput"]["input_schema"]["properties"] == CITY["properties"]


async def test_a_schema_cli_answers_structured_output_on_every_turn(options: Options, model: OfflineModel) -> None:
    """The offline model calls a tool asked for in a prompt that rides with a tool_result (the test above)."""
    schema = {"type": "json_schema", "schema": CITY}
    outputs = [{"city": "Oslo", "n": 1}, {"city": "Rome", "n": 2}, {"city": "Lima", "n": 3}]
    async with connected(options(output_format=schema)) as client:
        answers = [result_of(await ask(client, structured(**output))) for output in outputs[:2]]
        plain = result_of(await ask(client, "no tool call"))
        answers.append(result_of(await ask(client, structured(**outputs[2]))))
    assert [a.structured_output for a in answers] == outputs
    assert all(a.subtype == "success" and not a.is_error for a in answers)
    assert plain.subtype == "success" and plain.structured_output is None  # a turn without the call


async def test_resume_into_a_schema_cli_keeps_the_earlier_turns(options: Options, model: OfflineModel) -> None:
    conversation = str(uuid.uuid4())
    async with connected(options(session_id=conversation)) as client:  # no schema
        await ask(client, "remember kiwi")
    model.requests.clear()
    schema = {"type": "json_schema", "schema": CITY}
    async with connected(options(resume=conversation, output_format=schema)) as client:
        resumed = result_of(await ask(client, structured(city="Oslo", n=3)))
    assert resumed.session_id == conversation and resumed.structured_output == {"city": "Oslo", "n": 3}
    (request,) = model.message_requests()
    assert any("kiwi" in text for text in request.user_texts) and "StructuredOutput" in offered(request)
