"""Bearer keys to principals."""

from __future__ import annotations

from pydantic import SecretStr

from claude_sessions.config import ServerConfig
from claude_sessions.http.auth import OPERATOR, Authenticator, Principal


def authenticator(keys: str = "", admin: str | None = None) -> Authenticator:
    return Authenticator(ServerConfig(API_KEYS=SecretStr(keys), ADMIN_API_KEY=SecretStr(admin) if admin else None))


async def test_without_keys_the_caller_is_the_operator() -> None:
    open_server = authenticator()
    assert open_server.is_open
    assert await open_server.authenticate(None) == OPERATOR


async def test_tenant_and_admin_keys() -> None:
    auth = authenticator("acme:k1,globex:k2", admin="root-key")
    assert not auth.is_open
    assert await auth.authenticate("Bearer k1") == Principal("acme", is_admin=False)
    assert await auth.authenticate("bearer k2") == Principal("globex", is_admin=False)
    assert await auth.authenticate("Bearer root-key") == Principal("admin", is_admin=True)


async def test_only_a_run_time_keys_shape_costs_a_registry_read() -> None:
    reads: list[str] = []

    class Keys:
        async def find(self, digest: str) -> None:
            reads.append(digest)

    auth = Authenticator(ServerConfig(API_KEYS=SecretStr("acme:k1")), Keys())  # type: ignore[arg-type]
    for header in ("Bearer k1", "Bearer guess", "Bearer csk_guess", "Bearer csk_guess"):
        await auth.authenticate(header)
    assert len(reads) == 1  # the configured key and a non-key shape: no read; the same csk_ one: cached


async def test_missing_wrong_or_partial_keys_are_refused() -> None:
    auth = authenticator("acme:secret")
    for header in [None, "", "Bearer", "Bearer secre", "Bearer secret2", "Basic secret", "secret"]:
        assert await auth.authenticate(header) is None
