"""The comparisons. Both sides of each run in the same process, interleaved."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import openai

from claude_sessions import ClaudeHandler, SessionConfig
from claude_sessions.gateway.relay import ModelGateway
from claude_sessions.offline_model import OfflineModel
from claude_sessions.workers.worker import Worker
from common import (
    MB,
    Comparison,
    bare_client,
    bare_turn,
    cli_pids,
    footprint,
    free_port,
    make_handler,
    managed_turn,
    served,
    summary,
)

#: Idle time before each measured turn of a conversation: a user reads, then types.
USER_PAUSE = 0.3


async def settle(handler: ClaudeHandler) -> None:
    """Wait until the pool has its spares again (steady state between samples)."""
    for _ in range(400):
        if handler.get_pool_status()["idle"] >= handler.config.connection_pool.MIN_SIZE:
            return
        await asyncio.sleep(0.025)


async def session_start(rounds: int) -> list[Comparison]:
    """1. New session to first reply; 2. first turn of a fresh spare vs a reused worker's and a later turn."""
    handler = make_handler(min_size=2, max_size=4)
    await handler.start()
    bare: list[float] = []
    pooled: list[float] = []
    cold_first: list[float] = []
    fresh_first: list[float] = []
    reused_first: list[float] = []
    later: list[float] = []
    back_to_back: list[float] = []
    try:
        for i in range(rounds):
            began = time.perf_counter()
            client = bare_client()
            await client.connect()
            connected = time.perf_counter()
            first, _ = await bare_turn(client, f"hello {i}")
            bare.append(connected - began + first)
            await client.disconnect()

            await settle(handler)
            began = time.perf_counter()
            session_id = await handler.create_session()
            created = time.perf_counter()
            first, _ = await managed_turn(handler, session_id, f"hello {i}")
            pooled.append(created - began + first)
            await handler.destroy_session(session_id)

        # A spare just made (never used by a session) against later turns on it: as the
        # pool makes them (warmed up on turns the gateway answers), and not warmed up;
        # and against the first turn of the next session on the same worker (after /clear).
        # Every measured turn follows the same pause, as a user's turns do: a CLI answers
        # a turn right after the last one faster than after even 0.3 s idle (the last
        # later turn of each round, back to back, is kept apart to show by how much).
        # Twice the rounds: single first turns spread widely on a busy machine.
        async def paused_turn(worker: Worker, prompt: str) -> float:
            await asyncio.sleep(USER_PAUSE)
            return (await bare_turn(worker.client, prompt))[1]

        for i in range(2 * rounds):
            for warm, firsts in ((True, fresh_first), (False, cold_first)):
                worker = await handler.pool._connect(SessionConfig(), None, warm=warm)
                try:
                    firsts.append(await paused_turn(worker, f"first {i}"))
                    later.extend([await paused_turn(worker, f"later {i}.{j}") for j in range(3)])
                    back_to_back.append((await bare_turn(worker.client, f"at once {i}"))[1])
                    if warm and await worker.reset(30):
                        reused_first.append(await paused_turn(worker, f"next session {i}"))
                finally:
                    await handler.pool.discard(worker)
    finally:
        await handler.close()
    return [
        Comparison(
            "new session: create + first token",
            "bare SDK (connect per session)",
            summary(bare),
            "claude-sessions, warm pool",
            summary(pooled),
            "<= 0.10",
        ),
        Comparison(
            "first turn of a session: fresh spare vs reused worker",
            "reused worker, first turn after /clear",
            summary(reused_first),
            "fresh spare (warmed up), first turn",
            summary(fresh_first),
            "<= 1.5",
        ),
        Comparison(
            "fresh CLI: first turn vs later turn",
            "later turn",
            summary(later),
            "first turn of a fresh spare (warmed up)",
            summary(fresh_first),
            "<= 1.5",
        ),
        Comparison(
            "later turn: back to back vs after a 0.3 s pause",
            "later turn, right after the last",
            summary(back_to_back),
            "later turn, after a pause (the baseline above)",
            summary(later),
            "(reference)",
        ),
        Comparison(
            "fresh CLI not warmed up: first turn vs later turn",
            "later turn",
            summary(later),
            "first turn of a CLI never warmed up",
            summary(cold_first),
            "(reference)",
        ),
    ]


