"""Three nodes on one PostgreSQL, real CLIs, the offline model: one conversation whatever node answers."""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from claude_sessions.http.forwarding import FORWARDED_HEADER
from claude_sessions.offline_model import OfflineModel, OfflineModelServer
from cluster import (
    Cluster,
    PrivatePostgres,
    fresh_database,
    haproxy,
    retry_until_ok,
    running_cluster,
    settled,
    start_node,
)
from helpers import tool
from server_process import KEYS, ServerProcess, bearer, sse

LEASE = 3.0


@pytest.fixture
def database() -> Iterator[str]:
    with fresh_database() as url:
        yield url


@pytest.fixture
def cluster(tmp_path: Path, offline_server: OfflineModelServer, database: str) -> Iterator[Cluster]:
    with running_cluster(tmp_path, offline_server.base_url, database, lease=LEASE) as cluster:
        yield cluster


def say(client: httpx.Client, session_id: str, content: str, **headers: str) -> httpx.Response:
    url = f"/v1/sessions/{session_id}/messages?stream=false"
    return client.post(url, json={"content": content}, headers=headers)


def test_a_conversation_continues_on_every_node_served_by_its_holder(cluster: Cluster, model: OfflineModel) -> None:
    n1, n2, n3 = (cluster.node(i).client("alice") for i in range(3))
    assert n1.post("/v1/sessions", json={"session_id": "chat"}).status_code == 201
    # The last one claims to be a forward already (as only the nodes may): it is forwarded all the same.
    posing = {FORWARDED_HEADER: "1"}
    for number, (client, headers) in enumerate(((n1, {}), (n2, {}), (n3, {}), (n2, posing)), start=1):
        reply = say(client, "chat", f"message {number}", **headers)
        assert reply.status_code == 200, reply.text
        assert f"[user message {number} of this conversation]" in reply.json()["text"]
    assert len(cluster.node(0).cli_worker_pids()) == 1  # the holder answered every message: no respawn
    assert cluster.node(1).cli_worker_pids() == set() and cluster.node(2).cli_worker_pids() == set()
    for client in (n1, n2, n3):  # any node answers with the same answer
        assert client.get("/v1/sessions/chat").json()["metrics"]["message_count"] == 4
        assert [s["session_id"] for s in client.get("/v1/sessions").json()["sessions"]] == ["chat"]
    history = n3.get("/v1/sessions/chat/history").json()["messages"]  # node 3 never ran it: the store has it
    assert [m["message"]["content"] for m in history if m["type"] == "user"][-1] == "message 4"
    with cluster.node(2).client("admin") as admin:  # live workers as of each node's last heartbeat
        nodes = settled(
            lambda: admin.get("/v1/health").json()["nodes"], lambda n: sum(x["live_workers"] for x in n) == 1
        )
    assert sorted(n["url"] for n in nodes) == sorted(node.base_url for node in cluster.nodes)
    assert {n["status"] for n in nodes} == {"up"} and sum(n["live_workers"] for n in nodes) == 1
    assert n2.delete("/v1/sessions/chat").status_code == 204  # forwarded to the holder: its CLI goes back to its pool
    with cluster.node(0).client("admin") as admin:  # once its /clear is done
        pool = settled(
            lambda: admin.get("/v1/pool").json()["connections"], lambda c: [x["state"] for x in c] == ["idle"]
        )
        assert [c["state"] for c in pool] == ["idle"]
    assert n3.get("/v1/sessions/chat").status_code == 404


