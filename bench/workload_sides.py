"""The workload replay's sides: one user's conversation over the HTTP API (its sessions or its OpenAI
endpoint) or on the bare SDK, and what is measured meanwhile (a :class:`Record`, a :class:`Sampler`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import psutil

from chaos_cluster import say as progress
from common import MB, Served, bare_client, bare_turn, is_cli, nearest_rank
from workload_trace import Trace, User

#: The one tenant every user of the HTTP sides belongs to (``API_KEYS``), and its key.
TENANT, KEY = "workload", "workload-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
#: What a completion names: any model the server offers.
MODEL = "opus"
SAMPLE_EVERY = 1.0


def say(line: str) -> None:
    """A progress line on stderr: the replay's phases, timed."""
    progress(f"workload: {line}")


class TurnFailed(Exception):
    """A create, turn or delete that did not answer as it should: the user's conversation stops there."""


@dataclass
class Record:
    """What one side saw of the trace; times in seconds."""

    #: The user's send to the whole answer; a new conversation's first turn counts from its create.
    turns: list[float] = field(default_factory=list)
    #: User index -> its create (the bare SDK: the client's connect) to the first token of its first answer.
    first_tokens: dict[int, float] = field(default_factory=dict)
    #: One new conversation at a time on a warm, idle side, before the trace: create to first token.
    warm_creates: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    #: Sessions registered now (the bare SDK: conversations with a client).
    registered: int = 0
    #: The bare SDK: clients connected during the trace (each a CLI started).
    connects: int = 0


def percentiles(seconds: list[float]) -> dict[str, float]:
    """p50, p95 and p99 in milliseconds (nearest rank), and how many."""
    ordered = sorted(seconds)
    if not ordered:
        return {"n": 0}

    p50, p95, p99 = (nearest_rank(ordered, q) * 1000 for q in (0.5, 0.95, 0.99))
    return {"p50_ms": p50, "p95_ms": p95, "p99_ms": p99, "n": len(ordered)}


def prompt(user: User, turn: int) -> str:
    return f"user {user.index}, message {turn + 1}: what do you think?"


async def play(trace: Trace, converse: Callable[[User], Awaitable[None]], record: Record) -> float:
    """Every user of ``trace`` at its arrival, at once; seconds until the last conversation ended."""
    began = time.monotonic()

    async def one(user: User) -> None:
        await asyncio.sleep(max(0.0, began + user.arrival - time.monotonic()))
        try:
            await converse(user)
        except TurnFailed as failure:
            record.errors[str(failure)] += 1
        except Exception as error:  # one user's failure must not end the replay
            said = str(error).strip().splitlines()
            record.errors[f"{type(error).__name__}: {said[0][:60]}" if said else type(error).__name__] += 1

    say(f"the trace begins: {len(trace.users)} users")
    await asyncio.gather(*(one(u) for u in trace.users))
    seconds = time.monotonic() - began
    say(f"the trace ended after {seconds:.0f} s")
    return seconds


# -- memory and CLIs -------------------------------------------------------------------


def bare_clis() -> list[psutil.Process]:
    """The bare SDK's CLIs: this process's children running the CLI."""
    return [p for p in psutil.Process().children() if is_cli(p)]


class Sampler:
    """Every second, in a thread: PSS summed over ``roots()`` and their descendants, the sessions registered
    then, and the CLIs running (one inside its sandbox counted once: the outermost process running it)."""

    def __init__(self, roots: Callable[[], list[psutil.Process]], registered: Callable[[], int]) -> None:
        self._roots, self._registered = roots, registered
        #: (PSS in MB, sessions registered) a sample.
        self.samples: list[tuple[float, int]] = []
        self.clis: set[tuple[int, float]] = set()
        self._before: set[tuple[int, float]] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="workload-sampler", daemon=True)

    def start(self) -> None:
        self.sample()
        self._before = set(self.clis)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def _loop(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY):
            self.sample()

    def sample(self) -> None:
        processes: list[psutil.Process] = []
        for root in self._roots():
            with contextlib.suppress(psutil.Error):
                processes += [root, *root.children(recursive=True)]
        clis = {p.pid for p in processes if is_cli(p)}
        pss = 0
        for process in processes:
            with contextlib.suppress(psutil.Error):
                pss += process.memory_full_info().pss
                if process.pid in clis and process.ppid() not in clis:
                    self.clis.add((process.pid, process.create_time()))
        self.samples.append((pss / MB, self._registered()))

    @property
    def started(self) -> int:
        """CLIs seen that were not running at ``start``."""
        return len(self.clis - self._before)

    def memory(self) -> dict[str, float | None]:
        pss = [mb for mb, _ in self.samples]
        held = sum(registered for _, registered in self.samples)
        return {
            "pss_peak_mb": max(pss),
            "pss_mean_mb": statistics.fmean(pss),
            "pss_per_session_mb": sum(pss) / held if held else None,
            "registered_mean": held / len(self.samples),
        }


# -- the HTTP API ----------------------------------------------------------------------


def _code(body: Any) -> str:
    error = body.get("error") if isinstance(body, dict) else None
    return str(error.get("code") or error.get("type")) if isinstance(error, dict) else "?"


async def _failed(answer: httpx.Response) -> TurnFailed:
    await answer.aread()
    try:
        return TurnFailed(f"{answer.status_code} {_code(answer.json())}")
    except ValueError:
        return TurnFailed(f"{answer.status_code}")


