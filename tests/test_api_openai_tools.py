"""OpenAI function calling on a live conversation, driven by the official ``openai`` client over a real
socket, against a real server, the real CLI and the offline model (which calls the client's function
by its name: ``[[tool:get_weather:{...}]]``); its request log shows what the CLI really sent."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from langchain_core.messages import BaseMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool as langchain_tool
from langchain_openai import ChatOpenAI
from pydantic import BaseModel

from claude_sessions.offline_model import WEATHER, OfflineModel, OfflineModelServer
from helpers import create, openai_tenant, result_text, tool_results, wait_no_cli
from server_process import KEYS, ServerProcess, start_server

Messages = list[dict[str, Any]]
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}


@pytest.fixture(scope="module")
def server(offline_server: OfflineModelServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = start_server(
        tmp_path_factory.mktemp("openai-tools"),
        offline_server.base_url,
        SM_MAX_SESSIONS="8",
        OPT_CLI_MAX_RETRIES="0",
        CP_MIN_SIZE="1",
        OPENAI_TOOL_TIMEOUT_SECONDS="12",
    )
    yield process
    assert process.stop() in (0, -signal.SIGTERM)
    assert wait_no_cli() == []


@pytest.fixture
def alice(server: ServerProcess) -> Iterator[openai.OpenAI]:
    yield from openai_tenant(server, "alice")


@pytest.fixture
def bob(server: ServerProcess) -> Iterator[openai.OpenAI]:
    yield from openai_tenant(server, "bob")


def complete(client: openai.OpenAI, messages: Messages, **extra: Any) -> tuple[Any, str]:
    """(the completion's first choice, X-Session-ID) of one non-streamed completion."""
    completions: Any = client.chat.completions.with_raw_response
    raw = completions.create(model="sonnet", messages=messages, **extra)
    return raw.parse().choices[0], raw.headers["x-session-id"]


def call(function: str, **arguments: Any) -> str:
    """A prompt's marker: the offline model calls ``function`` with ``arguments``."""
    return f"[[tool:{function}:{json.dumps(arguments)}]]"


def answered(message: Any, results: list[str]) -> Messages:
    """The assistant's message as the client keeps it, and a tool message for each of its calls."""
    calls = [c.model_dump() for c in message.tool_calls]
    assistant = {"role": "assistant", "content": message.content, "tool_calls": calls}
    return [
        assistant,
        *({"role": "tool", "tool_call_id": c["id"], "content": r} for c, r in zip(calls, results, strict=True)),
    ]


def test_the_official_clients_tool_loop_continues_the_waiting_turn(alice: openai.OpenAI, model: OfflineModel) -> None:
    messages: Messages = [{"role": "user", "content": "Weather? " + call("get_weather", city="Paris")}]
    choice, session = complete(alice, messages, tools=[WEATHER])
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (made,) = choice.message.tool_calls
    assert made.type == "function" and made.function.name == "get_weather"
    assert json.loads(made.function.arguments) == {"city": "Paris"} and made.id.startswith("call_")
    offered = {t["name"]: t for t in model.message_requests()[-1].body["tools"]}
    assert offered["mcp__client__get_weather"]["input_schema"] == WEATHER["function"]["parameters"]  # type: ignore[index]
    assert len(model.message_requests()) == 1

    messages += answered(choice.message, ["sunny, 21 C"])
    choice, again = complete(alice, messages, tools=[WEATHER])
    assert again == session and choice.finish_reason == "stop" and "sunny, 21 C" in choice.message.content
    assert len(model.message_requests()) == 2  # one model call: the waiting turn went on, nothing replayed
    (result,) = tool_results(model)
    assert result["tool_use_id"].startswith("toolu_offline_") and result_text(result) == "sunny, 21 C"

    messages += [{"role": "assistant", "content": choice.message.content}, {"role": "user", "content": "thanks"}]
    choice, later = complete(alice, messages, tools=[WEATHER])
    assert later == session and "You said: thanks" in choice.message.content and len(model.message_requests()) == 3


def test_streamed_tool_call_deltas_then_the_streamed_answer(alice: openai.OpenAI, model: OfflineModel) -> None:
    messages: Messages = [{"role": "user", "content": "Weather? " + call("get_weather", city="Oslo")}]
    stream = create(alice, model="sonnet", messages=messages, tools=[WEATHER], stream=True)
    calls: dict[int, dict[str, Any]] = {}
    finish = None
    for chunk in stream:
        for delta in chunk.choices[0].delta.tool_calls or []:
            known = calls.setdefault(delta.index, {"id": delta.id, "name": "", "arguments": ""})
            known["name"] += delta.function.name or ""
            known["arguments"] += delta.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls" and [c["name"] for c in calls.values()] == ["get_weather"]
    assert json.loads(calls[0]["arguments"]) == {"city": "Oslo"}
    assistant = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": calls[0]["id"],
                "type": "function",
                "function": {"name": "get_weather", "arguments": calls[0]["arguments"]},
            }
        ],
    }
    messages += [assistant, {"role": "tool", "tool_call_id": calls[0]["id"], "content": "snow"}]
    stream = create(alice, model="sonnet", messages=messages, tools=[WEATHER], stream=True)
    pieces = [(c.choices[0].delta.content or "", c.choices[0].finish_reason) for c in stream if c.choices]
    assert "snow" in "".join(text for text, _ in pieces) and pieces[-1][1] == "stop"
    assert len(model.message_requests()) == 2


