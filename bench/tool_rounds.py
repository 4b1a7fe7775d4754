"""OpenAI function calling: what a tool round costs on a live conversation.

A real server (``claude-sessions serve``), the real CLI and the offline model, which calls the
client's function when the last user text (or a tool result) carries ``[[tool:get_weather:{...}]]``;
the official ``openai`` client, not streamed, one conversation, one session. Each round:

- its first request: a user message with the marker -> the completion ending with ``tool_calls``
  (the CLI's turn waits, parked);
- the continuation: the same history, the assistant's ``tool_calls`` and a ``tool`` message ->
  the final answer (the result goes to the waiting CLI: one model call, no replay);
- a plain follow-up: the next user message, no tools, in the same session -> its answer.

The continuation and the plain follow-up are timed from the request to its completion, interleaved
(every other round the follow-up goes first), each after the same pause. Each request's text carries
a tag (``tr:<round>:<kind>``); the server runs with a probe (:func:`serve_with_probe`) noting when
a write to a CLI's stdin first carries a tag (the user message, or the tool result answering the
CLI's MCP call), the client's HTTP client notes when it sends the request (a hook), and the offline
model, in this process, logs when each call arrives: one wall clock (``time.time_ns()``) splits a
request into the client's part (the ``openai`` client building the request from the history), the
server's (to the CLI's stdin), the CLI's (to the model call) and the way back. The model's log
counts the ``/v1/messages`` calls each request made. A chained part then answers one user message,
in a conversation of its own, with results that each ask for the next call.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
from claude_agent_sdk._internal.transport.subprocess_cli import SubprocessCLITransport

from claude_sessions.offline_model import WEATHER, OfflineModel
from common import probe_log, serve_probed, served_by, summary
from scenarios import USER_PAUSE

WARM_UP = 3
KEY = "bench-key"
#: Where the server's probe notes each tag's first write to a CLI's stdin: ``<time_ns> <tag>`` a line.
LOG_VARIABLE = "BENCH_TOOLS_LOG"
#: The server: ``claude-sessions`` with the probe installed first.
LAUNCHER = [
    sys.executable,
    "-c",
    f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
    "import tool_rounds; tool_rounds.serve_with_probe()",
]
TAG = re.compile(r"tr:\d+:[a-z]+")
Messages = list[dict[str, Any]]
#: The marker the offline model answers with a call of the client's ``get_weather``.
CALL = f"[[tool:get_weather:{json.dumps({'city': 'Paris'})}]]"


def serve_with_probe() -> None:
    """The server's process (``LAUNCHER``): each tag's first write to a CLI's stdin, into ``$BENCH_TOOLS_LOG``."""
    write_log = probe_log(LOG_VARIABLE)
    write = SubprocessCLITransport.write
    seen: set[str] = set()

    async def written(self: SubprocessCLITransport, data: str) -> None:
        await write(self, data)
        at = time.time_ns()
        for tag in set(TAG.findall(data)) - seen:
            seen.add(tag)
            write_log(f"{at} {tag}")

    SubprocessCLITransport.write = written  # type: ignore[method-assign]
    serve_probed()


def read_log(log: Path) -> dict[str, int]:
    """Tag -> when the server wrote it to the CLI's stdin (wall-clock ns)."""
    return {tag: int(at) for at, tag in (line.split() for line in log.read_text().splitlines())}


@dataclass
class Timed:
    """One request, in seconds from the call of the client: sent, on the CLI's stdin, the model called, completed.

    And the model calls it made.
    """

    seconds: float
    to_sent: float
    to_stdin: float
    to_model: float
    calls: int


class Client:
    """The official client, on its own HTTP client noting when each request goes out (wall-clock ns)."""

    def __init__(self, url: str) -> None:
        self.sent = 0

        async def note(_: Any) -> None:
            self.sent = time.time_ns()

        self.http = openai.DefaultAsyncHttpxClient(event_hooks={"request": [note]}, timeout=60)
        self.openai = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, http_client=self.http)

    async def close(self) -> None:
        await self.openai.close()
        await self.http.aclose()


