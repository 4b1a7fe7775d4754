// Keys made at run time, for the admin: create one for a tenant or one of its end users, list, revoke.
//
// A new key's secret is in the server's answer once (POST /v1/admin/keys): this page shows it
// until the admin hides it or leaves the view, and keeps it nowhere else. Every text goes on the
// page with textContent, never as HTML. app.js routes here and lends its API helpers.
"use strict";

(() => {
  /** The form's inputs by the API's names for them (a refused one comes back as ``error.param``). */
  const FIELDS = {
    tenant: "key-tenant",
    user: "key-user",
    name: "key-name",
    expires_at: "key-expires",
    "limits.max_sessions": "key-max-sessions",
    "limits.daily_usd": "key-daily-usd",
    "limits.turns_per_minute": "key-turns",
  };
  const LIMITS = [
    ["max_sessions", "key-max-sessions"],
    ["daily_usd", "key-daily-usd"],
    ["turns_per_minute", "key-turns"],
  ];

  let app = null; // app.js's helpers: api, handled, explain, notify, syncRows, ago
  let ids = 0;
  const shown = new WeakMap(); // a row of the list: the key it shows
  const $ = (selector, root = document) => root.querySelector(selector);
  const byId = (id) => document.getElementById(id);

  const { el, copy: copyText } = window.ConsoleMarkdown; // markdown.js loads first

  function button(label, className, parent, onClick) {
    const node = el("button", className, label, parent);
    node.type = "button";
    node.addEventListener("click", onClick);
    return node;
  }

  // -- the form -------------------------------------------------------------------------

  function body() {
    const value = (id) => byId(id).value.trim();
    const out = { tenant: value("key-tenant") };
    if (value("key-user")) out.user = value("key-user");
    if (value("key-name")) out.name = value("key-name");
    const expires = value("key-expires");
    if (expires) {
      const at = new Date(expires); // the browser's local time, sent with its offset
      out.expires_at = Number.isNaN(at.getTime()) ? expires : at.toISOString();
    }
    const limits = {};
    for (const [name, id] of LIMITS) if (value(id)) limits[name] = Number(value(id));
    if (Object.keys(limits).length) out.limits = limits;
    return out;
  }

  function clearErrors() {
    byId("new-key-error").textContent = "";
    for (const id of Object.values(FIELDS)) {
      byId(id).removeAttribute("aria-invalid");
      byId(id).removeAttribute("aria-errormessage");
    }
  }

  const escape = (text) => text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");

  /** A refusal beside the form: each field the server named marked and called by its label, the first focused. */
  function showError(error) {
    const box = byId("new-key-error");
    if (error.status !== 422) {
      box.textContent = app.explain(error);
      return;
    }
    let message = error.message;
    const named = [];
    for (const [param, id] of Object.entries(FIELDS)) {
      const input = byId(id);
      const said = new RegExp(`(^|; )${escape(param)}\\b(?![.])`, "g");
      if (!said.test(message) && error.detail.param !== param) continue;
      message = message.replace(said, `$1${input.dataset.field}`);
      input.setAttribute("aria-invalid", "true");
      input.setAttribute("aria-errormessage", "new-key-error");
      named.push(input);
    }
    const first = byId(FIELDS[error.detail.param]) || named[0];
    box.textContent = named.length ? message : app.explain(error);
    if (first) first.focus();
  }

  async function create(event) {
    event.preventDefault();
    const submit = $("#new-key-form button[type=submit]");
    if (submit.disabled) return;
    clearErrors();
    hideSecret();
    submit.disabled = true;
    try {
      const key = await app.api("/v1/admin/keys", { method: "POST", body: body() });
      byId("new-key-form").reset();
      showSecret(key);
      await refresh();
    } catch (error) {
      if (!app.handled(error)) showError(error);
    } finally {
      submit.disabled = false;
    }
  }

  // -- the secret, shown once -----------------------------------------------------------

  function whose(key) {
    return key.user ? `${key.user} of ${key.tenant}` : `tenant ${key.tenant}`;
  }

  function showSecret(key) {
    byId("new-key-title").textContent = `New key for ${whose(key)}`;
    byId("new-key-secret").textContent = key.key;
    byId("new-key-id").textContent = key.key_id;
    byId("new-key-copy").textContent = "Copy";
    byId("new-key").hidden = false;
    byId("new-key-copy").focus();
  }

  /** The secret leaves the page: nothing keeps it once the admin is done or goes elsewhere. */
  function hideSecret() {
    byId("new-key-secret").textContent = "";
    byId("new-key-id").textContent = "";
    byId("new-key").hidden = true;
  }

  async function copySecret() {
    const node = byId("new-key-secret");
    const ok = await copyText(node.textContent, node);
    byId("new-key-copy").textContent = ok ? "Copied" : "Copy failed: select the secret and copy it";
  }

  // -- the list -------------------------------------------------------------------------

  function status(key) {
    if (key.revoked_at) return "revoked";
    if (key.expires_at && Date.parse(key.expires_at) <= Date.now()) return "expired";
    return "active";
  }

  function when(cell, iso, none) {
    const text = iso ? app.ago(Date.parse(iso) / 1000) : none;
    if (cell.textContent !== text) cell.textContent = text;
    cell.title = iso ? new Date(iso).toLocaleString() : "";
  }

  function createRow(key) {
    const row = el("tr");
    ids += 1;
    const head = el("th", "", undefined, row);
    head.scope = "row";
    head.id = `key-row-${ids}`;
    el("code", "", key.key_id, head);
    for (const name of ["tenant", "user", "name", "created", "expires", "used", "state"]) {
      el("td", "", undefined, row).dataset.cell = name;
    }
    const actions = el("td", "actions-cell", undefined, row);
    actions.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && row.dataset.confirming) showActions(row, shown.get(row)).focus();
    });
    return row;
  }

  function updateRow(row, key) {
    shown.set(row, key);
    const cell = (name) => $(`[data-cell="${name}"]`, row);
    cell("tenant").textContent = key.tenant;
    cell("user").textContent = key.user ?? "–";
    cell("name").textContent = key.name ?? "–";
    when(cell("created"), key.created_at, "–");
    const expires = key.expires_at ? new Date(key.expires_at).toLocaleString() : "never";
    if (cell("expires").textContent !== expires) cell("expires").textContent = expires;
    when(cell("used"), key.last_used_at, "never");
    const now = status(key);
    if (row.dataset.status !== now) {
      const badge = el("span", `state state-${now}`, now);
      cell("state").replaceChildren(badge);
      cell("state").title = key.revoked_at ? `Revoked ${new Date(key.revoked_at).toLocaleString()}` : "";
    }
    if (row.dataset.status !== now && !row.dataset.confirming) showActions(row, key, now);
    row.dataset.status = now;
  }

  /** "Revoke", or nothing once the key is revoked. */
  function showActions(row, key, now = status(key)) {
    const cell = row.cells[row.cells.length - 1];
    delete row.dataset.confirming;
    cell.replaceChildren();
    if (now === "revoked") return null;
    const revoke = button("Revoke", "danger", cell, () => askRevoke(row, key));
    revoke.setAttribute("aria-describedby", row.cells[0].id);
    return revoke;
  }

  /** A second step before a revocation, which cannot be undone: the keyboard lands on "Cancel". */
  function askRevoke(row, key) {
    const cell = row.cells[row.cells.length - 1];
    row.dataset.confirming = "1";
    cell.replaceChildren();
    ids += 1;
    const question = el("span", "confirm-question", "Revoke this key? It cannot be undone.", cell);
    question.id = `key-confirm-${ids}`;
    const yes = button("Yes, revoke", "danger", cell, () => revoke(row, key));
    const no = button("Cancel", "", cell, () => showActions(row, key).focus());
    for (const each of [yes, no]) each.setAttribute("aria-describedby", `${row.cells[0].id} ${question.id}`);
    no.focus();
  }

  async function revoke(row, key) {
    try {
      await app.api(`/v1/admin/keys/${encodeURIComponent(key.key_id)}`, { method: "DELETE" });
      app.notify(`Key ${key.key_id} revoked: every node refuses it within a second or so.`);
    } catch (error) {
      if (app.handled(error)) return;
      app.notify(error.status === 404 ? `Key ${key.key_id} does not exist (any more).` : app.explain(error));
    }
    delete row.dataset.confirming;
    delete row.dataset.status; // drawn again from the list
    byId("keys-title").focus();
    await refresh().catch((error) => app.handled(error));
  }

  async function refresh() {
    const { keys } = await app.api("/v1/admin/keys");
    keys.sort((a, b) => b.created_at.localeCompare(a.created_at));
    app.syncRows($("#keys-table tbody"), keys, (key) => key.key_id, createRow, updateRow);
    byId("keys-table").hidden = keys.length === 0;
    byId("keys-empty").hidden = keys.length > 0;
  }

  /** The view closes (another view, signing out): the secret and the form's refusals go. */
  function leave() {
    hideSecret();
    clearErrors();
    for (const row of document.querySelectorAll("#keys-table tbody tr")) {
      if (row.dataset.confirming) row.remove(); // drawn afresh next time
    }
  }

  function start(helpers) {
    app = helpers;
    byId("new-key-form").addEventListener("submit", create);
    byId("new-key-copy").addEventListener("click", copySecret);
    byId("new-key-done").addEventListener("click", () => {
      hideSecret();
      byId("key-tenant").focus();
    });
  }

  window.ConsoleKeys = Object.freeze({ start, refresh, leave });
})();
