"""Configuration: the seed's environment variables, validated once at start.

Every section is a pydantic-settings model, so a bad value fails early with
:class:`ConfigError`, a one-line message that names the variable.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .errors import ConfigError

PermissionMode = Literal["default", "acceptEdits", "plan", "bypassPermissions", "dontAsk", "auto"]


class _Section(BaseSettings):
    """A section read from the environment; attribute names are the seed's."""

    model_config = SettingsConfigDict(validate_assignment=True, extra="ignore")


class SessionManagerConfig(_Section):
    model_config = SettingsConfigDict(env_prefix="SM_")

    MAX_SESSIONS: int = Field(50, ge=1)
    TIMEOUT_MINUTES: float = Field(30.0, gt=0)
    CLEANUP_INTERVAL: float = Field(5.0, gt=0, description="minutes between maintenance runs")


class ConnectionPoolConfig(_Section):
    model_config = SettingsConfigDict(env_prefix="CP_")

    MAX_SIZE: int = Field(10, ge=0)
    MIN_SIZE: int = Field(2, ge=0)
    MAX_AGE_MINUTES: float = Field(60.0, gt=0)
    MAX_USES: int = Field(100, ge=1)

    @model_validator(mode="after")
    def _min_within_max(self) -> ConnectionPoolConfig:
        if self.MIN_SIZE > self.MAX_SIZE:
            raise ValueError(f"CP_MIN_SIZE ({self.MIN_SIZE}) must not exceed CP_MAX_SIZE ({self.MAX_SIZE})")
        return self


class OptimizationConfig(_Section):
    model_config = SettingsConfigDict(env_prefix="OPT_")

    CREATE_TIMEOUT: float = Field(30.0, gt=0)
    DESTROY_TIMEOUT: float = Field(15.0, gt=0)
    MESSAGE_TIMEOUT: float = Field(300.0, gt=0)
    #: Bounds the CLI's own retries so an API outage cannot hang a turn for minutes.
    CLI_MAX_RETRIES: int = Field(2, ge=0)
    CLI_API_TIMEOUT: float = Field(60.0, gt=0, description="seconds per model request")


class RuntimeConfig(_Section):
    """Where the CLI keeps its files and which model endpoint it talks to."""

    DATA_DIR: Path = Field(Path(".data"), validation_alias="CLAUDE_SESSIONS_DATA_DIR")
    CLAUDE_CONFIG_DIR: Path | None = Field(None, validation_alias="CLAUDE_CONFIG_DIR")
    WORKSPACE_ROOT: Path | None = Field(None, validation_alias="WORKSPACE_ROOT")
    ANTHROPIC_BASE_URL: str | None = Field(None, validation_alias="ANTHROPIC_BASE_URL")
    ANTHROPIC_API_KEY: str | None = Field(None, validation_alias="ANTHROPIC_API_KEY")

    @property
    def config_dir(self) -> Path:
        return (self.CLAUDE_CONFIG_DIR or self.DATA_DIR / "claude").resolve()

    @property
    def workspace_root(self) -> Path:
        return (self.WORKSPACE_ROOT or self.DATA_DIR / "workspaces").resolve()


SectionT = TypeVar("SectionT", bound=_Section)


def _load(section: type[SectionT]) -> SectionT:
    """Read one section from the environment, or raise a one-line :class:`ConfigError`."""
    try:
        return section()
    except ValidationError as error:
        prefix = section.model_config.get("env_prefix", "")
        first = error.errors()[0]
        message = str(first["msg"]).removeprefix("Value error, ")
        if not first["loc"]:
            raise ConfigError(f"invalid configuration: {message}") from None
        field = str(first["loc"][0])
        raise ConfigError(f"invalid {prefix}{field}={first.get('input')!r}: {message}") from None


class SystemConfig(BaseModel):
    """All sections together; ``SystemConfig.from_env()`` reads the environment."""

    session_manager: SessionManagerConfig = Field(default_factory=lambda: _load(SessionManagerConfig))
    connection_pool: ConnectionPoolConfig = Field(default_factory=lambda: _load(ConnectionPoolConfig))
    optimization: OptimizationConfig = Field(default_factory=lambda: _load(OptimizationConfig))
    runtime: RuntimeConfig = Field(default_factory=lambda: _load(RuntimeConfig))

    @classmethod
    def from_env(cls) -> SystemConfig:
        return cls()


class SessionConfig(BaseModel):
    """Per-session options. Equal options share pooled workers."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    system_prompt: str | None = Field(None, max_length=100_000)
    max_turns: int | None = Field(None, ge=1, le=1000)
    model: str | None = Field(None, min_length=1, max_length=200)
    allowed_tools: tuple[str, ...] = ()
    disallowed_tools: tuple[str, ...] = ()
    permission_mode: PermissionMode | None = None
    cwd: str | None = None

    @field_validator("allowed_tools", "disallowed_tools")
    @classmethod
    def _tool_names(cls, tools: tuple[str, ...]) -> tuple[str, ...]:
        for tool in tools:
            if not tool or len(tool) > 200:
                raise ValueError("tool names must be 1-200 characters")
        return tools

    @property
    def fingerprint(self) -> str:
        """Stable key of the options: workers are interchangeable only within one key."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]
