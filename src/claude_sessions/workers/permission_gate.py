"""Where a pooled CLI's questions about tool calls go: the turn holding the worker now, or nowhere.

A worker outlives its sessions, and the SDK's ``can_use_tool`` callback is fixed when its CLI
starts. So the callback is the gate's, and the gate answers from whoever holds it: the session's
turn, opened and closed around every turn. A question arriving while no turn holds the worker
(a warm-up, a reset, a turn already ended) is denied; nothing is remembered between holders.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from claude_agent_sdk import PermissionResult, PermissionResultDeny, ToolPermissionContext

#: Decides one tool call: (tool name, its input, the CLI's context) -> allow or deny.
Asker = Callable[[str, dict[str, Any], ToolPermissionContext], Awaitable[PermissionResult]]

#: What the model reads when nobody holds the worker.
NO_TURN = "No one can approve this tool call now: it was denied."


class PermissionGate:
    """A worker's ``can_use_tool``: routes each question to the turn that holds the worker now."""

    def __init__(self) -> None:
        self._asker: Asker | None = None

    def open(self, asker: Asker) -> None:
        """The turn starting now answers the CLI's questions until :meth:`close`."""
        self._asker = asker

    def close(self) -> None:
        self._asker = None

    async def can_use_tool(
        self, tool: str, tool_input: dict[str, Any], context: ToolPermissionContext
    ) -> PermissionResult:
        asker = self._asker
        if asker is None:
            return PermissionResultDeny(message=NO_TURN)
        return await asker(tool, tool_input, context)
