"""What a session's user allowed "for this session": checked before a call is asked again.

Held by the session on the node running it, never by the CLI (a rule given to a pooled CLI
would outlive the session on that worker). A tool is granted whole, except Bash: a grant there
is the command's prefix the CLI itself suggests (``npm test`` for ``npm test --watch``), or the
exact command when it suggests none, and a later command matches a prefix only when it holds
no shell operator (``git status && rm -rf x`` is asked again, whatever was granted).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

#: What chains, redirects or substitutes in a shell command: such a command matches no prefix.
SHELL_OPERATORS = re.compile(r"[;&|<>`$()\n\r\\]")
#: The end of a Bash rule's content as the CLI writes it (``npm test *`` or ``npm test:*``).
_RULE_WILDCARD = re.compile(r"(?::\*| \*)$")


def bash_prefix(suggestions: list[dict[str, Any]]) -> str | None:
    """The command prefix the CLI offers to allow (its ``addRules`` suggestion for Bash), if any."""
    for suggestion in suggestions:
        if suggestion.get("type") != "addRules" or suggestion.get("behavior") != "allow":
            continue
        for rule in suggestion.get("rules") or []:
            if not isinstance(rule, dict):
                continue
            content = rule.get("ruleContent")
            if rule.get("toolName") == "Bash" and isinstance(content, str) and _RULE_WILDCARD.search(content):
                prefix = _RULE_WILDCARD.sub("", content).strip()
                if prefix and not SHELL_OPERATORS.search(prefix):
                    return prefix
    return None


@dataclass
class Grants:
    """Tools, Bash prefixes and Bash commands the user allowed for the rest of the session."""

    tools: set[str] = field(default_factory=set)
    prefixes: set[str] = field(default_factory=set)
    commands: set[str] = field(default_factory=set)

    def add(self, tool: str, tool_input: dict[str, Any], suggestions: list[dict[str, Any]]) -> None:
        if tool != "Bash":
            self.tools.add(tool)
            return
        prefix = bash_prefix(suggestions)
        if prefix is not None:
            self.prefixes.add(prefix)
        else:
            self.commands.add(str(tool_input.get("command", "")))

    @staticmethod
    def describe(tool: str, tool_input: dict[str, Any], suggestions: list[dict[str, Any]]) -> str:
        """What an allow "for this session" of this call would let run unasked, in words."""
        if tool != "Bash":
            return f"every {tool} call of this session"
        prefix = bash_prefix(suggestions)
        if prefix is not None:
            return f"Bash commands starting with {prefix!r} and holding no shell operator"
        return f"the Bash command {str(tool_input.get('command', ''))!r}, exactly"

    def covers(self, tool: str, tool_input: dict[str, Any]) -> bool:
        if tool != "Bash":
            return tool in self.tools
        command = tool_input.get("command")
        if not isinstance(command, str):
            return False
        if command in self.commands:
            return True
        if SHELL_OPERATORS.search(command):
            return False
        words = command.strip()
        return any(words == prefix or words.startswith(prefix + " ") for prefix in self.prefixes)
