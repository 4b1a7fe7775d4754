"""Budgets and turn rates per tenant, on the real CLI: the offline model's usage gives the cost."""

from __future__ import annotations

import asyncio
import concurrent.futures
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from claude_sessions import ClaudeHandler, SystemConfig
from claude_sessions.errors import BudgetExceededError
from claude_sessions.offline_model import OfflineModel, OfflineModelServer
from claude_sessions.store.spend import seconds_to_midnight
from conftest import MakeHandler
from helpers import failed_turn, result_of, turn, wait_no_cli
from server_process import KEYS, ServerProcess, start_server

TENANT = "default"  # a library caller's sessions without an owner


async def spent_today(handler: ClaudeHandler) -> float:
    found = await handler.registry.spend.usage(TENANT, handler.clock())
    return found[0].today.cost_usd if found else 0.0


async def test_a_spent_day_refuses_turns_until_midnight_and_a_restart_keeps_the_spend(
    make_handler: MakeHandler, cli_env: dict[str, str]
) -> None:
    handler = await make_handler(connection_pool={"MIN_SIZE": 0})
    session = await handler.create_session("budget")
    assert not result_of(await turn(handler, session, "first")).is_error
    one_turn = await spent_today(handler)
    assert one_turn > 0  # metered at the gateway, written to the registry
    handler.config.server.TENANT_DAILY_USD = f"*:{one_turn * 1.5}"
    assert not result_of(await turn(handler, session, "second")).is_error  # half a turn was left: it runs
    two_turns = await spent_today(handler)
    with pytest.raises(BudgetExceededError) as refused:
        await turn(handler, session, "third")
    assert refused.value.retry_after == seconds_to_midnight(handler.clock())
    assert await spent_today(handler) == two_turns  # a refused turn costs nothing
    await handler.close()

    again = ClaudeHandler(SystemConfig.from_env())  # the same data directory: the spend is in the registry
    again.config.server.TENANT_DAILY_USD = f"*:{one_turn * 1.5}"
    try:
        with pytest.raises(BudgetExceededError):
            await turn(again, session, "after a restart")
        again.clock = lambda: time.time() + seconds_to_midnight(time.time())  # the next UTC day
        assert not result_of(await turn(again, session, "a new day")).is_error
        (usage,) = await again.registry.spend.usage(TENANT, again.clock())
        assert usage.today.turns == 1 and usage.month.turns >= 1
    finally:
        await again.close()
    assert wait_no_cli() == []


async def test_the_gateway_ends_a_turn_at_what_the_day_had_left(make_handler: MakeHandler, model: OfflineModel) -> None:
    handler = await make_handler(connection_pool={"MIN_SIZE": 0}, server={"TENANT_DAILY_USD": "*:0.000001"})
    session = await handler.create_session("stopped")
    before = len(model.message_requests())
    # The first model call may start (nothing spent yet); the one after the tool call may not.
    messages, failed = await failed_turn(handler, session, 'look [[tool:Read:{"file_path": "notes.txt"}]]')
    result = result_of(messages)
    assert result.is_error and "budget" in str(result.result) and "budget" in failed.message
    assert len(model.message_requests()) - before == 1  # the overshoot is one step of one turn
    assert await spent_today(handler) > 0
    with pytest.raises(BudgetExceededError):
        await turn(handler, session, "more")


async def test_turns_running_at_once_share_what_the_day_had_left(
    make_handler: MakeHandler, model: OfflineModel
) -> None:
    handler = await make_handler(connection_pool={"MIN_SIZE": 0}, server={"TENANT_DAILY_USD": "*:0.000001"})
    first, second = await handler.create_session("first"), await handler.create_session("second")
    running = asyncio.create_task(turn(handler, first, "[[slow:3]] a long answer"))
    grant = handler.session_manager.get(first).worker.grant  # type: ignore[union-attr]
    while not grant.used.cost:  # its call is under way, metered, and not charged to the day yet
        await asyncio.sleep(0.02)
    messages, failed = await failed_turn(handler, second, "may I?")
    late = result_of(messages)
    assert late.is_error and "budget" in str(late.result) and "budget" in failed.message
    assert not any("may I?" in r.last_user_text for r in model.message_requests())  # refused at the gateway
    assert not result_of(await running).is_error  # a call under way is never cut
    with pytest.raises(BudgetExceededError):
        await turn(handler, second, "and now?")


