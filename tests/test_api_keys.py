"""Keys made at run time and end users inside a tenant, through a real server process.

Tenant ``alice`` (from ``API_KEYS``) serves end users; keys are made, used, listed, expired and
revoked over HTTP, and two end users' sessions are kept apart down to the files their Bash reads.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import openai
import pytest

from claude_sessions.offline_model import OfflineModelServer
from claude_sessions.workers.sandbox import bubblewrap_usable
from helpers import tool, wait_no_cli
from server_process import KEYS, ServerProcess, bearer, start_server


@pytest.fixture(scope="module")
def server(offline_server: OfflineModelServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = start_server(
        tmp_path_factory.mktemp("keys"),
        offline_server.base_url,
        USER_MAX_SESSIONS="2",
        USER_TURNS_PER_MINUTE="3",
        TENANT_MAX_SESSIONS="20",
        SM_MAX_SESSIONS="30",
        CP_MIN_SIZE="0",
        TOOLS_ALLOWED="Bash" if bubblewrap_usable() else "",
    )
    yield process
    process.stop()
    assert wait_no_cli() == []


@pytest.fixture
def admin(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client("admin") as client:
        yield client


@pytest.fixture
def alice(server: ServerProcess) -> Iterator[httpx.Client]:
    yield from server.tenant("alice")


def as_user(server: ServerProcess, key: str, user: str | None = None) -> httpx.Client:
    headers = bearer(key) | ({"X-End-User": user} if user else {})
    return httpx.Client(base_url=server.base_url, headers=headers, timeout=30)


def new_key(admin: httpx.Client, **body: Any) -> dict[str, Any]:
    made = admin.post("/v1/admin/keys", json=body)
    assert made.status_code == 201, made.text
    return dict(made.json())


def refused_within(client: httpx.Client, seconds: float) -> float:
    """How long until the client's key answers 401."""
    began = time.monotonic()
    while client.get("/v1/me").status_code != 401:
        assert time.monotonic() - began < seconds, "the key was still taken"
        time.sleep(0.02)
    return time.monotonic() - began


def test_a_key_made_at_run_time_works_is_listed_without_its_secret_and_is_revoked(
    server: ServerProcess, admin: httpx.Client
) -> None:
    made = new_key(admin, tenant="newco", name="backend", limits={"daily_usd": 5.0})
    assert made["key"].startswith("csk_") and made["tenant"] == "newco" and made["user"] is None
    with as_user(server, made["key"]) as newco:
        assert newco.get("/v1/me").json() == {
            "tenant": "newco",
            "user": None,
            "admin": False,
            "limits": {"max_sessions": 20, "daily_usd": None, "turns_per_minute": None},
        }
        assert newco.post("/v1/sessions", json={"session_id": "n1"}).status_code == 201
        assert newco.get("/v1/admin/keys").status_code == 403
        listed = admin.get("/v1/admin/keys", params={"tenant": "newco"}).json()["keys"]
        assert [k["key_id"] for k in listed] == [made["key_id"]] and "key" not in listed[0]
        assert listed[0]["last_used_at"] is not None and listed[0]["limits"]["daily_usd"] == 5.0
        assert made["key"] not in admin.get("/v1/admin/keys").text
        assert admin.delete(f"/v1/admin/keys/{made['key_id']}").status_code == 204
        assert refused_within(newco, 1.0) < 1.0
        unknown = httpx.get(f"{server.base_url}/v1/me", headers=bearer("csk_not-a-key"))
        assert newco.get("/v1/me").json() == unknown.json() and unknown.status_code == 401
    assert admin.delete(f"/v1/admin/keys/{made['key_id']}").status_code == 204  # revoked already: the same
    assert admin.delete("/v1/admin/keys/key_unknown").status_code == 404


