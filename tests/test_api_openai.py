"""The OpenAI-compatible endpoint, driven by the official ``openai`` client over a real socket,
against a real server, the real CLI and the offline model (whose request log shows what the
CLI was really shown)."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pydantic
import pytest

from claude_sessions.offline_model import OfflineModel, OfflineModelServer
from helpers import client_for, create, image_block, images_seen, openai_tenant, png, wait_no_cli
from server_process import KEYS, ServerProcess, start_server

Messages = list[dict[str, Any]]


@pytest.fixture(scope="module")
def server(offline_server: OfflineModelServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = start_server(
        tmp_path_factory.mktemp("openai"),
        offline_server.base_url,
        SM_MAX_SESSIONS="8",
        TENANT_MAX_SESSIONS="6",
        OPT_CLI_MAX_RETRIES="0",
        CP_MIN_SIZE="1",
        CLAUDE_SESSIONS_MAX_BODY_BYTES=str(2 * 1024 * 1024),
        MODEL_ALIASES="gpt-4o-mini:haiku",
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


def ask(client: openai.OpenAI, messages: Messages, **extra: Any) -> tuple[str, str]:
    """(reply text, X-Session-ID) of one non-streamed completion."""
    completions: Any = client.chat.completions.with_raw_response
    raw = completions.create(model="sonnet", messages=messages, **extra)
    completion = raw.parse()
    return completion.choices[0].message.content or "", raw.headers["x-session-id"]


def test_a_completion_has_the_shape_clients_expect(alice: openai.OpenAI, model: OfflineModel) -> None:
    completion = create(
        alice,
        model="sonnet",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"}],
        temperature=0.2,  # accepted and ignored
        max_tokens=50,
    )
    assert completion.object == "chat.completion" and completion.id.startswith("chatcmpl-")
    assert completion.model == "sonnet" and completion.created > 0
    choice = completion.choices[0]
    assert choice.finish_reason == "stop" and choice.message.role == "assistant"
    assert choice.message.content == "(offline model) You said: hello [user message 1 of this conversation]"
    usage = completion.usage
    assert usage is not None and usage.completion_tokens > 0 and usage.prompt_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    (call,) = model.message_requests()
    assert "Be brief." in str(call.body["system"])  # the system message is the session's system prompt
    assert call.body["model"] == "claude-sonnet-5-5"
    assert usage.completion_tokens == call.usage.output_tokens if call.usage else False


def test_streaming_with_usage_ends_with_done(alice: openai.OpenAI) -> None:
    stream = create(
        alice,
        model="sonnet",
        messages=[{"role": "user", "content": [{"type": "text", "text": "stream "}, {"type": "text", "text": "me"}]}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)  # the client stops at data: [DONE]
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "(offline model) You said: stream me [user message 1 of this conversation]"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0


def test_a_streamed_completion_sends_a_chunk_per_delta_as_it_comes(alice: openai.OpenAI) -> None:
    words = "one two three four five six seven eight"
    messages: Messages = [{"role": "user", "content": f"[[drip:0.15]] {words}"}]
    arrivals: list[tuple[float, str]] = []
    for chunk in create(alice, model="sonnet", messages=messages, stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append((time.monotonic(), chunk.choices[0].delta.content))
    assert len(arrivals) > 5 and words in "".join(text for _, text in arrivals)
    assert arrivals[-1][0] - arrivals[0][0] > 0.5
    whole = alice.chat.completions.create(model="sonnet", messages=[{"role": "user", "content": "once"}])
    assert whole.choices[0].message.content is not None and whole.choices[0].message.content.count("once") == 1


def test_three_exchanges_reach_the_cli_as_one_conversation(alice: openai.OpenAI, model: OfflineModel) -> None:
    messages: Messages = []
    sessions = set()
    for i, word in enumerate(["one", "two", "three"], start=1):
        messages.append({"role": "user", "content": f"word {word}"})
        reply, session_id = ask(alice, messages)
        assert f"[user message {i} of this conversation]" in reply
        messages.append({"role": "assistant", "content": reply})
        sessions.add(session_id)
    assert len(sessions) == 1
    calls = model.message_requests()
    assert len(calls) == 3  # exactly one model call per completion
    shown = "\n".join(calls[-1].user_texts)  # what the model saw: the three turns, each once
    assert [shown.count(f"word {w}") for w in ("one", "two", "three")] == [1, 1, 1]


def test_an_edited_history_starts_another_session_that_knows_the_edited_turns(
    alice: openai.OpenAI, model: OfflineModel
) -> None:
    first, original = ask(alice, [{"role": "user", "content": "my name is Ana"}])
    edited: Messages = [
        {"role": "user", "content": "my name is Bea"},  # not what that session holds
        {"role": "assistant", "content": first},
        {"role": "user", "content": "what is my name?"},
    ]
    model.requests.clear()
    reply, forked = ask(alice, edited)
    assert forked != original
    assert "[user message 2 of this conversation]" in reply  # the earlier turn is a real earlier turn
    (call,) = model.message_requests()  # one call, not one per earlier message
    shown = "\n".join(call.user_texts)
    assert "my name is Bea" in shown and "what is my name?" in shown and "Ana" not in shown
    again, same = ask(alice, [*edited, {"role": "assistant", "content": reply}, {"role": "user", "content": "more"}])
    assert same == forked and "[user message 3 of this conversation]" in again


def test_identical_histories_of_two_tenants_stay_apart(alice: openai.OpenAI, bob: openai.OpenAI) -> None:
    history: Messages = [{"role": "user", "content": "shared words"}]
    reply_a, session_a = ask(alice, history)
    reply_b, session_b = ask(bob, history)
    assert reply_a == reply_b  # the same first turn...
    follow: Messages = [*history, {"role": "assistant", "content": reply_a}, {"role": "user", "content": "next"}]
    _, next_a = ask(alice, follow)
    _, next_b = ask(bob, follow)
    assert next_a == session_a and next_b == session_b  # ...each continues its own tenant's session
    with pytest.raises(openai.NotFoundError):  # and X-Session-ID cannot name another tenant's
        ask(bob, follow, extra_headers={"X-Session-ID": session_a})


def test_a_300_kb_history_works_in_one_model_call(alice: openai.OpenAI, model: OfflineModel) -> None:
    history: Messages = []
    for i in range(30):
        history += [{"role": "user", "content": f"part {i} " + "x" * 10_000}, {"role": "assistant", "content": "ok"}]
    history.append({"role": "user", "content": "how many parts?"})
    model.requests.clear()
    reply, _ = ask(alice, history)
    assert "[user message 31 of this conversation]" in reply
    assert len(model.message_requests()) == 1


def test_sessions_made_here_are_listed_with_their_origin(alice: openai.OpenAI, server: ServerProcess) -> None:
    _, session_id = ask(alice, [{"role": "user", "content": "list me"}])
    with server.client("alice") as http:
        (listed,) = [s for s in http.get("/v1/sessions").json()["sessions"] if s["session_id"] == session_id]
    assert listed["origin"] == "openai" and listed["title"] == "list me" and listed["model"] == "sonnet"


def test_names_front_ends_send_reach_the_model_they_stand_for(alice: openai.OpenAI, model: OfflineModel) -> None:
    assert [m.id for m in alice.models.list()] == ["opus", "sonnet", "haiku", "gpt-4o-mini"]  # allowed, then aliases
    for name, family in [("gpt-4o-mini", "haiku"), ("claude-sonnet-4-5", "sonnet")]:
        model.requests.clear()
        answer = create(alice, model=name, messages=[{"role": "user", "content": f"as {name}"}])
        assert answer.model == name  # the client's own name, echoed
        assert family in model.message_requests()[-1].body["model"]


def test_each_error_class_is_the_clients_own(alice: openai.OpenAI, server: ServerProcess) -> None:
    hello: Messages = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.AuthenticationError):
        create(client_for(server, "wrong-key"), model="sonnet", messages=hello)
    with pytest.raises(openai.BadRequestError) as bad:
        create(alice, model="gpt-4o", messages=hello)
    assert bad.value.param == "model" and bad.value.status_code == 400
    refusals: list[tuple[dict[str, Any], str]] = [
        ({"n": 2}, "n"),
        ({"functions": [{"name": "f", "parameters": {}}]}, "functions"),
        ({"tools": [{"type": "function", "function": {"name": "no spaces"}}]}, "tools.0.function.name"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "g"}, "tool_choice"),
        ({"modalities": ["text", "audio"]}, "modalities"),
    ]
    for extra, param in refusals:
        with pytest.raises(openai.BadRequestError) as refused:
            create(alice, model="sonnet", messages=hello, **extra)
        assert refused.value.param == param
    tool = [*hello, {"role": "assistant", "content": "ok"}, {"role": "tool", "content": "42", "tool_call_id": "t"}]
    with pytest.raises(openai.BadRequestError) as refused:
        create(alice, model="sonnet", messages=tool)
    assert refused.value.param == "messages.2.tool_call_id" and "answers no open call" in refused.value.message
    with pytest.raises(openai.BadRequestError):
        create(alice, model="sonnet", messages=[])
    with pytest.raises(openai.NotFoundError):
        ask(alice, hello, extra_headers={"X-Session-ID": "no-such-session"})
    with pytest.raises(openai.InternalServerError) as failed:  # a model error is a 502, not text
        ask(alice, [{"role": "user", "content": "[[fail:529]] overloaded"}])
    assert failed.value.status_code == 502 and failed.value.code == "model_error"
    with httpx.Client(base_url=server.base_url, timeout=60) as http:  # each new session may start a CLI
        limited = []
        for i in range(8):  # past TENANT_MAX_SESSIONS
            answer = http.post(
                "/v1/chat/completions",
                headers={"Authorization": f"Bearer {KEYS['alice']}"},
                json={"model": "sonnet", "messages": [{"role": "user", "content": f"new {i}"}]},
            )
            limited.append(answer)
        assert limited[-1].status_code == 429 and limited[-1].headers["retry-after"]
        assert limited[-1].json()["error"]["type"] == "rate_limit_error"
    with pytest.raises(openai.RateLimitError):
        ask(alice, [{"role": "user", "content": "one too many"}])
    too_large = httpx.post(  # refused by the middleware, before any route: still OpenAI's shape
        f"{server.base_url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {KEYS['alice']}"},
        content=b"x" * (2 * 1024 * 1024 + 1),
    )
    assert too_large.status_code == 413
    assert too_large.json()["error"] == {**too_large.json()["error"], "param": None, "code": "body_too_large"}


def test_an_image_url_with_a_data_url_reaches_the_model_and_others_are_refused(
    alice: openai.OpenAI, model: OfflineModel
) -> None:
    data = image_block(png(2, 2))["source"]["data"]
    part = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}", "detail": "auto"}}
    looked = [{"role": "user", "content": [{"type": "text", "text": "describe it"}, part]}]
    reply, _ = ask(alice, looked)
    assert "[images seen: image/png]" in reply
    (seen,) = images_seen(model.message_requests()[-1])
    assert seen["source"] == {"type": "base64", "media_type": "image/png", "data": data}
    reply, _ = ask(alice, [*looked, {"role": "assistant", "content": reply}, {"role": "user", "content": "again?"}])
    assert "again?" in reply  # the same conversation, the image kept in its history
    calls = len(model.message_requests())
    refusals = [
        ({"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}, "fetches nothing"),
        ({"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}, "not a PNG image"),
        ({"type": "image_url", "image_url": {"url": "data:image/png,rawbytes"}}, "data:<media type>;base64"),
        ({"type": "input_audio", "input_audio": {}}, "'input_audio' are not supported"),
    ]
    for bad, words in refusals:
        with pytest.raises(openai.BadRequestError) as refused:
            create(alice, model="sonnet", messages=[{"role": "user", "content": [{"type": "text", "text": "x"}, bad]}])
        assert refused.value.param == "messages.0.content.1" and words in refused.value.message, refused.value.message
    assert len(model.message_requests()) == calls


CITY = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
    "required": ["city", "country"],
    "additionalProperties": False,
}


def city_format(name: str = "city") -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": CITY, "strict": True}}


def structured(**output: Any) -> str:
    """A prompt the offline model answers by calling the CLI's StructuredOutput tool with ``output``."""
    return f"Where is it? [[tool:StructuredOutput:{json.dumps(output)}]]"


