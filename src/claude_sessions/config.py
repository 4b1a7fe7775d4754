"""Configuration: the seed's environment variables, validated once at start.

Every section is a pydantic-settings model, so a bad value fails early with
:class:`ConfigError`, a one-line message that names the variable.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Literal, TypeVar, cast, get_args

from pydantic import (
    BaseModel,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from claude_sessions.errors import ConfigError
from claude_sessions.session_config import _ASKED_TOOL as _ASKED_TOOL
from claude_sessions.session_config import _MODEL_NAME as _MODEL_NAME
from claude_sessions.session_config import _TOOL_NAME as _TOOL_NAME
from claude_sessions.session_config import END_USER as END_USER
from claude_sessions.session_config import PermissionMode as PermissionMode
from claude_sessions.session_config import SessionConfig as SessionConfig
from claude_sessions.session_config import is_end_user as is_end_user

#: Tools that write or run code: only a sandboxed server may offer them (``TOOLS_ALLOWED``).
SANDBOXED_TOOLS = frozenset({"Bash", "Write", "Edit", "MultiEdit", "NotebookEdit"})


def tool_name(rule: str) -> str:
    """``Bash(ls:*)`` -> ``Bash``: the tool a permission rule is about."""
    return rule.partition("(")[0].strip()


def tools_needing_sandbox(rules: Iterable[str]) -> list[str]:
    """The rules of ``rules`` (``TOOLS_ALLOWED``) that only a sandboxed server may grant."""
    return sorted(rule for rule in rules if tool_name(rule) in SANDBOXED_TOOLS)


class _Section(BaseSettings):
    """A section read from the environment; attribute names are the seed's."""

    model_config = SettingsConfigDict(validate_assignment=True, extra="ignore")


class SessionManagerConfig(_Section):
    model_config = SettingsConfigDict(env_prefix="SM_")

    MAX_SESSIONS: int = Field(50, ge=1)
    TIMEOUT_MINUTES: float = Field(30.0, gt=0)
    CLEANUP_INTERVAL: float = Field(5.0, gt=0, description="minutes between maintenance runs")
    IDLE_RELEASE_MINUTES: float = Field(5.0, gt=0, description="idle time after which a session's worker is freed")
    TRANSCRIPT_RETENTION_DAYS: float = Field(30.0, ge=0, description="how long removed sessions' transcripts stay")


class ConnectionPoolConfig(_Section):
    model_config = SettingsConfigDict(env_prefix="CP_")

    MAX_SIZE: int = Field(10, ge=0)
    MIN_SIZE: int = Field(2, ge=0)
    MAX_AGE_MINUTES: float = Field(60.0, gt=0)
    MAX_USES: int = Field(100, ge=1)
    #: CLI processes alive at once (idle and bound); None: as many as SM_MAX_SESSIONS.
    MAX_LIVE: int | None = Field(None, ge=1)

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
    #: The operator's credentials: only the model gateway holds them, never a CLI.
    ANTHROPIC_API_KEY: SecretStr | None = Field(None, validation_alias="ANTHROPIC_API_KEY")
    ANTHROPIC_AUTH_TOKEN: SecretStr | None = Field(None, validation_alias="ANTHROPIC_AUTH_TOKEN")
    #: The CLI's OS sandbox (bubblewrap) for every session; ``auto``: on when it runs here.
    SANDBOX: Literal["auto", "on", "off"] = Field("auto", validation_alias="SANDBOX")
    #: What one session's tools may take: memory, processes and threads, a CPU share, and its
    #: tenant's workspace size. ``auto``: on where the host can enforce them.
    LIMITS: Literal["auto", "on", "off"] = Field("auto", validation_alias="LIMITS")
    SESSION_MEMORY_MB: int = Field(2048, ge=16, validation_alias="SESSION_MEMORY_MB")
    SESSION_PIDS_MAX: int = Field(256, ge=16, validation_alias="SESSION_PIDS_MAX")
    WORKSPACE_MAX_MB: int = Field(1024, ge=8, validation_alias="WORKSPACE_MAX_MB")
    _workspace_root: Path = PrivateAttr()

    @property
    def has_model_credentials(self) -> bool:
        """An Anthropic key, token or endpoint is given (the CLI's OAuth token in the environment);
        without any, nothing but the offline model can answer."""
        given = self.ANTHROPIC_BASE_URL or self.ANTHROPIC_API_KEY or self.ANTHROPIC_AUTH_TOKEN
        return bool(given or os.environ.get("CLAUDE_CODE_OAUTH_TOKEN"))

    @property
    def config_dir(self) -> Path:
        return (self.CLAUDE_CONFIG_DIR or self.DATA_DIR / "claude").resolve()

    @property
    def workspace_root(self) -> Path:
        return self._workspace_root

    @model_validator(mode="after")
    def _workspaces_hold_nothing_of_ours(self) -> RuntimeConfig:
        """A session's tools reach its workspace: keys, registry and code must lie elsewhere.

        Resolves the root once per change (every cwd check of every turn reads it)."""
        root = self._workspace_root = (self.WORKSPACE_ROOT or self.DATA_DIR / "workspaces").resolve()
        ours = {
            "CLAUDE_CONFIG_DIR": self.config_dir,
            "CLAUDE_SESSIONS_DATA_DIR": self.DATA_DIR.resolve(),
            "the claude-sessions package": Path(__file__).resolve().parent,
        }
        for name, path in ours.items():
            if path.is_relative_to(root):
                raise ValueError(f"WORKSPACE_ROOT ({root}) must not contain {name} ({path})")
        return self


