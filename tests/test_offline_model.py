"""The offline model over a real socket: the Messages API's shapes, usage, faults, log."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from claude_sessions.offline_model import OfflineModel, OfflineModelServer, count_tokens, tool_marker, tool_markers


@pytest.fixture
def client(offline_server: OfflineModelServer, model: OfflineModel) -> httpx.Client:
    return httpx.Client(base_url=offline_server.base_url, timeout=10)


def body(text: str, stream: bool = False) -> dict[str, object]:
    return {
        "model": "claude-test",
        "max_tokens": 100,
        "stream": stream,
        "system": [{"type": "text", "text": "Be brief."}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": text}]}],
    }


def sse_events(raw: str) -> list[tuple[str, dict[str, object]]]:
    events = []
    for chunk in raw.replace("\r\n", "\n").split("\n\n"):
        lines = dict(line.split(": ", 1) for line in chunk.splitlines() if ": " in line)
        if "event" in lines:
            events.append((lines["event"], json.loads(lines["data"])))
    return events


def test_streaming_reply_has_the_full_event_sequence(client: httpx.Client, model: OfflineModel) -> None:
    response = client.post("/v1/messages", json=body("ping pong", stream=True))
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "message_start" and kinds[1] == "content_block_start"
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    text = "".join(str(d["delta"]["text"]) for k, d in events if k == "content_block_delta")  # type: ignore[index]
    assert text == "(offline model) You said: ping pong [user message 1 of this conversation]"
    usage = model.requests[-1].usage
    assert usage is not None
    message_delta = next(d for k, d in events if k == "message_delta")
    assert message_delta["usage"] == {"output_tokens": usage.output_tokens}
    assert usage.output_tokens == count_tokens(text)


def test_non_streaming_reply_and_usage(client: httpx.Client) -> None:
    reply = client.post("/v1/messages", json=body("hello")).json()
    assert reply["type"] == "message" and reply["content"][0]["text"].startswith("(offline model) You said: hello [")
    assert reply["usage"]["input_tokens"] == count_tokens("hello")
    assert reply["usage"]["output_tokens"] == count_tokens(reply["content"][0]["text"])


def test_system_prompt_is_cached_after_first_sight(client: httpx.Client) -> None:
    first = client.post("/v1/messages", json=body("one")).json()["usage"]
    second = client.post("/v1/messages", json=body("two")).json()["usage"]
    if first["cache_creation_input_tokens"]:  # a fresh prompt for this server
        assert first["cache_read_input_tokens"] == 0
    assert second["cache_read_input_tokens"] == count_tokens("Be brief.")
    assert second["cache_creation_input_tokens"] == 0


def test_count_tokens(client: httpx.Client) -> None:
    response = client.post("/v1/messages/count_tokens", json=body("a b c"))
    assert response.json() == {"input_tokens": count_tokens("Be brief.") + 3}


@pytest.mark.parametrize("status", [401, 500, 529])
def test_injected_http_errors(client: httpx.Client, model: OfflineModel, status: int) -> None:
    response = client.post("/v1/messages", json=body(f"[[fail:{status}]] now"))
    assert response.status_code == status
    assert response.json()["type"] == "error"
    assert model.requests[-1].status == status


def test_latency_injection(client: httpx.Client, model: OfflineModel) -> None:
    began = time.perf_counter()
    client.post("/v1/messages", json=body("[[slow:0.3]] later"))
    assert time.perf_counter() - began >= 0.3
    model.settings.first_token_delay = 0.2
    try:
        began = time.perf_counter()
        client.post("/v1/messages", json=body("configured"))
        assert time.perf_counter() - began >= 0.2
    finally:
        model.settings.first_token_delay = 0.0


def test_big_reply_on_request(client: httpx.Client) -> None:
    text = client.post("/v1/messages", json=body("[[big:64]] large")).json()["content"][0]["text"]
    assert text.startswith("(offline model) You said: [[big:64]] large [")
    assert 64 * 1024 <= len(text.encode()) < 65 * 1024
    streamed = sse_events(client.post("/v1/messages", json=body("[[big:3]]", stream=True)).text)
    pieces = [str(d["delta"]["text"]).encode() for k, d in streamed if k == "content_block_delta"]  # type: ignore[index]
    assert sum(map(len, pieces)) >= 3 * 1024 and max(map(len, pieces)) <= 1025


def test_hung_response_never_answers(client: httpx.Client) -> None:
    with pytest.raises(httpx.ReadTimeout):
        client.post("/v1/messages", json=body("[[hang]]"), timeout=0.5)


def test_tool_use_on_request(client: httpx.Client) -> None:
    reply = client.post("/v1/messages", json=body('[[tool:Read:{"file_path": "/etc/hostname"}]]')).json()
    assert reply["stop_reason"] == "tool_use"
    assert reply["content"][0] == {
        "type": "tool_use",
        "id": reply["content"][0]["id"],
        "name": "Read",
        "input": {"file_path": "/etc/hostname"},
    }


def test_request_log_keeps_what_was_sent(client: httpx.Client, model: OfflineModel) -> None:
    client.post("/v1/messages", json=body("logged text"))
    entry = model.message_requests()[-1]
    assert entry.last_user_text == "logged text" and entry.user_texts == ["logged text"]
    assert entry.body["model"] == "claude-test"


def test_unknown_paths_answer_without_error(client: httpx.Client, model: OfflineModel) -> None:
    assert client.get("/v1/models").status_code == 200
    assert model.requests[-1].path == "/v1/models"


def test_a_tool_marker_takes_any_json_object_nested_ones_too() -> None:
    text = 'do it [[tool:StructuredOutput:{"city": {"name": "Oslo"}, "tags": ["a", "}"]}]] now'
    assert tool_marker(text) == ("StructuredOutput", {"city": {"name": "Oslo"}, "tags": ["a", "}"]})
    assert tool_marker("[[tool:Write:{not json}]]") is None and tool_marker("[[tool:Write:[1]]]") is None
    assert tool_markers('[[tool:A:{"x": 1}]] and [[tool:B:{}]]') == [("A", {"x": 1}), ("B", {})]  # parallel calls
