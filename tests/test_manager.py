"""The session manager on the real CLI: limits, cleanup, orphans, metrics, health."""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import Any

import pytest
from structlog.testing import capture_logs

from claude_sessions import SessionConfig, SessionLimitError, SessionOrphanedError, WorkerDiedError
from claude_sessions.gateway.pricing import cost_usd
from claude_sessions.offline_model import OfflineModel
from conftest import MakeHandler
from helpers import failed_turn, pids_of, result_of, turn, wait_no_cli


async def test_limit_holds_under_a_storm_of_concurrent_creates(make_handler: MakeHandler) -> None:
    handler = await make_handler(session_manager={"MAX_SESSIONS": 3}, connection_pool={"MIN_SIZE": 1})
    results = await asyncio.gather(*(handler.create_session(f"storm-{i}") for i in range(12)), return_exceptions=True)
    created = [r for r in results if isinstance(r, str)]
    rejected = [r for r in results if isinstance(r, SessionLimitError)]
    assert len(created) == 3 and len(rejected) == 9
    assert len(handler.session_manager) == 3
    assert isinstance(rejected[0], RuntimeError)
    # No worker leaked by a rejected create: three bound, at most MIN_SIZE spare.
    await asyncio.sleep(1.0)  # let the background refill settle
    states = [c["state"] for c in handler.get_pool_status()["connections"]]
    assert states.count("bound") == 3 and states.count("idle") <= 1 and len(states) <= 4


async def test_register_unregister_semantics(make_handler: MakeHandler) -> None:
    handler = await make_handler(session_manager={"MAX_SESSIONS": 2}, connection_pool={"MIN_SIZE": 0})
    manager = handler.session_manager
    assert manager.register_session("a") and manager.register_session("b")
    assert not manager.register_session("c")  # at the limit
    assert manager.unregister_session("a") and not manager.unregister_session("a")
    assert not manager.register_session("b")  # taken
    assert manager.register_session("c")


async def test_unregister_returns_the_worker_to_the_pool(make_handler: MakeHandler) -> None:
    handler = await make_handler(connection_pool={"MIN_SIZE": 0})
    session_id = await handler.create_session()
    await turn(handler, session_id, "hi")
    assert handler.session_manager.unregister_session(session_id)
    for _ in range(50):
        if handler.get_pool_status()["idle"] == 1:
            break
        await asyncio.sleep(0.05)
    assert handler.get_pool_status()["connections"][0]["state"] == "idle"


async def test_idle_sessions_are_removed_and_their_workers_released(make_handler: MakeHandler) -> None:
    handler = await make_handler(session_manager={"TIMEOUT_MINUTES": 0.01}, connection_pool={"MIN_SIZE": 0})
    stale = await handler.create_session("stale")
    await turn(handler, stale, "hello")
    await asyncio.sleep(0.7)
    fresh = await handler.create_session("fresh")
    with capture_logs() as logs:
        removed = await handler.session_manager.cleanup_inactive_sessions()
    assert removed == ["stale"]
    assert stale not in handler.session_manager and fresh in handler.session_manager
    assert any(e["event"] == "inactive_sessions_removed" and e["session_ids"] == ["stale"] for e in logs)
    states = sorted(c["state"] for c in handler.get_pool_status()["connections"])
    assert states == ["bound", "idle"]  # the stale session's worker went back to the pool


async def test_busy_session_is_never_expired(make_handler: MakeHandler) -> None:
    handler = await make_handler(session_manager={"TIMEOUT_MINUTES": 0.005}, connection_pool={"MIN_SIZE": 0})
    session_id = await handler.create_session()
    running = asyncio.create_task(turn(handler, session_id, "[[slow:1.2]] long"))
    await asyncio.sleep(0.8)
    assert await handler.session_manager.cleanup_inactive_sessions() == []
    assert not result_of(await running).is_error


async def test_session_with_deleted_transcript_is_an_orphan(
    transcripts_in: dict[str, Any], make_handler: MakeHandler
) -> None:  # the database first: it must outlive the handler
    handler = await make_handler(connection_pool={"MIN_SIZE": 0}, **transcripts_in)
    talked = await handler.create_session("talked")
    silent = await handler.create_session("silent")
    await turn(handler, talked, "write a transcript")
    manager = handler.session_manager
    session = manager.get(talked)
    assert session.claude_session_id is not None
    conversation = (manager.conversations.project_of(session.config), session.claude_session_id)
    assert await handler.archive.exists(conversation)
    assert await manager.detect_orphaned_sessions() == []
    await handler.archive.delete(handler.archive.name(conversation))
    with capture_logs() as logs:
        assert await manager.detect_orphaned_sessions() == ["talked"]
    assert any(e["event"] == "orphans_detected" and e["log_level"] == "warning" for e in logs)
    orphan = manager.get(talked)
    assert orphan.state == "orphaned" and orphan.worker is None  # reported, worker given back
    assert manager.get(silent).state == "active"  # no message yet: not an orphan
    assert await manager.detect_orphaned_sessions() == []  # reported once
    with pytest.raises(SessionOrphanedError):  # never a silent new conversation
        await turn(handler, talked, "are you there?")
    await handler.destroy_session(talked)
    assert talked not in manager


async def test_cli_process_no_session_owns_is_ended(make_handler: MakeHandler) -> None:
    handler = await make_handler(connection_pool={"MIN_SIZE": 0})
    leaked = await handler.pool.acquire(SessionConfig())  # taken, then forgotten
    assert leaked.is_alive()
    kept = await handler.create_session("kept")
    await handler.session_manager.detect_orphaned_sessions()
    assert wait_no_cli({leaked.pid}) == []
    assert handler.session_manager.get(kept).worker.is_alive()  # type: ignore[union-attr]