def test_an_expired_key_answers_like_an_unknown_one(server: ServerProcess, admin: httpx.Client) -> None:
    soon = (datetime.now(UTC) + timedelta(seconds=1.5)).isoformat()
    made = new_key(admin, tenant="alice", expires_at=soon)
    with as_user(server, made["key"]) as client:
        assert client.get("/v1/me").status_code == 200
        time.sleep(1.6)
        assert refused_within(client, 1.0) < 1.0


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tenant": "Admin"}, "tenant"),
        ({"tenant": "a b"}, "tenant"),
        ({"tenant": "acme", "user": ".."}, "user"),
        ({"tenant": "acme", "user": "a/b"}, "user"),
        ({"tenant": "acme", "expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
        ({"tenant": "acme", "expires_at": "tomorrow"}, "expires_at"),
        ({"tenant": "acme", "limits": {"daily_usd": -1}}, "limits.daily_usd"),
    ],
)
def test_bad_keys_are_refused_naming_the_field(admin: httpx.Client, body: dict[str, Any], param: str) -> None:
    refused = admin.post("/v1/admin/keys", json=body)
    assert refused.status_code == 422 and refused.json()["error"]["param"] == param, refused.text


def test_end_users_see_only_their_own_sessions_and_the_tenant_sees_all(
    server: ServerProcess, admin: httpx.Client, alice: httpx.Client
) -> None:
    with as_user(server, KEYS["alice"], "ana") as ana, as_user(server, KEYS["alice"], "bob") as bob:
        made = ana.post("/v1/sessions", json={"session_id": "ana-1"})
        assert made.status_code == 201 and made.json()["user"] == "ana" and "user" not in made.json()["options"]
        assert bob.post("/v1/sessions", json={"session_id": "bob-1"}).status_code == 201
        assert bob.get("/v1/sessions/ana-1").status_code == 404
        assert bob.post("/v1/sessions/ana-1/messages?stream=false", json={"content": "hi"}).status_code == 404
        assert [s["session_id"] for s in bob.get("/v1/sessions").json()["sessions"]] == ["bob-1"]
        assert {s["session_id"] for s in alice.get("/v1/sessions").json()["sessions"]} == {"ana-1", "bob-1"}
        assert alice.get("/v1/sessions/ana-1").json()["user"] == "ana"
    bound = new_key(admin, tenant="alice", user="ana", limits={"max_sessions": 1})
    with as_user(server, bound["key"]) as ana_key, as_user(server, bound["key"], "bob") as posing:
        assert ana_key.get("/v1/me").json()["user"] == "ana"
        assert [s["session_id"] for s in ana_key.get("/v1/sessions").json()["sessions"]] == ["ana-1"]
        assert posing.get("/v1/sessions").status_code == 403
        over = ana_key.post("/v1/sessions", json={"session_id": "ana-2"})  # the key's own limit: 1
        assert over.status_code == 429 and "user session limit reached (1)" in over.json()["error"]["message"]
    schema = alice.post("/v1/sessions", json={"output_schema": '{"type": "object"}'})
    assert schema.status_code == 422 and "a turn's" in schema.json()["error"]["message"]
    bad = alice.get("/v1/sessions", headers={"X-End-User": ".."})
    assert bad.status_code == 422 and bad.json()["error"]["param"].lower() == "x-end-user"


def test_each_user_has_a_session_limit_and_a_turn_rate_of_its_own(server: ServerProcess, alice: httpx.Client) -> None:
    with as_user(server, KEYS["alice"], "carol") as carol, as_user(server, KEYS["alice"], "dave") as dave:
        for name in ("c1", "c2"):
            assert carol.post("/v1/sessions", json={"session_id": name}).status_code == 201
        assert carol.post("/v1/sessions", json={"session_id": "c3"}).status_code == 429  # USER_MAX_SESSIONS=2
        assert dave.post("/v1/sessions", json={"session_id": "d1"}).status_code == 201
        for i in range(3):
            assert carol.post("/v1/sessions/c1/messages?stream=false", json={"content": f"m{i}"}).status_code == 200
        limited = carol.post("/v1/sessions/c2/messages?stream=false", json={"content": "one more"})
        assert limited.status_code == 429 and limited.json()["error"]["type"] == "rate_limited"
        assert "user 'carol'" in limited.json()["error"]["message"] and "Retry-After" in limited.headers
        assert dave.post("/v1/sessions/d1/messages?stream=false", json={"content": "mine"}).status_code == 200
        (used,) = carol.get("/v1/usage").json()["users"]
        assert (used["user"], used["today"]["turns"], used["limits"]["turns_per_minute"]) == ("carol", 3, 3)
        assert alice.get("/v1/usage", params={"user": "dave"}).json()["users"][0]["today"]["turns"] == 1
        tenant = alice.get("/v1/usage").json()["tenants"][0]
        assert tenant["tenant"] == "alice" and tenant["today"]["turns"] >= 4


