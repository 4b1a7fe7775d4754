"""Containment: one tenant's tools take neither the host's resources nor its files.

Attacks with the real CLI, real bubblewrap and the offline model answering ``tool_use``:
the CLI runs each command through our bwrap shim, in its worker's cgroup (v1 here, as on
this machine), with each tenant's workspace a loop-mounted filesystem of its own.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from claude_sessions import ClaudeHandler, ConfigError, SessionConfig, SystemConfig
from claude_sessions.offline_model import OfflineModel
from claude_sessions.workers.containment import worker_key
from claude_sessions.workers.sandbox import temp_root
from conftest import MakeHandler
from helpers import bash, needs_bubblewrap, python

pytestmark = [needs_bubblewrap, pytest.mark.skipif(os.geteuid() != 0, reason="cgroups and loop mounts need root")]

LIMITS = {"LIMITS": "on", "SESSION_MEMORY_MB": 128, "SESSION_PIDS_MAX": 64, "WORKSPACE_MAX_MB": 32}


def tenant_config(name: str) -> SessionConfig:
    """A tenant's session with Bash; ``acceptEdits`` lets commands name paths outside the workspace,
    so the sandbox (not a permission prompt) is what stands in the way."""
    return SessionConfig(cwd=name, allowed_tools=("Bash",), permission_mode="acceptEdits")


def shadow_entry() -> str:
    """The start of the host's first ``/etc/shadow`` entry with its hash field: what must never show."""
    name, hashed = Path("/etc/shadow").read_text().splitlines()[0].split(":")[:2]
    return f"{name}:{hashed}"


async def limited(make_handler: MakeHandler, **runtime: Any) -> ClaudeHandler:
    return await make_handler(runtime={**LIMITS, **runtime}, connection_pool={"MIN_SIZE": 0})


async def alice_and_bob(make_handler: MakeHandler) -> tuple[ClaudeHandler, str, str]:
    """A handler with limits on, and a session with Bash in each of two tenants' workspaces."""
    handler = await limited(make_handler)
    alice = await handler.create_session("alice", tenant_config("alice"))
    return handler, alice, await handler.create_session("bob", tenant_config("bob"))


async def test_a_fork_flood_is_held_at_the_pids_limit_while_another_tenant_works(
    make_handler: MakeHandler, model: OfflineModel
) -> None:
    handler, alice, bob = await alice_and_bob(make_handler)
    flood = bash(handler, alice, model, "for i in $(seq 200); do sleep 3 & done; echo flooded")
    await asyncio.sleep(1.0)
    began = time.perf_counter()
    other = await bash(handler, bob, model, "echo bob-works")
    assert "bob-works" in other and time.perf_counter() - began < 15
    result = await flood
    assert "Resource temporarily unavailable" in result and "SESSION_PIDS_MAX (64" in result, result
    again = await bash(handler, alice, model, "echo alice-again")
    assert "alice-again" in again  # the session goes on


async def test_a_memory_hog_is_killed_at_the_limit_and_the_next_turn_is_fine(
    make_handler: MakeHandler, model: OfflineModel
) -> None:
    handler = await limited(make_handler)
    alice = await handler.create_session("alice", tenant_config("alice"))
    hog = python("b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096]); print('sur' + 'vived')")
    result = await bash(handler, alice, model, hog)
    assert "survived" not in result and "Killed" in result, result
    assert "SESSION_MEMORY_MB (128 MB)" in result
    assert "fine" in await bash(handler, alice, model, "echo fine")


async def test_a_write_past_the_workspace_size_is_refused_and_other_tenants_still_write(
    make_handler: MakeHandler, model: OfflineModel
) -> None:
    handler, alice, bob = await alice_and_bob(make_handler)
    result = await bash(handler, alice, model, "echo kept > small.txt; dd if=/dev/zero of=big bs=1M count=64")
    assert "No space left on device" in result, result
    root = handler.config.runtime.workspace_root
    assert (root / "alice" / "small.txt").read_text() == "kept\n"  # what was written before stays
    assert all(await asyncio.gather(*(asyncio.to_thread(os.path.ismount, root / name) for name in ("alice", "bob"))))
    written = await bash(handler, bob, model, "dd if=/dev/zero of=some bs=1M count=8 && echo bob-wrote")
    assert "bob-wrote" in written and (root / "bob" / "some").stat().st_size == 8 * 2**20
    report = handler.containment.report()
    assert report == {"mode": "v1", "memory_mb": 128, "pids_max": 64, "workspace_max_mb": 32, "workspace": "loop"}


