"""Bearer keys to principals: which tenant calls, and whether it is the admin."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from claude_sessions.config import RESERVED_TENANT, ServerConfig

ADMIN_TENANT = RESERVED_TENANT


@dataclass(frozen=True)
class Principal:
    """Who is calling. ``tenant`` is None for the operator of a keyless (loopback) server."""

    tenant: str | None
    is_admin: bool


OPERATOR = Principal(tenant=None, is_admin=True)


class Authenticator:
    """Checks ``Authorization: Bearer <key>`` against ``API_KEYS`` and ``ADMIN_API_KEY``.

    Every configured key is compared, in constant time, whatever matches first:
    the time taken says nothing about which key (or which prefix) was close.
    """

    def __init__(self, server: ServerConfig) -> None:
        self._keys: list[tuple[bytes, Principal]] = [
            (key.encode(), Principal(tenant, is_admin=False)) for tenant, key in server.tenant_keys()
        ]
        if server.ADMIN_API_KEY is not None and server.ADMIN_API_KEY.get_secret_value():
            self._keys.append((server.ADMIN_API_KEY.get_secret_value().encode(), Principal(ADMIN_TENANT, True)))

    def principals(self) -> list[Principal]:
        """Everyone who holds a key."""
        return [principal for _, principal in self._keys]

    @property
    def is_open(self) -> bool:
        """No keys configured: the server must only listen on loopback."""
        return not self._keys

    def authenticate(self, authorization: str | None) -> Principal | None:
        if self.is_open:
            return OPERATOR
        scheme, _, token = (authorization or "").partition(" ")
        presented = token.strip().encode() if scheme.lower() == "bearer" else b""
        found: Principal | None = None
        for key, principal in self._keys:
            if hmac.compare_digest(key, presented) and found is None:
                found = principal
        return found
