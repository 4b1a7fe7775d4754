// Markdown for the console's conversation, built node by node (createElement, textContent).
//
// Why DOM-built: every message and reply is a tenant's text, and the admin reads it in this
// page. No part of it is ever handed to an HTML parser, so nothing a tenant writes can run
// script here: raw HTML stays literal text, a link keeps its href only when it parses as an
// http:, https: or mailto: URL, an image shows its alt text and is never fetched, and no id or
// name attribute is taken from the text. Every scan is linear or bounded (no backtracking
// patterns), and anything unexpected falls back to plain text: render() never throws.
"use strict";

(() => {
  const MAX_DEPTH = 12; // deeper quotes, lists or emphasis render as plain text
  const SAFE_PROTOCOLS = new Set(["http:", "https:", "mailto:"]);
  const PUNCTUATION = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";
  const FENCE = /^( {0,3})(`{3,}|~{3,})(.*)$/;
  const HEADING = /^ {0,3}(#{1,6})(?=[ \t]|$)/;
  const QUOTE = /^ {0,3}> ?/;
  const ITEM = /^( {0,3})([-*+]|(\d{1,9})[.)])(?=[ \t]|$)/;
  const SETEXT = /^ {0,3}(=+|-+)[ \t]*$/;
  const ALIGN_CELL = /^:?-+:?$/;
  const AUTOLINK = /<((?:https?|mailto):[^\s<>]*)>/iy;
  const BARE_URL = /https?:\/\/[^\s<>]+/iy;
  const WORD = /[\p{L}\p{N}]/u;

  /** A new element with its class and text (never HTML); appended to ``parent`` if given. The
   * console's other scripts build their nodes with this one too (``ConsoleMarkdown.el``). */
  function el(tag, className, text, parent) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    if (parent) parent.appendChild(node);
    return node;
  }

  /** Text, each newline a line break (a chat message's lines are meant as lines). */
  function addText(parent, text) {
    text.split("\n").forEach((part, index) => {
      if (index) parent.appendChild(el("br"));
      if (part) parent.appendChild(document.createTextNode(part));
    });
  }

  function safeHref(raw) {
    try {
      const url = new URL(raw);
      return SAFE_PROTOCOLS.has(url.protocol) ? url.href : null;
    } catch {
      return null;
    }
  }

  // -- inline ---------------------------------------------------------------------------

  /** For each opening character, the index of its partner (nested pairs matched), else -1. */
  function pairs(text, open, close) {
    const match = new Int32Array(text.length).fill(-1);
    const stack = [];
    for (let k = 0; k < text.length; k++) {
      const c = text[k];
      if (c === "\\") k++;
      else if (c === open) stack.push(k);
      else if (c === close && stack.length) match[stack.pop()] = k;
    }
    return match;
  }

  function runAt(text, k) {
    let n = 1;
    while (text[k + n] === text[k]) n++;
    return n;
  }

  /** Where the span opened by ``need`` times ``c`` closes, from ``from``; -1 if nowhere.
   * ``failed`` remembers from where a search found nothing, so no search is repeated. */
  function findCloser(text, from, c, need, failed) {
    const key = c + need;
    if (failed[key] !== undefined && from >= failed[key]) return -1;
    for (let k = text.indexOf(c, from); k >= 0; k = text.indexOf(c, k)) {
      const run = runAt(text, k);
      let fits = run === need;
      if (c !== "`") {
        fits &&= !/\s/.test(text[k - 1]); // a closer follows text, not a space
        if (c === "_") fits &&= !WORD.test(text[k + run] || ""); // not inside a word: snake_case stays
        if ((c === "*" || c === "_") && run === 3 && need < 3) fits = !/\s/.test(text[k - 1]); // **a *b***
      }
      if (fits) return k + run - need;
      k += run;
    }
    failed[key] = from;
    return -1;
  }

  function linkTo(parent, dest, label, depth) {
    const href = safeHref(dest); // anything else: the label as text
    const link = { href, rel: "noopener noreferrer nofollow", target: "_blank" };
    const node = href === null ? parent : parent.appendChild(Object.assign(el("a"), link));
    inline(label, node, depth + 1, true);
    if (href !== null && !node.firstChild) node.textContent = href;
  }

  /** A bare URL without the punctuation after it (a ")" only if the URL does not open it). */
  function trimUrl(url) {
    let end = url.length;
    let unopened = url.split(")").length - url.split("(").length;
    while (end > 0 && '.,;:!?"\'*_~)'.includes(url[end - 1])) {
      if (url[end - 1] === ")" && unopened-- <= 0) break;
      end--;
    }
    return url.slice(0, end);
  }

  /** ``text`` with its emphasis, code, links and breaks, appended to ``parent``. */
  function inline(text, parent, depth, inLink = false) {
    if (depth > MAX_DEPTH) {
      addText(parent, text);
      return;
    }
    let brackets = null;
    let parens = null;
    const failed = {};
    let start = 0;
    let i = 0;
    const flush = (end) => {
      if (end > start) addText(parent, text.slice(start, end));
    };
    while (i < text.length) {
      const c = text[i];
      if (c === "\\" && PUNCTUATION.includes(text[i + 1] || " ")) {
        flush(i);
        start = i + 1; // the escaped character, as text
        i += 2;
      } else if (c === "`") {
        const run = runAt(text, i);
        const close = findCloser(text, i + run, "`", run, failed);
        if (close < 0) {
          i += run;
          continue;
        }
        flush(i);
        let code = text.slice(i + run, close).replace(/\n/g, " ");
        if (code.length > 2 && code[0] === " " && code[code.length - 1] === " " && code.trim()) code = code.slice(1, -1);
        parent.appendChild(el("code", null, code));
        i = start = close + run;
      } else if (c === "*" || c === "_" || c === "~") {
        const run = runAt(text, i);
        const next = text[i + run] || "";
        const opens = next && !/\s/.test(next) && (c !== "_" || !WORD.test(text[i - 1] || ""));
        const tag = c === "~" ? (run === 2 ? "del" : null) : ["em", "strong", "strong"][run - 1];
        const close = opens && tag ? findCloser(text, i + run, c, run, failed) : -1;
        if (close <= i + run) {
          i += run;
          continue;
        }
        flush(i);
        let node = el(tag);
        parent.appendChild(node);
        if (run === 3) node = node.appendChild(el("em"));
        inline(text.slice(i + run, close), node, depth + 1, inLink);
        i = start = close + run;
      } else if (c === "[" || (c === "!" && text[i + 1] === "[")) {
        const open = c === "!" ? i + 1 : i;
        brackets ||= pairs(text, "[", "]");
        const close = brackets[open];
        let end = -1;
        if (close > 0 && text[close + 1] === "(") {
          parens ||= pairs(text, "(", ")");
          end = parens[close + 1];
        }
        if (end < 0 || (inLink && c === "[")) {
          i = open + 1;
          continue;
        }
        flush(i);
        const label = text.slice(open + 1, close);
        let dest = text.slice(close + 2, end).trim().split(/\s/, 1)[0];
        if (dest.startsWith("<") && dest.endsWith(">")) dest = dest.slice(1, -1);
        if (c === "!") addText(parent, label); // an image: its alt text, never fetched
        else linkTo(parent, dest, label, depth);
        i = start = end + 1;
      } else if (!inLink && (c === "<" || ((c === "h" || c === "H") && !WORD.test(text[i - 1] || "")))) {
        const pattern = c === "<" ? AUTOLINK : BARE_URL; // in angle brackets, or bare
        pattern.lastIndex = i;
        const m = pattern.exec(text);
        if (!m) {
          i++;
          continue;
        }
        const url = c === "<" ? m[1] : trimUrl(m[0]);
        flush(i);
        linkTo(parent, url, url, depth);
        i = start = i + (c === "<" ? m[0].length : url.length);
      } else {
        i++;
      }
    }
    flush(text.length);
  }

  // -- blocks ---------------------------------------------------------------------------

  const isBlank = (line) => !line.trim();

  /** Leading whitespace in columns (a tab: to the next multiple of four). */
  function indentOf(line) {
    let col = 0;
    for (const c of line) {
      if (c === " ") col++;
      else if (c === "\t") col += 4 - (col % 4);
      else break;
    }
    return col;
  }

  /** ``line`` without up to ``n`` columns of leading whitespace (a fence's tabs are kept beyond). */
  function dedent(line, n) {
    let col = 0;
    let k = 0;
    while (k < line.length && col < n && (line[k] === " " || line[k] === "\t")) {
      const width = line[k] === " " ? 1 : 4 - (col % 4);
      if (col + width > n) return " ".repeat(col + width - n) + line.slice(k + 1);
      col += width;
      k++;
    }
    return line.slice(k);
  }

  function isRule(line) {
    const first = line.trimStart()[0];
    if ((first !== "-" && first !== "*" && first !== "_") || indentOf(line) > 3) return false;
    const bare = line.replace(/[ \t]/g, "");
    return bare.length >= 3 && /^(?:-+|\*+|_+)$/.test(bare);
  }

  function fenceOf(line) {
    const m = FENCE.exec(line);
    return m && !(m[2][0] === "`" && m[3].includes("`")) ? m : null;
  }

  function itemOf(line) {
    const m = ITEM.exec(line);
    if (!m || isRule(line)) return null;
    const end = m[0].length;
    const rest = line.slice(end);
    const space = rest.length - rest.trimStart().length;
    const empty = !rest.trim();
    return {
      ordered: m[3] !== undefined,
      start: m[3] !== undefined ? Number(m[3]) : 1,
      offset: end + (empty || space > 4 ? 1 : space),
      first: rest.trimStart(),
      empty,
    };
  }

  function splitRow(line) {
    let s = line.trim();
    if (s.startsWith("|")) s = s.slice(1);
    if (s.endsWith("|") && !s.endsWith("\\|")) s = s.slice(0, -1);
    const cells = [];
    let from = 0;
    for (let k = 0; k <= s.length; k++) {
      if (s[k] === "\\") k++;
      else if (k === s.length || s[k] === "|") {
        cells.push(s.slice(from, k).replace(/\\\|/g, "|").trim());
        from = k + 1;
      }
    }
    return cells;
  }

  /** The alignments of a table starting at ``lines[i]`` (header, then separator), or null. */
  function tableAt(lines, i) {
    const head = lines[i];
    const sep = lines[i + 1];
    if (sep === undefined || !head.includes("|") || !sep.includes("|") || indentOf(head) > 3) return null;
    const marks = splitRow(sep);
    if (!marks.every((cell) => ALIGN_CELL.test(cell)) || marks.length !== splitRow(head).length) return null;
    return marks.map((m) => (m.endsWith(":") ? (m.startsWith(":") ? "center" : "right") : m.startsWith(":") ? "left" : ""));
  }

  /** Whether ``lines[i]`` begins a block that ends a paragraph before it. */
  function interrupts(lines, i) {
    const line = lines[i];
    if (fenceOf(line) || HEADING.test(line) || QUOTE.test(line) || isRule(line) || tableAt(lines, i)) return true;
    const item = itemOf(line);
    return Boolean(item && !item.empty && (!item.ordered || item.start === 1));
  }

  /** Copies ``code`` (shown in ``node``): with the clipboard API where the page may, else through a
   * selection. A code block's Copy, and the new key's (``ConsoleMarkdown.copy``). */
  async function copy(code, node) {
    try {
      await navigator.clipboard.writeText(code);
      return true;
    } catch {
      window.getSelection().selectAllChildren(node);
      const ok = document.execCommand("copy");
      window.getSelection().removeAllRanges();
      return ok;
    }
  }

  function codeBlock(parent, code, lang) {
    const box = parent.appendChild(el("div", "md-code"));
    const bar = box.appendChild(el("div", "md-code-bar"));
    bar.appendChild(el("span", "md-code-lang", lang));
    const button = bar.appendChild(el("button", "md-copy", "Copy"));
    button.type = "button";
    const node = box.appendChild(el("pre")).appendChild(el("code", null, code));
    let timer = 0;
    button.addEventListener("click", async () => {
      button.textContent = (await copy(code, node).catch(() => false)) ? "Copied" : "Copy failed";
      clearTimeout(timer);
      timer = setTimeout(() => {
        button.textContent = "Copy";
      }, 1500);
    });
  }

  function fence(lines, i, m, parent) {
    const indent = m[1].length;
    const mark = m[2];
    const closing = mark[0] === "`" ? /^`+$/ : /^~+$/;
    const body = [];
    let j = i + 1;
    for (; j < lines.length; j++) {
      const t = lines[j].trim();
      if (indentOf(lines[j]) <= 3 && t.length >= mark.length && closing.test(t)) break;
      body.push(dedent(lines[j], indent));
    }
    codeBlock(parent, body.join("\n"), m[3].trim().split(/\s/, 1)[0]);
    return j + 1;
  }

  function atxText(line, marker) {
    let rest = line.slice(marker.length).trim();
    let j = rest.length;
    while (j > 0 && rest[j - 1] === "#") j--;
    if (j === 0) rest = "";
    else if (j < rest.length && (rest[j - 1] === " " || rest[j - 1] === "\t")) rest = rest.slice(0, j).trim();
    return rest;
  }

  function list(lines, i, parent, depth) {
    const first = itemOf(lines[i]);
    const node = parent.appendChild(el(first.ordered ? "ol" : "ul"));
    if (first.ordered && first.start !== 1) node.start = first.start;
    let j = i;
    while (j < lines.length) {
      const item = itemOf(lines[j]);
      if (!item || item.ordered !== first.ordered) break;
      const content = [item.first];
      let k = j + 1;
      while (k < lines.length) {
        const line = lines[k];
        if (isBlank(line)) content.push("");
        else if (indentOf(line) >= item.offset) content.push(dedent(line, item.offset));
        else if (content[content.length - 1] === "" || itemOf(line) || interrupts(lines, k)) break;
        else content.push(line.trim()); // a paragraph's lazy continuation
        k++;
      }
      while (content.length > 1 && content[content.length - 1] === "") content.pop();
      const li = el("li");
      if (content.length === 1 && !itemOf(content[0]) && !interrupts(content, 0)) {
        inline(content[0], li, depth + 1); // the usual one-line item
      } else {
        blocks(content, li, depth + 1);
        if (li.firstChild && li.firstChild.nodeName === "P") li.firstChild.replaceWith(...li.firstChild.childNodes);
      }
      node.appendChild(li);
      j = k;
    }
    return j;
  }

  function table(lines, i, aligns, parent, depth) {
    const node = parent.appendChild(el("div", "md-table")).appendChild(el("table"));
    const row = (line, tag, section) => {
      const tr = section.appendChild(el("tr"));
      const cells = splitRow(line);
      aligns.forEach((align, n) => {
        const cell = tr.appendChild(el(tag, align ? `md-${align}` : ""));
        inline(cells[n] || "", cell, depth + 1);
      });
    };
    row(lines[i], "th", node.appendChild(el("thead")));
    const body = el("tbody");
    let j = i + 2;
    while (j < lines.length && lines[j].includes("|") && !isBlank(lines[j]) && !interrupts(lines, j)) {
      row(lines[j], "td", body);
      j++;
    }
    if (body.firstChild) node.appendChild(body);
    return j;
  }

  function paragraph(lines, i, parent, depth) {
    const text = [lines[i].trim()];
    let j = i + 1;
    for (; j < lines.length && !isBlank(lines[j]); j++) {
      const setext = SETEXT.exec(lines[j]);
      if (setext) {
        inline(text.join("\n"), parent.appendChild(el(setext[1][0] === "=" ? "h1" : "h2")), depth + 1);
        return j + 1;
      }
      if (interrupts(lines, j)) break;
      text.push(lines[j].trim());
    }
    inline(text.join("\n"), parent.appendChild(el("p")), depth + 1);
    return j;
  }

  /** ``lines`` as blocks, appended to ``parent``. */
  function blocks(lines, parent, depth) {
    if (depth > MAX_DEPTH) {
      addText(parent.appendChild(el("p")), lines.join("\n"));
      return;
    }
    let i = 0;
    while (i < lines.length) {
      const line = lines[i];
      let m;
      let aligns;
      if (isBlank(line)) {
        i++;
      } else if ((m = fenceOf(line))) {
        i = fence(lines, i, m, parent);
      } else if ((m = HEADING.exec(line))) {
        inline(atxText(line, m[0]), parent.appendChild(el(`h${m[1].length}`)), depth + 1);
        i++;
      } else if (isRule(line)) {
        parent.appendChild(el("hr"));
        i++;
      } else if (QUOTE.test(line)) {
        const inner = [];
        for (; i < lines.length && QUOTE.test(lines[i]); i++) inner.push(lines[i].replace(QUOTE, ""));
        blocks(inner, parent.appendChild(el("blockquote")), depth + 1);
      } else if (itemOf(line)) {
        i = list(lines, i, parent, depth);
      } else if ((aligns = tableAt(lines, i))) {
        i = table(lines, i, aligns, parent, depth);
      } else {
        i = paragraph(lines, i, parent, depth);
      }
    }
  }

  /** ``text`` as markdown: a fragment of inert nodes (plain text if anything goes wrong). */
  function render(text) {
    const source = String(text ?? "");
    const fragment = document.createDocumentFragment();
    try {
      blocks(source.replace(/\r\n?/g, "\n").split("\n"), fragment, 0);
    } catch {
      fragment.replaceChildren();
      addText(fragment.appendChild(el("p")), source);
    }
    return fragment;
  }

  window.ConsoleMarkdown = Object.freeze({ render, el, copy });
})();
