"""Tool approval: what asking adds to a call, minus the human who answers.

Each round the offline model calls ``Write`` once in each of four turns, interleaved (which side
goes first flips every round): through the library and through the HTTP API, on a session that
asks for Write (``ask_tools``; answered "allow" the moment the request arrives) and on one that
allows it (``allowed_tools``). Both sides are compared from the message sent to the tool's start,
and for the whole turn. The steps of an asked call are timed on the wall clock (``time.time_ns()``),
one clock for this process, the server's and the file system:

- asked: the SDK calls the worker's gate (``PermissionGate.can_use_tool``, wrapped by the probes
  below), up to the ``PermissionRequest`` out of ``send_message`` or the ``permission_request``
  SSE event reaching the client;
- answered: just before ``decide_permission`` or the POST of the answer, up to the SDK's
  ``control_response`` (allow) written to the CLI's stdin (``SubprocessCLITransport.write``,
  wrapped too), and up to the tool's start: the CLI writes through a temporary file, whose
  creation this process learns by inotify (a bound from above), and whose mtime the rename keeps
  (a bound from below: the kernel stamps a new file from a coarse clock, 4 ms ticks here).

The server runs in a process of its own, started with the same probes (:func:`serve_with_probes`),
which note their times in a file.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import struct
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from claude_agent_sdk import PermissionResult, ToolPermissionContext
from claude_agent_sdk._internal.transport.subprocess_cli import SubprocessCLITransport

from claude_sessions import ClaudeHandler, PermissionRequest, SessionConfig
from claude_sessions.workers.permission_gate import PermissionGate
from claude_sessions.workers.workspaces import session_cwd
from common import Comparison, make_handler, probe_log, serve_probed, served_by, summary

WARM_UP = 3
TENANT, KEY = "bench", "bench-key"
#: Where the server's probes note their times: one ``<time_ns> <asked|sent> <file>`` a line.
LOG_VARIABLE = "BENCH_APPROVAL_LOG"
#: The server: ``claude-sessions`` with the probes installed first.
LAUNCHER = [
    sys.executable,
    "-c",
    f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
    "import approval_scenarios; approval_scenarios.serve_with_probes()",
]

#: Marks: (``asked`` | ``sent``, the Write's file) -> wall-clock ns.
Marks = dict[tuple[str, str], int]


def install_probes(note: Callable[[str, str], None]) -> Callable[[], None]:
    """Note ``asked`` when the SDK calls a gate, ``sent`` once an allow is on the CLI's stdin; returns the undo.

    Installed before any worker starts: a worker takes its gate's method when its CLI starts.
    """
    gate_method, write_method = PermissionGate.can_use_tool, SubprocessCLITransport.write

    async def can_use_tool(
        self: PermissionGate, tool: str, tool_input: dict[str, Any], context: ToolPermissionContext
    ) -> PermissionResult:
        note("asked", str(tool_input.get("file_path")))
        return await gate_method(self, tool, tool_input, context)

    async def write(self: SubprocessCLITransport, data: str) -> None:
        await write_method(self, data)
        if '"control_response"' in data and '"allow"' in data:
            answer = json.loads(data)["response"].get("response") or {}
            note("sent", str((answer.get("updatedInput") or {}).get("file_path")))

    PermissionGate.can_use_tool = can_use_tool  # type: ignore[method-assign]
    SubprocessCLITransport.write = write  # type: ignore[method-assign]

    def undo() -> None:
        PermissionGate.can_use_tool = gate_method  # type: ignore[method-assign]
        SubprocessCLITransport.write = write_method  # type: ignore[method-assign]

    return undo


@contextmanager
def probes() -> Iterator[Marks]:
    """The probes in this process, noting into the dict yielded."""
    marks: Marks = {}

    def note(kind: str, path: str) -> None:
        marks[kind, path] = time.time_ns()

    undo = install_probes(note)
    try:
        yield marks
    finally:
        undo()


def serve_with_probes() -> None:
    """The server's process (``LAUNCHER``): the probes, noting into ``$BENCH_APPROVAL_LOG``; then the CLI's app."""
    write = probe_log(LOG_VARIABLE)
    install_probes(lambda kind, path: write(f"{time.time_ns()} {kind} {path}"))
    serve_probed()


def read_marks(log: Path) -> Marks:
    marks: Marks = {}
    for line in log.read_text().splitlines():
        at, kind, path = line.split(" ", 2)
        marks[kind, path] = int(at)
    return marks


#: inotify(7): a file made in the folder, or moved into it.
IN_CREATE, IN_MOVED_TO = 0x100, 0x080
_EVENT = struct.Struct("iIII")


@contextmanager
def watched(*folders: Path) -> Iterator[dict[str, int]]:
    """Names of files made in ``folders`` -> ``time.time_ns()`` when this process's loop learnt of them."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    assert fd >= 0, os.strerror(ctypes.get_errno())
    made: dict[str, int] = {}

    def arrived() -> None:
        now = time.time_ns()
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        offset = 0
        while offset < len(data):
            length = _EVENT.unpack_from(data, offset)[3]
            name = data[offset + _EVENT.size : offset + _EVENT.size + length].rstrip(b"\0").decode()
            made.setdefault(name, now)
            offset += _EVENT.size + length

    loop = asyncio.get_running_loop()
    try:
        for folder in folders:
            assert libc.inotify_add_watch(fd, str(folder).encode(), IN_CREATE | IN_MOVED_TO) >= 0, folder
        loop.add_reader(fd, arrived)
        yield made
    finally:
        loop.remove_reader(fd)
        os.close(fd)