async def test_metrics_over_three_turns_equal_what_the_model_charged(
    make_handler: MakeHandler, model: OfflineModel
) -> None:
    handler = await make_handler(connection_pool={"MIN_SIZE": 0})
    session_id = await handler.create_session("metered")
    model.requests.clear()
    results = [result_of(await turn(handler, session_id, f"turn number {i}")) for i in range(3)]
    charged = [r.usage for r in model.message_requests() if r.usage is not None]
    assert len(charged) == 3
    metrics = handler.session_manager.get_session_metrics(session_id)
    assert metrics is not None
    assert metrics.message_count == 3
    assert metrics.input_tokens == sum(u.input_tokens for u in charged)
    assert metrics.output_tokens == sum(u.output_tokens for u in charged)
    assert metrics.cache_read_tokens == sum(u.cache_read_input_tokens for u in charged)
    assert metrics.cache_creation_tokens == sum(u.cache_creation_input_tokens for u in charged)
    assert metrics.cache_read_tokens > 0 and metrics.cache_creation_tokens >= 0
    assert metrics.total_tokens == sum(
        u.input_tokens + u.output_tokens + u.cache_read_input_tokens + u.cache_creation_input_tokens for u in charged
    )
    # total_cost_usd is cumulative per conversation: the true spend is the last figure,
    # not the sum of the three cumulative figures.
    cumulative = [r.total_cost_usd or 0.0 for r in results]
    assert cumulative[0] < cumulative[1] < cumulative[2]
    assert metrics.total_cost == pytest.approx(cumulative[-1])
    assert metrics.last_turn_ms is not None and metrics.last_turn_ms > 0


async def test_cost_stays_true_across_a_resumed_worker(make_handler: MakeHandler, model: OfflineModel) -> None:
    handler = await make_handler(connection_pool={"MIN_SIZE": 0})
    session_id = await handler.create_session("resumed-cost")
    model.requests.clear()
    await turn(handler, session_id, "one")
    session = handler.session_manager.get(session_id)
    assert session.worker is not None
    await handler.pool.discard(session.worker)  # the next turn resumes in a new process
    second = result_of(await turn(handler, session_id, "two")).total_cost_usd or 0.0
    billed = [cost_usd(c.body["model"], asdict(c.usage)) for c in model.message_requests() if c.usage is not None]
    assert len(billed) == 2 and session.metrics.total_cost == pytest.approx(sum(billed))
    assert second > 0  # the CLI's own figure (cumulative across the resume: test_sdk_facts) is not what is billed


async def test_health_report_has_the_seed_shape(make_handler: MakeHandler) -> None:
    handler = await make_handler(connection_pool={"MIN_SIZE": 1, "MAX_SIZE": 5})
    session_id = await handler.create_session()
    await turn(handler, session_id, "hi")
    await failed_turn(handler, session_id, "[[fail:529]] overloaded")
    report = handler.session_manager.get_session_health_report()
    assert report["sessions"]["active"] == 1 and report["sessions"]["recent"] == 1 and report["sessions"]["old"] == 0
    assert report["pool"]["max_size"] == 5 and report["pool"]["size"] >= 1
    assert report["totals"]["messages"] == 2 and report["totals"]["tokens"] > 0 and report["totals"]["cost"] > 0
    assert report["errors"]["api"] == 1
    all_metrics = handler.session_manager.get_all_session_metrics()
    assert list(all_metrics) == [session_id]


async def test_force_cleanup_all_leaves_no_cli_process(make_handler: MakeHandler) -> None:
    handler = await make_handler(connection_pool={"MIN_SIZE": 2})
    ids = [await handler.create_session() for _ in range(3)]
    running = asyncio.create_task(turn(handler, ids[0], "[[hang]] mid-turn"))
    await asyncio.sleep(0.5)
    pids = pids_of(handler)
    assert await handler.session_manager.force_cleanup_all() == 3
    assert wait_no_cli(pids) == []
    assert len(handler.session_manager) == 0
    with pytest.raises(WorkerDiedError):
        await asyncio.wait_for(running, 5)


async def test_dropping_a_session_never_removes_a_newer_one_of_the_same_id(make_handler: MakeHandler) -> None:
    handler = await make_handler(connection_pool={"MIN_SIZE": 0})
    manager = handler.session_manager
    assert manager.register_session("x")
    older = manager.get("x")  # say its create is still starting a CLI, and will fail
    assert manager.unregister_session("x") and manager.register_session("x")
    assert not await manager.drop(older)
    assert "x" in manager and manager.get("x") is not older


async def test_a_turn_given_the_session_a_request_read_reads_the_registry_no_more(
    make_handler: MakeHandler, monkeypatch: pytest.MonkeyPatch
) -> None:
    handler = await make_handler(connection_pool={"MIN_SIZE": 0})
    session_id = await handler.create_session("read-once")
    reads: list[str] = []
    real_get = handler.registry.get

    async def counted(key: str) -> Any:
        reads.append(key)
        return await real_get(key)

    monkeypatch.setattr(handler.registry, "get", counted)
    session = await handler.session_manager.fetch(session_id)  # as the API checks the owner
    assert result_of(await turn(handler, session, "hello")).is_error is False
    assert reads == [session_id]  # the turn took the session it was given
    await turn(handler, session_id, "by id")  # by id, it reads the registry itself, once
    assert reads == [session_id, session_id]
