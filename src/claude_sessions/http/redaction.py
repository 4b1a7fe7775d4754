"""What a tenant must not see in any answer: server paths, internal addresses, pids, keys.

The CLI and the library speak freely about the host: the system ``init`` message
carries the working directory and the CLI's own paths, a failed model call says
"check your inference gateway (127.0.0.1:PORT)", a library error may name a
registry key such as ``'acme/c1'``. Rather than patch each route, every body sent
to a principal other than the admin (JSON, and each SSE event as it goes) passes
through :class:`RedactingMiddleware`, which replaces those strings with neutral
tokens. The admin and the keyless operator see everything as it is.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from claude_agent_sdk import project_key_for_directory
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from claude_sessions.config import SystemConfig

#: Where a request's principal and the session key it touched are kept (``scope["state"]``).
PRINCIPAL_STATE = "principal"
SESSION_KEY_STATE = "session_key"

WORKSPACE = "<workspace>"  # the tenant's own workspace
WORKSPACES = "<workspaces>"  # WORKSPACE_ROOT
CONFIG_DIR = "<config-dir>"
DATA_DIR = "<data-dir>"
SERVER = "<server>"  # the package, the virtualenv, the bundled CLI
MODEL_ENDPOINT = "<model-endpoint>"
SOCKET = "<socket>"

#: Characters that continue a name: a path matches only where it is not part of a longer name
#: (a following "." may end a sentence, or start a sibling such as ``data.db``: both are hidden).
_NAME = r"[\w-]"
#: A CLI's private socket is named after its pid: ``/tmp/cc-socks/1234.sock``.
_PID_SOCKET = re.compile(r"(?<![\w.~-])(?:/[^\s\"'/\\<>]+)*/\d+\.sock(?![\w.-])")
#: A pid in JSON (``"pid": 123``) or in prose (``pid 123``, ``pid=123``).
_PID_JSON = re.compile(r'("pid"\s*:\s*)-?\d+')
_PID_TEXT = re.compile(r"\b(pid[ =:]+)\d+", re.IGNORECASE)


def _forms(path: Path) -> set[str]:
    """A path as configured and as resolved (symlinks such as /tmp -> /private/tmp)."""
    forms = {str(path.absolute()), str(path.resolve())}
    return {form for form in forms if len(form) > 1}


def _escaped(text: str) -> set[str]:
    """``text`` as it is and as it appears inside a JSON string (non-ASCII escaped)."""
    return {text, json.dumps(text)[1:-1], json.dumps(text, ensure_ascii=False)[1:-1]}


_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _address_forms(base_url: str | None) -> set[str]:
    """The model endpoint's URL and ``host:port`` (with loopback spelled every usual way).

    Without a port, an internal host name is hidden alone (Anthropic's own is public).
    """
    if not base_url:
        return set()
    parts = urlsplit(base_url)
    forms = {base_url.rstrip("/")}
    host = parts.hostname
    if host and parts.port:
        hosts = {host, *_LOOPBACK} if host in _LOOPBACK else {host}
        forms |= {f"[{name}]:{parts.port}" if ":" in name else f"{name}:{parts.port}" for name in hosts}
    elif host and host not in _LOOPBACK and not host.endswith("anthropic.com"):
        forms.add(host)
    return forms


class Redactor:
    """Replaces this server's paths, addresses, pids and a request's session key in text.

    Each string to hide is looked for with a plain substring search first (fast, and
    the common answer is "absent"); only the ones present are replaced, longest first,
    and a path only where it is not part of a longer name.
    """

    def __init__(self, config: SystemConfig, model_endpoints: Iterable[str] = ()) -> None:
        """``model_endpoints``: more addresses the CLI may name (the model gateway's)."""
        import claude_agent_sdk

        runtime = config.runtime
        self.workspace_root = runtime.workspace_root
        common: dict[str, str] = {}
        venv = [(Path(sys.prefix), SERVER)] if sys.prefix != sys.base_prefix else []  # not a system's /usr
        for path, token in [
            *venv,
            (Path(__file__).resolve().parents[1], SERVER),  # claude_sessions/
            (Path(claude_agent_sdk.__file__).parent, SERVER),
            (runtime.DATA_DIR, DATA_DIR),
            (runtime.config_dir, CONFIG_DIR),
            (self.workspace_root, WORKSPACES),
        ]:
            common |= dict.fromkeys(_forms(path), token)
        for endpoint in (runtime.ANTHROPIC_BASE_URL, *model_endpoints):
            common |= dict.fromkeys(_address_forms(endpoint), MODEL_ENDPOINT)
        self._common = common
        self._common_keys = {project_key_for_directory(self.workspace_root): WORKSPACES}
        self._rules: dict[str | None, list[tuple[str, re.Pattern[str], str]]] = {}

    def rules(self, tenant: str | None) -> list[tuple[str, re.Pattern[str], str]]:
        """(text to find, pattern replacing it, token) for a tenant, longest text first."""
        rules = self._rules.get(tenant)
        if rules is not None:
            return rules
        bounded = dict(self._common)
        loose = dict(self._common_keys)  # the CLI's project folder names: no boundary to respect
        if tenant is not None:
            home = self.workspace_root / tenant
            bounded |= dict.fromkeys(_forms(home), WORKSPACE)
            loose[project_key_for_directory(home)] = WORKSPACE
        rules = []
        for table, is_bounded in ((bounded, True), (loose, False)):
            for text, token in table.items():
                for form in _escaped(text):
                    regex = rf"(?<!{_NAME}){re.escape(form)}(?!{_NAME})" if is_bounded else re.escape(form)
                    rules.append((form, re.compile(regex), token))
        rules.sort(key=lambda rule: len(rule[0]), reverse=True)
        self._rules[tenant] = rules
        return rules

    def redact(self, text: str, tenant: str | None, session_keys: Iterable[tuple[str, str]] = ()) -> str:
        """``text`` with nothing a tenant must not see; ``session_keys`` maps registry keys to public ids."""
        for form, pattern, token in self.rules(tenant):
            if form in text:
                text = pattern.sub(token, text)
        if ".sock" in text:
            text = _PID_SOCKET.sub(SOCKET, text)
        if '"pid"' in text:
            text = _PID_JSON.sub(r"\1null", text)
        if "pid" in text.lower():
            text = _PID_TEXT.sub(r"\1<pid>", text)
        for key, public in session_keys:
            if key != public and key in text:
                text = text.replace(key, public)
        return text


class RedactingMiddleware:
    """Passes every response body for a non-admin principal through :class:`Redactor`.

    A body with a ``Content-Length`` is redacted whole (and its length corrected);
    a streamed body (SSE) chunk by chunk, each chunk being one complete event.
    """

    def __init__(self, app: ASGIApp, redactor: Redactor) -> None:
        self.app = app
        self.redactor = redactor

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state: dict[str, Any] = scope.setdefault("state", {})
        redacting = False
        whole: MutableHeaders | None = None  # the held response start of a body redacted whole
        start: Message | None = None
        parts: list[bytes] = []

        def clean(body: bytes) -> bytes:
            principal = state.get(PRINCIPAL_STATE)
            keys = [state[SESSION_KEY_STATE]] if SESSION_KEY_STATE in state else []
            tenant = getattr(principal, "tenant", None)
            text = body.decode("utf-8", errors="surrogateescape")
            return self.redactor.redact(text, tenant, keys).encode("utf-8", errors="surrogateescape")

        async def redacting_send(message: Message) -> None:
            nonlocal redacting, whole, start
            if message["type"] == "http.response.start":
                principal = state.get(PRINCIPAL_STATE)
                redacting = not getattr(principal, "is_admin", False)
                if redacting:
                    headers = MutableHeaders(scope=message)
                    if "content-length" in headers:
                        whole, start = headers, message
                        return
                await send(message)
                return
            if message["type"] != "http.response.body" or not redacting:
                await send(message)
                return
            if whole is None:  # streamed: each chunk as it goes
                body = message.get("body", b"")
                await send({**message, "body": clean(body)} if body else message)
                return
            parts.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            body = clean(b"".join(parts))
            whole["content-length"] = str(len(body))
            assert start is not None
            await send(start)
            await send({"type": "http.response.body", "body": body, "more_body": False})

        await self.app(scope, receive, redacting_send)
