"""A pooled worker's gate: a question reaches only the turn holding the worker now."""

from __future__ import annotations

from typing import Any

from claude_agent_sdk import PermissionResult, PermissionResultAllow, PermissionResultDeny, ToolPermissionContext

from claude_sessions.workers.permission_gate import NO_TURN, PermissionGate


async def test_a_closed_gate_denies_and_an_open_one_asks_its_holder_only() -> None:
    gate = PermissionGate()
    asked: list[str] = []

    def holder(name: str) -> Any:
        async def ask(tool: str, tool_input: dict[str, Any], context: ToolPermissionContext) -> PermissionResult:
            asked.append(name)
            return PermissionResultAllow()

        return ask

    context = ToolPermissionContext(tool_use_id="t1")
    denied = await gate.can_use_tool("Write", {}, context)
    assert isinstance(denied, PermissionResultDeny) and denied.message == NO_TURN
    gate.open(holder("first"))
    assert isinstance(await gate.can_use_tool("Write", {}, context), PermissionResultAllow)
    gate.close()
    gate.open(holder("second"))
    await gate.can_use_tool("Write", {}, context)
    gate.close()
    assert isinstance(await gate.can_use_tool("Write", {}, context), PermissionResultDeny)
    assert asked == ["first", "second"]