def test_limits_hold_exactly_under_creates_and_turns_on_every_node(
    tmp_path: Path, offline_server: OfflineModelServer, database: str
) -> None:
    env = {"SM_MAX_SESSIONS": "5", "TENANT_MAX_SESSIONS": "3", "TENANT_TURNS_PER_MINUTE": "*:2"}
    with running_cluster(tmp_path, offline_server.base_url, database, lease=LEASE, env=env) as cluster:
        clients = [cluster.node(i).client(t) for i in range(3) for t in ("alice", "bob")]

        def create(index: int) -> int:
            client = clients[index % len(clients)]
            return client.post("/v1/sessions", json={"session_id": f"s{index}"}).status_code

        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            statuses = list(pool.map(create, range(24)))
        assert statuses.count(201) == 5 and statuses.count(429) == 19
        with cluster.node(0).client("alice") as alice, cluster.node(1).client("bob") as bob:
            mine = [len(c.get("/v1/sessions").json()["sessions"]) for c in (alice, bob)]
        assert sorted(mine) == [2, 3]  # each tenant within its 3, together within 5
        made = [f"s{i}" for i, status in enumerate(statuses) if status == 201]
        tenant_of = {f"s{i}": ("alice", "bob")[i % 2] for i in range(24)}

        def talk(index: int) -> tuple[str, httpx.Response]:  # each through another node than its own
            name = made[index]
            with cluster.node((index + 1) % 3).client(tenant_of[name]) as client:
                return tenant_of[name], say(client, name, "hello")

        with concurrent.futures.ThreadPoolExecutor(len(made)) as pool:
            answers = list(pool.map(talk, range(len(made))))
        for tenant in ("alice", "bob"):  # the turn rate is counted once for the whole cluster
            statuses_of = sorted(r.status_code for t, r in answers if t == tenant)
            assert statuses_of == sorted([200, 200, 429][: len(statuses_of)]), statuses_of
        assert {r.json()["error"]["type"] for _, r in answers if r.status_code == 429} == {"rate_limited"}
        with cluster.node(2).client("admin") as admin:
            turns = {u["tenant"]: u["today"]["turns"] for u in admin.get("/v1/usage").json()["tenants"]}
        assert turns["alice"] == 2 and turns["bob"] == 2


def test_a_second_concurrent_turn_through_any_node_is_busy(cluster: Cluster) -> None:
    n1, n2 = cluster.node(0).client("alice"), cluster.node(1).client("alice")
    assert n1.post("/v1/sessions", json={"session_id": "slow"}).status_code == 201
    with n1.stream("POST", "/v1/sessions/slow/messages", json={"content": "[[slow:3]] take your time"}) as stream:
        events = sse(stream)
        assert next(events)[0] == "system"
        busy = say(n2, "slow", "me too")
        assert busy.status_code == 409 and busy.json()["error"]["type"] == "session_busy"
        assert [kind for kind, _ in events][-1] == "result"


def test_a_paused_holder_is_fenced_out_and_drops_its_cli(cluster: Cluster, model: OfflineModel) -> None:
    holder = cluster.node(0)
    n1, n2 = holder.client("alice"), cluster.node(1).client("alice")
    assert n1.post("/v1/sessions", json={"session_id": "p"}).status_code == 201
    assert "[user message 1 " in say(n1, "p", "one").json()["text"]
    (old_cli,) = holder.cli_worker_pids()
    os.kill(holder.process.pid, signal.SIGSTOP)  # a GC pause, a frozen VM: its lease lapses
    try:
        reply, _ = retry_until_ok(lambda: say(n2, "p", "two"), timeout=LEASE * 4)
        assert reply.status_code == 200 and "[user message 2 " in reply.json()["text"]  # resumed from the store
    finally:
        os.kill(holder.process.pid, signal.SIGCONT)
    deadline = time.monotonic() + LEASE * 2  # its next heartbeat finds the lease gone: the old CLI goes
    while old_cli in holder.cli_worker_pids() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert old_cli not in holder.cli_worker_pids()
    reply = say(n1, "p", "three")  # the woken node forwards to the new holder
    assert reply.status_code == 200 and "[user message 3 " in reply.json()["text"]
    assert len(cluster.all_cli_pids()) == 1
    assert n1.get("/v1/sessions/p").json()["metrics"]["message_count"] == 3


