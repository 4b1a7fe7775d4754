"""The console in a real browser (Debian's chromium, driven by Playwright) against a real server.

One server and one browser for the module; each test gets a fresh browser context (an
empty ``sessionStorage``) and fails if the page logged an error it did not provoke on
purpose (a refused request logs "Failed to load resource ... status of 422").
Screenshots go to a temporary folder, or to ``$CONSOLE_SCREENSHOTS`` (``docs`` refreshes
the README's).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Dialog, Page, expect, sync_playwright

from claude_sessions.offline_model import OfflineModelServer
from helpers import tool, wait_no_cli
from server_process import ADMIN_KEY, KEYS, ServerProcess, bearer, start_server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium")
expect.set_options(timeout=10_000)
SESSION_HEADING = re.compile(r"^Session \S")


@pytest.fixture(scope="module")
def server(offline_server: OfflineModelServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = start_server(
        tmp_path_factory.mktemp("console"),
        offline_server.base_url,
        OPT_MESSAGE_TIMEOUT="30",
        TENANT_DAILY_USD="alice:50",
        TOOLS_ASK="Write",  # the sandbox holds it (bubblewrap)
    )
    yield process
    assert process.stop() in (0, -signal.SIGTERM)
    assert wait_no_cli() == [], "CLI processes left behind"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = os.environ.get("CONSOLE_SCREENSHOTS")
    folder = Path(target) if target else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@dataclass
class Console:
    """A fresh tab on the console, and what its browser console said."""

    page: Page
    base_url: str
    errors: list[str] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)
    provoked: list[int] = field(default_factory=list)

    def open(self) -> Console:
        self.page.goto(f"{self.base_url}/console")
        return self

    def sign_in(self, key: str) -> Console:
        self.page.get_by_label("API key").fill(key)
        self.page.get_by_role("button", name="Sign in").click()
        expect(self.page.get_by_role("button", name="Sign out")).to_be_visible()
        return self

    def new_session(self, system_prompt: str = "", ask: tuple[str, ...] = ()) -> str:
        """Create a session from the sessions page, asking before the tools ``ask``; the console opens it. Its id."""
        self.page.get_by_role("link", name="Sessions", exact=True).click()
        self.page.get_by_label("System prompt").fill(system_prompt)
        for name in ask:
            self.page.get_by_role("group", name="Ask me before").get_by_role("checkbox", name=name).check()
        self.page.get_by_role("button", name="New session").click()
        return self.opened_session()

    def opened_session(self) -> str:
        """The id of the session whose page shows."""
        expect(self.page.get_by_role("heading", name=SESSION_HEADING)).to_be_focused()
        return self.page.locator("#session-name").inner_text()

    def send(self, text: str) -> None:
        self.page.get_by_label("Message").fill(text)
        self.page.get_by_role("button", name="Send").click()

    def expect_refusal(self, status: int) -> None:
        """The next request is meant to be refused with ``status``: its console line is no error."""
        self.provoked.append(status)

    def unexpected_errors(self) -> list[str]:
        marks = [f"status of {status} " for status in self.provoked]
        return [e for e in self.errors if not any(mark in e for mark in marks)]


@contextlib.contextmanager
def console_tab(browser: Browser, server: ServerProcess, secrets: tuple[str, ...] = ()) -> Iterator[Console]:
    """A tab in a browser context of its own; on a clean exit, no error in its console and no key in a URL."""
    context = browser.new_context(viewport={"width": 1200, "height": 820})
    try:
        page = context.new_page()
        tab = Console(page, server.base_url)
        page.on("console", lambda m: tab.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: tab.errors.append(f"uncaught: {e}"))
        page.on("request", lambda r: tab.urls.append(r.url))
        yield tab
    finally:
        context.close()
    assert tab.unexpected_errors() == [], "the page logged errors"
    keys = [ADMIN_KEY, *KEYS.values(), *secrets]
    assert not any(key in url for url in tab.urls for key in keys), "a key in a URL"


@pytest.fixture
def console(browser: Browser, server: ServerProcess) -> Iterator[Console]:
    with console_tab(browser, server) as tab:
        yield tab


def api(server: ServerProcess, tenant: str) -> httpx.Client:
    return server.client(tenant)


def test_a_tenant_chats_and_sees_the_reply_and_tool_calls_stream_in(
    console: Console, server: ServerProcess, shots: Path
) -> None:
    page = console.open().page
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    console.expect_refusal(401)
    page.get_by_label("API key").fill("not-a-key")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_have_text("That API key was not accepted.")
    console.sign_in(KEYS["alice"])
    assert page.evaluate("sessionStorage.getItem('claude-sessions.api-key')") == KEYS["alice"]
    assert page.evaluate("localStorage.length") == 0
    session_id = console.new_session("Answer briefly.")

    console.send("Hello from the console")
    reply = page.locator(".bubble.assistant").filter(has_text="You said: Hello from the console")
    expect(reply).to_be_visible()
    expect(page.get_by_text("Answered in")).to_be_visible()

    # A tool call whose result makes the model's next answer slow: the call and its result
    # are on the page while the turn still runs (streamed, not delivered at the end).
    notes = server.root / "workspaces" / "alice" / "notes.txt"
    notes.write_text("the plan [[slow:2]]\n")
    console.send('Read my notes [[tool:Read:{"file_path": "notes.txt"}]]')
    expect(page.locator(".bubble.tool").filter(has_text="Tool call · Read")).to_be_visible()
    expect(page.locator(".bubble.tool").filter(has_text="the plan")).to_be_visible()
    expect(page.get_by_text("is answering…")).to_be_visible()  # the turn is not over yet
    expect(page.get_by_text("Answered in")).to_have_count(2)
    expect(page.get_by_text("is answering…")).to_have_count(0)
    expect(page.locator('[data-fact="messages"]')).to_have_text("2")

    # The reply grows on the page as the model writes it, word by word.
    console.send("[[drip:0.3]] one two three four five six seven eight nine ten")
    growing = page.locator(".bubble.assistant").filter(has_text="one two")
    expect(growing).to_be_visible()
    expect(page.get_by_text("is answering…")).to_be_visible()  # seen before the reply was whole
    assert "ten" not in growing.inner_text()
    expect(page.locator(".bubble.assistant").filter(has_text="nine ten")).to_be_visible()
    expect(page.get_by_text("Answered in")).to_have_count(3)
    page.screenshot(path=shots / "console-session.png")

    # The sessions table shows it, refreshed without a reload; a reload keeps the conversation.
    page.get_by_role("link", name="Sessions", exact=True).click()
    row = page.get_by_role("row").filter(has_text=session_id)
    expect(row.locator('[data-cell="messages"]')).to_have_text("3")
    page.reload()
    page.get_by_role("link", name=session_id).click()
    expect(page.locator(".bubble.user").filter(has_text="Hello from the console")).to_be_visible()
    expect(page.locator(".bubble.tool").filter(has_text="Tool call · Read")).to_be_visible()

    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_label("API key")).to_be_focused()
    assert page.evaluate("sessionStorage.length") == 0


MARKDOWN = """Here is the plan [[drip:0.05]]