async def test_a_command_sees_an_allowlist_of_the_host(
    make_handler: MakeHandler, model: OfflineModel, tmp_path: Path
) -> None:
    handler = await limited(make_handler)
    alice = await handler.create_session("alice", tenant_config("alice"))
    secret = "host-secret-" + uuid.uuid4().hex
    left = Path("/tmp") / f"left-by-the-operator-{uuid.uuid4().hex}.txt"
    left.write_text(secret)
    # Paths spelled so that no permission rule sees them: only the view stands in the way.
    look = (
        "import os\n"
        "def show(path):\n"
        "    try:\n"
        "        print(path, 'reads', open(path).read()[:200] if os.path.isfile(path) else os.listdir(path))\n"
        "    except OSError as error:\n"
        "        print(path, 'hidden', error.strerror)\n"
        f"for path in {['/etc/shadow', str(left), '/root', '/home', '/srv', '/var', '/opt', '/', '/etc/passwd']}:\n"
        "    show(path)\n"
        "print(6 * 7)"
    )
    try:
        result = await bash(handler, alice, model, python(f"exec({look!r})"))
    finally:
        left.unlink()
    assert secret not in result and shadow_entry() not in result, result
    assert "42" in result and "/etc/passwd reads root:x:0:0" in result  # programs work, and read what they need
    for hidden in ("/etc/shadow", str(left), "/home", "/srv", "/var", "/opt"):
        assert f"{hidden} hidden" in result, result
    assert "/root reads []" in result or "/root hidden" in result  # the CLI's empty home at most


async def test_a_cpu_burner_does_not_starve_another_tenant(make_handler: MakeHandler, model: OfflineModel) -> None:
    handler, alice, bob = await alice_and_bob(make_handler)
    work = python("import time; t = time.perf_counter(); sum(range(20_000_000)); print('took', time.perf_counter()-t)")

    async def took() -> float:
        found = re.search(r"took ([0-9.]+)", await bash(handler, bob, model, work))
        assert found is not None
        return float(found.group(1))

    alone = await took()
    # A loop per session of its own: without a CPU group each would get a share of its own (autogroup).
    burn = "for i in $(seq 8); do setsid sh -c 'while :; do :; done' & done; sleep 8"
    burner = asyncio.ensure_future(bash(handler, alice, model, burn))
    await asyncio.sleep(2.0)
    contended = await took()
    await burner
    assert contended < alone * 3 + 0.5, (alone, contended)  # an equal share of two cores, not a ninth


async def test_a_killed_idle_worker_is_noticed_within_a_second_and_leaves_nothing(
    make_handler: MakeHandler,
) -> None:
    handler = await make_handler(runtime=LIMITS, connection_pool={"MIN_SIZE": 1})
    (spare,) = handler.pool.workers()
    token, key = spare.grant.token, worker_key(spare.grant.token)
    folder = temp_root() / f"{handler.containment.mark}-{key}"
    assert folder.is_dir()
    os.kill(spare.pid, signal.SIGKILL)
    began = time.perf_counter()
    while handler.gateway.grant_of({"x-api-key": token}) is not None and time.perf_counter() - began < 5:
        await asyncio.sleep(0.02)
    assert time.perf_counter() - began < 1.0  # the token answers 401 from now on
    while (folder.exists() or len(handler.pool.workers()) < 1) and time.perf_counter() - began < 30:
        await asyncio.sleep(0.05)
    assert not folder.exists()  # its sockets and shell state went with its temp folder
    (fresh,) = handler.pool.workers()
    assert fresh is not spare and fresh.is_alive()


def test_limits_on_where_they_cannot_hold_stops_start_up_naming_limits(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CLAUDE_SESSIONS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("SANDBOX", "off")
    monkeypatch.setenv("LIMITS", "on")
    with pytest.raises(ConfigError, match=r"^LIMITS=on: .*sandbox is off"):
        ClaudeHandler(SystemConfig.from_env())
    monkeypatch.setenv("LIMITS", "auto")
    handler = ClaudeHandler(SystemConfig.from_env())  # auto: the log says what was turned off
    assert handler.containment.report()["mode"] == "off" and "sandbox" in handler.containment.report()["reason"]