def write_call(path: Path) -> str:
    """A message the offline model answers with one Write of ``path``."""
    return f"[[tool:Write:{json.dumps({'file_path': str(path), 'content': 'x'})}]]"


def written(path: Path) -> Path:
    assert path.read_text() == "x", f"{path} was not written"
    return path


def first_made(made: dict[str, int], path: Path) -> int:
    """When the first file of ``path``'s Write appeared (its temporary file, or itself)."""
    return min(at for name, at in made.items() if name == path.name or name.startswith(path.name + ".tmp"))


def _client(url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)


@dataclass
class Turn:
    """One turn calling Write: its file, when it was sent, its request received and answered (ns), its seconds."""

    path: Path
    sent: int
    received: int = 0
    answered: int = 0
    seconds: float = 0.0


class Samples:
    """One side's figures (library or HTTP API), in seconds."""

    STEPS = ("to_event", "to_stdin", "to_created", "to_mtime", "asked_start", "allowed_start", "asked", "allowed")

    def __init__(self) -> None:
        self.seen: dict[str, list[float]] = {step: [] for step in self.STEPS}

    def keep(self, marks: Marks, made: dict[str, int], asked: Turn, allowed: Turn) -> None:
        """One round: the probes' marks, inotify's, and its two turns."""
        path = str(asked.path)
        for step, ns in (
            ("to_event", asked.received - marks["asked", path]),
            ("to_stdin", marks["sent", path] - asked.answered),
            ("to_created", first_made(made, asked.path) - asked.answered),
            ("to_mtime", written(asked.path).stat().st_mtime_ns - asked.answered),
            ("asked_start", first_made(made, asked.path) - asked.sent),
            ("allowed_start", first_made(made, allowed.path) - allowed.sent),
        ):
            self.seen[step].append(ns / 1e9)
        self.seen["asked"].append(asked.seconds)
        self.seen["allowed"].append(allowed.seconds)

    def figures(self) -> dict[str, Any]:
        return {
            **{step: summary(seen) for step, seen in self.seen.items()},
            "mtime_before_answer": sum(1 for s in self.seen["to_mtime"] if s < 0),
        }


async def _library_turn(handler: ClaudeHandler, session_id: str, path: Path) -> Turn:
    """One turn calling Write through the library, its request (if any) allowed at once."""
    turn = Turn(path, time.time_ns())
    began = time.perf_counter()
    async for reply in handler.send_message(session_id, write_call(path)):
        if isinstance(reply, PermissionRequest):
            turn.received = turn.answered = time.time_ns()
            await handler.decide_permission(session_id, reply.request_id, "allow")
    turn.seconds = time.perf_counter() - began
    written(path)
    return turn


async def _http_turn(stream: httpx.AsyncClient, buttons: httpx.AsyncClient, session: str, path: Path) -> Turn:
    """One streamed turn calling Write, its request (if any) allowed at once from another connection."""
    turn = Turn(path, time.time_ns())
    event = ""
    began = time.perf_counter()
    async with stream.stream("POST", f"/v1/sessions/{session}/messages", json={"content": write_call(path)}) as r:
        assert r.status_code == 200, r.status_code
        async for line in r.aiter_lines():
            if line.startswith("event:"):
                event = line.partition(":")[2].strip()
            elif line.startswith("data:") and event == "permission_request":
                turn.received = time.time_ns()
                request_id = json.loads(line.partition(":")[2])["request_id"]
                turn.answered = time.time_ns()
                decided = await buttons.post(
                    f"/v1/sessions/{session}/permissions/{request_id}", json={"behavior": "allow"}
                )
                assert decided.status_code == 200, decided.text
    turn.seconds = time.perf_counter() - began
    written(path)
    return turn