class Conversation:
    """One conversation through the official client, kept as a client keeps it; one session throughout."""

    def __init__(self, client: Client, model: OfflineModel, log: Path) -> None:
        self.client, self.model, self.log = client, model, log
        self.messages: Messages = []
        self.session: str | None = None

    async def complete(self, tag: str, *added: dict[str, Any], tools: bool) -> tuple[Any, Timed]:
        """The first choice of one completion of the history plus ``added`` (which carries ``tag``), and its times."""
        self.messages += added
        completions: Any = self.client.openai.chat.completions.with_raw_response
        extra = {"tools": [WEATHER]} if tools else {}
        before = len(self.model.message_requests())
        called = time.time_ns()
        began = time.perf_counter()
        raw = await completions.create(model="sonnet", messages=self.messages, **extra)
        seconds = time.perf_counter() - began
        made = self.model.message_requests()[before:]
        session = raw.headers["x-session-id"]
        assert self.session in (None, session), f"a new session {session}: the history was not recognised"
        assert made, "no model call"
        self.session = session
        to_sent, to_stdin = (self.client.sent - called) / 1e9, (read_log(self.log)[tag] - called) / 1e9
        timed = Timed(seconds, to_sent, to_stdin, made[0].received_at - called / 1e9, len(made))
        return raw.parse().choices[0], timed

    async def ask(self, tag: str) -> tuple[Any, Timed]:
        """A user message with the marker: a completion ending with ``tool_calls``."""
        choice, timed = await self.complete(tag, {"role": "user", "content": f"{tag} weather? {CALL}"}, tools=True)
        assert choice.finish_reason == "tool_calls", choice
        return choice.message, timed

    async def answer(self, message: Any, result: str, *, final: bool = True) -> tuple[Any, Timed]:
        """The assistant's ``tool_calls`` and one ``result`` (which starts with its tag) each: the turn goes on."""
        made = [c.model_dump() for c in message.tool_calls]
        added = [
            {"role": "assistant", "content": message.content, "tool_calls": made},
            *({"role": "tool", "tool_call_id": c["id"], "content": result} for c in made),
        ]
        choice, timed = await self.complete(result.split()[0], *added, tools=True)
        if final:
            assert choice.finish_reason == "stop" and result in choice.message.content, choice
            self.messages.append({"role": "assistant", "content": choice.message.content})
        else:
            assert choice.finish_reason == "tool_calls", choice
        return choice.message, timed

    async def follow_up(self, tag: str) -> Timed:
        """A plain user message, no tools."""
        text = f"{tag} plain follow-up"
        choice, timed = await self.complete(tag, {"role": "user", "content": text}, tools=False)
        assert choice.finish_reason == "stop" and text in choice.message.content, choice
        self.messages.append({"role": "assistant", "content": choice.message.content})
        return timed


def figures(timed: list[Timed]) -> dict[str, Any]:
    """Median and p95 of the whole request and of its parts; the model calls each made."""
    calls = [t.calls for t in timed]
    return {
        **summary([t.seconds for t in timed]),
        "client": summary([t.to_sent for t in timed]),
        "sent_to_stdin": summary([t.to_stdin - t.to_sent for t in timed]),
        "stdin_to_model": summary([t.to_model - t.to_stdin for t in timed]),
        "model_to_end": summary([t.seconds - t.to_model for t in timed]),
        "calls": {"mean": statistics.mean(calls), "min": min(calls), "max": max(calls)},
    }


async def rounds(conversation: Conversation, count: int) -> dict[str, Any]:
    """``count`` tool rounds and plain follow-ups, interleaved, after ``WARM_UP`` uncounted ones."""
    kept: dict[str, list[Timed]] = {"first": [], "continuation": [], "follow_up": []}
    for i in range(WARM_UP + count):
        took: dict[str, Timed] = {}
        for side in ("tool", "plain") if i % 2 else ("plain", "tool"):
            await asyncio.sleep(USER_PAUSE)
            if side == "plain":
                took["follow_up"] = await conversation.follow_up(f"tr:{i}:plain")
                continue
            message, took["first"] = await conversation.ask(f"tr:{i}:ask")
            await asyncio.sleep(USER_PAUSE)  # the client runs its function
            _, took["continuation"] = await conversation.answer(message, f"tr:{i}:result sunny, {i} C")
        if i >= WARM_UP:
            for kind, timed in took.items():
                kept[kind].append(timed)
    ours, plain = [t.seconds for t in kept["continuation"]], [t.seconds for t in kept["follow_up"]]
    return {
        "rounds": count,
        **{kind: figures(timed) for kind, timed in kept.items()},
        "difference_p50_ms": (statistics.median(ours) - statistics.median(plain)) * 1000,
        "paired_p50_ms": statistics.median(a - b for a, b in zip(ours, plain, strict=True)) * 1000,
    }


