// Tool approval in the console's conversation: a card for each call Claude Code asks about.
//
// A session created with ask_tools pauses its turn at each call of those tools until its user
// answers (POST /v1/sessions/{id}/permissions/{request_id}). The card says what the call would
// do (the command, or the file and its new text) and when it is denied unanswered, and offers
// three real buttons. The call's input is the model's text: it goes on the page with
// textContent only, never as HTML. app.js places the cards and sends the answers.
"use strict";

(() => {
  const ANSWERS = [
    { label: "Allow", body: { behavior: "allow" }, className: "allow" },
    { label: "Deny", body: { behavior: "deny" }, className: "secondary" },
    { label: "Allow for this session", body: { behavior: "allow", scope: "session" }, className: "secondary" },
  ];
  let ids = 0;

  const { el } = window.ConsoleMarkdown; // markdown.js loads first

  function asText(value) {
    return typeof value === "string" ? value : JSON.stringify(value ?? null, null, 2);
  }

  /** What the call would do: Bash's command, a file and its new text (Edit: old → new), else its input. */
  function details(card, input) {
    const list = el("dl", "approval-input", undefined, card);
    const item = (term, value, tag = "pre") => {
      el("dt", "", term, list);
      el(tag, "", asText(value), el("dd", "", undefined, list));
    };
    if ("command" in input) item("Command", input.command);
    if ("file_path" in input) item("File", input.file_path, "code");
    if ("notebook_path" in input) item("Notebook", input.notebook_path, "code");
    if ("content" in input) item("New text", input.content);
    if ("old_string" in input) item(input.replace_all ? "Replace every" : "Replace", input.old_string);
    if ("new_string" in input) item("With", input.new_string);
    if (!list.children.length) item("Input", input);
  }

  function expiry(iso) {
    const at = new Date(iso);
    if (Number.isNaN(at.getTime())) return "";
    return `Denied automatically at ${at.toLocaleTimeString()} unless answered.`;
  }

  /** How a request ended, in words: the answer and its scope, or why it was denied without one. */
  function outcome({ behavior, scope, by }) {
    if (by === "timeout") return "Denied: timed out";
    if (by === "interrupt") return "Denied: interrupted";
    if (behavior === "allow") return scope === "session" ? "Allowed for this session" : "Allowed";
    if (behavior === "deny") return "Denied";
    return "No longer waiting";
  }

  /** The request's card. ``answer(body)``: the promised decision, or an error with ``type``;
   * ``explain(error)``: its words for the person. */
  function card(request, { answer, explain }) {
    ids += 1;
    const node = el("div", "bubble approval open");
    node.dataset.requestId = request.request_id;
    node.setAttribute("role", "group");
    node.setAttribute("aria-labelledby", `approval-${ids}`);
    el("span", "who", `Approval needed · ${request.tool}`, node);
    el("p", "approval-title", request.title || `Claude wants to use ${request.tool}`, node).id = `approval-${ids}`;
    details(node, request.input && typeof request.input === "object" ? request.input : {});
    el("p", "approval-expiry", expiry(request.expires_at), node);
    if (request.session_grant) el("p", "approval-scope", `"Allow for this session" allows ${request.session_grant}.`, node);
    const buttons = el("div", "approval-buttons", undefined, node);
    const result = el("p", "approval-outcome", undefined, node);
    result.tabIndex = -1;
    result.setAttribute("role", "status");
    const error = el("p", "error", undefined, node);
    error.setAttribute("role", "alert");
    for (const choice of ANSWERS) {
      const button = el("button", choice.className, choice.label, buttons);
      button.type = "button";
      button.addEventListener("click", () => send(node, choice.body, button, { answer, explain }));
    }
    return node;
  }

  async function send(node, body, button, { answer, explain }) {
    if (node.dataset.answering || !isOpen(node)) return; // one answer at a time
    const buttons = node.querySelectorAll(".approval-buttons button");
    const error = node.querySelector(".error");
    node.dataset.answering = "1";
    for (const each of buttons) each.setAttribute("aria-disabled", "true"); // still focusable: focus stays put
    error.textContent = "";
    try {
      const decided = await answer(body);
      settle(node, { behavior: decided.behavior, scope: decided.scope, by: "user" });
    } catch (failure) {
      if (failure.type === "permission_expired") {
        settle(node, { behavior: "deny", by: "timeout" });
      } else if (failure.type === "permission_decided") {
        settle(node, {}, "This request was already answered.");
      } else if (failure.type === "not_found" && failure.status === 404) {
        settle(node, {}, "This request is no longer waiting.");
      } else {
        for (const each of buttons) each.removeAttribute("aria-disabled");
        error.textContent = explain(failure);
        if (node.isConnected) button.focus();
      }
    } finally {
      delete node.dataset.answering;
    }
  }

  /** The request ended (the user's answer, a ``permission_resolved`` event, or its absence from the
   * pending list): the buttons go, the card says what happened. Focus inside stays in the card. */
  function settle(node, resolved, sentence) {
    const result = node.querySelector(".approval-outcome");
    const focused = node.contains(document.activeElement);
    const text = sentence && !node.classList.contains("open") ? null : sentence || outcome(resolved);
    if (text !== null) {
      result.textContent = text;
      node.classList.toggle("allowed", text.startsWith("Allowed"));
      node.classList.toggle("denied", text.startsWith("Denied"));
    }
    node.classList.remove("open");
    node.querySelector(".approval-buttons").replaceChildren();
    node.querySelector(".error").textContent = "";
    if (focused) result.focus();
  }

  function isOpen(node) {
    return node.classList.contains("open");
  }

  function find(conversation, requestId) {
    return [...conversation.querySelectorAll(".approval")].find((node) => node.dataset.requestId === requestId);
  }

  /** A request's card in the conversation, once (it may come from the stream and the pending list
   * both), before ``before`` when that is there. ``answer(request, body)`` sends the answer;
   * ``focus``: the keyboard goes to the new card's Allow button. */
  function show(conversation, request, { answer, explain, before, focus = true }) {
    if (find(conversation, request.request_id)) return;
    const node = card(request, { answer: (body) => answer(request, body), explain });
    conversation.insertBefore(node, before && before.parentNode === conversation ? before : null);
    conversation.scrollTop = conversation.scrollHeight;
    if (focus) node.querySelector(".approval-buttons button").focus();
  }

  /** A ``permission_resolved`` event: its card says how the request ended. */
  function resolve(conversation, resolved) {
    const node = find(conversation, resolved.request_id);
    if (node) settle(node, resolved);
  }

  /** The requests still waiting, as the server lists them: each shown, and open cards not among them settled. */
  function sync(conversation, requests, options) {
    const waiting = new Set(requests.map((request) => request.request_id));
    for (const node of conversation.querySelectorAll(".approval.open")) {
      if (!waiting.has(node.dataset.requestId)) {
        settle(node, {}, "No longer waiting: answered elsewhere, timed out or interrupted.");
      }
    }
    for (const request of requests) show(conversation, request, options);
  }

  window.ConsoleApprovals = Object.freeze({ show, resolve, sync });
})();
