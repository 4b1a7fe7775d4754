"""A session's options (``SessionConfig``): what its CLI starts with, checked before it reaches a command line.

Equal options share pooled workers. The names and patterns here are also the server's policy's
(``config``) and the HTTP API's.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

PermissionMode = Literal["default", "acceptEdits", "plan", "bypassPermissions", "dontAsk", "auto"]

#: An end user of a tenant (``X-End-User``, a key bound to one): a folder name of its workspace too, so
#: never a leading dot (``.``, ``..`` and hidden names are refused).
END_USER = re.compile(r"[A-Za-z0-9_@-][A-Za-z0-9._@-]{0,127}")


def _json_or_none(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError:
        return None


def is_end_user(name: str) -> bool:
    return bool(END_USER.fullmatch(name))


#: Never a leading "-": every value ends up on the CLI's command line, after its flag.
_MODEL_NAME = r"^[A-Za-z0-9._:@/\[\]][A-Za-z0-9._:@/\[\]-]*$"
_ASKED_TOOL = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,127}")
_TOOL_NAME = re.compile(r"[A-Za-z0-9_.*:()\[\]/@][A-Za-z0-9_.*:()\[\], /@-]{0,199}")


class SessionConfig(BaseModel):
    """Per-session options. Equal options share pooled workers.

    Every value ends up on the CLI's command line, so control characters and
    odd tool or model names are refused here rather than by a failing process.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    system_prompt: str | None = Field(None, max_length=100_000)
    max_turns: int | None = Field(None, ge=1, le=1000)
    model: str | None = Field(None, min_length=1, max_length=200, pattern=_MODEL_NAME)
    allowed_tools: tuple[str, ...] = Field((), max_length=100)
    disallowed_tools: tuple[str, ...] = Field((), max_length=100)
    #: Tools whose calls the session's user approves one by one (the turn pauses for the answer).
    ask_tools: tuple[str, ...] = Field((), max_length=100)
    permission_mode: PermissionMode | None = None
    cwd: str | None = Field(None, min_length=1, max_length=1024)
    #: A JSON schema every answer must fit (the CLI's structured output), as canonical JSON text: a
    #: turn's option (``response_format``), its own CLI (the schema is fixed when a CLI starts).
    output_schema: str | None = Field(None, max_length=100_000)
    #: The tenant's end user the session belongs to: its ``cwd`` lies in that user's folder, and no
    #: worker passes between users (equal options only).
    user: str | None = Field(None, max_length=128)

    @field_validator("allowed_tools", "disallowed_tools")
    @classmethod
    def _tool_names(cls, tools: tuple[str, ...]) -> tuple[str, ...]:
        for tool in tools:
            if not _TOOL_NAME.fullmatch(tool):
                raise ValueError(f"invalid tool name {tool[:50]!r}")
        return tools

    @field_validator("ask_tools")
    @classmethod
    def _asked_tools(cls, tools: tuple[str, ...]) -> tuple[str, ...]:
        for tool in tools:
            if not _ASKED_TOOL.fullmatch(tool):
                raise ValueError(f"invalid tool name {tool[:50]!r} (a tool's name, not a rule)")
        return tools

    @field_validator("output_schema")
    @classmethod
    def _schema(cls, schema: str | None) -> str | None:
        if schema is not None and not isinstance(_json_or_none(schema), dict):
            raise ValueError("must be a JSON object (a JSON schema)")
        return schema

    @field_validator("user")
    @classmethod
    def _end_user(cls, user: str | None) -> str | None:
        if user is not None and not is_end_user(user):
            raise ValueError(f"must match {END_USER.pattern}")
        return user

    @field_validator("system_prompt", "cwd")
    @classmethod
    def _no_nul(cls, text: str | None) -> str | None:
        if text is not None and "\x00" in text:
            raise ValueError("must not contain NUL characters")
        return text

    @property
    def fingerprint(self) -> str:
        """Stable key of the options: workers are interchangeable only within one key."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]
