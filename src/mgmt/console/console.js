// keyward key console: a client of the management API (SPEC §8) one level
// above this page. Plain DOM, no framework, no third-party code.
//
// The signing-in key lives in `state.key` (memory) and, only if the user
// asks, in sessionStorage (this tab only, gone when it closes). Never in
// localStorage or a cookie. Data from the API is put on the page with
// textContent / attributes only, never parsed as HTML.
"use strict";

(function () {
  const API = location.pathname.replace(/\/console\/?$/, "");
  const SESSION_KEY = "keyward.console.key";
  const SVG = "http://www.w3.org/2000/svg";

  const state = {
    key: null,
    me: null,
    owner: null,
    keys: [],
    sort: { field: "created_at", dir: -1 },
    pending: null, // the key a dialog acts on
    loads: 0, // listings asked for; only the latest one is shown
  };

  const $ = (id) => document.getElementById(id);

  class ApiError extends Error {
    constructor(status, problem) {
      super((problem && problem.detail) || "HTTP " + status);
      this.status = status;
      this.problem = problem || {};
    }
  }

  async function api(method, path, body) {
    const headers = { Authorization: "Bearer " + state.key, Accept: "application/json" };
    const init = { method, headers, cache: "no-store", credentials: "omit", referrerPolicy: "no-referrer" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let resp;
    try {
      resp = await fetch(API + path, init);
    } catch (e) {
      throw new ApiError(0, { title: "Network error", detail: "keyward could not be reached" });
    }
    const text = await resp.text();
    let data = null;
    if (text) {
      try { data = JSON.parse(text); } catch (e) { data = null; }
    }
    if (!resp.ok) throw new ApiError(resp.status, data);
    return data;
  }

  // ---- messages ---------------------------------------------------------

  function clearMessages() {
    $("error").hidden = true;
    $("error").textContent = "";
    $("notice").textContent = "";
  }

  function showError(err) {
    const box = $("error");
    box.textContent = "";
    const p = err instanceof ApiError ? err.problem : {};
    const head = document.createElement("strong");
    const status = err instanceof ApiError && err.status ? err.status + " " : "";
    head.textContent = status + (p.title || "Error");
    box.append(head, document.createTextNode(": " + (p.detail || err.message || "something went wrong")));
    if (p.code) {
      const code = document.createElement("span");
      code.className = "code";
      code.textContent = " (" + p.code + ")";
      box.append(code);
    }
    if (Array.isArray(p.invalid_params)) {
      const ul = document.createElement("ul");
      for (const ip of p.invalid_params) {
        const li = document.createElement("li");
        li.textContent = ip.name + ": " + ip.reason;
        ul.append(li);
      }
      box.append(ul);
    }
    if (Array.isArray(p.required_scopes) && p.required_scopes.length) {
      box.append(document.createTextNode(" Needs: " + p.required_scopes.join(", ")));
    }
    box.hidden = false;
  }

  function notify(text) {
    $("notice").textContent = text;
  }

  // ---- sign in / out ----------------------------------------------------

  async function signIn(key, remember) {
    clearMessages();
    state.key = key;
    let me;
    try {
      me = await api("GET", "/whoami");
    } catch (e) {
      state.key = null;
      sessionStorage.removeItem(SESSION_KEY);
      showError(e);
      $("signin-key").focus();
      return;
    }
    if (remember) sessionStorage.setItem(SESSION_KEY, key);
    state.me = me;
    state.owner = me.owner;
    $("whoami").textContent =
      "Signed in with " + me.display_prefix + "… (" + (me.name || me.key_id) + "), owner " + me.owner +
      (me.admin ? ", admin" : "");
    $("session").hidden = false;
    $("signin").hidden = true;
    $("app").hidden = false;
    $("owner-form").hidden = !me.admin;
    $("owner-input").value = me.owner;
    $("create-extra-wrap").hidden = !me.admin;
    renderScopeChoices(me.scopes || []);
    showView("keys");
    await loadKeys();
    $("keys-title").focus();
  }

  function signOut() {
    state.key = null;
    state.me = null;
    state.keys = [];
    sessionStorage.removeItem(SESSION_KEY);
    hideSecret();
    clearMessages();
    $("keys-body").textContent = "";
    $("usage").hidden = true;
    $("app").hidden = true;
    $("session").hidden = true;
    $("signin").hidden = false;
    $("signin-key").value = "";
    $("signin-key").focus();
  }

  // ---- views ------------------------------------------------------------

  function showView(name) {
    $("view-keys").hidden = name !== "keys";
    $("usage").hidden = $("usage").hidden || name !== "keys";
    $("view-create").hidden = name !== "create";
    for (const tab of document.querySelectorAll(".tab")) {
      if (tab.dataset.view === name) tab.setAttribute("aria-current", "page");
      else tab.removeAttribute("aria-current");
    }
  }

  // ---- the list ---------------------------------------------------------

  async function loadKeys() {
    const own = state.owner === state.me.owner;
    const q = own ? "" : "?owner=" + encodeURIComponent(state.owner);
    const seq = ++state.loads;
    $("keys-owner").textContent = state.owner;
    try {
      const data = await api("GET", "/keys" + q);
      // A later listing (another owner, a refresh) wins over this one.
      if (seq !== state.loads || !state.key) return;
      state.keys = data.keys || [];
      state.owner = data.owner || state.owner;
      $("keys-owner").textContent = state.owner;
    } catch (e) {
      if (seq !== state.loads || !state.key) return;
      state.keys = [];
      showError(e);
    }
    renderKeys();
  }

  function sortValue(k, field) {
    const v = k[field];
    if (Array.isArray(v)) return v.join(" ");
    return v == null ? "" : String(v);
  }

  function sortedKeys() {
    const { field, dir } = state.sort;
    return state.keys.slice().sort((a, b) => {
      const x = sortValue(a, field), y = sortValue(b, field);
      // Empty values (never used, no expiry) sort last either way.
      if (x === "" && y !== "") return 1;
      if (y === "" && x !== "") return -1;
      return dir * x.localeCompare(y, undefined, { numeric: true });
    });
  }

  function fmtTime(s) {
    if (!s) return "—";
    return s.replace("T", " ").replace(/:\d\dZ$/, " UTC");
  }

  function cell(tr, label, text, cls) {
    const td = document.createElement("td");
    td.dataset.label = label;
    if (cls) td.className = cls;
    if (text instanceof Node) {
      td.append(text);
    } else {
      const span = document.createElement("span");
      span.textContent = text;
      td.append(span);
    }
    tr.append(td);
    return td;
  }

  function actionButton(label, action, k) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "small secondary";
    b.dataset.action = action;
    b.dataset.keyId = k.id;
    b.textContent = label;
    b.setAttribute("aria-label", label + " " + (k.name || k.id));
    return b;
  }

  function renderKeys() {
    const body = $("keys-body");
    body.textContent = "";
    const canWrite = hasScope("keys:write");
    for (const k of sortedKeys()) {
      const tr = document.createElement("tr");
      tr.dataset.keyId = k.id;
      tr.dataset.status = k.status;
      if (k.status !== "active") tr.className = "inactive";
      cell(tr, "Name", k.name || "—", "name-cell").title = k.description || "";
      cell(tr, "Prefix", k.display_prefix + "…", "prefix");
      cell(tr, "Env", k.env || "—");
      const scopes = document.createElement("span");
      for (const s of k.scopes || []) {
        const c = document.createElement("code");
        c.textContent = s;
        scopes.append(c, document.createTextNode(" "));
      }
      cell(tr, "Scopes", scopes, "scopes-cell");
      cell(tr, "Plan", k.plan || "default");
      cell(tr, "Created", fmtTime(k.created_at));
      cell(tr, "Expires", k.expires_at ? fmtTime(k.expires_at) : "never");
      cell(tr, "Last used", k.last_used_at ? fmtTime(k.last_used_at) : "never");
      const badge = document.createElement("span");
      badge.className = "status status-" + k.status;
      badge.textContent = k.status;
      cell(tr, "Status", badge, "status-cell");
      const actions = document.createElement("span");
      actions.append(actionButton("Usage", "usage", k));
      if (canWrite && k.status === "active") {
        actions.append(actionButton("Rotate", "rotate", k), actionButton("Revoke", "revoke", k));
      }
      cell(tr, "Actions", actions, "actions-cell");
      body.append(tr);
    }
    $("keys-empty").hidden = state.keys.length > 0;
    for (const th of document.querySelectorAll("#keys-table th")) {
      const b = th.querySelector("button.sort");
      if (!b) continue;
      const on = b.dataset.sort === state.sort.field;
      th.setAttribute("aria-sort", on ? (state.sort.dir > 0 ? "ascending" : "descending") : "none");
    }
  }

  // Whether the signed-in key holds `scope`, as keyward grants it by
  // default (admin:all implies everything; X:write implies X:read). The
  // API decides in the end; this only hides buttons that would fail.
  function hasScope(scope) {
    const held = (state.me && state.me.scopes) || [];
    if (state.me && state.me.admin) return true;
    if (held.includes(scope) || held.includes("*")) return true;
    return scope.endsWith(":read") && held.includes(scope.slice(0, -5) + ":write");
  }

  function keyById(id) {
    return state.keys.find((k) => k.id === id);
  }

  // ---- usage ------------------------------------------------------------

  async function showUsage(k) {
    clearMessages();
    let full;
    try {
      full = await api("GET", "/keys/" + encodeURIComponent(k.id));
    } catch (e) {
      showError(e);
      return;
    }
    const days = full.usage || [];
    const total = days.reduce((n, d) => n + d.requests, 0);
    $("usage-title").textContent = "Usage of " + (full.name || full.id) + " (" + full.display_prefix + "…)";
    $("usage-summary").textContent =
      total + " request" + (total === 1 ? "" : "s") + " in the last " + days.length + " days (UTC).";
    const chart = $("usage-chart");
    chart.textContent = "";
    chart.append(barChart(days));
    chart.dataset.total = String(total);
    $("usage").hidden = false;
    $("usage-title").setAttribute("tabindex", "-1");
    $("usage-title").focus();
  }

  // An SVG bar chart drawn with attributes only (the CSP allows no inline
  // style), one bar per day, each with a <title> for pointer and reader.
  function barChart(days) {
    const W = 560, H = 200, top = 20, bottom = 36, left = 8;
    const max = Math.max(1, ...days.map((d) => d.requests));
    const slot = (W - left * 2) / Math.max(1, days.length);
    const barW = Math.max(4, slot * 0.6);
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", "0 0 " + W + " " + H);
    svg.setAttribute("role", "img");
    svg.setAttribute(
      "aria-label",
      "Requests per day: " + days.map((d) => d.date + " " + d.requests).join(", ")
    );
    const axis = document.createElementNS(SVG, "line");
    axis.setAttribute("class", "axis");
    axis.setAttribute("x1", "0");
    axis.setAttribute("x2", String(W));
    axis.setAttribute("y1", String(H - bottom));
    axis.setAttribute("y2", String(H - bottom));
    svg.append(axis);
    days.forEach((d, i) => {
      const h = Math.round(((H - top - bottom) * d.requests) / max);
      const x = left + i * slot + (slot - barW) / 2;
      const rect = document.createElementNS(SVG, "rect");
      rect.setAttribute("class", "barrect" + (i === days.length - 1 ? " today" : ""));
      rect.setAttribute("x", x.toFixed(1));
      rect.setAttribute("y", String(H - bottom - h));
      rect.setAttribute("width", barW.toFixed(1));
      rect.setAttribute("height", String(Math.max(h, d.requests > 0 ? 1 : 0)));
      rect.dataset.requests = String(d.requests);
      const title = document.createElementNS(SVG, "title");
      title.textContent = d.date + ": " + d.requests + " requests";
      rect.append(title);
      svg.append(rect);
      const count = document.createElementNS(SVG, "text");
      count.setAttribute("x", (x + barW / 2).toFixed(1));
      count.setAttribute("y", String(H - bottom - h - 4));
      count.setAttribute("text-anchor", "middle");
      count.textContent = String(d.requests);
      svg.append(count);
      const label = document.createElementNS(SVG, "text");
      label.setAttribute("x", (x + barW / 2).toFixed(1));
      label.setAttribute("y", String(H - bottom + 16));
      label.setAttribute("text-anchor", "middle");
      label.textContent = d.date.slice(5);
      svg.append(label);
    });
    return svg;
  }

  // ---- the new key, shown once -------------------------------------------

  function showSecret(minted, meta) {
    $("secret-value").value = minted.key;
    $("secret-meta").textContent = meta;
    $("secret").hidden = false;
    $("secret-value").focus();
    $("secret-value").select();
  }

  function hideSecret() {
    $("secret-value").value = "";
    $("secret-meta").textContent = "";
    $("secret").hidden = true;
  }

  async function copySecret() {
    const input = $("secret-value");
    try {
      await navigator.clipboard.writeText(input.value);
      notify("Copied to the clipboard.");
    } catch (e) {
      input.focus();
      input.select();
      const ok = document.execCommand && document.execCommand("copy");
      notify(ok ? "Copied to the clipboard." : "Select the key and copy it (Ctrl+C / ⌘C).");
    }
  }

  // ---- create -----------------------------------------------------------

  function renderScopeChoices(scopes) {
    const list = $("create-scope-list");
    list.textContent = "";
    if (!scopes.length) {
      list.textContent = "Your key holds no scopes to grant.";
      return;
    }
    scopes.forEach((s, i) => {
      const wrap = document.createElement("span");
      const box = document.createElement("input");
      box.type = "checkbox";
      box.name = "scope";
      box.value = s;
      box.id = "scope-" + i;
      const label = document.createElement("label");
      label.htmlFor = box.id;
      label.textContent = s;
      wrap.append(box, label);
      list.append(wrap);
    });
  }

  function rfc3339(date) {
    return date.toISOString().replace(/\.\d{3}Z$/, "Z");
  }

  function expiresAt() {
    const choice = $("create-expiry").value;
    if (choice === "") return undefined;
    if (choice === "date") {
      const d = $("create-date").value;
      return d ? d + "T23:59:59Z" : undefined;
    }
    return rfc3339(new Date(Date.now() + Number(choice) * 86400000));
  }

  async function createKey(ev) {
    ev.preventDefault();
    clearMessages();
    const name = $("create-name").value.trim();
    if (!name) {
      showError(new ApiError(0, { title: "Missing name", detail: "Give the key a name" }));
      $("create-name").focus();
      return;
    }
    const scopes = Array.from(document.querySelectorAll("#create-scope-list input:checked")).map((b) => b.value);
    for (const s of $("create-extra").value.split(/\s+/)) if (s && !scopes.includes(s)) scopes.push(s);
    const body = { name, scopes };
    const description = $("create-description").value.trim();
    if (description) body.description = description;
    if ($("create-env").value) body.env = $("create-env").value;
    const exp = expiresAt();
    if (exp) body.expires_at = exp;
    if (state.owner !== state.me.owner) body.owner = state.owner;
    const submit = $("create-submit");
    submit.disabled = true;
    try {
      const minted = await api("POST", "/keys", body);
      $("create-form").reset();
      $("create-date-wrap").hidden = true;
      showView("keys");
      await loadKeys();
      showSecret(minted, "Key " + minted.display_prefix + "… (" + minted.name + "), scopes: " +
        ((minted.scopes || []).join(" ") || "none") + ".");
      notify("Created " + minted.name + ".");
    } catch (e) {
      showError(e);
    } finally {
      submit.disabled = false;
    }
  }

  // ---- revoke / rotate --------------------------------------------------

  function openDialog(kind, k) {
    state.pending = k;
    $(kind + "-text").textContent = (k.name || k.id) + " (" + k.display_prefix + "…), owner " + k.owner + ".";
    $(kind + "-dialog").showModal();
    $(kind + "-cancel").focus();
  }

  async function revokePending() {
    const k = state.pending;
    $("revoke-dialog").close();
    if (!k) return;
    clearMessages();
    try {
      await api("DELETE", "/keys/" + encodeURIComponent(k.id));
      notify("Revoked " + (k.name || k.id) + ".");
    } catch (e) {
      showError(e);
    }
    await loadKeys();
  }

  async function rotatePending() {
    const k = state.pending;
    const grace = $("rotate-grace").value;
    $("rotate-dialog").close();
    if (!k) return;
    clearMessages();
    try {
      const r = await api("POST", "/keys/" + encodeURIComponent(k.id) + "/rotate", grace ? { grace } : {});
      await loadKeys();
      showSecret(r, "Successor of " + k.display_prefix + "…; the old key works until " +
        fmtTime(r.old_key_expires_at) + ".");
      notify("Rotated " + (k.name || k.id) + ".");
    } catch (e) {
      showError(e);
      await loadKeys();
    }
  }

  // ---- wiring -----------------------------------------------------------

  function init() {
    $("signin-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const key = $("signin-key").value.trim();
      $("signin-key").value = "";
      if (!key) {
        showError(new ApiError(0, { title: "Missing key", detail: "Paste an API key first" }));
        return;
      }
      signIn(key, $("signin-remember").checked);
    });
    $("signout").addEventListener("click", signOut);
    for (const tab of document.querySelectorAll(".tab")) {
      tab.addEventListener("click", () => {
        clearMessages();
        showView(tab.dataset.view);
        if (tab.dataset.view === "create") $("create-name").focus();
      });
    }
    $("refresh").addEventListener("click", () => { clearMessages(); loadKeys(); });
    $("owner-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      clearMessages();
      state.owner = $("owner-input").value.trim() || state.me.owner;
      $("usage").hidden = true;
      loadKeys();
    });
    for (const b of document.querySelectorAll("button.sort")) {
      b.addEventListener("click", () => {
        const f = b.dataset.sort;
        state.sort = { field: f, dir: state.sort.field === f ? -state.sort.dir : 1 };
        renderKeys();
      });
    }
    $("keys-body").addEventListener("click", (ev) => {
      const b = ev.target.closest("button[data-action]");
      if (!b) return;
      const k = keyById(b.dataset.keyId);
      if (!k) return;
      if (b.dataset.action === "usage") showUsage(k);
      else openDialog(b.dataset.action, k);
    });
    $("usage-close").addEventListener("click", () => { $("usage").hidden = true; });
    $("create-form").addEventListener("submit", createKey);
    $("create-expiry").addEventListener("change", () => {
      $("create-date-wrap").hidden = $("create-expiry").value !== "date";
    });
    $("secret-copy").addEventListener("click", copySecret);
    $("secret-done").addEventListener("click", () => { hideSecret(); notify(""); });
    $("revoke-cancel").addEventListener("click", () => $("revoke-dialog").close());
    $("rotate-cancel").addEventListener("click", () => $("rotate-dialog").close());
    $("revoke-confirm").addEventListener("click", revokePending);
    $("rotate-confirm").addEventListener("click", rotatePending);

    const saved = sessionStorage.getItem(SESSION_KEY);
    if (saved) {
      $("signin-remember").checked = true;
      signIn(saved, true);
    } else {
      $("signin-key").focus();
    }
  }

  init();
})();