async def chained(conversation: Conversation, count: int) -> dict[str, Any]:
    """One user message, then ``count`` results each asking for the next call, the last one plain."""
    kept: list[Timed] = []
    message, first = await conversation.ask("tr:0:chain")
    for i in range(count):
        await asyncio.sleep(USER_PAUSE)
        last = i == count - 1
        result = f"tr:{i}:link result {i}" + ("" if last else f", next: {CALL}")
        message, timed = await conversation.answer(message, result, final=last)
        kept.append(timed)
    # The last continuation ends the turn (its answer), the others with the next tool_calls.
    return {"rounds": count, "first_calls": first.calls, "continuation": figures(kept[:-1]), "all": figures(kept)}


async def run_all(quick: bool, model: OfflineModel) -> dict[str, Any]:
    """The interleaved rounds on one conversation, then the chained ones on another; printed as JSON lines."""
    log = Path(os.environ["CLAUDE_SESSIONS_DATA_DIR"]) / "tools-probe.log"
    async with served_by(LAUNCHER, "tools-server", API_KEYS=f"bench:{KEY}", **{LOG_VARIABLE: str(log)}) as server:
        client = Client(server.url)
        measured = await rounds(Conversation(client, model, log), 10 if quick else 30)
        chain = await chained(Conversation(client, model, log), 5 if quick else 20)
        await client.close()
    results = {
        **measured,
        "chained": chain,
        # What a tool round adds in model calls: its continuation's (1.0: the waiting turn went on, no replay).
        "model_calls_per_round": measured["continuation"]["calls"]["mean"],
    }
    print(json.dumps({"bench": "tool_rounds", **{k: v for k, v in results.items() if k != "chained"}}))
    print(json.dumps({"bench": "tool_rounds_chained", **chain}))
    return results


def markdown(results: dict[str, Any]) -> list[str]:
    """The tool-round table: a continuation against a plain follow-up, its parts, and the model calls each made."""
    chain = results["chained"]

    def ms(figures: dict[str, Any]) -> str:
        return f"{figures['median_ms']:.1f} / {figures['p95_ms']:.1f}"

    def row(what: str, f: dict[str, Any], target: str = "") -> str:
        calls = f["calls"]
        made = f"{calls['mean']:.2f}" + ("" if calls["min"] == calls["max"] else f" ({calls['min']}-{calls['max']})")
        parts = " | ".join(ms(f[part]) for part in ("client", "sent_to_stdin", "stdin_to_model", "model_to_end"))
        return f"| {what} | {ms(f)} | {parts} | {made} | {target} |"

    return [
        f"| OpenAI tool rounds, official client, not streamed ({results['rounds']} rounds, interleaved; "
        "median / p95 ms) | request -> completion | the client builds it | sent -> the CLI's stdin (server) "
        "| stdin -> the model call (CLI) | the model call -> completion | model calls per request | target |",
        "|---|---|---|---|---|---|---|---|",
        row("a plain follow-up: user message -> answer (same session, no tools)", results["follow_up"]),
        row(
            "a continuation: tool results -> final answer (the waiting turn goes on)",
            results["continuation"],
            "1 model call; <= +10 ms at p50",
        ),
        row("a round's first request: user message -> tool_calls", results["first"]),
        row(
            f"a chained continuation: result -> the next tool_calls ({chain['rounds'] - 1} in one turn, "
            "a conversation of its own)",
            chain["continuation"],
            "1 model call",
        ),
        "",
        f"A continuation vs a plain follow-up at p50: {results['difference_p50_ms']:+.1f} ms "
        f"(paired, the median of each round's difference: {results['paired_p50_ms']:+.1f} ms). "
        f"Model calls per tool round (its continuation): {results['model_calls_per_round']:.2f}; "
        f"per chained continuation, the final one included: {chain['all']['calls']['mean']:.2f}.",
    ]