def test_a_users_health_pool_and_last_hour_are_its_own(server: ServerProcess, alice: httpx.Client) -> None:
    with as_user(server, KEYS["alice"], "ivy") as ivy, as_user(server, KEYS["alice"], "jay") as jay:
        assert ivy.post("/v1/sessions", json={"session_id": "i1"}).status_code == 201
        assert ivy.post("/v1/sessions/i1/messages?stream=false", json={"content": "hi"}).status_code == 200
        assert jay.post("/v1/sessions", json={"session_id": "j1"}).status_code == 201
        assert (
            ivy.get("/v1/health").json()["sessions"]["active"]
            == jay.get("/v1/health").json()["sessions"]["active"]
            == 1
        )
        assert alice.get("/v1/health").json()["sessions"]["active"] >= 2
        for client in (ivy, jay):
            workers = client.get("/v1/pool").json()["connections"]
            assert len(workers) == 1  # the worker in its own folder, none of the other user's
        turns = {
            name: sum(p["turns"] for p in c.get("/v1/usage/timeseries").json()["points"])
            for name, c in (("ivy", ivy), ("jay", jay))
        }
        assert turns == {"ivy": 1, "jay": 0}


def test_the_openai_endpoint_takes_the_end_user_from_the_body(server: ServerProcess, alice: httpx.Client) -> None:
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=KEYS["alice"], max_retries=0)
    answer = client.chat.completions.with_raw_response.create(
        model="sonnet", messages=[{"role": "user", "content": "hello"}], user="erin"
    )
    session_id = answer.headers["X-Session-ID"]
    assert alice.get(f"/v1/sessions/{session_id}").json()["user"] == "erin"
    with as_user(server, KEYS["alice"], "frank") as frank:
        assert frank.get(f"/v1/sessions/{session_id}").status_code == 404
    # The same history from the tenant's own key is the tenant's conversation, never erin's.
    reply = answer.parse().choices[0].message.content
    history: list[Any] = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": reply}]
    tenants = client.chat.completions.with_raw_response.create(
        model="sonnet", messages=[*history, {"role": "user", "content": "again"}]
    )
    assert tenants.headers["X-Session-ID"] != session_id
    assert alice.get(f"/v1/sessions/{tenants.headers['X-Session-ID']}").json()["user"] is None
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="sonnet", messages=[{"role": "user", "content": "x"}], user="..")


@pytest.mark.skipif(not bubblewrap_usable(), reason="bubblewrap (bwrap, socat) is not usable here")
def test_one_users_bash_cannot_read_another_users_files(server: ServerProcess, admin: httpx.Client) -> None:
    home = server.root / "workspaces" / "alice"
    faster = new_key(admin, tenant="alice", user="gina", limits={"turns_per_minute": 10})  # over USER_*'s 3
    with as_user(server, faster["key"]) as gina, as_user(server, KEYS["alice"], "hank") as hank:
        assert gina.post("/v1/sessions", json={"session_id": "g", "allowed_tools": ["Bash"]}).status_code == 201
        assert hank.post("/v1/sessions", json={"session_id": "h", "allowed_tools": ["Bash"]}).status_code == 201
        (home / "hank" / "secret.txt").write_text("HANKS-SECRET")
        mine = gina.post("/v1/sessions/g/messages?stream=false", json={"content": bash("echo mine > own.txt; pwd")})
        assert "<workspace>/gina " in mine.json()["text"] and (home / "gina" / "own.txt").exists()
        for command in (f"cat {home / 'hank' / 'secret.txt'}", "cat ../hank/secret.txt"):
            answer = gina.post("/v1/sessions/g/messages?stream=false", json={"content": bash(command)})
            assert answer.status_code == 200 and "HANKS-SECRET" not in answer.text
        listing = gina.post("/v1/sessions/g/messages?stream=false", json={"content": bash(f"ls {home / 'hank'}")})
        assert listing.status_code == 200 and "secret.txt" not in listing.json()["text"]
        hank.delete("/v1/sessions/h")
        gina.delete("/v1/sessions/g")


def bash(command: str) -> str:
    return tool("Bash", command=command, description="probe")
