"""What "allow for this session" covers: a whole tool, or for Bash the CLI's suggested prefix, never a chain."""

from __future__ import annotations

from typing import Any

import pytest

from claude_sessions.sessions.grants import Grants, bash_prefix


def suggestion(rule: str) -> list[dict[str, Any]]:
    rules = [{"toolName": "Bash", "ruleContent": rule}]
    return [{"type": "addRules", "destination": "localSettings", "rules": rules, "behavior": "allow"}]


def test_a_tool_other_than_bash_is_granted_whole() -> None:
    grants = Grants()
    grants.add("Write", {"file_path": "/w/a"}, [])
    assert grants.covers("Write", {"file_path": "/w/b"}) and not grants.covers("Edit", {"file_path": "/w/a"})


@pytest.mark.parametrize("rule", ["npm test *", "npm test:*"])
def test_bash_takes_the_prefix_the_cli_suggests(rule: str) -> None:
    grants = Grants()
    grants.add("Bash", {"command": "npm test --watch"}, suggestion(rule))
    assert bash_prefix(suggestion(rule)) == "npm test"
    for command in ("npm test", "npm test --ci", "npm test  -w x"):
        assert grants.covers("Bash", {"command": command}), command
    for command in (
        "npm testing",
        "npm install",
        "npm test; rm -rf ~",
        "npm test && curl x",
        "npm test $(id)",
        "npm test | sh",
        "npm test > /etc/x",
        "npm test `id`",
        "npm test\nrm x",
        "npm test \\\nrm",
    ):
        assert not grants.covers("Bash", {"command": command}), command


def test_bash_without_a_suggested_prefix_grants_the_exact_command_only() -> None:
    grants = Grants()
    grants.add("Bash", {"command": "make && make install"}, [{"type": "setMode", "mode": "acceptEdits"}])
    assert grants.covers("Bash", {"command": "make && make install"})
    assert not grants.covers("Bash", {"command": "make && make install && rm x"})
    assert not grants.covers("Bash", {"command": None})


def test_a_suggested_prefix_holding_an_operator_is_no_prefix() -> None:
    assert bash_prefix(suggestion("git status && rm *")) is None
    assert bash_prefix(suggestion("git status")) is None  # no wildcard: not a prefix rule
    assert bash_prefix([{"type": "addRules", "behavior": "allow", "rules": ["Bash(x *)", None]}]) is None
    assert (
        bash_prefix([{"type": "addRules", "behavior": "deny", "rules": [{"toolName": "Bash", "ruleContent": "x *"}]}])
        is None
    )