async def tool_approval(rounds: int) -> tuple[list[Comparison], dict[str, Any]]:
    """9. A Write asked and approved at once against the same Write allowed: library and HTTP API."""
    library, http = Samples(), Samples()
    data_dir = Path(os.environ["CLAUDE_SESSIONS_DATA_DIR"])
    log = data_dir / "approval-probes.log"
    handler = make_handler(min_size=0, max_size=2)
    asking = SessionConfig(cwd="approval-asked", ask_tools=("Write",))
    allowing = SessionConfig(cwd="approval-allowed", allowed_tools=("Write",))
    env = {"API_KEYS": f"{TENANT}:{KEY}", "TOOLS_ASK": "Write", "TOOLS_ALLOWED": "Write", LOG_VARIABLE: str(log)}
    try:
        with probes() as marks:
            sessions = {"asked": await handler.create_session(config=asking)}
            sessions["allowed"] = await handler.create_session(config=allowing)
            folders = {"asked": session_cwd(asking, handler.config), "allowed": session_cwd(allowing, handler.config)}
            async with (
                served_by(LAUNCHER, "approval-server", **env) as server,
                _client(server.url) as stream,
                _client(server.url) as buttons,  # answers come on another connection, as a button's would
            ):
                for name, body in (("asked", {"ask_tools": ["Write"]}), ("allowed", {"allowed_tools": ["Write"]})):
                    created = await stream.post("/v1/sessions", json={"session_id": name, **body})
                    assert created.status_code == 201, created.text
                workspace = (data_dir / "approval-server" / "workspaces" / TENANT).resolve()
                for folder in (*folders.values(), workspace):
                    folder.mkdir(parents=True, exist_ok=True)
                with watched(*folders.values(), workspace) as made:
                    for i in range(rounds + WARM_UP):
                        lib: dict[str, Turn] = {}
                        api: dict[str, Turn] = {}
                        for side in ("asked", "allowed") if i % 2 else ("allowed", "asked"):
                            lib[side] = await _library_turn(
                                handler, sessions[side], folders[side] / f"lib-{side}-{i}.txt"
                            )
                            api[side] = await _http_turn(stream, buttons, side, workspace / f"http-{side}-{i}.txt")
                        assert lib["asked"].received and api["asked"].received, "an asked call was not asked"
                        assert not lib["allowed"].received and not api["allowed"].received, "an allowed one was"
                        if i >= WARM_UP:  # the first rounds warm every path
                            library.keep(marks, made, lib["asked"], lib["allowed"])
                            http.keep(read_marks(log), made, api["asked"], api["allowed"])
    finally:
        await handler.close()
    comparisons = [
        Comparison(
            f"{what}: Write asked and approved at once vs allowed, {where}",
            "allowed (allowed_tools)",
            side.figures()[f"allowed{step}"],
            "asked (ask_tools), approved at once",
            side.figures()[f"asked{step}"],
            target,
        )
        for what, step, target in (("message sent -> the tool starts", "_start", ""), ("a whole turn", "", ""))
        for where, side in (("library", library), ("HTTP API", http))
    ]
    return comparisons, {"rounds": rounds, "library": library.figures(), "http": http.figures()}


def markdown(results: dict[str, Any]) -> list[str]:
    """The tool-approval table: the steps an asked call adds, library and HTTP API."""
    lib, http = results["library"], results["http"]
    early = lib["mtime_before_answer"] + http["mtime_before_answer"]

    def row(what: str, step: str, target: str = "") -> str:
        cells = " | ".join(f"{side[step]['median_ms']:.1f} / {side[step]['p95_ms']:.1f}" for side in (lib, http))
        return f"| {what} | {cells} | {target} |"

    return [
        f"| tool approval, minus the human: one Write ({results['rounds']} rounds, median / p95 ms) "
        "| library | HTTP API | target |",
        "|---|---|---|---|",
        row("the CLI asks -> the caller has the request", "to_event", "<= 5 ms at p50"),
        row("the answer -> the allow is on the CLI's stdin", "to_stdin"),
        row("the answer -> the tool starts (its first file seen by inotify)", "to_created", "<= 5 ms at p50"),
        row(f"the answer -> the tool starts (the file's mtime; {early} before the answer)", "to_mtime"),
    ]
