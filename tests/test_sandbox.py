"""Bash and file edits in the CLI's OS sandbox: each attack of a tenant with tools refused,
its own work done.

Real CLI, real bubblewrap: the offline model answers ``[[tool:Name:{input}]]`` with a
``tool_use`` block, the CLI runs it (or refuses it) and sends the ``tool_result`` back,
which the model's request log shows exactly.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import psutil
import pytest

import claude_sessions
from claude_sessions import ClaudeHandler, ConfigError, SessionConfig, SystemConfig
from claude_sessions.offline_model import OfflineModel, OfflineModelServer
from claude_sessions.workers.sandbox import check_host, sandbox_on
from conftest import MakeHandler
from helpers import bash, needs_bubblewrap, python, run_tool, tool, turn

SECRET = "s3cr3t-" + uuid.uuid4().hex
PACKAGE = Path(claude_sessions.__file__).resolve().parent
HOME = Path.home()
TENANT = SessionConfig(cwd="alice", allowed_tools=("Bash", "Write"))


async def tenant(make_handler: MakeHandler, config: SessionConfig = TENANT) -> tuple[ClaudeHandler, str]:
    """A handler with alice's session (Bash, Write) started, and bob's workspace holding a secret."""
    handler = await make_handler(connection_pool={"MIN_SIZE": 0})
    bob = handler.config.runtime.workspace_root / "bob"
    bob.mkdir(parents=True, exist_ok=True)
    (bob / "secret.txt").write_text(SECRET)
    return handler, await handler.create_session("alice-session", config)


@needs_bubblewrap
async def test_bash_echo_ls_and_python_work_in_the_own_workspace(
    make_handler: MakeHandler, model: OfflineModel
) -> None:
    handler, session = await tenant(make_handler)
    own = handler.config.runtime.workspace_root / "alice"
    (own / "notes.txt").write_text("alice's notes")
    result = await bash(handler, session, model, "echo hello-sandbox && ls && " + python("print(6 * 7)"))
    assert not result.startswith("ERROR") and "hello-sandbox" in result and "notes.txt" in result and "42" in result
    result = await bash(handler, session, model, "echo made-here > made.txt && cat made.txt")
    assert "made-here" in result and (own / "made.txt").read_text() == "made-here\n"


@needs_bubblewrap
async def test_write_in_the_own_workspace_works(make_handler: MakeHandler, model: OfflineModel) -> None:
    handler, session = await tenant(make_handler)
    target = handler.config.runtime.workspace_root / "alice" / "written.txt"
    result = await run_tool(handler, session, model, "Write", file_path=str(target), content="mine")
    assert not result.startswith("ERROR") and target.read_text() == "mine"


@needs_bubblewrap
@pytest.mark.parametrize("when", ["existing", "created after the CLI started"])
async def test_write_in_another_tenants_workspace_is_refused(
    make_handler: MakeHandler, model: OfflineModel, when: str
) -> None:
    handler, session = await tenant(make_handler)
    other = handler.config.runtime.workspace_root / ("bob" if when == "existing" else "carol")
    other.mkdir(exist_ok=True)
    result = await run_tool(handler, session, model, "Write", file_path=str(other / "planted.txt"), content="x")
    assert result.startswith("ERROR") and not (other / "planted.txt").exists()


@needs_bubblewrap
@pytest.mark.parametrize("link", ["../bob", ".."])
async def test_a_folder_swapped_for_a_symlink_never_moves_a_session_out_of_its_workspace(
    make_handler: MakeHandler, model: OfflineModel, link: str
) -> None:
    # A session in alice/sub, then alice's Bash turns sub into a link to bob's workspace (or the
    # root above every workspace). The sub session's next CLI must not start there.
    handler, session = await tenant(make_handler)
    moved = await handler.create_session("alice-sub", SessionConfig(cwd="alice/sub", allowed_tools=("Bash",)))
    swap = f"rmdir sub && ln -s {link} sub && cat sub/secret.txt sub/bob/secret.txt"
    result = await bash(handler, session, model, swap)
    sub = handler.config.runtime.workspace_root / "alice" / "sub"
    assert sub.is_symlink(), result  # the tenant's own workspace is its own to rearrange
    assert SECRET not in result  # and the link shows nothing the sandbox hides
    probe = tool("Bash", command="cat secret.txt bob/secret.txt; echo x > planted.txt", description="probe")
    manager = handler.session_manager
    model.requests.clear()
    for live in (True, False):  # on its live CLI, then on a new one (after an idle release)
        with pytest.raises(ValueError, match="leads into another workspace"):
            await turn(handler, moved, probe)
        if live:
            worker = await manager.let_go(manager.get(moved))
            assert worker is not None
            await handler.pool.discard(worker)
    assert model.message_requests() == []  # no turn ran there
    assert not (handler.config.runtime.workspace_root / "bob" / "planted.txt").exists()
    assert manager.get(moved).worker is None
    assert await manager.detect_orphaned_sessions() == []  # maintenance still runs past it
    await handler.destroy_session(moved, purge=True)


@needs_bubblewrap
async def test_bash_writing_outside_the_workspace_fails(
    make_handler: MakeHandler, model: OfflineModel, tmp_path: Path
) -> None:
    handler, session = await tenant(make_handler)
    outside, bob = tmp_path / "outside.txt", handler.config.runtime.workspace_root / "bob"
    for command in (
        f"echo x > {outside}",
        f"echo x > {bob}/planted.txt",
        f"echo x > {Path.home()}/planted-by-a-tenant",
    ):
        await bash(handler, session, model, command)
    assert not outside.exists() and not (bob / "planted.txt").exists()
    assert not (HOME / "planted-by-a-tenant").exists()


@needs_bubblewrap
@pytest.mark.parametrize(
    "target",
    ["another tenant's workspace", "a workspace created after the CLI started", "CLAUDE_CONFIG_DIR", "the data dir"],
)
async def test_bash_reading_what_is_not_the_tenants_fails(
    make_handler: MakeHandler, model: OfflineModel, target: str
) -> None:
    handler, session = await tenant(make_handler)
    runtime = handler.config.runtime
    folder = {
        "another tenant's workspace": runtime.workspace_root / "bob",
        "a workspace created after the CLI started": runtime.workspace_root / "dave",
        "CLAUDE_CONFIG_DIR": runtime.config_dir,
        "the data dir": runtime.DATA_DIR.resolve(),
    }[target]
    folder.mkdir(exist_ok=True)
    (folder / "secret.txt").write_text(SECRET)
    # A path spelled so that no permission rule sees it: only the sandbox stands in the way.
    hidden = f"import os; p = os.path.join(*{list(folder.parts)}); print(os.listdir(p), open(p + '/secret.txt').read())"
    for command in (f"cat {folder}/secret.txt", python(hidden)):
        result = await bash(handler, session, model, command)
        assert SECRET not in result and "['secret.txt']" not in result, result


@needs_bubblewrap
async def test_bash_reading_the_server_code_environment_and_home_fails(
    make_handler: MakeHandler, model: OfflineModel
) -> None:
    handler, session = await tenant(make_handler)
    # Paths spelled so that no permission rule sees them: only the sandbox stands in the way.
    module = (PACKAGE / "sandbox.py").parts
    result = await bash(handler, session, model, python(f"import os; print(open(os.path.join(*{module})).read())"))
    assert "bubblewrap" not in result and "No such file" in result, result
    result = await bash(handler, session, model, f"cat /proc/{os.getpid()}/environ")
    assert "PATH=" not in result and "ANTHROPIC" not in result and "No such file" in result, result
    result = await bash(
        handler, session, model, python(f"import os; print('home:', os.listdir(os.path.join(*{HOME.parts})))")
    )
    assert "home: []" in result, result


@needs_bubblewrap
@pytest.mark.parametrize(
    "service", ["PostgreSQL on 127.0.0.1:5432", "PostgreSQL's Unix socket", "the model", "the model through the proxy"]
)
async def test_bash_reaches_no_network_address(
    make_handler: MakeHandler, model: OfflineModel, offline_server: OfflineModelServer, service: str
) -> None:
    handler, session = await tenant(make_handler)
    port = 5432 if service.startswith("PostgreSQL") else offline_server.port
    if service.endswith("proxy"):  # the sandbox's own proxy, used on purpose
        code = (
            "import os, urllib.request as u; o = u.build_opener(u.ProxyHandler({'http': os.environ['HTTP_PROXY']}));"
            f" print('STATUS', o.open('http://127.0.0.1:{port}/v1/models', timeout=5).status)"
        )
    elif service.endswith("Unix socket"):  # refused at socket(), wherever the socket file lies
        code = (
            "import socket; socket.socket(socket.AF_UNIX).connect('/run/postgresql/.s.PGSQL.5432'); print('CONNECTED')"
        )
    else:
        code = f"import socket; socket.create_connection(('127.0.0.1', {port}), 2); print('CONNECTED')"
    result = await bash(handler, session, model, python(code))
    assert result.startswith("ERROR") and "CONNECTED" not in result and "STATUS" not in result, result
    assert all(request.path.startswith("/v1/messages") for request in model.requests)  # nothing else came


@needs_bubblewrap
async def test_bash_is_not_granted_to_a_session_that_does_not_list_it(
    make_handler: MakeHandler, model: OfflineModel
) -> None:
    handler, session = await tenant(make_handler, SessionConfig(cwd="alice"))
    result = await bash(handler, session, model, "echo x > planted.txt")
    assert result.startswith("ERROR") and not (handler.config.runtime.workspace_root / "alice/planted.txt").exists()


@needs_bubblewrap
async def test_bash_works_when_the_workspaces_lie_inside_the_data_dir(
    make_handler: MakeHandler, model: OfflineModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WORKSPACE_ROOT")  # the default layout: <data dir>/workspaces
    handler, session = await tenant(make_handler)
    data = handler.config.runtime.DATA_DIR.resolve()
    assert handler.config.runtime.workspace_root == data / "workspaces"
    (data / "registry-secret.txt").write_text(SECRET)
    result = await bash(handler, session, model, "echo ok > mine.txt && cat mine.txt && ls")
    assert not result.startswith("ERROR") and "ok" in result, result
    result = await bash(handler, session, model, python("print(open('../../registry-secret.txt').read())"))
    assert SECRET not in result and "No such file" in result


def test_tools_that_write_are_refused_at_start_up_without_the_sandbox(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDBOX", "off")
    for variable, tools in (
        ("TOOLS_ALLOWED", "Bash"),
        ("TOOLS_ALLOWED", "Read,Write"),
        ("TOOLS_ALLOWED", "Bash(ls:*)"),
        ("TOOLS_ALLOWED", "NotebookEdit"),
        ("TOOLS_ASK", "Bash"),
        ("TOOLS_ASK", "WebFetch,Edit"),
    ):
        monkeypatch.setenv(variable, tools)
        with pytest.raises(ConfigError, match=variable):
            SystemConfig.from_env()
        monkeypatch.delenv(variable)
    monkeypatch.setenv("TOOLS_ALLOWED", "Read,Grep")
    monkeypatch.setenv("TOOLS_ASK", "WebFetch")
    assert not sandbox_on(SystemConfig.from_env().runtime)
    monkeypatch.setenv("TOOLS_ASK", "Bash(ls:*)")  # a rule cannot be asked: a tool's name is
    with pytest.raises(ConfigError, match="TOOLS_ASK"):
        SystemConfig.from_env()


def test_sandbox_on_without_bubblewrap_stops_start_up(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap, no socat
    monkeypatch.setenv("SANDBOX", "on")
    with pytest.raises(ConfigError, match="SANDBOX"):
        ClaudeHandler(SystemConfig.from_env())  # the host is probed at start-up, not when reading settings
    monkeypatch.setenv("SANDBOX", "auto")
    monkeypatch.setenv("TOOLS_ALLOWED", "Bash")
    with pytest.raises(ConfigError, match="TOOLS_ALLOWED"):
        check_host(SystemConfig.from_env())
    monkeypatch.setenv("TOOLS_ALLOWED", "")
    monkeypatch.setenv("TOOLS_ASK", "Write")
    with pytest.raises(ConfigError, match="TOOLS_ASK"):
        check_host(SystemConfig.from_env())
    monkeypatch.setenv("SANDBOX", "sometimes")
    with pytest.raises(ConfigError, match="SANDBOX"):
        SystemConfig.from_env()


@needs_bubblewrap
async def test_a_killed_cli_leaves_none_of_its_sandbox_helpers_running(make_handler: MakeHandler) -> None:
    handler, session_id = await tenant(make_handler)
    await turn(handler, session_id, "hello")
    worker = handler.session_manager.get(session_id).worker
    assert worker is not None and worker.pid is not None
    helpers = psutil.Process(worker.pid).children(recursive=True)
    assert any(p.name() == "socat" for p in helpers)  # the sandbox's network bridges
    await handler.pool.discard(worker, graceful=False)  # killed, as a stuck or doubtful CLI is
    _, alive = psutil.wait_procs(helpers, timeout=5)
    assert alive == []
