"""Configuration from the environment: seed defaults, fractions, one-line errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from claude_sessions import ConfigError, SessionConfig, SystemConfig
from claude_sessions.workers.options import cli_env


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for prefix in ("SM_", "CP_", "OPT_"):
        for key in list(os.environ):
            if key.startswith(prefix):
                monkeypatch.delenv(key)


def test_seed_defaults() -> None:
    config = SystemConfig.from_env()
    assert config.session_manager.MAX_SESSIONS == 50
    assert config.session_manager.TIMEOUT_MINUTES == 30
    assert config.session_manager.CLEANUP_INTERVAL == 5
    assert (config.connection_pool.MAX_SIZE, config.connection_pool.MIN_SIZE) == (10, 2)
    assert (config.connection_pool.MAX_AGE_MINUTES, config.connection_pool.MAX_USES) == (60, 100)
    assert config.optimization.CREATE_TIMEOUT == 30.0
    assert config.optimization.DESTROY_TIMEOUT == 15.0
    assert config.optimization.MESSAGE_TIMEOUT == 300.0


def test_every_variable_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    values = {
        "SM_MAX_SESSIONS": "7",
        "SM_TIMEOUT_MINUTES": "0.05",
        "SM_CLEANUP_INTERVAL": "0.5",
        "CP_MAX_SIZE": "4",
        "CP_MIN_SIZE": "1",
        "CP_MAX_AGE_MINUTES": "2.5",
        "CP_MAX_USES": "9",
        "OPT_CREATE_TIMEOUT": "3",
        "OPT_DESTROY_TIMEOUT": "4",
        "OPT_MESSAGE_TIMEOUT": "5",
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    config = SystemConfig.from_env()
    assert config.session_manager.MAX_SESSIONS == 7
    assert pytest.approx(3.0) == config.session_manager.TIMEOUT_MINUTES * 60  # fractional minutes
    assert config.session_manager.CLEANUP_INTERVAL == 0.5
    assert (config.connection_pool.MAX_SIZE, config.connection_pool.MIN_SIZE) == (4, 1)
    assert (config.connection_pool.MAX_AGE_MINUTES, config.connection_pool.MAX_USES) == (2.5, 9)
    assert (config.optimization.CREATE_TIMEOUT, config.optimization.DESTROY_TIMEOUT) == (3, 4)
    assert config.optimization.MESSAGE_TIMEOUT == 5


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SM_MAX_SESSIONS", "lots"),
        ("SM_MAX_SESSIONS", "0"),
        ("SM_TIMEOUT_MINUTES", "-1"),
        ("CP_MAX_SIZE", "2.5"),
        ("OPT_MESSAGE_TIMEOUT", "soon"),
        ("CP_MAX_USES", ""),
    ],
)
def test_invalid_value_fails_with_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as caught:
        SystemConfig.from_env()
    message = str(caught.value)
    assert variable in message and "\n" not in message


def test_min_size_above_max_size_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CP_MIN_SIZE", "5")
    monkeypatch.setenv("CP_MAX_SIZE", "2")
    with pytest.raises(ConfigError, match=r"CP_MIN_SIZE .* CP_MAX_SIZE") as caught:
        SystemConfig.from_env()
    assert "\n" not in str(caught.value)


def test_programmatic_changes_are_validated() -> None:
    config = SystemConfig.from_env()
    config.session_manager.MAX_SESSIONS = 100
    assert config.session_manager.MAX_SESSIONS == 100
    with pytest.raises(ValueError):
        config.session_manager.MAX_SESSIONS = -1


def test_equal_session_options_share_a_fingerprint() -> None:
    assert SessionConfig(system_prompt="x").fingerprint == SessionConfig(system_prompt="x").fingerprint
    assert SessionConfig(system_prompt="x").fingerprint != SessionConfig(system_prompt="y").fingerprint
    assert SessionConfig().fingerprint != SessionConfig(model="claude-haiku-4-5").fingerprint


def test_session_options_reject_unknown_fields_and_bad_values() -> None:
    with pytest.raises(ValueError):
        SessionConfig(colour="blue")  # type: ignore[call-arg]
    with pytest.raises(ValueError):
        SessionConfig(max_turns=0)
    with pytest.raises(ValueError):
        SessionConfig(permission_mode="yolo")


@pytest.mark.parametrize("tenant", ["admin", "Admin", "ADMIN"])
def test_a_tenant_named_admin_is_refused(monkeypatch: pytest.MonkeyPatch, tenant: str) -> None:
    monkeypatch.setenv("API_KEYS", f"acme:k1,{tenant}:tenant-secret")
    with pytest.raises(ConfigError) as caught:
        SystemConfig.from_env()
    message = str(caught.value)
    assert message.startswith("invalid API_KEYS=<secret>: ") and "admin" in message.lower() and "\n" not in message
    assert "tenant-secret" not in message


def test_the_anthropic_api_key_is_secret(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-very-secret")
    monkeypatch.setenv("CLAUDE_SESSIONS_DATA_DIR", str(tmp_path))
    config = SystemConfig.from_env()
    assert "sk-ant-very-secret" not in repr(config) and "sk-ant-very-secret" not in str(config.model_dump())
    env = cli_env(config, "http://127.0.0.1:1", "csg-worker-token")
    assert env["ANTHROPIC_API_KEY"] == "csg-worker-token"  # the CLI gets its own token, never the key
    assert "sk-ant-very-secret" not in env.values()


def test_permission_modes_need_one_and_the_default_is_default_or_the_first(monkeypatch: pytest.MonkeyPatch) -> None:
    assert SystemConfig.from_env().server.default_permission_mode == "default"
    monkeypatch.setenv("PERMISSION_MODES_ALLOWED", "plan,default")
    assert SystemConfig.from_env().server.default_permission_mode == "default"
    monkeypatch.setenv("PERMISSION_MODES_ALLOWED", "plan,acceptEdits")
    assert SystemConfig.from_env().server.default_permission_mode == "plan"
    monkeypatch.setenv("PERMISSION_MODES_ALLOWED", " , ")
    with pytest.raises(ConfigError, match="PERMISSION_MODES_ALLOWED"):
        SystemConfig.from_env()


def test_a_cli_reaches_the_gateway_past_the_operators_proxy(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CLAUDE_SESSIONS_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.corp.example:3128")
    monkeypatch.setenv("NO_PROXY", "intranet.example")
    env = cli_env(SystemConfig.from_env(), "http://127.0.0.1:1", "csg-worker-token")
    assert env.get("HTTPS_PROXY", os.environ["HTTPS_PROXY"]) == "http://proxy.corp.example:3128"  # for its web tools
    assert env["NO_PROXY"] == env["no_proxy"] == "intranet.example,127.0.0.1,localhost"


def test_models_allowed_covers_an_aliases_family_and_a_names_dated_versions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELS_ALLOWED", "haiku,claude-sonnet-4,opus[1m]")
    server = SystemConfig.from_env().server
    for model in ("claude-haiku-5-5", "claude-3-5-haiku-20241022", "claude-sonnet-4", "claude-sonnet-4-20250514"):
        assert server.permits_model(model), model
    assert server.permits_model("claude-opus-5-5")  # [1m] names a context window
    for model in ("claude-sonnet-4-5", "claude-sonnet-4-6", "claude-sonnet-4-5-20250929", "haikus", "", "opus1"):
        assert not server.permits_model(model), model
    monkeypatch.setenv("MODELS_ALLOWED", "opusplan")
    server = SystemConfig.from_env().server
    assert server.permits_model("claude-opus-5-5") and server.permits_model("claude-sonnet-5")
    assert not server.permits_model("claude-haiku-5-5")


def test_a_full_claude_id_of_an_allowed_family_and_an_alias_resolve_to_a_model(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MODELS_ALLOWED", "sonnet,haiku")
    monkeypatch.setenv("MODEL_ALIASES", "gpt-4o:sonnet, gpt-4o-mini:claude-haiku-4-5")
    server = SystemConfig.from_env().server
    assert server.resolve_model("sonnet") == "sonnet"
    assert server.resolve_model("claude-sonnet-4-5") == "claude-sonnet-4-5"
    assert server.resolve_model("claude-sonnet-4-5-20250929") == "claude-sonnet-4-5-20250929"
    assert server.resolve_model("gpt-4o") == "sonnet" and server.resolve_model("gpt-4o-mini") == "claude-haiku-4-5"
    for refused in ("claude-opus-4-5", "opus", "gpt-5", "sonnet-ish", "claude-"):
        assert server.resolve_model(refused) is None, refused
    assert server.model_names() == ["sonnet", "haiku", "gpt-4o", "gpt-4o-mini"]


@pytest.mark.parametrize(
    ("aliases", "says"),
    [("gpt-4o", "expected"), ("gpt-4o:opus", "'opus' is not in MODELS_ALLOWED"), (":sonnet", "expected")],
)
def test_a_bad_model_alias_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, aliases: str, says: str
) -> None:
    monkeypatch.setenv("MODELS_ALLOWED", "sonnet")
    monkeypatch.setenv("MODEL_ALIASES", aliases)
    with pytest.raises(ConfigError, match="MODEL_ALIASES") as refused:
        SystemConfig.from_env()
    assert says in str(refused.value)