async def manager_overhead(rounds: int) -> Comparison:
    """3. The same turn on the same worker: SDK client directly vs ClaudeHandler.send_message."""
    handler = make_handler(min_size=0, max_size=1)
    handler.config.connection_pool.MAX_USES = 10 * rounds  # one worker for the whole comparison
    session_id = await handler.create_session()
    worker = handler.session_manager.get(session_id).worker
    assert worker is not None
    bare, managed = [], []
    try:
        for i in range(5):  # warm both paths
            await bare_turn(worker.client, f"warm {i}")
            await managed_turn(handler, session_id, f"warm {i}")
        for i in range(rounds):
            bare.append((await bare_turn(worker.client, f"bare {i}"))[1])
            managed.append((await managed_turn(handler, session_id, f"managed {i}"))[1])
    finally:
        await handler.close()
    return Comparison(
        "one turn: manager overhead", "ClaudeSDKClient", summary(bare), "ClaudeHandler", summary(managed), "+<= 1 ms"
    )


async def _load(users: int, messages: int, turn: Callable[[int, str], Awaitable[float]]) -> tuple[float, list[float]]:
    """``users`` concurrent users each sending ``messages`` turns: (wall seconds, turn latencies)."""
    latencies: list[float] = []

    async def user(index: int) -> None:
        for j in range(messages):
            latencies.append(await turn(index, f"u{index} m{j}"))

    began = time.perf_counter()
    await asyncio.gather(*(user(i) for i in range(users)))
    return time.perf_counter() - began, latencies


async def concurrency(levels: list[int], messages: int, repeats: int = 2) -> list[dict[str, Any]]:
    """4. N sessions at once, each sending ``messages`` turns: throughput and p95 latency.

    Each side runs ``repeats`` times, alternating, so that drift of the machine hits both.
    """
    rows = []
    for n in levels:
        walls = {"bare": 0.0, "ours": 0.0}
        latencies: dict[str, list[float]] = {"bare": [], "ours": []}
        for _ in range(repeats):
            clients = [bare_client() for _ in range(n)]
            await asyncio.gather(*(c.connect() for c in clients))

            async def bare(index: int, prompt: str, clients: list[Any] = clients) -> float:
                return (await bare_turn(clients[index], prompt))[1]

            wall, seen = await _load(n, messages, bare)
            walls["bare"] += wall
            latencies["bare"] += seen
            await asyncio.gather(*(c.disconnect() for c in clients))

            handler = make_handler(min_size=0, max_size=n, max_sessions=n)
            ids = await asyncio.gather(*(handler.create_session() for _ in range(n)))

            async def managed(index: int, prompt: str, handler: ClaudeHandler = handler, ids: list[str] = ids) -> float:
                return (await managed_turn(handler, ids[index], prompt))[1]

            wall, seen = await _load(n, messages, managed)
            walls["ours"] += wall
            latencies["ours"] += seen
            await handler.close()
        turns = n * messages * repeats
        rows.append(
            {
                "sessions": n,
                "turns": turns,
                "bare_turns_per_s": turns / walls["bare"],
                "bare_p95_ms": summary(latencies["bare"])["p95_ms"],
                "ours_turns_per_s": turns / walls["ours"],
                "ours_p95_ms": summary(latencies["ours"])["p95_ms"],
                "throughput_ratio": walls["bare"] / walls["ours"],
            }
        )
    return rows


