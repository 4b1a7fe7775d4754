"""The console script, run as a user runs it."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import textwrap
import time
from pathlib import Path

import httpx
import psutil
import psycopg
import pytest

from cluster import fresh_database
from helpers import is_cli, wait_no_cli
from server_process import SCRIPT, free_port

pytestmark = pytest.mark.slow  # each test runs the console script, some start CLIs or a database


def offline_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "CLAUDE_", "SM_", "CP_", "OPT_"))}
    env["CLAUDE_SESSIONS_DATA_DIR"] = str(tmp_path)
    return env


def test_demo_runs_offline_and_shows_every_feature(tmp_path: Path) -> None:
    done = subprocess.run(
        [SCRIPT, "demo"], env=offline_env(tmp_path), capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "You said: Hello, I am alice." in out
    assert "reused=True" in out
    assert "refused: session limit reached (6)" in out
    assert "removed 5 inactive sessions" in out
    assert "alive after close: 0" in out
    assert wait_no_cli() == []


def test_invalid_config_is_one_line_naming_the_variable(tmp_path: Path) -> None:
    env = {**offline_env(tmp_path), "CP_MIN_SIZE": "9", "CP_MAX_SIZE": "3"}
    done = subprocess.run([SCRIPT, "demo"], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "claude-sessions: invalid configuration: CP_MIN_SIZE (9) must not exceed CP_MAX_SIZE (3)"
    ]
    assert "Traceback" not in done.stdout + done.stderr


def test_limits_on_that_cannot_hold_stop_serve_with_one_line_naming_limits(tmp_path: Path) -> None:
    env = {**offline_env(tmp_path), "LIMITS": "on", "SANDBOX": "off"}
    done = subprocess.run([SCRIPT, "serve"], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2 and "offline_model_started" not in done.stdout + done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("claude-sessions: LIMITS=on: the limits cannot be enforced here: the sandbox is off")


def test_serve_checks_the_configuration_before_it_starts_anything(tmp_path: Path) -> None:
    env = {**offline_env(tmp_path), "CP_MIN_SIZE": "9", "CP_MAX_SIZE": "3"}
    done = subprocess.run([SCRIPT, "serve"], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2 and "offline_model_started" not in done.stdout + done.stderr
    assert done.stderr.strip().splitlines() == [
        "claude-sessions: invalid configuration: CP_MIN_SIZE (9) must not exceed CP_MAX_SIZE (3)"
    ]


def test_serve_says_where_it_listens_in_one_line(tmp_path: Path) -> None:
    port = free_port()
    env = {**offline_env(tmp_path), "CP_MIN_SIZE": "0"}
    server = subprocess.Popen(
        [SCRIPT, "serve", "--port", str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        assert server.stdout is not None
        lines = iter(server.stdout.readline, "")
        banner = next(line for line in lines if line.startswith("claude-sessions listening"))
        url = f"http://127.0.0.1:{port}"
        assert banner.strip() == (
            f"claude-sessions listening on {url} (console at {url}/console); "
            "model: the offline model (no Anthropic credentials); loopback only, no keys"
        )
        assert httpx.get(f"{url}/console", timeout=10).status_code == 200  # listening already
    finally:
        server.terminate()
        assert server.wait(60) in (0, -15)


def clis_naming(folder: Path) -> list[int]:
    """Live CLI processes, whoever started them, whose command line names ``folder``."""
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if is_cli(process) and str(folder) in " ".join(process.cmdline()):
                found.append(process.pid)
    return found


def test_the_readmes_library_example_runs_as_written_with_nothing_configured(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    example = re.search(r"```python\n(from claude_sessions import .*?)```", readme, re.DOTALL)
    assert example is not None
    script = "import asyncio\nasync def main():\n" + textwrap.indent(example.group(1), "    ") + "asyncio.run(main())\n"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "CLAUDE_", "SM_", "CP_", "OPT_"))}
    python = str(Path(SCRIPT).with_name("python"))
    done = subprocess.run(
        [python, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "AssistantMessage" in done.stdout and "ResultMessage" in done.stdout and "offline model" in done.stdout
    assert "offline_model_answers" in done.stdout + done.stderr  # it says so
    assert clis_naming(tmp_path) == []  # its CLIs ended with it (each names its workspace on its command line)


def test_offline_model_command_serves_the_messages_api(tmp_path: Path) -> None:
    port = free_port()
    server = subprocess.Popen(
        [SCRIPT, "offline-model", "--port", str(port), "--first-token-delay", "0.2"],
        env=offline_env(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}/v1/messages"
        body = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
        deadline = time.monotonic() + 20
        while True:
            try:
                began = time.perf_counter()
                reply = httpx.post(url, json=body, timeout=5).json()
                break
            except httpx.ConnectError:
                assert time.monotonic() < deadline, "offline model did not start"
                time.sleep(0.1)
        assert time.perf_counter() - began >= 0.2
        assert reply["content"][0]["text"].startswith("(offline model) You said: hi")
    finally:
        server.terminate()
        server.wait(10)


def test_migrate_brings_either_registry_up_to_date_and_names_a_database_it_cannot_reach(tmp_path: Path) -> None:
    def migrate(**env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [SCRIPT, "migrate"], env={**offline_env(tmp_path), **env}, capture_output=True, text=True, timeout=60
        )

    done = migrate()
    assert done.returncode == 0 and "the SQLite registry is up to date" in done.stdout, done.stderr
    assert (tmp_path / "sessions.db").exists()
    with fresh_database() as url:
        for _ in range(2):  # a second run finds nothing to do
            done = migrate(CLAUDE_SESSIONS_DATABASE_URL=url)
            assert done.returncode == 0 and "the PostgreSQL registry is up to date" in done.stdout, done.stderr
        with psycopg.connect(url) as conn:
            tables = {name for (name,) in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        assert {"sessions", "nodes", "transcript_entries", "transcript_sessions"} <= tables
    done = migrate(
        CLAUDE_SESSIONS_DATABASE_URL=f"postgresql://postgres@127.0.0.1:{free_port()}/none", OPT_CREATE_TIMEOUT="2"
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith("claude-sessions: the database is unreachable") and done.stderr.count("\n") == 1
    done = migrate(CLAUDE_SESSIONS_DATABASE_URL="mysql://somewhere/db")
    assert done.returncode == 2 and "CLAUDE_SESSIONS_DATABASE_URL" in done.stderr and "Traceback" not in done.stderr