def test_kill_9_of_the_holder_loses_nothing(
    cluster: Cluster, tmp_path: Path, offline_server: OfflineModelServer, model: OfflineModel
) -> None:
    holder = cluster.node(0)
    n1, n2, n3 = (cluster.node(i).client("alice") for i in range(3))
    for session_id in ("between", "during"):
        assert n1.post("/v1/sessions", json={"session_id": session_id}).status_code == 201
        assert "[user message 1 " in say(n1, session_id, "the word is kiwi").json()["text"]

    def cut_short() -> None:
        with contextlib.suppress(httpx.HTTPError):  # its node is killed mid-answer
            say(n1, "during", "[[slow:20]] a long answer")

    cut = threading.Thread(target=cut_short, daemon=True)
    cut.start()
    time.sleep(1.0)
    strays = cluster.kill(0)  # between turns for one session, mid-turn for the other
    for session_id, client in (("between", n2), ("during", n3)):
        reply, took = retry_until_ok(lambda s=session_id, c=client: say(c, s, "which word?"), timeout=LEASE + 15)
        assert reply.status_code == 200, reply.text
        assert "kiwi" in model.message_requests()[-1].user_texts[0]  # the model saw the earlier turn
        assert took < LEASE + 10  # the lease plus one resume
    assert n2.get("/v1/sessions/between").json()["metrics"]["message_count"] == 2
    cluster.nodes[0] = restarted = start_node(
        tmp_path / "node0", offline_server.base_url, cluster.database_url, cluster.workspace, LEASE
    )
    assert restarted.process.pid != holder.process.pid
    deadline = time.monotonic() + 10  # a restart on the same data directory ends what the killed node left
    while any(_alive(pid) for pid in strays) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in strays)


def test_a_draining_node_hands_its_sessions_over_at_once(
    tmp_path: Path, offline_server: OfflineModelServer, database: str
) -> None:
    lease = 60.0  # nothing here may wait for a lease to lapse
    with running_cluster(tmp_path, offline_server.base_url, database, count=2, lease=lease) as cluster:
        n1, n2 = cluster.node(0).client("alice"), cluster.node(1).client("alice")
        for session_id in ("idle", "running"):
            assert n1.post("/v1/sessions", json={"session_id": session_id}).status_code == 201
            assert say(n1, session_id, "hello").status_code == 200
        with n1.stream("POST", "/v1/sessions/running/messages", json={"content": "[[slow:2]] finish me"}) as stream:
            events = sse(stream)
            assert next(events)[0] == "system"
            cluster.node(0).process.send_signal(signal.SIGTERM)
            began = time.monotonic()
            reply = say(n2, "idle", "moved?")
            assert reply.status_code == 200 and "[user message 2 " in reply.json()["text"]
            assert time.monotonic() - began < 10
            assert [kind for kind, _ in events][-1] == "result"  # the running turn finished
        assert cluster.node(0).process.wait(30) in (0, -signal.SIGTERM)
        reply = say(n2, "running", "and you?")
        assert reply.status_code == 200 and "[user message 3 " in reply.json()["text"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class StreamedTurn(threading.Thread):
    """A turn's SSE events, read in the background: its result may wait for the database."""

    def __init__(self, client: httpx.Client, session_id: str, content: str, key: str) -> None:
        super().__init__(daemon=True)
        self.client, self.session_id, self.content, self.key = client, session_id, content, key
        self.events: list[tuple[str, dict[str, Any]]] = []

    def run(self) -> None:
        url, body = f"/v1/sessions/{self.session_id}/messages", {"content": self.content}
        headers = {"Idempotency-Key": self.key}
        with (
            contextlib.suppress(httpx.HTTPError),
            self.client,
            self.client.stream("POST", url, json=body, headers=headers) as stream,
        ):
            self.events.extend(sse(stream))  # one at a time, as they come

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.events]