def test_a_json_schema_answer_is_the_structured_output_round_after_round(
    alice: openai.OpenAI, model: OfflineModel
) -> None:
    messages: Messages = [{"role": "user", "content": structured(city="Oslo", country="Norway")}]
    first, session_id = ask(alice, messages, response_format=city_format())
    assert json.loads(first) == {"city": "Oslo", "country": "Norway"}
    schema_tool = [t for t in model.message_requests()[-1].body["tools"] if t["name"] == "StructuredOutput"]
    assert schema_tool and schema_tool[0]["input_schema"]["required"] == ["city", "country"]
    messages += [
        {"role": "assistant", "content": first},
        {"role": "user", "content": structured(city="Rome", country="Italy")},
    ]
    second, same = ask(alice, messages, response_format=city_format())
    assert json.loads(second) == {"city": "Rome", "country": "Italy"} and same == session_id
    messages += [{"role": "assistant", "content": second}, {"role": "user", "content": "and in words?"}]
    text, again = ask(alice, messages)  # no response_format: text again, the same conversation
    assert again == session_id and "You said: and in words?" in text
    shown = json.dumps(model.message_requests()[-1].body["messages"])
    assert "Oslo" in shown and "Rome" in shown  # the earlier rounds, in a CLI started without the schema


def test_the_clients_parse_gets_its_model_back_and_json_object_gets_an_object(alice: openai.OpenAI) -> None:
    class Place(pydantic.BaseModel):
        city: str
        country: str

    prompt = structured(city="Lima", country="Peru")
    parsed = alice.beta.chat.completions.parse(
        model="sonnet", messages=[{"role": "user", "content": prompt}], response_format=Place
    )
    assert parsed.choices[0].message.parsed == Place(city="Lima", country="Peru")
    loose, _ = ask(
        alice, [{"role": "user", "content": structured(any="thing", n=3)}], response_format={"type": "json_object"}
    )
    assert json.loads(loose) == {"any": "thing", "n": 3}


def test_a_streamed_structured_answer_is_one_json_chunk_and_a_misfit_is_an_error(alice: openai.OpenAI) -> None:
    stream = create(
        alice,
        model="sonnet",
        messages=[{"role": "user", "content": structured(city="Kyiv", country="Ukraine")}],
        response_format=city_format(),
        stream=True,
    )
    contents = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
    assert len(contents) == 1 and json.loads(contents[0]) == {"city": "Kyiv", "country": "Ukraine"}
    with pytest.raises(openai.InternalServerError) as misfit:
        ask(alice, [{"role": "user", "content": structured(city="Nowhere")}], response_format=city_format())
    assert "did not fit the response_format's schema" in misfit.value.message
    with pytest.raises(openai.BadRequestError) as refused:
        ask(alice, [{"role": "user", "content": "hi"}], response_format={"type": "xml"})
    assert refused.value.param == "response_format.type"


def test_tools_with_tool_choice_none_are_answered_as_text(alice: openai.OpenAI) -> None:
    function = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
    text, _ = ask(alice, [{"role": "user", "content": "hello"}], tools=[function], tool_choice="none")
    assert "You said: hello" in text