def test_parallel_calls_come_in_one_completion_and_go_back_in_one_model_call(
    alice: openai.OpenAI, model: OfflineModel
) -> None:
    messages: Messages = [{"role": "user", "content": call("get_weather", city="Rome") + " " + call("get_time")}]
    choice, _ = complete(alice, messages, tools=[WEATHER, TIME])
    assert choice.finish_reason == "tool_calls"
    assert [c.function.name for c in choice.message.tool_calls] == ["get_weather", "get_time"]
    messages += answered(choice.message, ["hot", "noon"])
    choice, _ = complete(alice, messages, tools=[WEATHER, TIME])
    assert "hot" in choice.message.content and "noon" in choice.message.content
    assert len(model.message_requests()) == 2
    assert sorted(result_text(r) for r in tool_results(model)) == ["hot", "noon"]


def test_a_call_after_one_of_the_clis_own_tools_in_the_same_answer_comes_in_the_next_completion(
    alice: openai.OpenAI, model: OfflineModel, tmp_path: Path
) -> None:
    """The CLI runs its Write (not read-only) after the first call and before the second: no waiting on both."""
    write = call("Write", file_path=str(tmp_path / "w.txt"), content="x")
    messages: Messages = [{"role": "user", "content": call("get_weather", city="Oslo") + write + call("get_time")}]
    choice, session = complete(alice, messages, tools=[WEATHER, TIME])
    assert [c.function.name for c in choice.message.tool_calls] == ["get_weather"]
    messages += answered(choice.message, ["rain"])
    choice, again = complete(alice, messages, tools=[WEATHER, TIME])
    assert again == session and [c.function.name for c in choice.message.tool_calls] == ["get_time"]
    messages += answered(choice.message, ["noon"])
    choice, _ = complete(alice, messages, tools=[WEATHER, TIME])
    assert choice.finish_reason == "stop" and len(model.message_requests()) == 2
    assert sorted(result_text(r) for r in tool_results(model) if not r.get("is_error")) == ["noon", "rain"]