@contextmanager
def outage_mid_turn(
    tmp_path: Path, model_url: str, env: dict[str, str], prompt: str
) -> Iterator[tuple[PrivatePostgres, Cluster, httpx.Client, StreamedTurn]]:
    """One node on a private PostgreSQL; session "kept" told a word, then PostgreSQL stopped while its
    next turn (``prompt``, key ``k-go``) runs. The model's answer reaches its caller; the result
    waits for the transcript to be stored. The server is removed afterwards."""
    database = PrivatePostgres()
    try:
        database.start()
        with running_cluster(tmp_path, model_url, database.url(), count=1, env=env) as cluster:
            alice = cluster.node(0).client("alice")
            # A CLI may take longer than the short OPT_CREATE_TIMEOUT to start on a busy machine: 503, retried.
            created, _ = retry_until_ok(lambda: alice.post("/v1/sessions", json={"session_id": "kept"}), timeout=30)
            assert created.status_code == 201
            assert say(alice, "kept", "the word is kiwi").status_code == 200
            turn = StreamedTurn(cluster.node(0).client("alice"), "kept", prompt, "k-go")
            turn.start()
            settled(turn.kinds, lambda kinds: "system" in kinds)
            database.stop()
            settled(turn.kinds, lambda kinds: "assistant" in kinds, timeout=15)
            spill = tmp_path / "node0" / "data" / "spill"  # what the database could not take is kept here
            kept = settled(lambda: sorted(p.parent.name for p in spill.glob("*/*.json")), lambda k: len(k) == 2, 30)
            assert kept == ["sessions", "transcripts"]  # the transcript batch, then the record of the turn's end
            time.sleep(2 * float(env["OPT_CREATE_TIMEOUT"]))  # an Idempotency-Key's reply would not be kept either
            assert turn.is_alive() and "result" not in turn.kinds()  # an answer seen is an answer stored
            yield database, cluster, alice, turn
    finally:
        database.remove()


def test_a_database_outage_answers_503_and_recovers_by_itself(
    tmp_path: Path, offline_server: OfflineModelServer, model: OfflineModel
) -> None:
    wait = 2  # OPT_CREATE_TIMEOUT: how long a call waits for the database
    env = {"OPT_CREATE_TIMEOUT": str(wait)}
    prompt = "[[slow:3]] go on"
    with outage_mid_turn(tmp_path, offline_server.base_url, env, prompt) as (database, cluster, alice, turn):
        for method, path in (("POST", "/v1/sessions"), ("GET", "/v1/sessions/kept"), ("GET", "/v1/sessions")):
            began = time.monotonic()
            answer = alice.request(method, path, json={} if method == "POST" else None)
            assert time.monotonic() - began < wait + 1
            assert answer.status_code == 503 and answer.json()["error"]["type"] == "database_unavailable"
            assert int(answer.headers["Retry-After"]) >= 1
        health = alice.get("/v1/health")
        assert health.status_code == 200 and "database unavailable" in health.json()["reasons"]
        probe = f"{cluster.node(0).base_url}/readyz"  # out of rotation from the next heartbeat on
        unready = settled(lambda: httpx.get(probe), lambda r: r.status_code == 503, timeout=LEASE + 2)
        assert unready.json() == {"status": "not_ready", "reasons": ["registry_unavailable"]}
        database.start()
        turn.join(timeout=30)
        assert turn.kinds()[-1] == "result"  # once its transcript is stored
        assert settled(lambda: httpx.get(probe), lambda r: r.status_code == 200, timeout=LEASE + 5).is_success
        answer, _ = retry_until_ok(lambda: alice.get("/v1/sessions/kept"), timeout=30)
        deadline = time.monotonic() + 10  # the turn that ended in the outage is written when the database is back
        while answer.json()["metrics"]["message_count"] != 2 and time.monotonic() < deadline:
            time.sleep(0.2)
            answer = alice.get("/v1/sessions/kept")
        assert answer.json()["metrics"]["message_count"] == 2
        # A resume: a CLI may take longer than the short OPT_CREATE_TIMEOUT to start on a busy machine (503, retried).
        reply, _ = retry_until_ok(lambda: say(alice, "kept", "which word?"), timeout=30)
        assert reply.status_code == 200 and "[user message 3 " in reply.json()["text"]
        assert "kiwi" in model.message_requests()[-1].user_texts[0]

        # The store has the turn that ended in the outage too, in its place: another node resumes it whole.
        def said() -> list[str]:
            history = alice.get("/v1/sessions/kept/history").json()["messages"]
            return [m["message"]["content"] for m in history if m["type"] == "user"]

        written = ["the word is kiwi", prompt, "which word?"]
        assert settled(said, lambda s: s == written, timeout=3 * wait + 5) == written


