"""A client's functions as tools of a pooled CLI: an in-process MCP server named ``client`` on every worker.

A chat client (OpenAI's function calling) brings its functions with each request; they run on the
client, never here. Every worker starts with this server, listing nothing. A turn offers its
functions (the CLI lists them again when the server is toggled off and on, measured 11-38 ms)
and opens the server to its own calls; a call arriving while no turn holds the worker, or for a
name the turn did not offer, is answered with an error and reaches no one. The next turn that
offers other functions (none included) replaces the list, so no function outlives its turn's
session on a pooled worker.

Each tool is marked read-only: the CLI then runs the calls of one answer at once (measured), so a
client gets them all in one completion rather than one per round.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from claude_agent_sdk import ClaudeSDKClient, McpSdkServerConfig
from mcp.server import Server
from mcp.types import CallToolResult, ListToolsResult, TextContent, Tool, ToolAnnotations

#: The server's name: the CLI calls a function ``f`` as ``mcp__client__f``.
SERVER = "client"
PREFIX = f"mcp__{SERVER}__"
#: What the model reads when no turn can pass its call on.
NO_CLIENT = "No client can run this function now: the call was not made."


@dataclass(frozen=True)
class ClientFunction:
    """A function a client offers: its name, what it does, and its parameters' JSON schema (canonical JSON)."""

    name: str
    description: str
    parameters: str

    def as_tool(self) -> Tool:
        return Tool(
            name=self.name,
            description=self.description,
            input_schema=json.loads(self.parameters),
            annotations=ToolAnnotations(readOnlyHint=True),
        )


#: Passes one call on to the turn's client: (name, arguments) -> (result text, is_error).
Answerer = Callable[[str, dict[str, Any]], Awaitable[tuple[str, bool]]]


class ClientTools:
    """One worker's ``client`` server: what its CLI lists now, and the turn its calls go to."""

    def __init__(self) -> None:
        self.listed: tuple[ClientFunction, ...] = ()
        self._answerer: Answerer | None = None
        server: Server[Any] = Server(SERVER, on_list_tools=self._list, on_call_tool=self._call)
        self.config = McpSdkServerConfig(type="sdk", name=SERVER, instance=server)

    async def offer(self, client: ClaudeSDKClient, functions: tuple[ClientFunction, ...]) -> None:
        """Make the CLI list exactly ``functions`` from its next model call on (a no-op when it does)."""
        if functions == self.listed:
            return
        self.listed = functions
        await client.toggle_mcp_server(SERVER, False)
        await client.toggle_mcp_server(SERVER, True)

    def open(self, answerer: Answerer) -> None:
        """The turn starting now answers the calls until :meth:`close`."""
        self._answerer = answerer

    def close(self) -> None:
        self._answerer = None

    async def _list(self, ctx: Any, params: Any) -> ListToolsResult:
        return ListToolsResult(tools=[function.as_tool() for function in self.listed])

    async def _call(self, ctx: Any, params: Any) -> CallToolResult:
        answerer = self._answerer
        if answerer is None or params.name not in {function.name for function in self.listed}:
            return CallToolResult(content=[TextContent(type="text", text=NO_CLIENT)], is_error=True)
        text, is_error = await answerer(params.name, dict(params.arguments or {}))
        return CallToolResult(content=[TextContent(type="text", text=text)], is_error=is_error)