#: The caller of ``gateway_overhead``, in a process of its own as a CLI is: both sides
#: interleaved, the first 20 rounds to warm up; prints the times as JSON.
_CALLER = """
import json, sys, time, httpx
sides, rounds = json.loads(sys.argv[1]), int(sys.argv[2])
body = {"model": "claude-opus-5-5", "max_tokens": 64, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
times = {side: {"first": [], "whole": []} for side in sides}
with httpx.Client(timeout=30) as http:
    for i in range(rounds + 20):
        for side, (base, key) in sides.items():
            began = time.perf_counter()
            with http.stream("POST", base + "/v1/messages", json=body, headers={"x-api-key": key}) as answer:
                chunks = answer.iter_bytes()
                next(chunks)
                first = time.perf_counter() - began
                for _ in chunks:
                    pass
            if i >= 20:
                times[side]["first"].append(first)
                times[side]["whole"].append(time.perf_counter() - began)
print(json.dumps(times))
"""


async def gateway_overhead(rounds: int) -> list[Comparison]:
    """6. A streamed model call through the gateway (token check, key swap, metering) vs straight to the model.

    Placed as in production: the caller is a process of its own (as a CLI is), the model
    another (as the API is remote), the gateway in this process (as in the server's).
    """
    port = free_port()
    script = str(Path(sys.executable).with_name("claude-sessions"))
    upstream = await asyncio.create_subprocess_exec(
        script, "offline-model", "--port", str(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    model_url = f"http://127.0.0.1:{port}"
    gateway = ModelGateway(model_url, {"x-api-key": "sk-offline-model"}, timeout=30)
    try:
        async with httpx.AsyncClient() as probe:
            for _ in range(300):
                with contextlib.suppress(httpx.TransportError):
                    await probe.get(f"{model_url}/v1/models")
                    break
                await asyncio.sleep(0.05)
        await gateway.start()
        grant = gateway.issue("bench")
        sides = {"direct": (model_url, "sk-offline-model"), "gateway": (gateway.base_url, grant.token)}
        caller = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _CALLER, json.dumps(sides), str(rounds), stdout=subprocess.PIPE
        )
        output, _ = await caller.communicate()
        times = json.loads(output)
    finally:
        await gateway.close()
        upstream.terminate()
        await upstream.wait()
    target = "+2 ms or less at p50"
    return [
        Comparison(
            f"model call, {what}",
            "straight to the model",
            summary(times["direct"][key]),
            "through the model gateway",
            summary(times["gateway"][key]),
            target,
        )
        for what, key in (("first byte", "first"), ("whole streamed answer (10 events)", "whole"))
    ]


async def openai_completions(rounds: int, model: OfflineModel) -> list[Comparison]:
    """7. A follow-up completion through /v1/chat/completions (the official openai client) vs a bare
    ClaudeSDKClient turn; and the model calls each completion made (target: exactly 1)."""
    first: list[float] = []
    follow: list[float] = []
    bare_turns: list[float] = []
    calls: list[float] = []
    bare = bare_client()
    await bare.connect()
    try:
        async with served("openai-server", API_KEYS="bench:key") as server:
            client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="key", max_retries=0)
            for i in range(rounds + 2):
                messages: list[Any] = [{"role": "user", "content": f"first {i}"}]
                began = time.perf_counter()
                reply = await client.chat.completions.create(model="opus", messages=messages)
                first_s = time.perf_counter() - began
                messages += [{"role": "assistant", "content": reply.choices[0].message.content}]
                messages += [{"role": "user", "content": f"follow-up {i}"}]
                before = len(model.message_requests())
                began = time.perf_counter()
                await client.chat.completions.create(model="opus", messages=messages)
                follow_s = time.perf_counter() - began
                calls.append(len(model.message_requests()) - before)
                bare_s = (await bare_turn(bare, f"bare {i}"))[1]
                if i >= 2:
                    first.append(first_s)
                    follow.append(follow_s)
                    bare_turns.append(bare_s)
    finally:
        await bare.disconnect()
    print(f"model calls per follow-up completion: {sorted(set(calls))}")
    bare_summary = summary(bare_turns)
    return [
        Comparison(
            "OpenAI endpoint: follow-up completion",
            "bare ClaudeSDKClient turn",
            bare_summary,
            "/v1/chat/completions (openai client)",
            summary(follow),
            "<= 1.2",
        ),
        Comparison(
            "OpenAI endpoint: first completion (new session)",
            "bare ClaudeSDKClient turn",
            bare_summary,
            "/v1/chat/completions (openai client)",
            summary(first),
            f"model calls per completion: {max(calls)} (target 1)",
        ),
    ]