def test_an_answer_the_database_does_not_take_by_the_deadline_is_a_503_and_waits_for_its_retry(
    tmp_path: Path, offline_server: OfflineModelServer, model: OfflineModel
) -> None:
    env = {"OPT_CREATE_TIMEOUT": "2", "OPT_MESSAGE_TIMEOUT": "15"}
    prompt = "[[slow:2]] go on"
    with outage_mid_turn(tmp_path, offline_server.base_url, env, prompt) as (database, _cluster, alice, turn):
        turn.join(timeout=30)  # the turn's deadline passes with the database still away
        kind, data = turn.events[-1]
        assert kind == "error" and data["error"]["type"] == "database_unavailable", turn.events[-1]
        asked = len(model.message_requests())
        database.start()
        again, _ = retry_until_ok(  # 503s while the node finds the database back
            lambda: alice.post(
                "/v1/sessions/kept/messages?stream=false", json={"content": prompt}, headers={"Idempotency-Key": "k-go"}
            ),
            timeout=30,
        )
        assert again.status_code == 200 and "You said: [[slow:2]] go on" in again.json()["text"], again.text
        assert len(model.message_requests()) == asked  # the kept answer, not a second run
        reply, _ = retry_until_ok(lambda: say(alice, "kept", "which word?"), timeout=30)
        assert reply.status_code == 200 and "[user message 3 " in reply.json()["text"], reply.text
        assert alice.get("/v1/sessions/kept").json()["metrics"]["message_count"] == 3


def test_a_turn_answered_in_an_outage_survives_its_nodes_kill_9_and_its_retry_gets_the_answer(
    tmp_path: Path, offline_server: OfflineModelServer, model: OfflineModel
) -> None:
    """The transcript batches and the session record the outage held back are on the node's disk; the
    node dies before the turn's result went out, so its caller sends it again, with its key."""
    env = {"OPT_CREATE_TIMEOUT": "2"}
    spill = tmp_path / "node0" / "data" / "spill"
    prompt = "[[slow:2]] go on"
    with outage_mid_turn(tmp_path, offline_server.base_url, env, prompt) as (database, cluster, alice, turn):
        cluster.kill(0)
        turn.join(timeout=10)
        assert "result" not in turn.kinds()  # never answered
        database.start()
        cluster.nodes[0] = start_node(
            tmp_path / "node0", offline_server.base_url, database.url(), cluster.workspace, LEASE, env
        )
        assert list(spill.glob("*/*.json")) == []  # written before the node answered
        alice = cluster.node(0).client("alice")
        assert alice.get("/v1/sessions/kept").json()["metrics"]["message_count"] == 2
        asked = len(model.message_requests())
        again = alice.post(
            "/v1/sessions/kept/messages?stream=false", json={"content": prompt}, headers={"Idempotency-Key": "k-go"}
        )
        assert again.status_code == 200 and "You said: [[slow:2]] go on" in again.json()["text"], again.text
        assert len(model.message_requests()) == asked  # answered from the transcript, not run again
        # A resume: a CLI may take longer than the short OPT_CREATE_TIMEOUT to start on a busy machine (503, retried).
        reply, _ = retry_until_ok(lambda: say(alice, "kept", "which word?"), timeout=30)
        assert reply.status_code == 200 and "[user message 3 " in reply.json()["text"], reply.text
        said = " ".join(model.message_requests()[-1].user_texts)  # whole, not rolled back: once each, in order
        places = [said.find(text) for text in ("the word is kiwi", prompt, "which word?")]
        assert -1 < places[0] < places[1] < places[2] and said.count("go on") == 1, said
        assert alice.get("/v1/sessions/kept").json()["metrics"]["message_count"] == 3


