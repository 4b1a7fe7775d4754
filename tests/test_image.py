"""The server's image as a builder reads it: deploy/Containerfile parsed instruction by instruction,
its build context as the ignore files leave it, the package data its wheel must hold, and its
HEALTHCHECK run against a stand-in. Building and running the image (podman, root, minutes on a
cold machine) is deploy/image/build.sh's job, which CI runs on its own."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from claude_sessions import SystemConfig
from claude_sessions.http.probes import PATHS as PROBE_PATHS

ROOT = Path(__file__).parent.parent
CONTAINERFILE = ROOT / "deploy" / "Containerfile"
DATA = "/var/lib/claude-sessions/data"
WORKSPACES = "/var/lib/claude-sessions/workspaces"


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    stage: int  # -1: before the first FROM (global ARGs)


def parse(text: str) -> list[Instruction]:
    """Instructions as a builder sees them: continuation lines joined, comments dropped."""
    logical: list[str] = []
    current = ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue  # comment and empty lines vanish, even inside a continued instruction
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    assert not current, "the file ends inside a continued instruction"
    instructions, stage = [], -1
    for entry in logical:
        keyword, _, args = entry.strip().partition(" ")
        if keyword.upper() == "FROM":
            stage += 1
        instructions.append(Instruction(keyword.upper(), args.strip(), stage))
    return instructions


def exec_form(args: str) -> list[str]:
    """A JSON-array argument (exec form): anything else is the shell form, which a signal never reaches."""
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(item, str) for item in value), args
    return [str(item) for item in value]


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return parse(CONTAINERFILE.read_text())


def final(instructions: list[Instruction], keyword: str) -> list[Instruction]:
    last = max(i.stage for i in instructions)
    return [i for i in instructions if i.stage == last and i.keyword == keyword]


def stage_env(instructions: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in final(instructions, "ENV"):
        for pair in shlex.split(instruction.args):
            name, _, value = pair.partition("=")
            env[name] = value
    return env


def test_the_parser_sees_what_a_builder_sees() -> None:
    """The checks below can fail: a shell-form entrypoint, a continued line and a comment inside it."""
    parsed = parse(
        "ARG A=1\nFROM x AS one\n# note\nRUN a \\\n    # inside\n    b\nFROM one\nENTRYPOINT claude-sessions serve\n"
    )
    assert [(i.keyword, i.args, i.stage) for i in parsed] == [
        ("ARG", "A=1", -1),
        ("FROM", "x AS one", 0),
        ("RUN", "a      b", 0),
        ("FROM", "one", 1),
        ("ENTRYPOINT", "claude-sessions serve", 1),
    ]
    with pytest.raises(json.JSONDecodeError):
        exec_form(parsed[-1].args)


def test_the_base_image_is_an_argument_and_every_stage_builds_on_it(instructions: list[Instruction]) -> None:
    args = [i.args for i in instructions if i.stage == -1 and i.keyword == "ARG"]
    assert any(re.fullmatch(r"BASE_IMAGE=\S*python:3\.1[1-9]\S*-slim\S*", arg) for arg in args), args
    froms = {i.stage: i.args.split() for i in instructions if i.keyword == "FROM"}
    names = {words[2]: stage for stage, words in froms.items() if len(words) == 3 and words[1].upper() == "AS"}
    for stage, words in froms.items():
        origin = words[0]
        while origin in names:  # a stage built on an earlier one: follow it back
            origin = froms[names[origin]][0]
        assert origin == "${BASE_IMAGE}", f"stage {stage} is not built on BASE_IMAGE: {words}"


def test_python_bubblewrap_socat_and_tini_are_installed_on_either_base(instructions: list[Instruction]) -> None:
    base = " ".join(i.args for i in instructions if i.stage == 0 and i.keyword == "RUN")
    for package in ("bubblewrap", "socat", "tini"):
        assert re.search(rf"\b{package}\b", base), package
    assert "command -v python3" in base and "python3" in base  # Debian's python3 where the base has none


def test_the_server_runs_as_a_fixed_non_root_uid(instructions: list[Instruction]) -> None:
    users = final(instructions, "USER")
    assert users, "no USER: the server would run as root"
    uid, _, gid = users[-1].args.partition(":")
    assert uid.isdigit() and int(uid) != 0, "a numeric uid (Kubernetes' runAsNonRoot checks it), not root"
    assert gid.isdigit() and int(gid) != 0
    setup = " ".join(i.args for i in final(instructions, "RUN"))
    assert f"--uid {uid}" in setup and f"--gid {gid}" in setup  # the user exists, with a home
    for folder in (DATA, WORKSPACES):
        assert folder in setup and f"-o {uid} -g {gid}" in setup  # volumes start out the user's


def test_sigterm_reaches_the_server_through_tini(instructions: list[Instruction]) -> None:
    (entrypoint,) = final(instructions, "ENTRYPOINT")
    (cmd,) = final(instructions, "CMD")
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    # tini as PID 1 passes the signal on and reaps the CLIs' orphans (a server as PID 1 leaves zombies).
    assert exec_form(entrypoint.args) == ["/usr/bin/tini", "--", "claude-sessions"]
    assert "claude-sessions" in scripts
    assert exec_form(cmd.args) == ["serve"]
    assert [i.args for i in final(instructions, "STOPSIGNAL")] in ([], ["SIGTERM"])


def test_state_and_workspaces_are_volumes_where_the_server_looks(
    instructions: list[Instruction], monkeypatch: pytest.MonkeyPatch
) -> None:
    (volume,) = final(instructions, "VOLUME")
    assert sorted(exec_form(volume.args)) == [DATA, WORKSPACES]
    env = stage_env(instructions)
    (expose,) = final(instructions, "EXPOSE")
    for name, value in env.items():
        if name != "PATH":
            monkeypatch.setenv(name, value)
    config = SystemConfig.from_env()  # the image's ENV read by the server's own configuration
    assert (config.runtime.DATA_DIR, config.runtime.workspace_root) == (Path(DATA), Path(WORKSPACES))
    assert config.server.HOST == "0.0.0.0"
    assert str(config.server.PORT) == expose.args == env["CLAUDE_SESSIONS_PORT"]
    assert env["PATH"].startswith("/opt/claude-sessions/bin:") and "" not in env["PATH"].split(":")
    assert "$" not in env["PATH"]  # no base's PATH to expand: an imported rootfs has none


class _Probe(http.server.BaseHTTPRequestHandler):
    status = 200
    paths: list[str] = []  # noqa: RUF012 (the test's record of requests)

    def do_GET(self) -> None:
        type(self).paths.append(self.path)
        self.send_response(self.status)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"status": "ok"}')

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass


@pytest.fixture
def stand_in() -> Iterator[tuple[int, type[_Probe]]]:
    """An HTTP server on a loopback port answering every GET with ``_Probe.status``."""
    handler = type("Probe", (_Probe,), {"paths": [], "status": 200})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], handler
    finally:
        server.shutdown()
        server.server_close()


def test_the_healthcheck_asks_livez_and_fails_on_anything_but_success(
    instructions: list[Instruction], stand_in: tuple[int, type[_Probe]]
) -> None:
    (healthcheck,) = final(instructions, "HEALTHCHECK")
    options, _, command = healthcheck.args.partition("CMD ")
    assert "--interval=" in options and "--timeout=" in options
    argv = exec_form(command)
    assert argv[0] == "/opt/claude-sessions/bin/python"  # the image has no curl
    assert "/livez" in PROBE_PATHS  # the server answers it, with no key
    port, probe = stand_in

    def health(port: int) -> int:
        env = {**os.environ, "CLAUDE_SESSIONS_PORT": str(port)}
        return subprocess.run([sys.executable, *argv[1:]], env=env, capture_output=True, timeout=30).returncode

    assert health(port) == 0 and probe.paths == ["/livez"]
    probe.status = 503
    assert health(port) != 0
    with socket_closed() as closed:
        assert health(closed) != 0


@contextlib.contextmanager
def socket_closed() -> Iterator[int]:
    """A loopback port nothing listens on: bound, never listening, for the block's duration."""
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        yield bound.getsockname()[1]