# Plan heading

- first **bold** point
- second point, with [the docs](https://example.com/docs)

| Name | Value |
|:-----|------:|
| alpha | 1 |
| beta | 2 |

```python
print("hello, world")
```

That is all."""

ATTACK = """<script>window.pwned=1</script>

<img src=x onerror="window.pwned=1"> <svg onload="window.pwned=1"></svg>

[click me](javascript:window.pwned=1)

[x](JaVaScRiPt:alert(1)) <a href="javascript:alert(1)">a</a>

<iframe src="javascript:alert(1)"></iframe> [data](data:text/html,<script>alert(1)</script>)

![tracking pixel](http://127.0.0.1:1/x.png) and [a fine link](https://example.com/)"""


def test_a_reply_in_markdown_shows_as_markdown_and_its_code_copies(console: Console, shots: Path) -> None:
    page = console.open().sign_in(KEYS["alice"]).page
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=console.base_url)
    console.new_session()
    console.send(MARKDOWN)
    reply = page.locator(".bubble.assistant").filter(has_text="You said")
    expect(reply.locator("h1")).to_have_text("Plan heading")  # rendered while the reply still grows
    assert "That is all" not in reply.inner_text()
    expect(page.get_by_text("Answered in")).to_be_visible()

    expect(reply.locator("ul > li")).to_have_count(2)
    expect(reply.locator("li strong")).to_have_text("bold")
    link = reply.get_by_role("link", name="the docs")
    expect(link).to_have_attribute("href", "https://example.com/docs")
    expect(link).to_have_attribute("rel", "noopener noreferrer nofollow")
    expect(reply.locator("table thead th")).to_have_text(["Name", "Value"])
    expect(reply.locator("table tbody tr")).to_have_count(2)
    code = reply.locator("pre code")
    expect(code).to_have_text('print("hello, world")')
    assert "monospace" in code.evaluate("(node) => getComputedStyle(node).fontFamily")
    expect(reply.locator(".md-code-lang")).to_have_text("python")
    expect(page.locator(".bubble.user h1")).to_have_text("Plan heading")  # the user's own text too

    reply.get_by_role("button", name="Copy").click()
    expect(reply.get_by_role("button", name="Copied")).to_be_visible()
    assert page.evaluate("navigator.clipboard.readText()") == 'print("hello, world")'
    reply.screenshot(path=shots / "console-markdown.png")


def test_html_and_script_links_in_a_conversation_stay_inert(console: Console) -> None:
    page = console.open().sign_in(KEYS["alice"]).page
    dialogs: list[str] = []

    def dialog_opened(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", dialog_opened)
    console.new_session()
    console.send(ATTACK)
    expect(page.get_by_text("Answered in")).to_be_visible()
    page.reload()  # the same text again, from the transcript
    expect(page.locator(".bubble.user")).to_have_count(1)

    conversation = page.locator("#conversation")
    reply = page.locator(".bubble.assistant").filter(has_text="You said")
    expect(reply).to_contain_text("<script>window.pwned=1</script>")  # shown as the text it is
    expect(reply).to_contain_text('<a href="javascript:alert(1)">a</a>')
    expect(reply).to_contain_text("tracking pixel")  # an image: its alt text, never fetched
    expect(conversation.locator("script, img, iframe, svg, object, embed")).to_have_count(0)
    hrefs = conversation.locator("a").evaluate_all("(links) => links.map((a) => a.getAttribute('href'))")
    assert hrefs and all(re.match(r"(https?|mailto):", href) for href in hrefs), hrefs
    expect(reply.get_by_role("link", name="click me")).to_have_count(0)
    url = page.url
    reply.get_by_text("click me", exact=True).click()
    page.wait_for_timeout(300)
    assert page.url == url and len(page.context.pages) == 1
    assert page.evaluate("window.pwned") is None
    assert dialogs == []
    assert not any("127.0.0.1:1/" in seen or seen.endswith("/x") for seen in console.urls)


def test_markdown_renders_any_100_kb_in_linear_time(console: Console) -> None:
    """Unclosed spans, fences and brackets by the thousand: no input makes the renderer slow or throw."""
    page = console.open().page
    expect(page.get_by_label("API key")).to_be_visible()
    patterns = ["*a ", "_a", "`a``b", "[a](", "[", "<http:a", "http://a)", "> ", "- a\n", "```\n", "~~a", "\\", "|"]
    took = page.evaluate(
        """(patterns) => patterns.map((p) => {
            const text = p.repeat(Math.ceil(100000 / p.length));
            const began = performance.now();
            document.createElement("div").append(window.ConsoleMarkdown.render(text));
            return [p, performance.now() - began];
        })""",
        patterns,
    )
    slow = [(pattern, round(ms)) for pattern, ms in took if ms > 1000]  # quadratic would take minutes
    assert slow == [], slow


def test_the_sessions_list_shows_each_sessions_title_and_origin(console: Console, server: ServerProcess) -> None:
    with api(server, "alice") as alice:
        assert alice.post("/v1/sessions", json={"session_id": "made-by-the-api"}).status_code == 201
    try:
        page = console.open().sign_in(KEYS["alice"]).page
        session_id = console.new_session()
        console.send("Plan the garden party for Saturday")
        expect(page.get_by_text("Answered in")).to_be_visible()
        expect(page.locator("#session-topic")).to_have_text("Plan the garden party for Saturday")
        expect(page.get_by_role("heading", name=SESSION_HEADING)).to_contain_text(session_id)

        page.get_by_role("link", name="Sessions", exact=True).click()
        row = page.get_by_role("row").filter(has_text=session_id)
        expect(row.locator(".session-title")).to_have_text("Plan the garden party for Saturday")
        expect(row.locator('[data-cell="origin"]')).to_have_text("console")
        expect(row.get_by_role("link", name=session_id)).to_contain_text("Plan the garden party")
        untitled = page.get_by_role("row").filter(has_text="made-by-the-api")
        expect(untitled.locator(".session-title")).to_be_hidden()  # no message yet: the id alone
        expect(untitled.locator('[data-cell="origin"]')).to_have_text("sessions")
        with api(server, "alice") as alice:
            assert alice.get(f"/v1/sessions/{session_id}").json()["origin"] == "console"
    finally:
        with api(server, "alice") as alice:
            alice.delete("/v1/sessions/made-by-the-api")


def test_refused_messages_are_explained(console: Console) -> None:
    page = console.open().sign_in(KEYS["alice"]).page
    console.new_session()
    console.expect_refusal(422)
    console.send("/config")
    error = page.get_by_role("alert").filter(has_text="Commands starting with “/” are not allowed")
    expect(error).to_be_visible()
    expect(error).to_contain_text("/config")

    console.send("Think slowly [[slow:20]]")
    expect(page.get_by_text("is answering…")).to_be_visible()
    console.expect_refusal(409)
    console.send("Are you there?")
    expect(page.get_by_role("alert").filter(has_text="still answering an earlier message")).to_be_visible()
    page.get_by_role("button", name="Interrupt").click()
    expect(page.get_by_text("Interrupted.", exact=True)).to_be_visible(timeout=8_000)
    expect(page.get_by_text("is answering…")).to_have_count(0)


def test_a_slow_turn_is_interrupted_and_deleted_from_the_sessions_table_by_keyboard(
    console: Console, server: ServerProcess
) -> None:
    page = console.open().page
    expect(page.get_by_label("API key")).to_be_focused()  # where the page starts
    page.keyboard.type(KEYS["bob"])
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Sessions")).to_be_focused()
    expect(page.get_by_role("checkbox", name="Write")).to_be_attached()  # the offered tools, read from the schema
    page.keyboard.press("Tab")
    expect(page.get_by_label("System prompt")).to_be_focused()
    page.keyboard.press("Tab")  # the model
    page.keyboard.press("Tab")  # "Ask me before": Write
    page.keyboard.press("Tab")
    expect(page.get_by_role("button", name="New session")).to_be_focused()
    page.keyboard.press("Enter")
    session_id = console.opened_session()
    for _ in range(4):  # Interrupt, Delete, the conversation, the message box
        page.keyboard.press("Tab")
    expect(page.get_by_label("Message")).to_be_focused()
    page.keyboard.type("Take your time [[slow:20]]")
    page.keyboard.press("Enter")
    expect(page.get_by_text("is answering…")).to_be_visible()

    page.get_by_role("link", name="Sessions", exact=True).focus()
    page.keyboard.press("Enter")
    row = page.get_by_role("row").filter(has_text=session_id)
    expect(row.get_by_text("busy")).to_be_visible()
    row.get_by_role("button", name="Interrupt").focus()
    began = time.monotonic()
    page.keyboard.press("Enter")
    expect(page.get_by_role("status").filter(has_text=f"Asked session {session_id} to stop")).to_be_visible()
    expect(row.get_by_text("busy")).to_have_count(0)
    assert time.monotonic() - began < 10, "the interrupt did not stop the turn"

    row.get_by_role("button", name="Delete").focus()
    page.keyboard.press("Enter")
    expect(page.get_by_role("status").filter(has_text=f"Session {session_id} deleted.")).to_be_visible()
    expect(page.get_by_role("row").filter(has_text=session_id)).to_have_count(0)
    with api(server, "bob") as bob:
        assert bob.get(f"/v1/sessions/{session_id}").status_code == 404


def test_a_tool_call_waits_for_the_users_approval_given_by_keyboard(
    console: Console, server: ServerProcess, shots: Path
) -> None:
    page = console.open().sign_in(KEYS["alice"]).page
    console.new_session(ask=("Write",))
    expect(page.locator('[data-fact="ask"]')).to_have_text("Write")
    workspace = server.root / "workspaces" / "alice"
    page.get_by_label("Message").fill(tool("Write", file_path=str(workspace / "approved.txt"), content="hello"))
    page.keyboard.press("Enter")

    card = page.locator(".bubble.approval")
    expect(card).to_be_visible()
    expect(card.locator(".who")).to_have_text("Approval needed · Write")
    expect(card.locator("dd code")).to_have_text(re.compile(r"approved\.txt$"))
    expect(card).not_to_contain_text(str(server.root))  # the server's paths stay its own
    expect(card.locator("dd pre")).to_have_text("hello")
    expect(card).to_contain_text("Denied automatically at")
    expect(page.get_by_text("waits for your answer…")).to_be_visible()
    expect(page.locator('[data-fact="state"]')).to_have_text("busy")
    assert not (workspace / "approved.txt").exists()  # the turn waits
    allow = card.get_by_role("button", name="Allow", exact=True)
    expect(allow).to_be_focused()  # the keyboard is where the answer is
    expect(card.get_by_role("button")).to_have_text(["Allow", "Deny", "Allow for this session"])
    page.screenshot(path=shots / "console-approval.png")
    page.keyboard.press("Enter")

    expect(card.get_by_role("status")).to_have_text("Allowed")
    expect(card.get_by_role("button")).to_have_count(0)
    expect(page.locator(".bubble.assistant").filter(has_text="File created successfully")).to_be_visible()
    expect(page.get_by_text("Answered in")).to_be_visible()
    assert (workspace / "approved.txt").read_text() == "hello"

    # A page reloaded while a turn waits finds the request again; a denied call writes nothing.
    console.send(tool("Write", file_path=str(workspace / "denied.txt"), content="never"))
    expect(page.locator(".bubble.approval.open")).to_be_visible()
    page.reload()
    card = page.locator(".bubble.approval")
    expect(card).to_have_count(1)
    expect(card.locator("dd pre")).to_have_text("never")
    expect(card.get_by_role("button", name="Allow", exact=True)).to_be_focused()
    card.get_by_role("button", name="Deny").click()
    expect(card.get_by_role("status")).to_have_text("Denied")
    # The turn ended elsewhere (its stream went with the reload): the transcript shows it.
    expect(page.locator(".bubble.tool").filter(has_text="Tool result")).to_have_count(2)
    expect(page.locator(".bubble.approval")).to_have_count(0)
    assert not (workspace / "denied.txt").exists()


def test_a_tenant_never_sees_another_tenants_session(console: Console, server: ServerProcess) -> None:
    with api(server, "bob") as bob:
        assert bob.post("/v1/sessions", json={"session_id": "bobs-secret"}).status_code == 201
    try:
        page = console.open().sign_in(KEYS["alice"]).page
        expect(page.get_by_role("table")).to_be_visible()
        expect(page.get_by_text("bobs-secret")).to_have_count(0)
        console.expect_refusal(404)
        page.goto(f"{server.base_url}/console#/session/bobs-secret")
        expect(page.get_by_role("status")).to_contain_text("bobs-secret does not exist")
        expect(page.get_by_role("heading", name="Sessions")).to_be_visible()
        expect(page.get_by_role("table").get_by_text("bobs-secret")).to_have_count(0)
    finally:
        with api(server, "bob") as bob:
            bob.delete("/v1/sessions/bobs-secret")


def test_the_admin_sees_every_session_the_pool_the_nodes_and_the_last_hour(
    console: Console, server: ServerProcess, shots: Path
) -> None:
    with api(server, "alice") as alice:
        assert alice.post("/v1/sessions", json={"session_id": "for-the-admin"}).status_code == 201
        assert alice.post("/v1/sessions/for-the-admin/messages?stream=false", json={"content": "hi"}).status_code == 200
    try:
        page = console.open().sign_in(ADMIN_KEY).page
        row = page.get_by_role("row").filter(has_text="for-the-admin")
        expect(row.get_by_role("cell").first).to_have_text("alice")  # the owner
        expect(row.get_by_role("button")).to_have_count(0)  # another tenant's session: looked at, not touched
        for chart in ("Turns", "Tokens", "Cost"):
            expect(page.get_by_role("img", name=f"{chart} per minute over the last hour")).to_be_visible()
        spend = page.locator("#spend-list li").filter(has_text="alice:")  # each tenant's day against its limit
        expect(spend).to_contain_text(re.compile(r"today of \$50\.00 a day \(\d+ turns"))
        summary = page.locator(".chart[data-metric=turns] .summary")
        expect(summary).to_contain_text("in the last hour")
        expect(summary).not_to_have_text("0 in the last hour · peak 0 per minute")
        page.screenshot(path=shots / "console-sessions.png", full_page=True)

        page.get_by_role("link", name="Pool and nodes").click()
        expect(page.locator("#worker-states li").first).to_be_visible()
        expect(page.locator("#pool-table tbody tr").first).to_be_visible()
        nodes = page.locator("#nodes-table tbody tr")
        expect(nodes).to_have_count(1)
        expect(nodes.first).to_contain_text("up")
        page.screenshot(path=shots / "console-pool.png", full_page=True)
    finally:
        with api(server, "alice") as alice:
            alice.delete("/v1/sessions/for-the-admin")


def test_the_admin_makes_a_users_key_which_signs_in_to_that_users_sessions_only_and_revokes_it(
    console: Console, browser: Browser, server: ServerProcess, shots: Path
) -> None:
    in_a_month = (datetime.now(UTC) + timedelta(days=30)).isoformat()
    with api(server, "admin") as admin:
        other = admin.post(
            "/v1/admin/keys",
            json={"tenant": "bob", "name": "CI runner", "expires_at": in_a_month, "limits": {"max_sessions": 3}},
        )
        assert other.status_code == 201
    with api(server, "alice") as alice:
        assert alice.post("/v1/sessions", json={"session_id": "alices-own"}).status_code == 201
    made: list[str] = []
    try:
        page = console.open().sign_in(ADMIN_KEY).page
        page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=console.base_url)
        expect(page.locator("#who-name")).to_have_text("Signed in as admin")
        page.get_by_role("link", name="Keys").click()
        expect(page.get_by_role("heading", name="Keys")).to_be_focused()
        listed = page.get_by_role("row").filter(has_text=other.json()["key_id"])
        expect(listed.locator('[data-cell="name"]')).to_have_text("CI runner")

        # A refused field is named beside the form, and the keyboard goes to it.
        tenant = page.get_by_label("Tenant")
        tenant.fill("Admin")
        console.expect_refusal(422)
        page.get_by_role("button", name="Create key").click()
        expect(page.locator("#new-key-error")).to_have_text(
            "Tenant: the tenant name admin is reserved for ADMIN_API_KEY"
        )
        expect(tenant).to_have_attribute("aria-invalid", "true")
        expect(tenant).to_be_focused()

        tenant.fill("alice")
        page.get_by_label("User (optional)").fill("ana")
        page.get_by_label("Name (optional)").fill("Ana's laptop")
        page.get_by_label("Spend a day (USD)").fill("5")
        page.get_by_role("button", name="Create key").click()
        expect(page.locator("#new-key-error")).to_be_empty()
        expect(tenant).not_to_have_attribute("aria-invalid", "true")
        shown = page.get_by_role("region", name="New key for ana of alice")
        expect(shown).to_contain_text("The secret is shown only now.")
        copy = shown.get_by_role("button", name="Copy")
        expect(copy).to_be_focused()
        secret = shown.locator("code.secret").inner_text()
        key_id = shown.locator("#new-key-id").inner_text()
        made.append(key_id)
        assert secret.startswith("csk_") and key_id and key_id not in secret
        page.keyboard.press("Enter")
        expect(shown.get_by_role("button", name="Copied")).to_be_visible()
        assert page.evaluate("navigator.clipboard.readText()") == secret
        row = page.get_by_role("row").filter(has_text=key_id)
        expect(row.locator("td")).to_have_text(
            [
                "alice",
                "ana",
                "Ana's laptop",
                re.compile(r"^(just now|\d+ s ago)$"),
                "never",
                "never",
                "active",
                "Revoke",
            ]
        )
        page.screenshot(path=shots / "console-keys.png", full_page=True)
        shown.get_by_role("button", name="Done, hide the secret").click()
        expect(shown).to_be_hidden()
        expect(tenant).to_be_focused()
        assert secret not in page.content()  # shown once: gone from the page
        page.get_by_role("link", name="Sessions", exact=True).click()
        page.get_by_role("link", name="Keys").click()
        expect(row).to_be_visible()
        assert secret not in page.content()
        with api(server, "admin") as admin:
            assert secret not in admin.get("/v1/admin/keys").text

        # The key signs in as ana, of alice: ana's sessions only.
        with console_tab(browser, server, (secret,)) as ana:
            theirs = ana.open().sign_in(secret).page
            expect(theirs.locator("#who-name")).to_have_text("Signed in as ana of alice")
            expect(theirs.get_by_role("link", name="Keys")).to_be_hidden()
            expect(theirs.locator("#spend-list")).to_contain_text("of $5.00 a day")  # the key's own limit
            session_id = ana.new_session()
            expect(theirs.locator('[data-fact="user"]')).to_have_text("ana")
            with api(server, "alice") as alice:
                assert alice.get(f"/v1/sessions/{session_id}").json()["user"] == "ana"
            theirs.get_by_role("link", name="Sessions", exact=True).click()
            expect(theirs.get_by_role("row").filter(has_text=session_id)).to_be_visible()
            expect(theirs.get_by_text("alices-own")).to_have_count(0)  # the tenant's own, not ana's
            expect(theirs.get_by_role("columnheader", name="User")).to_be_hidden()  # every one is ana's

            # The admin sees whose session it is, and when the key was last used.
            page.get_by_role("link", name="Sessions", exact=True).click()
            mine = page.get_by_role("row").filter(has_text=session_id)
            expect(mine.locator(".owner-col")).to_have_text("alice")
            expect(mine.locator(".user-col")).to_have_text("ana")
            expect(page.get_by_role("row").filter(has_text="alices-own").locator(".user-col")).to_have_text("–")
            page.get_by_role("link", name="Keys").click()
            expect(row.locator('[data-cell="used"]')).not_to_have_text("never")

            # Revoked by keyboard, after a second step (Escape steps back).
            row.get_by_role("button", name="Revoke").focus()
            page.keyboard.press("Enter")
            expect(row.get_by_role("button", name="Cancel")).to_be_focused()
            expect(row).to_contain_text("Revoke this key? It cannot be undone.")
            page.keyboard.press("Escape")
            expect(row.get_by_role("button", name="Revoke")).to_be_focused()
            page.keyboard.press("Enter")
            page.keyboard.press("Shift+Tab")
            expect(row.get_by_role("button", name="Yes, revoke")).to_be_focused()
            page.keyboard.press("Enter")
            expect(page.get_by_role("status")).to_contain_text(f"Key {key_id} revoked")
            expect(row.locator('[data-cell="state"]')).to_have_text("revoked")
            expect(row.get_by_role("button")).to_have_count(0)

            # Ana's tab is refused at its next refresh, and so is signing in again.
            ana.expect_refusal(401)
            expect(theirs.get_by_role("alert")).to_have_text("Your API key is no longer accepted. Sign in again.")
            expect(theirs.get_by_label("API key")).to_be_focused()
            theirs.get_by_label("API key").fill(secret)
            theirs.get_by_role("button", name="Sign in").click()
            expect(theirs.get_by_role("alert")).to_have_text("That API key was not accepted.")
            assert httpx.get(f"{server.base_url}/v1/me", headers=bearer(secret)).status_code == 401
    finally:
        with api(server, "alice") as alice:
            for session in alice.get("/v1/sessions").json()["sessions"]:
                if session["session_id"] == "alices-own" or session["user"] == "ana":
                    alice.delete(f"/v1/sessions/{session['session_id']}")
        with api(server, "admin") as admin:
            for key_id in [other.json()["key_id"], *made]:
                admin.delete(f"/v1/admin/keys/{key_id}")


def test_without_keys_the_operator_goes_straight_in(
    browser: Browser, offline_server: OfflineModelServer, tmp_path: Path
) -> None:
    keyless = start_server(tmp_path, offline_server.base_url, API_KEYS="", ADMIN_API_KEY="", CP_MIN_SIZE="0")
    started: set[int] = set()
    try:
        context = browser.new_context()
        page = context.new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(f"{keyless.base_url}/console")
        expect(page.get_by_text("Operator (no keys configured)")).to_be_visible()
        expect(page.get_by_role("link", name="Pool and nodes")).to_be_visible()
        expect(page.get_by_role("button", name="Sign out")).to_be_hidden()  # nothing to sign out of
        expect(page.get_by_label("API key")).to_be_hidden()
        context.close()
        assert errors == []
        started = keyless.cli_pids()
    finally:
        assert keyless.stop() in (0, -signal.SIGTERM)
    assert wait_no_cli(started) == [], "CLI processes of the keyless server left behind"


def test_usage_timeseries_counts_a_tenants_turns_for_it_and_everyones_for_the_admin(server: ServerProcess) -> None:
    def turns(tenant: str) -> int:
        with api(server, tenant) as client:
            answer = client.get("/v1/usage/timeseries")
            assert answer.status_code == 200 and answer.json()["bucket_seconds"] == 60
            return sum(point["turns"] for point in answer.json()["points"])

    before = {name: turns(name) for name in ("alice", "bob", "admin")}
    with api(server, "bob") as bob:
        assert bob.post("/v1/sessions", json={"session_id": "counted"}).status_code == 201
        assert bob.post("/v1/sessions/counted/messages?stream=false", json={"content": "one"}).status_code == 200
        bob.delete("/v1/sessions/counted")
    assert turns("bob") == before["bob"] + 1
    assert turns("alice") == before["alice"]
    assert turns("admin") == before["admin"] + 1