def test_a_result_may_lead_to_another_round_of_calls(alice: openai.OpenAI, model: OfflineModel) -> None:
    messages: Messages = [{"role": "user", "content": call("get_time")}]
    choice, session = complete(alice, messages, tools=[WEATHER, TIME])
    messages += answered(choice.message, ["noon; now " + call("get_weather", city="Lima")])
    choice, again = complete(alice, messages, tools=[WEATHER, TIME])
    assert again == session and choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls[0].function.name == "get_weather"
    messages += answered(choice.message, ["fog"])
    choice, _ = complete(alice, messages, tools=[WEATHER, TIME])
    assert choice.finish_reason == "stop" and "fog" in choice.message.content
    assert len(model.message_requests()) == 3


def test_tool_choice_names_one_function_or_asks_for_a_call_in_words(alice: openai.OpenAI, model: OfflineModel) -> None:
    named = {"type": "function", "function": {"name": "get_time"}}
    complete(alice, [{"role": "user", "content": "what time"}], tools=[WEATHER, TIME], tool_choice=named)
    request = model.message_requests()[-1]
    assert [t["name"] for t in request.body["tools"] if t["name"].startswith("mcp__")] == ["mcp__client__get_time"]
    assert "(Answer by calling the function get_time.)" in json.dumps(request.body["messages"])
    complete(alice, [{"role": "user", "content": "what now"}], tools=[WEATHER, TIME], tool_choice="required")
    assert "one of the functions get_weather, get_time" in json.dumps(model.message_requests()[-1].body["messages"])
    complete(alice, [{"role": "user", "content": "just talk"}], tools=[WEATHER, TIME], tool_choice="none")
    assert not [t for t in model.message_requests()[-1].body["tools"] if t["name"].startswith("mcp__client")]


def test_a_client_that_never_comes_back_gets_its_calls_failed_and_the_session_goes_on(
    alice: openai.OpenAI, server: ServerProcess, model: OfflineModel
) -> None:
    messages: Messages = [{"role": "user", "content": call("get_weather", city="Kyiv")}]
    choice, session = complete(alice, messages, tools=[WEATHER])
    deadline = time.monotonic() + 30
    while not tool_results(model) and time.monotonic() < deadline:  # OPENAI_TOOL_TIMEOUT_SECONDS is 12 here
        time.sleep(0.2)
    (failed,) = tool_results(model)
    assert failed["is_error"] and "did not return this call's result within 12 s" in result_text(failed)
    with server.client("alice") as http:
        deadline = time.monotonic() + 30
        while http.get(f"/v1/sessions/{session}").json()["state"] == "busy" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert http.get(f"/v1/sessions/{session}").json()["state"] != "busy"
    text, again = complete(
        alice, [{"role": "user", "content": "still there?"}], extra_headers={"X-Session-ID": session}
    )
    assert again == session and "still there?" in text.message.content

    # Results coming back too late: no turn waits for them; a new session holds them as real tool use.
    messages += answered(choice.message, ["late rain"])
    choice, other = complete(alice, messages, tools=[WEATHER])
    assert other != session and choice.finish_reason == "stop"
    shown = model.message_requests()[-1].body["messages"]
    uses = [b for m in shown for b in m["content"] if isinstance(m["content"], list) and b.get("type") == "tool_use"]
    assert [(u["name"], u["input"]) for u in uses] == [("mcp__client__get_weather", {"city": "Kyiv"})]
    assert "late rain" in json.dumps(shown)


def test_a_history_with_calls_the_server_never_saw_is_imported_as_real_tool_use(
    alice: openai.OpenAI, model: OfflineModel
) -> None:
    foreign = {
        "id": "call_foreign1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Nice"}'},
    }
    messages: Messages = [
        {"role": "user", "content": "weather in Nice?"},
        {"role": "assistant", "content": None, "tool_calls": [foreign]},
        {"role": "tool", "tool_call_id": "call_foreign1", "content": "mild"},
        {"role": "assistant", "content": "It is mild."},
        {"role": "user", "content": "and tomorrow?"},
    ]
    choice, _ = complete(alice, messages, tools=[WEATHER])
    assert "and tomorrow?" in choice.message.content and len(model.message_requests()) == 1
    shown = model.message_requests()[-1].body["messages"]
    blocks = [b for m in shown if isinstance(m["content"], list) for b in m["content"]]
    use = next(b for b in blocks if b.get("type") == "tool_use")
    result = next(b for b in blocks if b.get("type") == "tool_result")
    assert use["id"] == result["tool_use_id"] == "call_foreign1" and use["name"] == "mcp__client__get_weather"
    assert result_text(result) == "mild"


