"""Keys managed at run time (admin only): create one for a tenant or one of its end users, list, revoke.

A key's secret is answered once, at creation, and stored only as its hash (``store/keys.py``);
every node finds it in the registry, and refuses it within ``KEY_CACHE_SECONDS`` of its
revocation or expiry. ``API_KEYS`` keeps working beside them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from claude_sessions.config import _TENANT, END_USER, RESERVED_TENANT
from claude_sessions.http.common import Admin, ApiError, ServiceDep, error_responses
from claude_sessions.store.records import KeyRecord, UserLimits

router = APIRouter(tags=["keys"])


class KeyLimits(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    max_sessions: int | None = Field(None, ge=1, description="sessions its end user may hold at once")
    daily_usd: float | None = Field(None, gt=0, description="US dollars its end user may spend per UTC day")
    turns_per_minute: int | None = Field(None, ge=1, description="turns its end user may start per minute")


class CreateKeyBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    tenant: str = Field(pattern=rf"^{_TENANT.pattern}$", description="tenants exist by their keys: any name but admin")
    user: str | None = Field(None, pattern=rf"^{END_USER.pattern}$", description="bind the key to this end user")
    name: str | None = Field(None, max_length=200, description="what the key is for, for people")
    expires_at: AwareDatetime | None = Field(None, strict=False, description="RFC 3339, with its offset")
    limits: KeyLimits = Field(default_factory=KeyLimits, description="the end user's limits, over USER_*")

    @field_validator("tenant")
    @classmethod
    def _not_admin(cls, tenant: str) -> str:
        if tenant.lower() == RESERVED_TENANT:
            raise ValueError("the tenant name admin is reserved for ADMIN_API_KEY")
        return tenant


class KeyObject(BaseModel):
    key_id: str
    tenant: str
    user: str | None
    name: str | None
    created_at: str = Field(json_schema_extra={"format": "date-time"})
    expires_at: str | None = Field(json_schema_extra={"format": "date-time"})
    limits: KeyLimits
    last_used_at: str | None = Field(None, json_schema_extra={"format": "date-time"})
    revoked_at: str | None = Field(None, json_schema_extra={"format": "date-time"})


class NewKey(KeyObject):
    key: str = Field(description="the secret: shown this once, stored only as its hash")


class KeyList(BaseModel):
    keys: list[KeyObject]


def _iso(timestamp: float | None) -> str | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, UTC).isoformat()


def key_json(record: KeyRecord) -> dict[str, Any]:
    return {
        "key_id": record.key_id,
        "tenant": record.tenant,
        "user": record.user,
        "name": record.name,
        "created_at": _iso(record.created_at),
        "expires_at": _iso(record.expires_at),
        "limits": {
            "max_sessions": record.limits.max_sessions,
            "daily_usd": record.limits.daily_usd,
            "turns_per_minute": record.limits.turns_per_minute,
        },
        "last_used_at": _iso(record.last_used_at),
        "revoked_at": _iso(record.revoked_at),
    }


@router.post(
    "/v1/admin/keys",
    status_code=201,
    response_model=None,
    responses={
        201: {"model": NewKey, "description": "The key, its secret shown once."},
        **error_responses(401, 403, 422),
    },
)
async def create_key(body: CreateKeyBody, _: Admin, service: ServiceDep) -> dict[str, Any]:
    if service.authenticator.is_open:
        message = "this server runs without keys (no API_KEYS or ADMIN_API_KEY): a key made here would not be asked for"
        raise ApiError(422, "invalid_request", message)
    expires = None if body.expires_at is None else body.expires_at.timestamp()
    if expires is not None and expires <= datetime.now(UTC).timestamp():
        raise ApiError(422, "invalid_request", "expires_at: must be in the future", extra={"param": "expires_at"})
    limits = UserLimits(body.limits.max_sessions, body.limits.daily_usd, body.limits.turns_per_minute)
    record, secret = await service.keys.create(body.tenant, body.user, body.name, expires, limits)
    return {**key_json(record), "key": secret}


@router.get(
    "/v1/admin/keys",
    response_model=None,
    responses={
        200: {"model": KeyList, "description": "Keys made at run time, without secrets."},
        **error_responses(401, 403, 422),
    },
)
async def list_keys(
    _: Admin,
    service: ServiceDep,
    tenant: Annotated[str | None, Query(pattern=rf"^{_TENANT.pattern}$", description="one tenant's keys")] = None,
) -> dict[str, Any]:
    return {"keys": [key_json(record) for record in await service.keys.listing(tenant)]}


@router.delete(
    "/v1/admin/keys/{key_id}", status_code=204, response_class=Response, responses=error_responses(401, 403, 404, 422)
)
async def revoke_key(
    key_id: Annotated[str, Path(max_length=200, description="the key's id (not its secret)")],
    _: Admin,
    service: ServiceDep,
) -> Response:
    if not await service.keys.revoke(key_id):
        raise ApiError(404, "not_found", f"key {key_id!r} not found")
    return Response(status_code=204)