async def http_overhead(rounds: int) -> Comparison:
    """5. Time to the first SSE byte through the API vs to the first message from the library."""
    handler = make_handler(min_size=0, max_size=1)
    http, library = [], []
    try:
        async with (
            served("server") as server,
            httpx.AsyncClient(base_url=server.url, timeout=30) as client,
        ):
            await client.post("/v1/sessions", json={"session_id": "bench"})
            session_id = await handler.create_session()
            for i in range(rounds + 3):
                began = time.perf_counter()
                async with client.stream("POST", "/v1/sessions/bench/messages", json={"content": f"h{i}"}) as r:
                    chunks = r.aiter_bytes()
                    await anext(chunks)
                    elapsed = time.perf_counter() - began
                    async for _ in chunks:
                        pass
                began = time.perf_counter()
                turn = handler.send_message(session_id, f"l{i}")
                await anext(turn)
                lib_elapsed = time.perf_counter() - began
                async for _ in turn:
                    pass
                if i >= 3:  # the first rounds warm both paths
                    http.append(elapsed)
                    library.append(lib_elapsed)
    finally:
        await handler.close()
    return Comparison(
        "first event of a turn", "library (send_message)", summary(library), "HTTP API (SSE)", summary(http)
    )


async def first_text(rounds: int, model: OfflineModel) -> Comparison:
    """5b. When the model's first text delta left it, and when it reached a client of the HTTP API (SSE)."""
    from_model, through_api = [], []
    async with served("first-text") as server, httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        await client.post("/v1/sessions", json={"session_id": "bench"})
        for i in range(rounds + 3):
            prompt = f"first text {i} one two three"
            began = time.monotonic()  # the offline model runs in this process: one clock for both
            async with client.stream("POST", "/v1/sessions/bench/messages", json={"content": prompt}) as r:
                arrived = await _first_text_delta(r)
            sent = next(m for m in reversed(model.message_requests()) if prompt in json.dumps(m.body["messages"]))
            if i >= 3 and sent.first_text_at is not None:  # the first rounds warm both paths
                from_model.append(sent.first_text_at - began)
                through_api.append(arrived - began)
    return Comparison(
        "first text of a reply",
        "the model sends its first text delta",
        summary(from_model),
        "it reaches the HTTP client (SSE stream_event)",
        summary(through_api),
        "+5 ms or less at p50",
    )


async def _first_text_delta(response: httpx.Response) -> float:
    """``time.monotonic()`` when the stream's first text delta arrived (the rest is read to its end)."""
    event, arrived = "", None
    async for line in response.aiter_lines():
        if line.startswith("event:"):
            event = line.partition(":")[2].strip()
        elif arrived is None and event == "stream_event" and '"text_delta"' in line:
            arrived = time.monotonic()
    assert arrived is not None, "the turn brought no text delta"
    return arrived