class ClusterConfig(_Section):
    """Several nodes on one PostgreSQL; unset ``DATABASE_URL`` is one node on SQLite."""

    DATABASE_URL: SecretStr | None = Field(None, validation_alias="CLAUDE_SESSIONS_DATABASE_URL")
    NODE_URL: str | None = Field(None, validation_alias="CLAUDE_SESSIONS_NODE_URL")
    LEASE_SECONDS: float = Field(15.0, ge=1, le=3600, validation_alias="CLUSTER_LEASE_SECONDS")

    @field_validator("DATABASE_URL")
    @classmethod
    def _postgres(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a postgresql:// URL")
        return value

    @field_validator("NODE_URL")
    @classmethod
    def _http(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"https?://[^/\s]+", value.rstrip("/")):
            raise ValueError("must be http(s)://host:port")
        return None if value is None else value.rstrip("/")

    @property
    def dsn(self) -> str | None:
        return None if self.DATABASE_URL is None else self.DATABASE_URL.get_secret_value()


_TENANT = re.compile(r"[A-Za-z0-9_-]{1,64}")
RESERVED_TENANT = "admin"


#: Aliases the CLI resolves to more than one family.
_ALIAS_FAMILIES = {"opusplan": ("opus", "sonnet")}


def _comma_list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def _per_tenant_values(value: str, whole: bool) -> dict[str, float]:
    """``tenant:value,...`` with ``*`` for the rest; values positive (whole numbers if ``whole``)."""
    limits: dict[str, float] = {}
    for pair in _comma_list(value):
        tenant, _, raw = pair.partition(":")
        tenant = tenant.strip()
        try:
            number = int(raw) if whole else float(raw)
        except ValueError:
            number = -1
        if not (tenant == "*" or _TENANT.fullmatch(tenant)) or not (0 < number < float("inf")):
            kind = "a whole number" if whole else "an amount"
            raise ValueError(f'expected "tenant:value,..." ("*" for every other tenant) with {kind} above 0: {pair!r}')
        limits[tenant] = number
    return limits


def _for_tenant(limits: dict[str, float], tenant: str) -> float | None:
    return limits.get(tenant, limits.get("*"))


class ServerConfig(_Section):
    """The HTTP service: keys, tenants and what sessions may ask for."""

    API_KEYS: SecretStr = Field(SecretStr(""), validation_alias="API_KEYS")
    ADMIN_API_KEY: SecretStr | None = Field(None, validation_alias="ADMIN_API_KEY")
    TENANT_MAX_SESSIONS: int | None = Field(None, ge=1, validation_alias="TENANT_MAX_SESSIONS")
    TOOLS_ALLOWED: str = Field("", validation_alias="TOOLS_ALLOWED")
    #: Tools a session may have its user approve call by call (``ask_tools``).
    TOOLS_ASK: str = Field("", validation_alias="TOOLS_ASK")
    #: How long an asked call waits for its answer before it is denied.
    PERMISSION_TIMEOUT_SECONDS: float = Field(300.0, gt=0, validation_alias="PERMISSION_TIMEOUT_SECONDS")
    #: How long a turn waits for its OpenAI client's tool results before its calls get error results.
    OPENAI_TOOL_TIMEOUT_SECONDS: float = Field(300.0, gt=0, validation_alias="OPENAI_TOOL_TIMEOUT_SECONDS")
    PERMISSION_MODES_ALLOWED: str = Field("default,plan", validation_alias="PERMISSION_MODES_ALLOWED")
    SLASH_COMMANDS_ALLOWED: str = Field("compact", validation_alias="SLASH_COMMANDS_ALLOWED")
    #: The models a session may name (the OpenAI endpoint's /v1/models); default: the CLI's aliases.
    MODELS_ALLOWED: str = Field("opus,sonnet,haiku", validation_alias="MODELS_ALLOWED")
    #: Other names clients use, each mapped onto an allowed model: ``gpt-4o:sonnet,...``.
    MODEL_ALIASES: str = Field("", validation_alias="MODEL_ALIASES")
    #: Each end user's limits, in every tenant (a key's own limits win).
    USER_MAX_SESSIONS: int | None = Field(None, ge=1, validation_alias="USER_MAX_SESSIONS")
    USER_DAILY_USD: float | None = Field(None, gt=0, validation_alias="USER_DAILY_USD")
    USER_TURNS_PER_MINUTE: int | None = Field(None, ge=1, validation_alias="USER_TURNS_PER_MINUTE")
    #: ``tenant:amount,...`` (``*``: every other tenant): US dollars a tenant may spend per UTC day.
    TENANT_DAILY_USD: str = Field("", validation_alias="TENANT_DAILY_USD")
    #: ``tenant:n,...`` (``*``: every other tenant): turns a tenant may start per minute.
    TENANT_TURNS_PER_MINUTE: str = Field("", validation_alias="TENANT_TURNS_PER_MINUTE")
    HOST: str = Field("127.0.0.1", validation_alias="CLAUDE_SESSIONS_HOST")
    PORT: int = Field(8000, ge=0, le=65535, validation_alias="CLAUDE_SESSIONS_PORT")
    MAX_BODY_BYTES: int = Field(20_971_520, ge=1024, validation_alias="CLAUDE_SESSIONS_MAX_BODY_BYTES")
    #: The largest image a message may carry, decoded (the model API's own limit is 5 MiB).
    IMAGE_MAX_BYTES: int = Field(5_242_880, ge=1, validation_alias="IMAGE_MAX_BYTES")

    @field_validator("API_KEYS")
    @classmethod
    def _api_keys(cls, value: SecretStr) -> SecretStr:
        for pair in _comma_list(value.get_secret_value()):
            tenant, _, key = pair.partition(":")
            if not _TENANT.fullmatch(tenant) or not key:
                raise ValueError('expected "tenant:key,tenant2:key2" with tenants matching [A-Za-z0-9_-]{1,64}')
            if tenant.lower() == RESERVED_TENANT:  # the admin's namespace and workspace are its own
                raise ValueError(f"tenant name {tenant!r} is reserved for ADMIN_API_KEY")
        return value

    @field_validator("TOOLS_ASK")
    @classmethod
    def _tools_ask(cls, value: str) -> str:
        for tool in _comma_list(value):
            if not _ASKED_TOOL.fullmatch(tool):
                raise ValueError(f"{tool[:50]!r} is not a tool name (a rule cannot be asked)")
        return value

    @field_validator("MODELS_ALLOWED")
    @classmethod
    def _models(cls, value: str) -> str:
        for model in _comma_list(value):
            if not re.fullmatch(_MODEL_NAME, model):
                raise ValueError(f"invalid model name {model[:50]!r}")
        if not _comma_list(value):
            raise ValueError("name at least one model")
        return value

    @model_validator(mode="after")
    def _aliases(self) -> ServerConfig:
        for entry in _comma_list(self.MODEL_ALIASES):
            name, _, model = entry.partition(":")
            if not (name.strip() and re.fullmatch(_MODEL_NAME, name.strip()) and model.strip()):
                raise ValueError(f'invalid MODEL_ALIASES entry {entry[:60]!r}: expected "name:model,name2:model2"')
            if self._allowed(model.strip()) is None:
                allowed = ", ".join(self.models_allowed)
                raise ValueError(f"invalid MODEL_ALIASES: {model.strip()!r} is not in MODELS_ALLOWED ({allowed})")
        return self

    @field_validator("PERMISSION_MODES_ALLOWED")
    @classmethod
    def _modes(cls, value: str) -> str:
        known = set(get_args(PermissionMode))
        unknown = [mode for mode in _comma_list(value) if mode not in known]
        if unknown:
            raise ValueError(f"unknown permission modes {unknown}; known: {sorted(known)}")
        if not _comma_list(value):
            raise ValueError("name at least one permission mode (a session runs in one)")
        return value

    @field_validator("TENANT_DAILY_USD", "TENANT_TURNS_PER_MINUTE")
    @classmethod
    def _per_tenant(cls, value: str, info: ValidationInfo) -> str:
        _per_tenant_values(value, whole=info.field_name == "TENANT_TURNS_PER_MINUTE")
        return value

    def daily_usd(self, tenant: str) -> float | None:
        """The tenant's spend limit per UTC day, if any."""
        return _for_tenant(_per_tenant_values(self.TENANT_DAILY_USD, whole=False), tenant)

    def turns_per_minute(self, tenant: str) -> int | None:
        """How many turns the tenant may start per minute, if limited."""
        limit = _for_tenant(_per_tenant_values(self.TENANT_TURNS_PER_MINUTE, whole=True), tenant)
        return None if limit is None else int(limit)

    def tenant_keys(self) -> list[tuple[str, str]]:
        """(tenant, key) pairs; keys stay secret everywhere else (repr, logs)."""
        pairs = (p.partition(":") for p in _comma_list(self.API_KEYS.get_secret_value()))
        return [(tenant, key) for tenant, _, key in pairs]

    @property
    def tools_allowed(self) -> set[str]:
        return set(_comma_list(self.TOOLS_ALLOWED))

    @property
    def tools_ask(self) -> set[str]:
        return set(_comma_list(self.TOOLS_ASK))

    @property
    def permission_modes_allowed(self) -> set[str]:
        return set(_comma_list(self.PERMISSION_MODES_ALLOWED))

    @property
    def default_permission_mode(self) -> PermissionMode:
        """The mode of a session that names none: ``default`` if allowed, else the first allowed."""
        modes = _comma_list(self.PERMISSION_MODES_ALLOWED)
        return cast(PermissionMode, "default" if "default" in modes else modes[0])

    @property
    def models_allowed(self) -> list[str]:
        return _comma_list(self.MODELS_ALLOWED)

    @property
    def default_model(self) -> str:
        """The model of a session that names none: the first of ``MODELS_ALLOWED``."""
        return self.models_allowed[0]

    @property
    def model_aliases(self) -> dict[str, str]:
        pairs = (entry.partition(":") for entry in _comma_list(self.MODEL_ALIASES))
        return {name.strip(): model.strip() for name, _, model in pairs}

    def model_names(self) -> list[str]:
        """Every name a client may ask for by itself: the allowed models, then the aliases."""
        return [*self.models_allowed, *self.model_aliases]

    def resolve_model(self, name: str) -> str | None:
        """The model a session asking for ``name`` runs: an alias's model, an allowed name, or a full
        Claude id of an allowed family (``claude-sonnet-4-5`` where ``sonnet`` is); None if none is."""
        return self._allowed(self.model_aliases.get(name, name))

    def _allowed(self, name: str) -> str | None:
        if name in self.models_allowed or (name.startswith("claude-") and self.permits_model(name)):
            return name
        return None

    def permits_model(self, model: str) -> bool:
        """Whether a model id the CLI calls is one ``MODELS_ALLOWED`` names: an id itself or
        its dated snapshot (``claude-sonnet-4`` covers ``claude-sonnet-4-20250514``, not
        ``claude-sonnet-4-5``), or any id of an alias's family (``opus`` and ``opus[1m]``
        cover ``claude-opus-5-5``; ``opusplan`` plans with opus and works with sonnet)."""
        for name in self.models_allowed:
            name = name.split("[", 1)[0]  # [1m]: a context window, not another model
            if "-" in name:
                if re.fullmatch(rf"{re.escape(name)}(?:-\d{{8}}|-latest)?", model):
                    return True
            elif any(f"-{family}-" in f"-{model}-" for family in _ALIAS_FAMILIES.get(name, (name,))):
                return True
        return False

    @property
    def slash_commands_allowed(self) -> set[str]:
        return {name.removeprefix("/") for name in _comma_list(self.SLASH_COMMANDS_ALLOWED)}


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
        shown = (
            "<secret>" if any(word in field for word in ("KEY", "TOKEN", "URL")) else repr(first.get("input"))
        )  # never echo a key
        raise ConfigError(f"invalid {prefix}{field}={shown}: {message}") from None


class SystemConfig(BaseModel):
    """All sections together; ``SystemConfig.from_env()`` reads the environment."""

    session_manager: SessionManagerConfig = Field(default_factory=lambda: _load(SessionManagerConfig))
    connection_pool: ConnectionPoolConfig = Field(default_factory=lambda: _load(ConnectionPoolConfig))
    optimization: OptimizationConfig = Field(default_factory=lambda: _load(OptimizationConfig))
    runtime: RuntimeConfig = Field(default_factory=lambda: _load(RuntimeConfig))
    server: ServerConfig = Field(default_factory=lambda: _load(ServerConfig))
    cluster: ClusterConfig = Field(default_factory=lambda: _load(ClusterConfig))

    @model_validator(mode="after")
    def _tools_that_write_need_the_sandbox(self) -> SystemConfig:
        """Bash and the editing tools reach the whole host unless the sandbox holds them."""
        for name, tools in (("TOOLS_ALLOWED", self.server.tools_allowed), ("TOOLS_ASK", self.server.tools_ask)):
            unsafe = tools_needing_sandbox(tools)
            if unsafe and self.runtime.SANDBOX == "off":
                raise ValueError(f"invalid {name}: {unsafe} need the sandbox, which is off (SANDBOX=off)")
        return self

    @classmethod
    def from_env(cls) -> SystemConfig:
        try:
            return cls()
        except ValidationError as error:  # a check across sections; each section raises its own
            raise ConfigError(str(error.errors()[0]["msg"]).removeprefix("Value error, ")) from None