def test_one_node_at_a_time_runs_the_clusters_maintenance(
    tmp_path: Path, offline_server: OfflineModelServer, database: str
) -> None:
    env = {"SM_CLEANUP_INTERVAL": "0.02", "SM_TIMEOUT_MINUTES": "0.05"}  # every 1.2 s; idle for 3 s expires
    with running_cluster(tmp_path, offline_server.base_url, database, lease=LEASE, env=env) as cluster:
        with cluster.node(1).client("alice") as alice:
            assert alice.post("/v1/sessions", json={"session_id": "first"}).status_code == 201
            _wait_gone_from(alice, "first")
        leaders = _removers(cluster, "alice/first")
        assert len(leaders) == 1  # removed once, by one node
        cluster.kill(leaders[0])  # the leader dies: another one takes over
        survivor = cluster.node((leaders[0] + 1) % 3)
        with survivor.client("alice") as alice:
            assert alice.post("/v1/sessions", json={"session_id": "second"}).status_code == 201
            _wait_gone_from(alice, "second")
        assert len(_removers(cluster, "alice/second")) == 1


def _wait_gone_from(client: httpx.Client, session_id: str) -> None:
    deadline = time.monotonic() + 20
    while client.get(f"/v1/sessions/{session_id}").status_code != 404:
        assert time.monotonic() < deadline, f"{session_id} was never cleaned up"
        time.sleep(0.3)


def _removers(cluster: Cluster, key: str) -> list[int]:
    """The nodes that logged removing ``key`` (the log line follows the row's deletion by a moment)."""
    deadline = time.monotonic() + 10
    while True:
        found = [i for i, node in enumerate(cluster.nodes) if _removed(node, key)]
        if found or time.monotonic() > deadline:
            time.sleep(1.5)  # a second remover, were there one, would have logged by now
            return [i for i, node in enumerate(cluster.nodes) if _removed(node, key)]
        time.sleep(0.2)


def _removed(node: ServerProcess, key: str) -> bool:
    return any(e["event"] == "inactive_sessions_removed" and key in e["session_ids"] for e in node.log_lines())


def test_through_haproxy_conversations_continue_and_survive_a_dead_node(cluster: Cluster, model: OfflineModel) -> None:
    with haproxy(cluster) as base_url, httpx.Client(base_url=base_url, headers=bearer(KEYS["alice"]), timeout=30) as lb:
        names = [f"lb{i}" for i in range(6)]
        for name in names:  # creates go round robin: the conversations live on every node
            assert lb.post("/v1/sessions", json={"session_id": name}).status_code == 201
        assert all(node.cli_worker_pids() for node in cluster.nodes)
        for number in (1, 2):
            for name in names:
                reply = say(lb, name, f"{name} message {number}")
                assert reply.status_code == 200 and f"[user message {number} " in reply.json()["text"]
        assert len(cluster.all_cli_pids()) == len(names)  # one CLI per conversation in the whole cluster
        cluster.kill(1)
        for name in names:
            reply, _ = retry_until_ok(lambda n=name: say(lb, n, f"{n} message 3"), timeout=LEASE + 15)
            assert reply.status_code == 200 and "[user message 3 " in reply.json()["text"], reply.text


def test_an_asked_call_is_answered_through_any_node_and_lost_with_a_dead_holder(
    tmp_path: Path, offline_server: OfflineModelServer, database: str
) -> None:
    env = {"TOOLS_ASK": "Write"}
    with running_cluster(tmp_path, offline_server.base_url, database, count=2, lease=LEASE, env=env) as cluster:
        holder, other = (cluster.node(i).client("alice") for i in range(2))
        assert holder.post("/v1/sessions", json={"session_id": "ask", "ask_tools": ["Write"]}).status_code == 201
        folder = cluster.workspace / "alice"

        def streamed_through_other(name: str, on_request: Callable[[dict[str, Any]], object]) -> list[tuple[str, Any]]:
            content = tool("Write", file_path=str(folder / name), content="hello")
            with other.stream("POST", "/v1/sessions/ask/messages", json={"content": content}) as response:
                events = []
                for event, data in sse(response):
                    events.append((event, data))
                    if event == "permission_request":
                        on_request(data)
                return events

        def allow_through_other(request: dict[str, Any]) -> None:
            (pending,) = other.get("/v1/sessions/ask/permissions").json()["requests"]
            assert pending["request_id"] == request["request_id"]
            decided = other.post(f"/v1/sessions/ask/permissions/{request['request_id']}", json={"behavior": "allow"})
            assert decided.status_code == 200, decided.text

        events = streamed_through_other("through.txt", allow_through_other)
        assert [e for e, _ in events][-1] == "result" and (folder / "through.txt").read_text() == "hello"
        assert len(cluster.node(0).cli_worker_pids()) == 1 and cluster.node(1).cli_worker_pids() == set()
        events = streamed_through_other("lost.txt", lambda _: cluster.kill(0))
        event, data = events[-1]
        assert event == "error" and data["error"]["type"] == "node_failed", events[-3:]
        assert not (folder / "lost.txt").exists()