async def memory(levels: list[int]) -> list[dict[str, Any]]:
    """6. Memory of this process and every process it started, live vs idle (released) sessions; resume latency.

    Totals are PSS: shared pages divided among their sharers, so they add up across processes
    (summed RSS would count the CLI runtime's shared pages once per CLI). A live CLI (with the
    processes it started) is given as its unique part (USS: what ending it frees) and the shared
    part it maps (RSS - USS: held once for every CLI, not once each).
    """
    rows = []
    me = os.getpid()
    for n in levels:
        handler = make_handler(min_size=0, max_size=0, max_sessions=n)
        before = footprint(me)
        ids = [await handler.create_session() for _ in range(n)]
        live_turn = [(await managed_turn(handler, s, "hello"))[1] for s in ids]
        live_turn = [(await managed_turn(handler, s, "again"))[1] for s in ids]
        live = footprint(me)
        clis = [footprint(pid) for pid in cli_pids()]
        handler.config.session_manager.IDLE_RELEASE_MINUTES = 1e-9
        await handler.session_manager.release_idle_workers()
        await asyncio.sleep(0.5)
        idle = footprint(me)
        resumed = [(await managed_turn(handler, s, "after release"))[1] for s in ids[: min(n, 10)]]
        await handler.close()
        rows.append(
            {
                "sessions": n,
                "live_clis": len(clis),
                "live_pss_mb": live.pss / MB,
                "live_pss_per_session_mb": (live.pss - before.pss) / MB / n,
                "cli_uss_mb": statistics.mean(c.uss for c in clis) / MB,
                "cli_shared_mb": statistics.mean(c.shared for c in clis) / MB,
                "cli_pss_mb": statistics.mean(c.pss for c in clis) / MB,
                "idle_pss_mb": idle.pss / MB,
                "idle_pss_per_session_kb": max(0, idle.pss - before.pss) / 1024 / n,
                "live_turn": summary(live_turn),
                "first_turn_after_release": summary(resumed),
            }
        )
    return rows


async def maintenance_cost(levels: list[int]) -> list[dict[str, Any]]:
    """7. One cleanup pass over N registered sessions (registry only, no processes)."""
    rows = []
    for n in levels:
        handler = make_handler(min_size=0, max_size=0, max_sessions=n)
        manager = handler.session_manager
        began = time.perf_counter()
        for i in range(n):
            manager.register_session(f"s{i}")
        register = time.perf_counter() - began
        passes = []
        for _ in range(5):
            began = time.perf_counter()
            await manager.cleanup_inactive_sessions()
            await manager.release_idle_workers()
            await manager.detect_orphaned_sessions()
            await handler.pool.health_check()
            passes.append(time.perf_counter() - began)
        rows.append(
            {
                "sessions": n,
                "pass_ms": statistics.median(passes) * 1000,
                "slowest_pass_ms": max(passes) * 1000,
                "register_us": register / n * 1e6,
            }
        )
        await handler.close()
    return rows


async def limits_cost(rounds: int) -> list[Comparison]:
    """8. What containment costs: a CLI's start, a turn, and a turn running one sandboxed command,
    with ``LIMITS=off`` and ``on`` (cgroup, workspace disk, allowlist view), interleaved."""
    tenant = SessionConfig(cwd="bench-tenant", allowed_tools=("Bash",), permission_mode="acceptEdits")
    handlers = {mode: make_handler(min_size=0, max_size=1, limits=mode) for mode in ("off", "on")}
    starts: dict[str, list[float]] = {"off": [], "on": []}
    turns: dict[str, list[float]] = {"off": [], "on": []}
    commands: dict[str, list[float]] = {"off": [], "on": []}
    try:
        sessions = {mode: await h.create_session(config=tenant) for mode, h in handlers.items()}
        for i in range(rounds + 2):
            order = ("off", "on") if i % 2 else ("on", "off")  # neither side always runs second
            for mode in order:
                handler = handlers[mode]
                began = time.perf_counter()
                worker = await handler.pool.acquire(tenant)
                started = time.perf_counter() - began
                await handler.pool.discard(worker)
                turn = (await managed_turn(handler, sessions[mode], f"plain {i}"))[1]
                began = time.perf_counter()
                await managed_turn(handler, sessions[mode], '[[tool:Bash:{"command": "true"}]]')
                command = time.perf_counter() - began
                if i >= 2:  # the first rounds warm both paths
                    starts[mode].append(started)
                    turns[mode].append(turn)
                    commands[mode].append(command)
    finally:
        await asyncio.gather(*(h.close() for h in handlers.values()))
    return [
        Comparison("a CLI's start: LIMITS", "off", summary(starts["off"]), "on", summary(starts["on"]), "+<= 5%"),
        Comparison("a turn: LIMITS", "off", summary(turns["off"]), "on", summary(turns["on"]), "+<= 1 ms"),
        Comparison(
            "a turn running one Bash command: LIMITS", "off", summary(commands["off"]), "on", summary(commands["on"])
        ),
    ]