def glob(pattern: str) -> str:
    """A glob as a regular expression: ``*`` and ``?`` within one folder, ``**`` across folders."""
    return "".join(
        ".*" if part == "**" else "[^/]*" if part == "*" else "[^/]" if part == "?" else re.escape(part)
        for part in re.split(r"(\*\*|\*|\?)", pattern)
    )


def ignore_rules(path: Path) -> list[tuple[bool, re.Pattern[str]]]:
    """A .dockerignore's rules as (re-included?, pattern), in order; the last match decides."""
    rules = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keep, line = line.startswith("!"), line.removeprefix("!").strip("/")
        rules.append((keep, re.compile(glob(line).replace(".*/", "(.*/)?"))))  # **/x: x at any depth
    return rules


def sent(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether the builder gets ``path``: a rule matching the path or a folder above it applies."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    included = True
    for keep, pattern in rules:
        if any(pattern.fullmatch(prefix) for prefix in prefixes):
            included = keep
    return included


#: What the image is never built from: virtualenvs, git, caches, state, results, bytecode, build output.
NOT_SENT = (
    ".venv/bin/python",
    ".git/HEAD",
    ".mypy_cache/x",
    ".ruff_cache/x",
    ".data/sessions.db",
    "bench/results/x.json",
    "tests/test_api.py",
    "src/claude_sessions/__pycache__/cli.cpython-311.pyc",
    "src/claude_sessions.egg-info/PKG-INFO",
)


def built_from(folder: Path) -> list[Path]:
    """The files of a folder the image needs: its bytecode and build output left out."""
    return [
        path
        for path in folder.rglob("*")
        if path.is_file() and not any(part == "__pycache__" or part.endswith(".egg-info") for part in path.parts)
    ]


def test_the_build_context_is_only_what_the_image_is_built_from(instructions: list[Instruction]) -> None:
    containerignore, dockerignore = ROOT / ".containerignore", ROOT / ".dockerignore"
    rules = ignore_rules(containerignore)
    assert [(k, p.pattern) for k, p in rules] == [(k, p.pattern) for k, p in ignore_rules(dockerignore)]
    for path in NOT_SENT:
        assert not sent(path, rules), path
    copies = [i.args.split() for i in instructions if i.keyword == "COPY" and "--from" not in i.args]
    sources = [word for words in copies for word in words[:-1] if not word.startswith("--")]  # the last: the target
    assert sources, "no COPY from the context"
    for source in sources:
        assert (ROOT / source).exists(), source
        files = [source] if (ROOT / source).is_file() else [str(p.relative_to(ROOT)) for p in built_from(ROOT / source)]
        assert files and all(sent(file, rules) for file in files), source
    assert not sent("src/x.pyc", [(False, re.compile(".*"))])  # the matcher can refuse


def test_every_data_file_of_the_package_is_in_the_wheel() -> None:
    """The wheel holds a package's non-Python files only where pyproject.toml's package-data names
    them (the image installs the wheel, not the source tree: a missing bwrap.sh stops a sandboxed
    server at start)."""
    package_data: dict[str, list[str]] = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]
    src = ROOT / "src"
    missing = []
    for file in sorted((src / "claude_sessions").rglob("*")):
        if not file.is_file() or file.suffix in (".py", ".pyc") or "__pycache__" in file.parts:
            continue
        folder, covered = file.parent, False
        while folder != src and not covered:  # the packages holding it, innermost first
            if (folder / "__init__.py").exists():
                package = ".".join(folder.relative_to(src).parts)
                relative = file.relative_to(folder).as_posix()
                patterns = package_data.get(package, []) + package_data.get("*", []) + package_data.get("", [])
                covered = any(re.fullmatch(glob(pattern), relative) for pattern in patterns)
            folder = folder.parent
        if not covered:
            missing.append(str(file.relative_to(src)))
    assert missing == [], f"not in [tool.setuptools.package-data]: {missing}"