def test_a_key_made_on_one_node_works_on_every_node_and_its_revocation_reaches_them_within_a_second(
    tmp_path: Path, offline_server: OfflineModelServer, database: str
) -> None:
    with running_cluster(tmp_path, offline_server.base_url, database, count=2, lease=LEASE) as cluster:
        with cluster.node(0).client("admin") as admin:
            made = admin.post("/v1/admin/keys", json={"tenant": "newco", "user": "ana"}).json()
            users = [httpx.Client(base_url=n.base_url, headers=bearer(made["key"]), timeout=10) for n in cluster.nodes]
            assert [u.get("/v1/me").json()["user"] for u in users] == ["ana", "ana"]
            assert users[1].post("/v1/sessions", json={"session_id": "hers"}).json()["user"] == "ana"
            assert admin.delete(f"/v1/admin/keys/{made['key_id']}").status_code == 204
            revoked_at = time.monotonic()
        for user in users:
            while user.get("/v1/me").status_code != 401:
                assert time.monotonic() - revoked_at < 1.0, "a node still took the revoked key"
                time.sleep(0.02)
            user.close()


def test_an_openai_tool_round_started_on_one_node_is_continued_through_another(
    cluster: Cluster, model: OfflineModel
) -> None:
    """The waiting turn lives on its holder; the client's next request, sent to another node, is forwarded there."""
    weather = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    messages: list[dict[str, Any]] = [{"role": "user", "content": '[[tool:get_weather:{"city": "Oslo"}]]'}]
    first, other = cluster.node(0).client("alice"), cluster.node(1).client("alice")
    answer = first.post("/v1/chat/completions", json={"model": "sonnet", "messages": messages, "tools": [weather]})
    assert answer.status_code == 200, answer.text
    message, session = answer.json()["choices"][0]["message"], answer.headers["x-session-id"]
    (made,) = message["tool_calls"]
    messages += [message, {"role": "tool", "tool_call_id": made["id"], "content": "cold"}]
    requests_before = len(model.message_requests())
    answer = other.post("/v1/chat/completions", json={"model": "sonnet", "messages": messages, "tools": [weather]})
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-session-id"] == session
    assert "cold" in answer.json()["choices"][0]["message"]["content"]
    assert len(model.message_requests()) == requests_before + 1  # the same turn went on: one model call
    assert cluster.node(1).cli_worker_pids() == set()  # nothing ran on the node it was sent to


def test_a_message_through_another_node_waits_out_a_killed_holder_and_is_answered_without_an_error(
    cluster: Cluster, model: OfflineModel
) -> None:
    n1, n2 = cluster.node(0).client("alice"), cluster.node(1).client("alice")
    assert n1.post("/v1/sessions", json={"session_id": "w"}).status_code == 201
    assert "[user message 1 " in say(n1, "w", "the word is fig").json()["text"]
    cluster.kill(0)
    began = time.monotonic()
    reply = say(n2, "w", "which word?")  # once: no 503, no retry
    took = time.monotonic() - began
    assert reply.status_code == 200, reply.text
    assert "[user message 2 " in reply.json()["text"] and "fig" in model.message_requests()[-1].user_texts[0]
    assert took < LEASE + 10, took  # the lease, then one resume
    assert n2.get("/v1/sessions/w").json()["metrics"]["message_count"] == 2


