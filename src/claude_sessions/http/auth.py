"""Bearer keys to principals: which tenant calls, for which end user, and whether it is the admin.

Keys come from ``API_KEYS`` and ``ADMIN_API_KEY`` (fixed at start-up) and from the registry
(``POST /v1/admin/keys``, every node). Either way a key is found by the SHA-256 of what was
presented, in one dictionary lookup: no list of keys is walked, and the time taken says
nothing about which key was close. A registry key's answer is kept ``KEY_CACHE_SECONDS``, so a
revoked or expired key is refused on every node within that time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import structlog

from claude_sessions.config import RESERVED_TENANT, ServerConfig
from claude_sessions.errors import DatabaseUnavailableError
from claude_sessions.store.keys import SECRET_PREFIX, KeyStore, digest_of
from claude_sessions.store.records import KeyRecord, UserLimits

log = structlog.get_logger("claude_sessions.api")

ADMIN_TENANT = RESERVED_TENANT
#: How long a registry key's answer (found, revoked, unknown) is trusted before it is read again.
KEY_CACHE_SECONDS = 0.5
#: How often a key's ``last_used_at`` is written, at most.
LAST_USED_EVERY = 60.0
#: Unknown keys remembered at most (each answered 401 without a read for ``KEY_CACHE_SECONDS``).
_CACHE_MAX = 100_000


@dataclass(frozen=True)
class Principal:
    """Who is calling. ``tenant`` is None for the operator of a keyless (loopback) server.

    ``user``: the tenant's end user the caller acts for (a key bound to one, or ``X-End-User``);
    ``bound``: the key itself names that user; ``limits``: the key's own (over ``USER_*``).
    """

    tenant: str | None
    is_admin: bool
    user: str | None = None
    bound: bool = False
    key_id: str | None = None
    limits: UserLimits = field(default_factory=UserLimits)


OPERATOR = Principal(tenant=None, is_admin=True)


def _principal(record: KeyRecord) -> Principal:
    return Principal(record.tenant, False, record.user, record.user is not None, record.key_id, record.limits)


class Authenticator:
    """Checks ``Authorization: Bearer <key>`` against the configured keys, then the registry's."""

    def __init__(self, server: ServerConfig, keys: KeyStore | None = None) -> None:
        self._fixed: dict[str, Principal] = {
            digest_of(key): Principal(tenant, is_admin=False) for tenant, key in server.tenant_keys()
        }
        if server.ADMIN_API_KEY is not None and server.ADMIN_API_KEY.get_secret_value():
            self._fixed[digest_of(server.ADMIN_API_KEY.get_secret_value())] = Principal(ADMIN_TENANT, True)
        self._keys = keys
        #: digest -> (the registry's answer, when it was read), for ``KEY_CACHE_SECONDS``.
        self._cache: dict[str, tuple[KeyRecord | None, float]] = {}

    def principals(self) -> list[Principal]:
        """Everyone who holds a configured key."""
        return list(self._fixed.values())

    @property
    def is_open(self) -> bool:
        """No keys configured: the server must only listen on loopback (and makes none at run time)."""
        return not self._fixed

    async def authenticate(self, authorization: str | None) -> Principal | None:
        if self.is_open:
            return OPERATOR
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        digest = digest_of(token.strip())
        fixed = self._fixed.get(digest)
        if fixed is not None or self._keys is None or not token.strip().startswith(SECRET_PREFIX):
            return fixed  # only a run-time key's shape costs a registry read
        record = await self._lookup(digest)
        return _principal(record) if record is not None and record.is_valid(time.time()) else None

    async def _lookup(self, digest: str) -> KeyRecord | None:
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and now - cached[1] < KEY_CACHE_SECONDS:
            return cached[0]
        assert self._keys is not None
        record = await self._keys.find(digest)
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[digest] = (record, now)
        wall = time.time()
        if record is not None and record.is_valid(wall) and (record.last_used_at or 0) < wall - LAST_USED_EVERY:
            try:
                await self._keys.touch(record.key_id, wall)
            except DatabaseUnavailableError:  # when a key was last used is worth no failed request
                log.warning("key_last_used_not_written", key_id=record.key_id)
        return record
