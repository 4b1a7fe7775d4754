// claude-sessions console: plain JavaScript over the HTTP API, no library, no build step.
//
// The API key lives in this tab's sessionStorage and travels only in the Authorization
// header. Every text from the server is put on the page with textContent, never as HTML;
// messages and replies go through markdown.js, which builds inert nodes the same way.
"use strict";

(() => {
  const KEY_STORE = "claude-sessions.api-key";
  const ADMIN_OWNER = "admin"; // the admin key's own tenant (config.RESERVED_TENANT)
  const TICK_MS = 2000; // sessions, a session's facts, the pool: every tick
  const USAGE_TICKS = 5; // the charts (on the sessions page): every fifth tick
  const SVG = "http://www.w3.org/2000/svg";

  const $ = (selector, root = document) => root.querySelector(selector);
  const enc = encodeURIComponent;

  const state = {
    key: null, // null: a keyless server (the operator) or signed out
    signedIn: false,
    admin: false,
    tenant: null, // /v1/me's: the key's tenant, and the end user a key bound to one acts for
    user: null,
    view: null,
    sessionId: null,
    streaming: new Set(), // session ids with a turn streaming into this page
    following: null, // the open session's turn running elsewhere (another tab, the API, before a reload)
    ticks: 0,
    timer: null,
    refreshing: false,
    ids: 0,
    flash: "", // a notice for the next view
    again: false,
  };

  // -- the API ------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, type, message, detail) {
      super(message);
      this.status = status;
      this.type = type;
      this.detail = detail || {};
    }
  }

  function errorFrom(status, data) {
    const error = (data && data.error) || {};
    return new ApiError(status, error.type || error.code || `http_${status}`, error.message || `HTTP ${status}`, error);
  }

  function headers(extra) {
    const all = { Accept: "application/json", ...extra };
    if (state.key) all.Authorization = `Bearer ${state.key}`;
    return all;
  }

  async function request(path, { method = "GET", body, accept } = {}) {
    const init = { method, cache: "no-store", headers: headers(accept ? { Accept: accept } : {}) };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    try {
      return await fetch(path, init);
    } catch {
      throw new ApiError(0, "network", "The server could not be reached. Check that it is running.");
    }
  }

  async function failure(response) {
    let data = null;
    try {
      data = await response.json();
    } catch {
      data = null;
    }
    return errorFrom(response.status, data);
  }

  async function api(path, options) {
    const response = await request(path, options);
    if (!response.ok) throw await failure(response);
    if (response.status === 204) return null;
    return response.json();
  }

  /** What went wrong, in words a person understands (the server's own text as the detail). */
  function explain(error) {
    const detail = error.detail || {};
    switch (error.type) {
      case "slash_command_refused":
        return ["Commands starting with “/” are not allowed on this server. Write the message without the slash.", error.message];
      case "session_busy":
        return ["This session is still answering an earlier message. Wait for it to finish, or interrupt it."];
      case "turn_timeout":
        return ["The reply took too long and was stopped. You can send the message again.", error.message];
      case "model_error":
        return [
          `The model could not answer${detail.status ? ` (it returned status ${detail.status})` : ""}. Try again in a moment.`,
          error.message,
        ];
      case "session_limit":
        return ["The limit of open sessions is reached. Delete a session you no longer need, then try again."];
      case "budget_exceeded":
        return ["Today's spending limit is reached. New messages can start again after midnight (UTC)."];
      case "rate_limited":
        return ["Too many messages in a short time. Wait a moment, then send again."];
      case "not_found":
        return ["This session no longer exists."];
      case "session_orphaned":
        return ["This session lost its conversation history. Delete it and start a new one."];
      case "worker_died":
        return ["The Claude Code process behind this session stopped unexpectedly. Send the message again."];
      case "at_capacity":
      case "worker_unavailable":
        return ["The server is busy starting Claude Code. Try again in a few seconds."];
      case "session_moved":
      case "shutting_down":
        return ["The server is restarting or handing this session over. Try again in a few seconds."];
      case "database_unavailable":
        return ["The server cannot reach its database right now. Try again shortly."];
      case "unauthorized":
        return ["That API key was not accepted."];
      case "forbidden":
        return ["This needs the admin key."];
      case "invalid_request":
        return ["The server refused the request.", error.message];
      default:
        return [error.message || "Something went wrong."];
    }
  }

  function explainText(error) {
    return explain(error).join(" ");
  }

  // -- formatting ---------------------------------------------------------------------

  const integer = new Intl.NumberFormat("en");

  function money(value) {
    const amount = Number(value) || 0;
    return `$${amount.toFixed(amount !== 0 && Math.abs(amount) < 1 ? 4 : 2)}`;
  }

  function ago(seconds) {
    const delta = Math.max(0, Date.now() / 1000 - seconds);
    if (delta < 5) return "just now";
    if (delta < 90) return `${Math.round(delta)} s ago`;
    if (delta < 5400) return `${Math.round(delta / 60)} min ago`;
    if (delta < 172800) return `${Math.round(delta / 3600)} h ago`;
    return new Date(seconds * 1000).toLocaleString();
  }

  function duration(seconds) {
    if (seconds < 90) return `${Math.round(seconds)} s`;
    if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
    return `${(seconds / 3600).toFixed(1)} h`;
  }

  function isoSeconds(iso) {
    return Date.parse(iso) / 1000;
  }

  function element(tag, { className, text, attrs } = {}, parent) {
    const el = document.createElement(tag);
    if (className) el.className = className;
    if (text !== undefined) el.textContent = text;
    for (const [name, value] of Object.entries(attrs || {})) el.setAttribute(name, value);
    if (parent) parent.appendChild(el);
    return el;
  }

  function badge(cell, value) {
    cell.replaceChildren(element("span", { className: `state state-${value}`, text: value }));
  }

  function uid(prefix) {
    state.ids += 1;
    return `${prefix}-${state.ids}`;
  }

  /** Update a table body in place, keyed rows kept (a focused button keeps its focus across refreshes). */
  function syncRows(tbody, items, keyOf, create, update) {
    const existing = new Map([...tbody.rows].map((row) => [row.dataset.key, row]));
    let previous = null;
    for (const item of items) {
      const key = keyOf(item);
      let row = existing.get(key);
      if (row) {
        existing.delete(key);
      } else {
        row = create(item);
        row.dataset.key = key;
      }
      update(row, item);
      const expected = previous ? previous.nextElementSibling : tbody.firstElementChild;
      if (row !== expected) tbody.insertBefore(row, expected);
      previous = row;
    }
    for (const row of existing.values()) row.remove();
  }

  function notify(text) {
    $("#notice").textContent = text;
  }

  /** Go to another view, and say why there once it shows. */
  function goTo(hash, message) {
    state.flash = message || "";
    if (location.hash === hash) route();
    else location.hash = hash;
  }

  // -- signing in and out ---------------------------------------------------------------

  function whoText(me) {
    if (!state.key) return "Operator (no keys configured)";
    if (me.admin) return "Signed in as admin";
    return me.user ? `Signed in as ${me.user} of ${me.tenant}` : `Signed in as tenant ${me.tenant}`;
  }

  async function signIn(key) {
    state.key = key;
    let me;
    try {
      me = await api("/v1/me");
    } catch (error) {
      state.key = null;
      throw error;
    }
    if (key) sessionStorage.setItem(KEY_STORE, key);
    state.signedIn = true;
    Object.assign(state, { admin: Boolean(me.admin), tenant: me.tenant ?? null, user: me.user ?? null });
    document.body.classList.toggle("admin", state.admin);
    document.body.classList.toggle("end-user", state.user !== null);
    $("#who-name").textContent = whoText(me);
    $("#sign-out").hidden = !key;
    $("#who").hidden = false;
    $("#nav").hidden = false;
    $("#nav-service").hidden = !state.admin;
    $("#nav-keys").hidden = !(state.admin && key); // a keyless server asks for no key: none to make
    $("#sessions-caption").textContent = state.admin
      ? "Every session of the deployment, refreshed every few seconds; yours can be opened"
      : "Your sessions, refreshed every few seconds";
    loadModels();
    loadAskTools();
    clearInterval(state.timer);
    state.timer = setInterval(tick, TICK_MS);
    route();
  }

  function signOut(message) {
    sessionStorage.removeItem(KEY_STORE);
    clearInterval(state.timer);
    Object.assign(state, { key: null, signedIn: false, admin: false, tenant: null, user: null, sessionId: null });
    document.body.classList.remove("admin", "end-user");
    for (const tbody of document.querySelectorAll("tbody")) tbody.replaceChildren();
    $("#conversation").replaceChildren();
    $("#who").hidden = true;
    $("#nav").hidden = true;
    notify("");
    $("#sign-in-error").textContent = message || "";
    if (location.hash) history.replaceState(null, "", location.pathname);
    showView("sign-in");
    $("#api-key").focus();
  }

  /** A refused key ends the visit; anything else is the caller's to show. */
  function handled(error) {
    if (error.status === 401 && state.key) {
      signOut("Your API key is no longer accepted. Sign in again.");
      return true;
    }
    return false;
  }

  async function loadModels() {
    const select = $("#new-model");
    try {
      const models = await api("/v1/models");
      select.replaceChildren(element("option", { text: "Server default", attrs: { value: "" } }));
      for (const model of models.data || []) element("option", { text: model.id, attrs: { value: model.id } }, select);
    } catch (error) {
      handled(error);
    }
  }

  /** The tools this server lets a session ask about (TOOLS_ASK), as its /openapi.json states them. */
  async function loadAskTools() {
    const fieldset = $("#new-ask");
    const choices = $(".choices", fieldset);
    let tools = [];
    try {
      const schema = await api("/openapi.json");
      const asked = schema.components.schemas.CreateSessionBody.properties.ask_tools || {};
      tools = asked.maxItems === 0 ? [] : (asked.items && asked.items.enum) || [];
    } catch (error) {
      handled(error);
    }
    choices.replaceChildren();
    for (const tool of tools) {
      const label = element("label", {}, choices);
      element("input", { attrs: { type: "checkbox", value: tool } }, label);
      label.append(tool);
    }
    fieldset.hidden = tools.length === 0;
  }

  // -- views and routing ----------------------------------------------------------------

  const TITLES = { "sign-in": "Sign in", sessions: "Sessions", session: "Session", service: "Pool and nodes", keys: "Keys" };

  function showView(name) {
    const changed = state.view !== name;
    if (name !== "keys") window.ConsoleKeys.leave(); // a new key's secret is shown on its view only
    state.view = name;
    for (const view of document.querySelectorAll(".view")) view.hidden = view.id !== `view-${name}`;
    for (const link of document.querySelectorAll("#nav a")) {
      const current = link.dataset.view === name || (name === "session" && link.dataset.view === "sessions");
      if (current) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
    document.title = `${TITLES[name]} · claude-sessions console`;
    if (changed || name === "session") $(`#view-${name} h1`).focus();
  }

  function route() {
    if (!state.signedIn) {
      showView("sign-in");
      return;
    }
    notify(state.flash || "");
    state.flash = "";
    const [name, ...rest] = location.hash.replace(/^#\/?/, "").split("/");
    if (name === "session" && rest.length) {
      openSession(decodeURIComponent(rest.join("/")));
      return;
    }
    state.sessionId = null;
    if (name === "service" && state.admin) showView("service");
    else if (name === "keys" && state.admin && state.key) showView("keys");
    else showView("sessions");
    refresh(true);
  }

  function tick() {
    if (!document.hidden) refresh(false);
  }

  async function refresh(now) {
    if (!state.signedIn) return;
    if (state.refreshing) {
      state.again ||= now; // a view just opened: load it as soon as the running refresh ends
      return;
    }
    state.refreshing = true;
    state.ticks += 1;
    try {
      if (state.view === "sessions") {
        await refreshSessions();
        if (now || state.ticks % USAGE_TICKS === 0) await refreshUsage();
      } else if (state.view === "session" && state.sessionId) {
        await refreshFacts(state.sessionId);
      } else if (state.view === "service") {
        await refreshService();
      } else if (state.view === "keys") {
        await window.ConsoleKeys.refresh();
      }
      if ($("#notice").dataset.lost) {
        notify("");
        delete $("#notice").dataset.lost;
      }
    } catch (error) {
      if (!handled(error) && error.type === "network") {
        notify("Lost contact with the server; retrying.");
        $("#notice").dataset.lost = "1";
      }
    } finally {
      state.refreshing = false;
      if (state.again) {
        state.again = false;
        refresh(true);
      }
    }
  }

  // -- sessions -------------------------------------------------------------------------

  function mine(session) {
    return !state.admin || session.owner === undefined || session.owner === null || session.owner === ADMIN_OWNER;
  }

  async function refreshSessions() {
    const data = await api(state.admin ? "/v1/admin/sessions" : "/v1/sessions");
    const sessions = data.sessions.slice().sort((a, b) => b.created_at.localeCompare(a.created_at));
    const tbody = $("#sessions-table tbody");
    syncRows(tbody, sessions, (s) => `${s.owner ?? ""}/${s.session_id}`, createSessionRow, updateSessionRow);
    $("#sessions-empty").hidden = sessions.length > 0;
    $("#sessions-table").hidden = sessions.length === 0;
    $("#sessions-table").classList.toggle("with-users", sessions.some((s) => s.user)); // the User column
  }

  function createSessionRow(session) {
    const row = element("tr");
    const idCell = element("th", { attrs: { scope: "row", id: uid("session") } }, row);
    const label = mine(session)
      ? element("a", { className: "session-label", attrs: { href: `#/session/${enc(session.session_id)}` } }, idCell)
      : element("span", { className: "session-label" }, idCell);
    element("span", { className: "session-title" }, label); // the first message, once there is one
    element("code", { className: "session-id", text: session.session_id }, label);
    element("td", { className: "owner-col", text: session.owner ?? "operator" }, row);
    element("td", { className: "user-col", text: session.user ?? "–" }, row);
    for (const name of ["origin", "state", "messages", "tokens", "cost", "activity"]) {
      element("td", { className: ["messages", "tokens", "cost"].includes(name) ? "num" : "", attrs: { "data-cell": name } }, row);
    }
    const actions = element("td", { className: "actions-cell" }, row);
    if (mine(session)) {
      const interrupt = element("button", { text: "Interrupt", attrs: { type: "button", "aria-describedby": idCell.id } }, actions);
      const remove = element("button", { className: "danger", text: "Delete", attrs: { type: "button", "aria-describedby": idCell.id } }, actions);
      interrupt.addEventListener("click", () => interruptSession(session.session_id));
      remove.addEventListener("click", () => deleteSession(session.session_id));
    }
    return row;
  }

  function updateSessionRow(row, session) {
    const metrics = session.metrics || {};
    const cell = (name) => $(`[data-cell="${name}"]`, row);
    const title = $(".session-title", row);
    const label = session.title || "";
    if (title.textContent !== label) {
      title.textContent = label;
      title.closest("th").title = label;
      row.classList.toggle("titled", Boolean(label));
    }
    const origin = session.origin || "–";
    if (cell("origin").textContent !== origin) {
      cell("origin").replaceChildren(element("span", { className: `origin origin-${session.origin || "unknown"}`, text: origin }));
    }
    if (cell("state").textContent !== session.state) badge(cell("state"), session.state);
    cell("messages").textContent = integer.format(metrics.message_count ?? 0);
    cell("tokens").textContent = integer.format(metrics.total_tokens ?? 0);
    cell("cost").textContent = money(metrics.total_cost);
    const activity = cell("activity");
    activity.textContent = ago(isoSeconds(session.last_activity));
    activity.title = new Date(session.last_activity).toLocaleString();
  }

  async function createSession(event) {
    event.preventDefault();
    const error = $("#new-session-error");
    const prompt = $("#new-system-prompt").value.trim();
    const model = $("#new-model").value;
    const body = { origin: "console" };
    if (prompt) body.system_prompt = prompt;
    if (model) body.model = model;
    const asked = [...document.querySelectorAll("#new-ask input:checked")].map((box) => box.value);
    if (asked.length) body.ask_tools = asked;
    error.textContent = "";
    const button = $("#new-session-form button[type=submit]");
    button.disabled = true;
    try {
      const session = await api("/v1/sessions", { method: "POST", body });
      $("#new-system-prompt").value = "";
      location.hash = `#/session/${enc(session.session_id)}`;
    } catch (failure) {
      if (!handled(failure)) error.textContent = explainText(failure);
    } finally {
      button.disabled = false;
    }
  }

  async function interruptSession(id) {
    try {
      await api(`/v1/sessions/${enc(id)}/interrupt`, { method: "POST" });
      notify(`Asked session ${id} to stop its turn.`);
    } catch (error) {
      if (!handled(error)) notify(explainText(error));
    }
  }

  async function deleteSession(id) {
    try {
      await api(`/v1/sessions/${enc(id)}`, { method: "DELETE" });
      notify(`Session ${id} deleted.`);
    } catch (error) {
      if (!handled(error)) notify(explainText(error));
      return;
    }
    if (state.view === "session") {
      goTo("#/sessions", `Session ${id} deleted.`);
    } else {
      $("#sessions-title").focus();
      await refresh(true);
    }
  }

  // -- one session ----------------------------------------------------------------------

  async function openSession(id) {
    state.sessionId = id;
    $("#session-name").textContent = id;
    $("#session-topic").textContent = "";
    for (const dd of document.querySelectorAll("#session-facts dd")) dd.textContent = "–";
    const conversation = $("#conversation");
    conversation.replaceChildren();
    showView("session");
    try {
      const [session, history] = await Promise.all([
        api(`/v1/sessions/${enc(id)}`),
        api(`/v1/sessions/${enc(id)}/history`),
      ]);
      if (state.sessionId !== id) return;
      renderFacts(session);
      state.following = null;
      if (!state.streaming.has(id)) {
        for (const entry of history.messages) render(conversation, entry.type, entry.message && entry.message.content);
        conversation.scrollTop = conversation.scrollHeight;
        await followTurn(id, session.state);
      } else if (session.state === "busy") {
        await showPending(id); // this page's own turn: its stream goes on, its cards are drawn again
      }
    } catch (error) {
      if (handled(error) || state.sessionId !== id) return;
      if (error.status === 404) {
        goTo("#/sessions", `Session ${id} does not exist (any more).`);
      } else {
        bubble(conversation, "error", "Error", explain(error));
      }
    }
  }

  async function refreshFacts(id) {
    let session;
    try {
      session = await api(`/v1/sessions/${enc(id)}`);
    } catch (error) {
      if (error.status === 404 && state.sessionId === id) {
        goTo("#/sessions", `Session ${id} was deleted.`);
        return;
      }
      throw error;
    }
    renderFacts(session);
    await followTurn(id, session.state);
  }

  /** The conversation again from the transcript (a turn that ran elsewhere has ended). */
  async function reloadConversation(id) {
    const history = await api(`/v1/sessions/${enc(id)}/history`);
    if (state.sessionId !== id || state.streaming.has(id)) return;
    const conversation = $("#conversation");
    conversation.replaceChildren();
    for (const entry of history.messages) render(conversation, entry.type, entry.message && entry.message.content);
    conversation.scrollTop = conversation.scrollHeight;
  }

  function renderFacts(session) {
    if (state.sessionId !== session.session_id) return;
    const metrics = session.metrics || {};
    const fact = (name) => $(`#session-facts [data-fact="${name}"]`);
    badge(fact("state"), session.state);
    fact("user").textContent = session.user ?? "";
    fact("user").parentElement.hidden = !session.user;
    const topic = $("#session-topic");
    if (topic.textContent !== (session.title || "")) topic.textContent = session.title || "";
    fact("messages").textContent = integer.format(metrics.message_count ?? 0);
    fact("tokens").textContent = integer.format(metrics.total_tokens ?? 0);
    fact("cost").textContent = money(metrics.total_cost);
    fact("activity").textContent = ago(isoSeconds(session.last_activity));
    const asked = (session.options && session.options.ask_tools) || [];
    fact("ask").textContent = asked.join(", ");
    fact("ask").parentElement.hidden = asked.length === 0;
  }

  // -- tool approval (approvals.js draws the cards) -------------------------------------

  /** How the cards of session ``id`` send their answers, and where they go. */
  function answering(id, before) {
    const answer = async (request, body) => {
      try {
        return await api(`/v1/sessions/${enc(id)}/permissions/${enc(request.request_id)}`, { method: "POST", body });
      } catch (error) {
        handled(error);
        throw error;
      }
    };
    return { answer, explain: explainText, before, focus: state.view === "session" };
  }

  /** The requests the open session's turn waits on, in its conversation (after a reload, say). */
  async function showPending(id) {
    const { requests } = await api(`/v1/sessions/${enc(id)}/permissions`);
    if (state.sessionId === id) window.ConsoleApprovals.sync($("#conversation"), requests, answering(id));
  }

  /** A turn of the open session running elsewhere: its requests as they come, its messages once it ends. */
  async function followTurn(id, sessionState) {
    if (state.sessionId !== id || state.streaming.has(id)) return;
    if (sessionState === "busy") {
      state.following = id;
      await showPending(id);
    } else if (state.following === id) {
      state.following = null;
      await reloadConversation(id);
    }
  }

  /** One bubble of the conversation: ``lines`` are its text (an error's: the sentence, then the detail).
   * ``before``: the turn's own "is answering" bubble, so a turn's messages stay together. */
  function bubble(conversation, kind, who, lines, { extra, before, markdown = false } = {}) {
    const box = element("div", { className: `bubble ${kind}` });
    element("span", { className: "who", text: who }, box);
    const texts = Array.isArray(lines) ? lines : [lines];
    if (markdown) showMarkdown(element("div", { className: "text md" }, box), texts[0] ?? "");
    else element("span", { className: "text", text: texts[0] ?? "" }, box);
    if (texts.length > 1 && texts[1] && texts[1] !== texts[0]) {
      element("small", { className: "detail", text: `\n${texts[1]}` }, box);
    }
    if (extra !== undefined) element("pre", { text: extra }, box);
    if (kind === "error") box.setAttribute("role", "alert");
    conversation.insertBefore(box, before && before.parentNode === conversation ? before : null);
    conversation.scrollTop = conversation.scrollHeight;
    return box;
  }

  /** A tenant's text as markdown: inert nodes built by markdown.js, never parsed as HTML. */
  function showMarkdown(node, text) {
    const markdown = window.ConsoleMarkdown;
    node.replaceChildren(markdown ? markdown.render(text) : document.createTextNode(text));
  }

  function textOf(content) {
    if (typeof content === "string") return content;
    if (!Array.isArray(content)) return content == null ? "" : JSON.stringify(content, null, 2);
    return content.map((part) => (part && part.type === "text" ? part.text : JSON.stringify(part))).join("\n");
  }

  const INTERRUPTED = /^\[Request interrupted/;

  /** A message of the conversation (from the history, or from the stream), block by block. */
  function render(conversation, role, content, { live = false, before } = {}) {
    const blocks = typeof content === "string" ? [{ type: "text", text: content }] : Array.isArray(content) ? content : [];
    for (const block of blocks) {
      if (!block || typeof block !== "object") continue;
      if (block.type === "text") {
        const text = block.text || "";
        if (INTERRUPTED.test(text)) bubble(conversation, "status", "", "Interrupted.", { before });
        else if (role === "assistant") bubble(conversation, "assistant", "Claude", text, { before, markdown: true });
        else if (!live) bubble(conversation, "user", "You", text, { markdown: true }); // a live turn's prompt is already shown
      } else if (block.type === "tool_use") {
        const input = JSON.stringify(block.input ?? {}, null, 2);
        bubble(conversation, "tool", `Tool call · ${block.name}`, "", { extra: input, before });
      } else if (block.type === "tool_result") {
        const failed = Boolean(block.is_error);
        const who = failed ? "Tool result · error" : "Tool result";
        const box = bubble(conversation, `tool${failed ? " failed" : ""}`, who, "", { extra: textOf(block.content), before });
        box.dataset.toolUseId = block.tool_use_id || "";
      }
    }
  }

  function endOfTurn(conversation, result, interrupted, before) {
    if (!result.is_error) {
      const seconds = (result.duration_ms || 0) / 1000;
      bubble(conversation, "status", "", `Answered in ${seconds.toFixed(1)} s.`, { before });
    } else if (result.subtype === "error_max_turns") {
      const text = "The turn stopped: it reached this session's limit of steps (max_turns).";
      bubble(conversation, "error", "Stopped", [text], { before });
    } else if (result.subtype === "error_max_budget_usd") {
      bubble(conversation, "error", "Stopped", ["The turn stopped: it reached the spending limit."], { before });
    } else if (!interrupted) {
      bubble(conversation, "status", "", "The turn ended early.", { before });
    }
  }

  async function* sseEvents(body) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let end;
      while ((end = /\r\n\r\n|\n\n|\r\r/.exec(buffer))) {
        const block = buffer.slice(0, end.index);
        buffer = buffer.slice(end.index + end[0].length);
        let event = "message";
        const data = [];
        for (const line of block.split(/\r\n|\n|\r/)) {
          if (!line || line.startsWith(":")) continue;
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          let text = colon < 0 ? "" : line.slice(colon + 1);
          if (text.startsWith(" ")) text = text.slice(1);
          if (field === "event") event = text;
          else if (field === "data") data.push(text);
        }
        if (data.length) yield { event, data: data.join("\n") };
      }
    }
  }

  async function send(id, content) {
    const conversation = $("#conversation");
    bubble(conversation, "user", "You", content, { markdown: true });
    const pending = bubble(conversation, "pending assistant", "Claude", "is answering…");
    let partial = null; // the reply growing from text deltas: its bubble and text so far
    let partialText = "";
    let painting = false;
    const paint = () => {
      painting = false;
      if (!partial) return;
      const follow = conversation.scrollHeight - conversation.scrollTop - conversation.clientHeight < 48;
      showMarkdown($(".text", partial), partialText);
      if (follow) conversation.scrollTop = conversation.scrollHeight;
    };
    let interrupted = false;
    let ended = false;
    const waiting = new Set(); // the turn's requests not yet answered
    const showWaiting = () => {
      $(".text", pending).textContent = waiting.size ? "waits for your answer…" : "is answering…";
    };
    state.streaming.add(id);
    state.following = null;
    conversation.setAttribute("aria-busy", "true");
    try {
      const response = await request(`/v1/sessions/${enc(id)}/messages`, {
        method: "POST",
        body: { content },
        accept: "text/event-stream",
      });
      if (!response.ok) throw await failure(response);
      for await (const { event, data } of sseEvents(response.body)) {
        const message = JSON.parse(data);
        if (event === "stream_event") {
          const delta = message.event && message.event.delta;
          if (delta && delta.type === "text_delta") {
            partial = partial || bubble(conversation, "assistant", "Claude", "", { before: pending, markdown: true });
            partialText += delta.text;
            if (!painting) {
              painting = true; // once a frame at most, however fast the deltas come
              if (document.hidden) setTimeout(paint, 100);
              else requestAnimationFrame(paint);
            }
          }
        } else if (event === "assistant" || event === "user") {
          if (event === "assistant" && partial) {
            partial.remove();
            partial = null;
            partialText = "";
          }
          interrupted ||= textOf(message.content).split("\n").some((line) => INTERRUPTED.test(line));
          render(conversation, event, message.content, { live: true, before: pending });
        } else if (event === "permission_request") {
          waiting.add(message.request_id);
          showWaiting();
          if (state.sessionId === id) window.ConsoleApprovals.show(conversation, message, answering(id, pending));
        } else if (event === "permission_resolved") {
          waiting.delete(message.request_id);
          showWaiting();
          window.ConsoleApprovals.resolve(conversation, message);
        } else if (event === "result") {
          ended = true;
          endOfTurn(conversation, message, interrupted, pending);
        } else if (event === "error") {
          ended = true;
          bubble(conversation, "error", "Error", explain(errorFrom(0, message)), { before: pending });
        }
      }
      if (!ended) {
        const text = "The reply stopped before it was complete. Send the message again.";
        bubble(conversation, "error", "Error", [text], { before: pending });
      }
    } catch (error) {
      if (!handled(error)) bubble(conversation, "error", "Error", explain(error), { before: pending });
    } finally {
      pending.remove();
      state.streaming.delete(id);
      conversation.setAttribute("aria-busy", "false");
      if (state.sessionId === id) refreshFacts(id).catch(() => {});
    }
  }

  function submitMessage(event) {
    event.preventDefault();
    const input = $("#message");
    const content = input.value;
    if (!content.trim() || !state.sessionId) return;
    input.value = "";
    send(state.sessionId, content);
  }

  // -- usage charts ---------------------------------------------------------------------

  const METRICS = {
    turns: { label: "Turns", format: (v) => integer.format(v), whole: true },
    tokens: { label: "Tokens", format: (v) => integer.format(v), whole: true },
    cost: { label: "Cost", format: money, whole: false },
  };

  function svg(tag, attrs, parent) {
    const el = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attrs || {})) el.setAttribute(name, String(value));
    if (parent) parent.appendChild(el);
    return el;
  }

  function niceCeiling(value) {
    if (value <= 0) return 1;
    const power = 10 ** Math.floor(Math.log10(value));
    for (const step of [1, 2, 2.5, 5, 10]) if (step * power >= value) return step * power;
    return 10 * power;
  }

  function drawChart(figure, points, metric) {
    const { label, format, whole } = METRICS[metric];
    for (const old of figure.querySelectorAll("svg, .summary")) old.remove();
    const [W, H, L, R, T, B] = [360, 150, 52, 8, 10, 22];
    const values = points.map((p) => Number(p[metric]) || 0);
    const peak = Math.max(0, ...values);
    const total = values.reduce((a, b) => a + b, 0);
    const top = niceCeiling(peak);
    const plotH = H - T - B;
    const titleId = uid("chart");
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-labelledby": titleId }, figure);
    svg("title", { id: titleId }, root).textContent =
      `${label} per minute over the last hour: ${format(total)} in all, at most ${format(peak)} in one minute.`;
    for (const fraction of [0, 0.5, 1]) {
      if (whole && !Number.isInteger(top * fraction)) continue;
      const y = T + plotH * (1 - fraction);
      svg("line", { class: fraction ? "grid" : "axis", x1: L, x2: W - R, y1: y, y2: y }, root);
      const text = svg("text", { x: L - 6, y: y + 4, "text-anchor": "end" }, root);
      text.textContent = format(top * fraction);
    }
    const width = (W - L - R) / Math.max(1, points.length);
    points.forEach((point, i) => {
      const value = values[i];
      const height = (value / top) * plotH;
      const bar = svg("rect", {
        class: value ? "bar" : "bar zero",
        x: (L + i * width + 0.5).toFixed(2),
        y: (T + plotH - height).toFixed(2),
        width: Math.max(1, width - 1).toFixed(2),
        height: height.toFixed(2),
      }, root);
      const at = new Date(point.start * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
      svg("title", {}, bar).textContent = `${at}: ${format(value)}`;
    });
    const minutes = points.length;
    for (const [x, anchor, text] of [
      [L, "start", `${minutes} min ago`],
      [L + (W - L - R) / 2, "middle", `${Math.round(minutes / 2)} min ago`],
      [W - R, "end", "now"],
    ]) {
      svg("text", { x, y: H - 6, "text-anchor": anchor }, root).textContent = text;
    }
    element("p", { className: "summary", text: `${format(total)} in the last hour · peak ${format(peak)} per minute` }, figure);
  }

  /** A tenant's report, or an end user's (a user's key: its own, with its limit of sessions). */
  function spendLine(report) {
    const { today, month, limits } = report;
    const budget = limits.daily_usd == null ? "no daily limit" : `of ${money(limits.daily_usd)} a day`;
    const rate = limits.turns_per_minute == null ? "" : `; at most ${limits.turns_per_minute} turns a minute`;
    const open = limits.max_sessions == null ? "" : `; at most ${limits.max_sessions} sessions at once`;
    return `${money(today.cost_usd)} today ${budget} (${integer.format(today.turns)} turns, `
      + `${integer.format(today.tokens)} tokens); ${money(month.cost_usd)} this month${rate}${open}.`;
  }

  async function refreshSpend() {
    const { tenants = [], users = [] } = await api("/v1/usage");
    const list = $("#spend-list");
    list.replaceChildren();
    for (const report of [...tenants, ...users]) {
      const item = element("li", {}, list);
      if (state.admin) element("strong", { text: `${report.tenant}: ` }, item);
      item.append(spendLine(report));
    }
  }

  async function refreshUsage() {
    await refreshSpend();
    const series = await api("/v1/usage/timeseries");
    $("#usage-scope").textContent = state.admin
      ? "Every tenant, per minute, as this server counted it."
      : "Your sessions, per minute, as this server counted it.";
    for (const figure of document.querySelectorAll(".chart")) drawChart(figure, series.points, figure.dataset.metric);
  }

  // -- pool and nodes -------------------------------------------------------------------

  async function refreshService() {
    const [pool, health] = await Promise.all([api("/v1/pool"), api("/v1/health")]);
    const reasons = health.reasons && health.reasons.length ? `: ${health.reasons.join("; ")}` : "";
    $("#health-line").textContent = `Service ${health.status}${reasons}. Pool: ${pool.pool_size} workers, ${pool.idle} idle, `
      + `${pool.healthy_connections} healthy (keeps ${pool.min_size} to ${pool.max_size} warm).`;
    const byState = new Map();
    for (const worker of pool.connections) byState.set(worker.state, (byState.get(worker.state) || 0) + 1);
    const tally = $("#worker-states");
    tally.replaceChildren();
    if (!byState.size) element("li", { text: "No workers" }, tally);
    for (const [name, count] of [...byState].sort()) {
      const item = element("li", {}, tally);
      element("strong", { text: String(count) }, item);
      item.append(name);
    }
    syncRows($("#pool-table tbody"), pool.connections, (w) => w.id, () => {
      const row = element("tr");
      element("th", { attrs: { scope: "row" } }, row);
      for (const num of [false, true, true, false, true]) element("td", { className: num ? "num" : "" }, row);
      return row;
    }, (row, worker) => {
      const [id, stateCell, age, uses, healthy, pid] = row.cells;
      id.textContent = worker.id;
      badge(stateCell, worker.state);
      age.textContent = duration(worker.age_seconds);
      uses.textContent = integer.format(worker.uses);
      healthy.textContent = worker.healthy ? "yes" : "no";
      pid.textContent = worker.pid ?? "–";
    });
    syncRows($("#nodes-table tbody"), health.nodes || [], (n) => n.node_id, () => {
      const row = element("tr");
      element("th", { attrs: { scope: "row" } }, row);
      for (const num of [false, false, true, false]) element("td", { className: num ? "num" : "" }, row);
      return row;
    }, (row, node) => {
      const [id, url, status, workers, seen] = row.cells;
      id.textContent = node.node_id;
      url.textContent = node.url;
      badge(status, node.status);
      workers.textContent = integer.format(node.live_workers);
      seen.textContent = ago(node.last_seen);
    });
  }

  // -- start ----------------------------------------------------------------------------

  function start() {
    $("#sign-in-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const input = $("#api-key");
      const error = $("#sign-in-error");
      error.textContent = "";
      const key = input.value.trim();
      if (!key) {
        error.textContent = "Paste an API key first.";
        return;
      }
      try {
        await signIn(key);
        input.value = "";
      } catch (failure) {
        error.textContent = failure.status === 401 ? "That API key was not accepted." : explainText(failure);
        input.focus();
      }
    });
    $("#sign-out").addEventListener("click", () => signOut(""));
    $("#new-session-form").addEventListener("submit", createSession);
    $("#chat-form").addEventListener("submit", submitMessage);
    $("#message").addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        $("#chat-form").requestSubmit();
      }
    });
    $("#session-interrupt").addEventListener("click", () => state.sessionId && interruptSession(state.sessionId));
    $("#session-delete").addEventListener("click", () => state.sessionId && deleteSession(state.sessionId));
    window.ConsoleKeys.start({ api, handled, explain: explainText, notify, syncRows, ago });
    window.addEventListener("hashchange", route);
    document.addEventListener("visibilitychange", tick);

    const open = document.body.dataset.auth === "none";
    const saved = sessionStorage.getItem(KEY_STORE);
    if (open || saved) {
      signIn(open ? null : saved).catch((error) => signOut(error.status === 401 ? "Your API key is no longer accepted. Sign in again." : explainText(error)));
    } else {
      signOut("");
    }
  }

  start();
})();