def test_a_waiting_turn_is_continued_by_its_own_tenant_only(
    alice: openai.OpenAI, bob: openai.OpenAI, model: OfflineModel
) -> None:
    messages: Messages = [{"role": "user", "content": call("get_weather", city="Bern")}]
    choice, session = complete(alice, messages, tools=[WEATHER])
    stolen = [*messages, *answered(choice.message, ["bob was here"])]
    theirs, bobs = complete(bob, stolen, tools=[WEATHER])  # the same ids and history: bob's own conversation
    assert bobs != session and theirs.finish_reason == "stop"
    assert "bob was here" in json.dumps(model.message_requests()[-1].body)  # in bob's own new session
    choice, again = complete(alice, [*messages, *answered(choice.message, ["cold"])], tools=[WEATHER])
    assert again == session and "cold" in choice.message.content
    alices = [r for r in tool_results(model) if result_text(r) == "cold"]
    assert len(alices) == 1 and "bob was here" not in json.dumps(model.message_requests()[-1].body)


def test_a_clients_function_never_runs_on_the_host(alice: openai.OpenAI, tmp_path: Path, model: OfflineModel) -> None:
    marker = tmp_path / "ran"
    bash = {"type": "function", "function": {"name": "Bash", "parameters": {"type": "object"}}}
    prompt = call("mcp__client__Bash", command=f"touch {marker}")
    choice, _ = complete(alice, [{"role": "user", "content": prompt}], tools=[bash])
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls[0].function.name == "Bash"
    assert json.loads(choice.message.tool_calls[0].function.arguments) == {"command": f"touch {marker}"}
    assert not marker.exists() and not tool_results(model)  # it went to the client, and only there


# LangChain, as its agents and front-ends call an OpenAI endpoint.


def chat_model(server: ServerProcess) -> ChatOpenAI:
    return ChatOpenAI(model="sonnet", base_url=f"{server.base_url}/v1", api_key=KEYS["alice"], max_retries=0)


def test_a_langchain_agent_loop_runs_a_real_python_function(
    alice: openai.OpenAI, server: ServerProcess, model: OfflineModel
) -> None:
    ran: list[str] = []

    @langchain_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        ran.append(city)
        return f"sunny in {city}"

    bound = chat_model(server).bind_tools([get_weather])
    messages: list[BaseMessage] = [HumanMessage("Weather? " + call("get_weather", city="Paris"))]
    for _ in range(4):  # the agent's loop: call the model, run what it asks, until it answers
        answer = bound.invoke(messages)
        messages.append(answer)
        if not answer.tool_calls:
            break
        for made in answer.tool_calls:
            messages.append(ToolMessage(get_weather.invoke(made["args"]), tool_call_id=made["id"]))
    assert ran == ["Paris"] and "sunny in Paris" in str(messages[-1].content)
    assert len(messages) == 4 and len(model.message_requests()) == 2


class City(BaseModel):
    name: str
    country: str


def test_langchains_structured_output_by_json_schema_and_by_function_calling(
    alice: openai.OpenAI, server: ServerProcess
) -> None:
    by_schema = chat_model(server).with_structured_output(City, method="json_schema")
    found = by_schema.invoke("Where? " + call("StructuredOutput", name="Lyon", country="FR"))
    assert found == City(name="Lyon", country="FR")
    by_call = chat_model(server).with_structured_output(City, method="function_calling")
    found = by_call.invoke("Where? " + call("City", name="Turin", country="IT"))
    assert found == City(name="Turin", country="IT")