def test_a_paused_holder_is_waited_out_by_a_forwarded_message_that_then_runs_here(
    cluster: Cluster, model: OfflineModel
) -> None:
    holder = cluster.node(0)
    n1, n2 = holder.client("alice"), cluster.node(1).client("alice")
    assert n1.post("/v1/sessions", json={"session_id": "z"}).status_code == 201
    assert say(n1, "z", "one").status_code == 200
    os.kill(holder.process.pid, signal.SIGSTOP)
    try:
        reply = say(n2, "z", "two")  # sent to the paused node first; its lease lapses; served here
        assert reply.status_code == 200 and "[user message 2 " in reply.json()["text"], reply.text
    finally:
        os.kill(holder.process.pid, signal.SIGCONT)
    assert n2.get("/v1/sessions/z").json()["metrics"]["message_count"] == 2


def test_a_stream_waiting_for_a_dead_holders_lease_hears_comments_then_its_answer(
    tmp_path: Path, offline_server: OfflineModelServer, database: str
) -> None:
    lease = 10.0  # past the first keepalive (4 s)
    with running_cluster(tmp_path, offline_server.base_url, database, count=2, lease=lease) as cluster:
        n1, n2 = cluster.node(0).client("alice"), cluster.node(1).client("alice")
        assert n1.post("/v1/sessions", json={"session_id": "k"}).status_code == 201
        assert say(n1, "k", "one").status_code == 200
        cluster.kill(0)
        with n2.stream("POST", "/v1/sessions/k/messages", json={"content": "two"}, timeout=60) as response:
            assert response.status_code == 200
            lines = list(response.iter_lines())
        assert ": waiting for the node holding this session" in lines
        events = [line.removeprefix("event: ") for line in lines if line.startswith("event: ")]
        assert events[-1] == "result" and "error" not in events, lines[-6:]


def test_a_turn_cut_by_its_nodes_death_runs_once_when_sent_again_with_its_key(
    cluster: Cluster, model: OfflineModel
) -> None:
    """The dead node's half turn (its prompt in the shared transcript) is rolled back at the takeover."""
    n1, n2 = cluster.node(0).client("alice"), cluster.node(1).client("alice")
    assert n1.post("/v1/sessions", json={"session_id": "once"}).status_code == 201
    assert say(n1, "once", "first").status_code == 200
    key = {"Idempotency-Key": "message-2"}

    def cut_short() -> None:
        with contextlib.suppress(httpx.HTTPError):
            say(n1, "once", "[[slow:3]] second", **key)

    cutting = threading.Thread(target=cut_short, daemon=True)
    cutting.start()
    deadline = time.monotonic() + 10
    while not any("second" in " ".join(r.user_texts) for r in model.message_requests()):
        assert time.monotonic() < deadline, "the second message never reached the model"
        time.sleep(0.05)
    cluster.kill(0)  # mid-turn: the model is still answering
    cutting.join(10)
    reply = say(n2, "once", "[[slow:3]] second", **key)  # the client's retry, through another node
    assert reply.status_code == 200, reply.text
    assert say(n2, "once", "third").status_code == 200
    texts = [t for t in model.message_requests()[-1].user_texts if not t.startswith("<system-reminder>")]
    assert [t for t in texts if "second" in t] == ["[[slow:3]] second"], texts  # once, in its place
    assert n2.get("/v1/sessions/once").json()["metrics"]["message_count"] == 3


def test_a_recorded_turn_sent_again_with_its_key_after_its_holders_death_is_answered_from_the_record(
    cluster: Cluster, model: OfflineModel
) -> None:
    n1, n2, n3 = (cluster.node(i).client("alice") for i in range(3))
    assert n1.post("/v1/sessions", json={"session_id": "kept"}).status_code == 201
    first = say(n2, "kept", "remember plum", **{"Idempotency-Key": "k1"})  # forwarded to node 0, recorded
    assert first.status_code == 200
    calls = len(model.message_requests())
    cluster.kill(0)
    again = say(n3, "kept", "remember plum", **{"Idempotency-Key": "k1"})
    assert again.status_code == 200 and again.json()["text"] == first.json()["text"]
    assert len(model.message_requests()) == calls  # not run again
    assert n3.get("/v1/sessions/kept").json()["metrics"]["message_count"] == 1