async def session_turn(http: httpx.AsyncClient, session_id: str, content: str) -> float:
    """One turn over SSE, read to its end; when its first token (text delta) arrived, ``perf_counter()``."""
    first, event, ended = None, "", False
    async with http.stream("POST", f"/v1/sessions/{session_id}/messages", json={"content": content}) as answer:
        if answer.status_code != 200:
            raise await _failed(answer)
        async for line in answer.aiter_lines():
            if line.startswith("event:"):
                event = line.partition(":")[2].strip()
            elif not line.startswith("data:"):
                continue
            elif event == "error":
                raise TurnFailed(f"error event {_code(json.loads(line[5:]))}")
            elif first is None and (event == "assistant" or (event == "stream_event" and '"text_delta"' in line)):
                first = time.perf_counter()
            elif event == "result":
                ended = True
                if json.loads(line[5:]).get("is_error"):
                    raise TurnFailed("result is_error")
    if first is None or not ended:
        raise TurnFailed("answer cut short")
    return first


async def openai_turn(http: httpx.AsyncClient, messages: list[dict[str, str]]) -> tuple[float, str]:
    """One streamed completion: when its first content arrived (``perf_counter()``), and its text."""
    first: float | None = None
    parts: list[str] = []
    body = {"model": MODEL, "messages": messages, "stream": True}
    async with http.stream("POST", "/v1/chat/completions", json=body) as answer:
        if answer.status_code != 200:
            raise await _failed(answer)
        async for line in answer.aiter_lines():
            data = line[5:].strip() if line.startswith("data:") else ""
            if not data or data == "[DONE]":
                continue
            chunk = json.loads(data)
            if "error" in chunk:
                raise TurnFailed(f"error chunk {_code(chunk)}")
            for choice in chunk.get("choices", []):
                if text := (choice.get("delta") or {}).get("content"):
                    first = first or time.perf_counter()
                    parts.append(text)
    if first is None:
        raise TurnFailed("completion without content")
    return first, "".join(parts)


async def create(http: httpx.AsyncClient) -> str:
    answer = await http.post("/v1/sessions", json={})
    if answer.status_code != 201:
        raise await _failed(answer)
    return str(answer.json()["session_id"])


async def delete(http: httpx.AsyncClient, session_id: str) -> None:
    answer = await http.delete(f"/v1/sessions/{session_id}")
    if answer.status_code != 204:
        raise await _failed(answer)


async def http_conversation(http: httpx.AsyncClient, user: User, record: Record) -> None:
    """``user``'s conversation through the sessions API (deleted at the end if the user leaves early)
    or, for ``via="openai"``, through ``/v1/chat/completions``, the whole history sent each time."""
    began = time.perf_counter()
    session_id = await create(http) if user.via == "sessions" else None
    record.registered += session_id is not None
    messages: list[dict[str, str]] = []
    for turn in range(user.turns):
        if turn:
            await asyncio.sleep(user.pauses[turn - 1])
            began = time.perf_counter()
        if session_id is not None:
            first = await session_turn(http, session_id, prompt(user, turn))
        else:
            messages.append({"role": "user", "content": prompt(user, turn)})
            first, text = await openai_turn(http, messages)
            messages.append({"role": "assistant", "content": text})
        record.turns.append(time.perf_counter() - began)
        if turn == 0:
            record.first_tokens[user.index] = first - began
            record.registered += session_id is None  # the completion made its session
    if session_id is not None and user.leaves:
        await delete(http, session_id)
        record.registered -= 1


async def http_warm_create(http: httpx.AsyncClient) -> float:
    """A new session on a warm, idle side, to the first token of its first answer; deleted after."""
    began = time.perf_counter()
    session_id = await create(http)
    first = await session_turn(http, session_id, "hello")
    await delete(http, session_id)
    return first - began


async def settle(nodes: list[Served], timeout: float = 120.0) -> None:
    """Until every node has its spares: ``/v1/pool``'s ``idle`` at least its ``min_size`` (or ``timeout``)."""
    async with httpx.AsyncClient(headers=AUTH, timeout=10) as probe:
        for node in nodes:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                with contextlib.suppress(httpx.HTTPError, ValueError, KeyError, TypeError):
                    pool = (await probe.get(f"{node.url}/v1/pool")).json()
                    if pool["idle"] >= pool.get("min_size", 1):
                        break
                await asyncio.sleep(0.2)


# -- the bare SDK ----------------------------------------------------------------------


async def bare_conversation(user: User, record: Record) -> None:
    """``user``'s conversation on a ``ClaudeSDKClient`` of its own, connected at its arrival and
    disconnected after its last turn (the conversation's end, whether the user left early or not)."""
    began = time.perf_counter()
    client = bare_client()
    await client.connect()
    record.connects += 1
    record.registered += 1
    try:
        for turn in range(user.turns):
            if turn:
                await asyncio.sleep(user.pauses[turn - 1])
                began = time.perf_counter()
            sent = time.perf_counter()
            first, whole = await bare_turn(client, prompt(user, turn))
            record.turns.append(sent + whole - began)
            if turn == 0:
                record.first_tokens[user.index] = sent + (first or whole) - began
    finally:
        record.registered -= 1
        await client.disconnect()


async def bare_warm_create() -> float:
    """A new conversation on the bare SDK with nothing else running: connect to the first token."""
    began = time.perf_counter()
    client = bare_client()
    await client.connect()
    try:
        sent = time.perf_counter()
        first, whole = await bare_turn(client, "hello")
    finally:
        await client.disconnect()
    return sent + (first or whole) - began
