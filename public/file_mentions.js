// Typing "@" in the chat's composer lists the ingested files; the chosen one is inserted as
// a mention ("@policies/expenses.txt ", quoted when the name holds a space), which limits the
// question and its follow-ups to that file ("@all" goes back to every file).
//
// Chainlit 2.12 completes only "/commands" in its composer, so this script (custom_js in
// .chainlit/config.toml) adds the list beside it. It asks GET /file-names each time a list
// opens (at most every few seconds), so uploads and files the folder watch ingested are
// offered at once. It only reads and edits the composer's text: what is sent, and how a
// mention scopes retrieval, stay the server's (rag/mentions.py).
(() => {
  "use strict";

  const INPUT_ID = "chat-input";
  const LIST_ID = "file-mention-list";
  const MAX_SHOWN = 8;
  const FRESH_MS = 3000; // a list opened again within this reuses the names it just fetched
  const rootPath = (
    document.querySelector('meta[property="og:root_path"]')?.getAttribute("content") || ""
  ).replace(/\/$/, "");
  const NAMES_URL = `${rootPath}/file-names`;
  // An "@" at the start or after a space or opening bracket (as the server reads mentions),
  // an optional opening quote, and what was typed of the name up to the caret.
  const TYPED = /(^|[\s(\[])@("?)([^"\n@]*)$/;

  let names = null; // {files: [{source, mention}], every_file: "@all"}
  let fetchedAt = 0;
  let pending = null;
  let list = null; // the open list's element
  let offered = []; // [{label, detail, mention}]
  let selected = 0;
  let typed = null; // {input, start, end}: the "@..." being completed
  let dismissedAt = -1; // Escape closes the list until another "@" is typed

  async function fileNames() {
    if (names && Date.now() - fetchedAt < FRESH_MS) return names;
    if (!pending) {
      pending = fetch(NAMES_URL, { credentials: "same-origin", cache: "no-store" })
        .then((response) => (response.ok ? response.json() : null))
        .then((body) => {
          if (body) {
            names = body;
            fetchedAt = Date.now();
          }
          return names;
        })
        .catch(() => names) // offline or signed out: the last names, or no list
        .finally(() => {
          pending = null;
        });
    }
    return pending;
  }

  function typedMention(input) {
    const caret = input.selectionStart;
    if (caret !== input.selectionEnd) return null;
    const match = TYPED.exec(input.value.slice(0, caret));
    if (!match) return null;
    return { input, start: match.index + match[1].length, end: caret, query: match[3] };
  }

  function matches(query, known) {
    const q = query.toLowerCase();
    // What was typed begins the file name, the path, or a word of it ("check" finds
    // "onboarding checklist.docx"); not the inside of a word ("al" is not "manual").
    const rank = (source) => {
      const path = source.toLowerCase();
      const base = path.slice(path.lastIndexOf("/") + 1);
      if (base.startsWith(q)) return 0;
      if (path.startsWith(q)) return 1;
      return path.split(/[\s/._-]+/).some((word) => word.startsWith(q)) ? 2 : -1;
    };
    const files = known.files
      .map((file) => ({ file, rank: rank(file.source) }))
      .filter((entry) => entry.rank >= 0)
      .sort((a, b) => a.rank - b.rank || a.file.source.localeCompare(b.file.source))
      .slice(0, MAX_SHOWN)
      .map(({ file }) => ({ label: file.source, detail: "", mention: file.mention }));
    const every = known.every_file;
    if (every && every.slice(1).startsWith(q)) {
      files.push({ label: every, detail: "every file again", mention: every });
    }
    return files;
  }

  async function update(input) {
    const found = typedMention(input);
    if (!found) dismissedAt = -1;
    if (!found || found.start === dismissedAt) return close();
    const known = await fileNames();
    // The text may have moved on while the names were fetched.
    const now = typedMention(input);
    if (!known || !now || now.start !== found.start) return close();
    const shown = matches(now.query, known);
    if (!shown.length) return close();
    typed = now;
    open(input, shown);
  }

  function open(input, shown) {
    const same =
      list && offered.length === shown.length &&
      offered.every((item, i) => item.mention === shown[i].mention);
    if (!same) selected = 0;
    offered = shown;
    if (!list) {
      list = document.createElement("div");
      list.id = LIST_ID;
      list.setAttribute("role", "listbox");
      list.setAttribute("aria-label", "Ingested files");
      Object.assign(list.style, {
        position: "fixed", zIndex: "1000", maxHeight: "320px", overflowY: "auto",
        padding: "6px", borderRadius: "10px", border: "1px solid hsl(var(--border))",
        background: "hsl(var(--popover))", color: "hsl(var(--popover-foreground))",
        boxShadow: "0 8px 24px rgba(0, 0, 0, 0.18)", font: "inherit", fontSize: "14px",
      });
      // Keep the composer focused when an entry is clicked.
      list.addEventListener("mousedown", (event) => event.preventDefault());
      document.body.appendChild(list);
    }
    const box = input.getBoundingClientRect();
    Object.assign(list.style, {
      left: `${Math.max(8, box.left)}px`,
      bottom: `${window.innerHeight - box.top + 14}px`,
      width: `${Math.min(460, Math.max(260, box.width))}px`,
    });
    render();
  }

  function render() {
    list.replaceChildren(
      ...offered.map((item, i) => {
        const row = document.createElement("div");
        row.setAttribute("role", "option");
        row.setAttribute("aria-selected", String(i === selected));
        row.dataset.mention = item.mention;
        Object.assign(row.style, {
          padding: "6px 10px", borderRadius: "6px", cursor: "pointer",
          display: "flex", justifyContent: "space-between", gap: "12px",
          background: i === selected ? "hsl(var(--accent))" : "transparent",
        });
        const name = document.createElement("span");
        name.textContent = item.label;
        name.style.overflowWrap = "anywhere";
        row.appendChild(name);
        if (item.detail) {
          const detail = document.createElement("span");
          detail.textContent = item.detail;
          detail.style.opacity = "0.65";
          row.appendChild(detail);
        }
        row.addEventListener("mousemove", () => {
          if (selected !== i) {
            selected = i;
            render();
          }
        });
        row.addEventListener("click", () => choose(i));
        return row;
      }),
    );
    list.children[selected]?.scrollIntoView({ block: "nearest" });
  }

  function close() {
    list?.remove();
    list = null;
    offered = [];
    typed = null;
  }

  function choose(i) {
    const item = offered[i];
    const at = typed;
    close();
    if (!item || !at || !at.input.isConnected) return;
    insert(at.input, at.start, at.end, `${item.mention} `);
  }

  // Replace the typed "@..." with the mention so that Chainlit's React state sees it.
  function insert(input, start, end, text) {
    input.focus();
    input.setSelectionRange(start, end);
    // insertText fires the input event React listens to, and keeps the browser's undo.
    if (document.execCommand && document.execCommand("insertText", false, text)) return;
    const setValue = Object.getOwnPropertyDescriptor(HTMLTextAreaElement.prototype, "value").set;
    setValue.call(input, input.value.slice(0, start) + text + input.value.slice(end));
    input.setSelectionRange(start + text.length, start + text.length);
    input.dispatchEvent(new Event("input", { bubbles: true }));
  }

  // Capture phase on window: these keys reach the list before Chainlit's composer, whose
  // Enter would send the message.
  window.addEventListener(
    "keydown",
    (event) => {
      if (!list || event.target?.id !== INPUT_ID || event.isComposing) return;
      const keys = {
        ArrowDown: () => { selected = (selected + 1) % offered.length; render(); },
        ArrowUp: () => { selected = (selected - 1 + offered.length) % offered.length; render(); },
        Enter: () => choose(selected),
        Tab: () => choose(selected),
        Escape: () => { dismissedAt = typed ? typed.start : -1; close(); },
      };
      const act = event.shiftKey ? null : keys[event.key];
      if (!act) return;
      event.preventDefault();
      event.stopImmediatePropagation();
      act();
    },
    true,
  );

  document.addEventListener(
    "input",
    (event) => {
      if (event.target?.id === INPUT_ID) update(event.target);
    },
    true,
  );
  document.addEventListener(
    "focusout",
    (event) => {
      if (event.target?.id === INPUT_ID) close();
    },
    true,
  );
  window.addEventListener("resize", close);
})();