@pytest.fixture(scope="module")
def limited(offline_server: OfflineModelServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = start_server(
        tmp_path_factory.mktemp("budgets"),
        offline_server.base_url,
        CP_MIN_SIZE="0",
        TENANT_TURNS_PER_MINUTE="alice:3",
        TENANT_DAILY_USD="bob:0.000001,*:100",
    )
    yield server
    assert server.stop() in (0, -signal.SIGTERM)
    assert wait_no_cli() == []


def say(client: httpx.Client, session_id: str, content: str) -> httpx.Response:
    return client.post(f"/v1/sessions/{session_id}/messages?stream=false", json={"content": content})


def test_a_storm_of_turns_starts_exactly_the_rate_and_usage_reports_it(limited: ServerProcess) -> None:
    with limited.client("alice") as alice:
        names = [f"storm{i}" for i in range(20)]  # 20 turns at once, each on a session of its own
        for name in names:
            assert alice.post("/v1/sessions", json={"session_id": name}).status_code == 201
        with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:
            answers = list(pool.map(lambda n: say(alice, n, "go"), names))
        assert sorted(a.status_code for a in answers) == [200] * 3 + [429] * 17
        for refused in (a for a in answers if a.status_code == 429):
            assert refused.json()["error"]["type"] == "rate_limited"
            assert 1 <= int(refused.headers["Retry-After"]) <= 60
        (mine,) = alice.get("/v1/usage").json()["tenants"]
        assert mine["tenant"] == "alice" and mine["today"]["turns"] == 3 and mine["today"]["cost_usd"] > 0
        assert mine["limits"] == {"daily_usd": 100.0, "turns_per_minute": 3}
    with limited.client("admin") as admin:
        tenants = {t["tenant"]: t for t in admin.get("/v1/usage").json()["tenants"]}
        assert {"alice", "admin"} <= tenants.keys() and tenants["alice"]["month"]["turns"] == 3
        metrics = admin.get("/metrics").text
    assert 'claude_sessions_turns_refused_total{reason="rate_limited",tenant="alice"} 17.0' in metrics
    assert 'claude_sessions_cost_usd_total{tenant="alice"}' in metrics


def test_a_spent_budget_is_a_429_on_both_apis(limited: ServerProcess) -> None:
    with limited.client("bob") as bob:
        assert bob.post("/v1/sessions", json={"session_id": "spender"}).status_code == 201
        assert say(bob, "spender", "spend it").status_code == 200  # nothing spent yet: it runs
        refused = say(bob, "spender", "and more")
        assert refused.status_code == 429 and refused.json()["error"]["type"] == "budget_exceeded"
        assert 1 <= int(refused.headers["Retry-After"]) <= 86400
    client = openai.OpenAI(base_url=f"{limited.base_url}/v1", api_key=KEYS["bob"], max_retries=0)
    with pytest.raises(openai.RateLimitError) as error:
        client.chat.completions.create(model="sonnet", messages=[{"role": "user", "content": "hi"}])
    assert error.value.code == "budget_exceeded" and error.value.response.headers["Retry-After"]


def test_bad_limits_stop_start_up_naming_the_variable(tmp_path: Path) -> None:
    for variable, value in (("TENANT_DAILY_USD", "alice:lots"), ("TENANT_TURNS_PER_MINUTE", "*:0")):
        env = {variable: value}
        with pytest.MonkeyPatch.context() as patch:
            for key, item in env.items():
                patch.setenv(key, item)
            with pytest.raises(ValueError, match=variable):
                SystemConfig.from_env()
