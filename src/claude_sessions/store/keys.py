"""API keys made at run time (``POST /v1/admin/keys``): stored by the hash of their secret only.

A key is found by that hash in one indexed lookup, whatever the number of keys. The secret is
random (256 bits), so a plain SHA-256 is what finds it: no salt or slow hash is needed for
a value nobody chose, and a stolen table gives no key.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import asdict

from claude_sessions.store.records import Database, KeyRecord, UserLimits

KEYS_SCHEMA = """
CREATE TABLE api_keys (
    key_id TEXT PRIMARY KEY,
    digest TEXT NOT NULL UNIQUE,
    tenant TEXT NOT NULL,
    end_user TEXT,
    name TEXT,
    created_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION,
    revoked_at DOUBLE PRECISION,
    last_used_at DOUBLE PRECISION,
    limits TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX api_keys_tenant ON api_keys (tenant);
"""
#: The migration that brings keys and end users, the same on both backends: the keys, and whose a
#: session, a turn start and a day's spend are.
KEYS_AND_USERS_SCHEMA = (
    KEYS_SCHEMA
    + """
ALTER TABLE sessions ADD COLUMN end_user TEXT;
CREATE INDEX sessions_owner_user ON sessions (owner, end_user);
ALTER TABLE turn_starts ADD COLUMN end_user TEXT;
CREATE INDEX turn_starts_user_at ON turn_starts (tenant, end_user, at);
CREATE TABLE user_usage (
    tenant TEXT NOT NULL,
    end_user TEXT NOT NULL,
    day TEXT NOT NULL,
    cost DOUBLE PRECISION NOT NULL DEFAULT 0,
    tokens BIGINT NOT NULL DEFAULT 0,
    turns BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, end_user, day)
);
"""
)
#: What a key's secret starts with: a scanner (or a person) knows it for one of ours.
SECRET_PREFIX = "csk_"
_COLUMNS = "key_id, tenant, end_user, name, created_at, expires_at, revoked_at, last_used_at, limits"


def digest_of(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _record(row: tuple[object, ...]) -> KeyRecord:
    key_id, tenant, user, name, created, expires, revoked, used, limits = row
    return KeyRecord(
        key_id=str(key_id),
        tenant=str(tenant),
        user=None if user is None else str(user),
        name=None if name is None else str(name),
        created_at=float(created),  # type: ignore[arg-type]
        expires_at=None if expires is None else float(expires),  # type: ignore[arg-type]
        revoked_at=None if revoked is None else float(revoked),  # type: ignore[arg-type]
        last_used_at=None if used is None else float(used),  # type: ignore[arg-type]
        limits=UserLimits(**json.loads(str(limits))),
    )


class KeyStore:
    """Keys by tenant and by the hash of their secret; revoked ones stay listed, refused."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(
        self, tenant: str, user: str | None, name: str | None, expires_at: float | None, limits: UserLimits
    ) -> tuple[KeyRecord, str]:
        """A new key and its secret (shown once: only its hash is kept)."""
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        record = KeyRecord("key_" + secrets.token_hex(8), tenant, user, name, time.time(), expires_at, limits=limits)
        async with self.db.transaction() as tx:
            await tx.run(
                f"INSERT INTO api_keys (digest, {_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    digest_of(secret),
                    record.key_id,
                    tenant,
                    user,
                    name,
                    record.created_at,
                    expires_at,
                    None,
                    None,
                    json.dumps(asdict(limits)),
                ),
            )
        return record, secret

    async def find(self, digest: str) -> KeyRecord | None:
        async with self.db.transaction() as tx:
            rows = await tx.run(f"SELECT {_COLUMNS} FROM api_keys WHERE digest = ?", (digest,))
        return _record(rows[0]) if rows else None

    async def listing(self, tenant: str | None) -> list[KeyRecord]:
        where, params = ("", ()) if tenant is None else (" WHERE tenant = ?", (tenant,))
        async with self.db.transaction() as tx:
            rows = await tx.run(f"SELECT {_COLUMNS} FROM api_keys{where} ORDER BY created_at, key_id", params)
        return [_record(row) for row in rows]

    async def revoke(self, key_id: str) -> bool:
        """Refuse the key from now on (every node within its cache's life); False if there is none."""
        async with self.db.transaction() as tx:
            await tx.run(
                "UPDATE api_keys SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL", (time.time(), key_id)
            )
            return bool(await tx.run("SELECT 1 FROM api_keys WHERE key_id = ?", (key_id,)))

    async def touch(self, key_id: str, now: float) -> None:
        async with self.db.transaction() as tx:
            await tx.run("UPDATE api_keys SET last_used_at = ? WHERE key_id = ?", (now, key_id))
