// ktb console: a client of the ktb HTTP API, in this page's origin.
// Every value from the API is put in the page as text (textContent), never as HTML.
"use strict";

const session = { authentication: false, signedIn: false, tenant: null, csrf: null,
  temporalUi: null, namespace: "default" };
let leaving = [];  // cleanups of the current view (an open SSE stream, timers)

// ---- API -------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, problem) {
    super((problem && (problem.detail || problem.title)) || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && session.csrf) headers["X-CSRF-Token"] = session.csrf;
  const response = await fetch(path, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch (_) { data = { detail: text }; }
  }
  if (response.status === 401 && session.authentication && path !== "/session") {
    session.signedIn = false;
    showSignIn("Your session has ended: sign in again.");
  }
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== "") q.set(k, v);
  }
  const s = q.toString();
  return s ? `?${s}` : "";
}

const enc = encodeURIComponent;

// ---- DOM helpers ----------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (v === true) el.setAttribute(k, "");
    else el.setAttribute(k, String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function fill(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

// A control with its label beside it (not wrapped: a wrapped select's options would
// become part of the label's accessible name).
function lab(attrs, text, control) {
  return h("div", { class: "field" }, h("label", attrs, text), control);
}

function link(href, text) { return h("a", { href, "data-link": true }, text); }
function code(text) { return h("code", {}, text); }
function muted(text) { return h("span", { class: "muted" }, text); }

function table(headers, rows, caption) {
  if (!rows.length) return h("p", { class: "muted" }, caption ? `${caption}: none.` : "None.");
  return h("div", { class: "scroll" }, h("table", {},
    caption ? h("caption", { class: "muted" }, caption) : null,
    h("thead", {}, h("tr", {}, headers.map((x) => h("th", { scope: "col", class: numeric(x) ? "num" : null }, x)))),
    h("tbody", {}, rows.map((r) => h("tr", {}, r.map((c, i) => h("td", { class: numeric(headers[i]) ? "num" : null }, c)))))));
}

function numeric(header) { return /^(lag|end|committed|letters|records|count|partition|offset|#)$/i.test(header); }

function facts(pairs) {
  return h("dl", { class: "facts" }, pairs.filter((p) => p[1] !== undefined && p[1] !== null && p[1] !== "")
    .map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

function json(value) { return h("pre", {}, JSON.stringify(value, null, 2)); }

function say(text, failed) {
  const status = document.getElementById("status");
  status.textContent = "";
  if (text) status.append(h("span", { class: failed ? "bad" : "ok" }, text));
}

function failure(err) {
  return h("p", { class: "bad", role: "alert" }, err instanceof ApiError && err.status === 404
    ? `Not found: ${err.message}` : `Error: ${err.message}`);
}

function confirmDialog(text, ok) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = text;
  document.getElementById("confirm-ok").textContent = ok || "Confirm";
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.returnValue = "";
    dialog.showModal();
    document.getElementById("confirm-ok").focus();
  });
}

function loc(l) { return l ? `${l.topic} [${l.partition}] @ ${l.offset}` : null; }
function when(t) { return t ? new Date(t).toLocaleString() : null; }
function eventLink(id) { return link(`/console/events/${enc(id)}`, id); }
function processLink(id) { return link(`/console/processes/${enc(id)}`, id); }

function temporalLink(workflowId, runId) {
  if (!session.temporalUi || !workflowId) return null;
  const base = session.temporalUi.replace(/\/$/, "");
  const path = `/namespaces/${enc(session.namespace)}/workflows/${enc(workflowId)}${runId ? `/${enc(runId)}/history` : ""}`;
  return h("a", { href: base + path, target: "_blank", rel: "noopener" }, "Temporal UI");
}

function statusBadge(status) {
  const cls = { completed: "ok", running: "warn", failed: "bad", dead_lettered: "bad", terminated: "bad",
    timed_out: "bad", canceled: "bad", ready: "ok", ok: "ok" }[status] || "";
  return h("span", { class: `badge ${cls}` }, status || "unknown");
}

// ---- routing ----------------------------------------------------------------------

const routes = [
  [/^\/console\/?$/, overviewPage, 10000],
  [/^\/console\/events\/?$/, eventSearchPage],
  [/^\/console\/events\/(.+)$/, eventPage],
  [/^\/console\/processes\/?$/, processesPage],
  [/^\/console\/processes\/(.+)$/, processPage],
  [/^\/console\/dlq\/?$/, dlqIndexPage],
  [/^\/console\/dlq\/([^/]+)$/, dlqPage],
  [/^\/console\/replays\/?$/, replayFormPage],
  [/^\/console\/replays\/([^/]+)$/, replayPage],
];

function navigate(href) {
  history.pushState(null, "", href);
  render();
}

async function render() {
  for (const stop of leaving) stop();
  leaving = [];
  say("");
  const main = document.getElementById("main");
  const path = location.pathname;
  for (const a of document.querySelectorAll(".top nav a")) {
    const href = a.getAttribute("href");
    const current = href === "/console" ? path === "/console" || path === "/console/" : path.startsWith(href);
    if (current) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
  if (session.authentication && !session.signedIn) { showSignIn(); return; }
  for (const [pattern, view, refreshMs] of routes) {
    const m = path.match(pattern);
    if (!m) continue;
    fill(main, h("p", { class: "muted" }, "Loading…"));
    const args = m.slice(1).map(decodeURIComponent);
    try {
      const content = await view(...args);
      fill(main, ...[content].flat());
    } catch (err) {
      fill(main, h("h1", {}, "Something went wrong"), failure(err));
    }
    main.focus({ preventScroll: true });
    if (refreshMs) {
      // Kept current while nobody works inside it: a refresh never takes focus away.
      const timer = setInterval(async () => {
        const active = document.activeElement;
        if (document.getElementById("confirm").open || (main.contains(active) && active !== main)) return;
        try { fill(main, ...[await view(...args)].flat()); } catch (_) { /* next time */ }
      }, refreshMs);
      leaving.push(() => clearInterval(timer));
    }
    return;
  }
  fill(main, h("h1", {}, "No such page"), h("p", {}, link("/console", "Back to the overview")));
}

document.addEventListener("click", (e) => {
  const a = e.target.closest("a[data-link]");
  if (!a || e.ctrlKey || e.metaKey || e.shiftKey || e.button !== 0) return;
  e.preventDefault();
  navigate(a.getAttribute("href"));
});
window.addEventListener("popstate", render);

// ---- session ----------------------------------------------------------------------

function adopt(view) {
  session.authentication = view.authentication;
  session.signedIn = view.signed_in;
  session.tenant = view.tenant;
  session.csrf = view.csrf_token;
  session.temporalUi = view.temporal_ui_url;
  session.namespace = view.namespace || "default";
  const who = document.getElementById("who");
  fill(who);
  if (!view.authentication) who.append(muted("authentication off: every tenant"));
  else if (view.signed_in) {
    who.append(h("span", {}, "Tenant ", h("strong", { id: "tenant" }, view.tenant)),
      h("button", { type: "button", onclick: signOut }, "Sign out"));
  }
}

function showSignIn(message) {
  adopt({ authentication: true, signed_in: false, tenant: null, csrf_token: null,
    temporal_ui_url: session.temporalUi, namespace: session.namespace });
  const error = h("p", { class: "bad", role: "alert" }, message || "");
  const key = h("input", { id: "api-key", name: "api_key", type: "password", required: true,
    autocomplete: "current-password" });
  const form = h("form", { class: "signin", onsubmit: async (e) => {
    e.preventDefault();
    try {
      adopt(await api("POST", "/session", { api_key: key.value }));
      render();
    } catch (err) {
      error.textContent = err.status === 401 ? "Unknown API key." : `Error: ${err.message}`;
      key.focus();
    }
  } },
  h("h1", {}, "Sign in"),
  h("p", {}, "Sign in with your tenant's API key (", code("ktb api-key"), " makes one). The console keeps a session cookie, not the key."),
  lab({ for: "api-key" }, "API key", key),
  h("p", {}, h("button", { type: "submit", class: "primary" }, "Sign in")),
  error);
  fill(document.getElementById("main"), form);
  key.focus();
}

async function signOut() {
  await api("DELETE", "/session");
  session.csrf = null;
  showSignIn("Signed out.");
}

// ---- overview ---------------------------------------------------------------------

let overviewCache = null;

async function loadOverview() {
  overviewCache = await api("GET", "/overview");
  return overviewCache;
}

async function readiness() {
  try { return await api("GET", "/readyz"); } catch (err) {
    if (err.problem && err.problem.checks) return { status: "not ready", checks: err.problem.checks, paused: err.problem.paused || [] };
    throw err;
  }
}

async function overviewPage() {
  const [ready, o] = await Promise.all([readiness(), loadOverview()]);
  const cards = [];
  cards.push(h("section", { class: "card", "aria-labelledby": "h-ready" }, h("h2", { id: "h-ready" }, "Readiness ", statusBadge(ready.status)),
    facts(Object.entries(ready.checks).map(([k, v]) => [k, statusBadge(v)]))));
  cards.push(h("section", { class: "card", "aria-labelledby": "h-replays" }, h("h2", { id: "h-replays" }, "Replays running"),
    table(["Replay", "Topic", "Dry run", "Started"], o.replays.map((r) =>
      [link(`/console/replays/${enc(r.replay_id)}`, r.replay_id), r.topic, r.dry_run ? "yes" : "no", when(r.started)])),
    h("p", {}, link("/console/replays", "Start a replay"))));
  const out = [h("h1", {}, "Overview"), h("div", { class: "grid" }, cards)];
  out.push(h("section", { "aria-labelledby": "h-activity" }, h("h2", { id: "h-activity" }, `Records handled per minute, last ${o.minutes} minutes`), chart(o.activity, o.minutes)));
  out.push(h("section", { "aria-labelledby": "h-lag" }, h("h2", { id: "h-lag" }, "Consumer lag"),
    table(["Topic", "Partition", "Committed", "End", "Lag"], o.lag.map((l) => [l.topic, l.partition, l.committed ?? "none", l.end, l.lag]))));
  out.push(h("section", { "aria-labelledby": "h-dlq" }, h("h2", { id: "h-dlq" }, "Dead letters"),
    table(["Topic", "Error type", "Letters"], o.dead_letters.map((d) => [
      link(`/console/dlq/${enc(d.topic)}${query({ error_type: d.error_type })}`, d.topic), d.error_type || "none", `${d.letters}${d.more ? "+" : ""}`]))));
  out.push(pausedSection(o.paused, async () => render()));
  out.push(h("section", { "aria-labelledby": "h-parked" }, h("h2", { id: "h-parked" }, "Parked keys"),
    table(["Topic", "Records parked"], o.parked.map((p) => [link(`/console/dlq/${enc(p.topic)}.dlq`, p.topic), p.records]))));
  const missing = Object.entries(o.unavailable);
  if (missing.length) out.push(h("p", { class: "warn", role: "note" }, `Not shown (unavailable): ${missing.map(([k, v]) => `${k}: ${v}`).join("; ")}`));
  return out;
}

function pausedSection(paused, after) {
  const rows = paused.map((p) => [p.topic, p.partition, p.offset, p.error_type, when(p.paused_at),
    h("span", { class: "toolbar" },
      h("button", { type: "button", onclick: () => resume(p, false, after) }, "Retry"),
      h("button", { type: "button", class: "danger", onclick: () => resume(p, true, after) }, "Skip"))]);
  return h("section", { "aria-labelledby": "h-paused" }, h("h2", { id: "h-paused" }, "Paused partitions"),
    table(["Topic", "Partition", "Offset", "Error type", "Paused", "Resume"], rows));
}

async function resume(p, skip, after) {
  const text = skip
    ? `Skip the record at ${p.topic} [${p.partition}] @ ${p.offset}: it is dead-lettered and the partition goes on. 1 record will move to the dead-letter topic.`
    : `Retry the record at ${p.topic} [${p.partition}] @ ${p.offset}; the partition pauses again if it fails.`;
  if (!await confirmDialog(text, skip ? "Skip it" : "Retry")) return;
  try {
    const r = await api("POST", "/bridge/resume", { topic: p.topic, partition: p.partition, skip });
    await after();
    say(`Partition ${r.topic} [${r.partition}]: ${r.decision}.`);
  } catch (err) { say(err.message, true); }
}

const SERIES = 6;  // colours of the chart's series (console.css: .s0 to .s5)

function chart(activity, minutes) {
  const outcomes = [...new Set(activity.map((a) => a.outcome))].sort();
  const end = Math.floor(Date.now() / 60000);
  const buckets = Array.from({ length: minutes }, () => ({}));
  for (const a of activity) {
    const i = minutes - 1 - (end - Math.floor(new Date(a.minute).getTime() / 60000));
    if (i >= 0 && i < minutes) buckets[i][a.outcome] = (buckets[i][a.outcome] || 0) + a.records;
  }
  const totals = buckets.map((b) => Object.values(b).reduce((x, y) => x + y, 0));
  const max = Math.max(1, ...totals);
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${minutes * 10} 100`);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("role", "img");
  const total = totals.reduce((x, y) => x + y, 0);
  svg.setAttribute("aria-label", `${total} records in the last ${minutes} minutes, ${(total / (minutes * 60)).toFixed(2)} per second`);
  buckets.forEach((b, i) => {
    let y = 100;
    outcomes.forEach((o, k) => {
      const n = b[o] || 0;
      if (!n) return;
      const height = (n / max) * 96;
      y -= height;
      const rect = document.createElementNS(ns, "rect");
      rect.setAttribute("x", String(i * 10 + 1));
      rect.setAttribute("width", "8");
      rect.setAttribute("y", String(y));
      rect.setAttribute("height", String(height));
      rect.setAttribute("class", `series s${k % SERIES}`);
      const title = document.createElementNS(ns, "title");
      title.textContent = `${o}: ${n}`;
      rect.append(title);
      svg.append(rect);
    });
  });
  const rate = (total / (minutes * 60)).toFixed(2);
  return h("div", { class: "chart" }, svg,
    h("p", { class: "muted" }, `${total} records, ${rate} events/s on average; the latest minute at the right.`),
    h("ul", { class: "legend" }, outcomes.map((o, k) => h("li", {},
      h("span", { class: `swatch s${k % SERIES}`, "aria-hidden": "true" }), `${o}: ${activity.filter((a) => a.outcome === o).reduce((x, a) => x + a.records, 0)}`))));
}

// ---- events -----------------------------------------------------------------------

async function eventSearchPage() {
  const params = new URLSearchParams(location.search);
  const by = params.get("by") || "id";
  const field = (name, label, attrs) => lab({ for: `f-${name}` }, label,
    h("input", { id: `f-${name}`, name, value: params.get(name) || "", ...(attrs || {}) }));
  const byField = h("select", { id: "f-by", name: "by" },
    [["id", "Event id"], ["position", "Topic, partition, offset"], ["key", "Business key"]]
      .map(([v, t]) => h("option", { value: v, selected: v === by }, t)));
  const form = h("form", { class: "filters", onsubmit: (e) => {
    e.preventDefault();
    const data = Object.fromEntries(new FormData(form).entries());
    if (data.by === "id" && data.id) { navigate(`/console/events/${enc(data.id)}`); return; }
    navigate(`/console/events${query(data)}`);
  } },
  lab({ for: "f-by" }, "Look up by", byField),
  field("id", "Event id"), field("topic", "Topic"), field("partition", "Partition", { inputmode: "numeric" }),
  field("offset", "Offset", { inputmode: "numeric" }), field("key", "Business key"),
  h("button", { type: "submit", class: "primary" }, "Look up"));
  const out = [h("h1", {}, "Events"), form];
  let filter = null;
  if (by === "key" && params.get("key")) filter = { key: params.get("key") };
  if (by === "position" && params.get("topic")) filter = { topic: params.get("topic"), partition: params.get("partition"), offset: params.get("offset") };
  if (filter) {
    const page = await api("GET", `/events${query({ ...filter, page_size: 100 })}`);
    out.push(h("h2", {}, "Records found"), table(["Event", "Type", "Read at", "Route", "Outcome", "Process", "At"],
      page.items.map((r) => [eventLink(r.event_id), r.type, loc(r.read), r.route, r.outcome,
        r.workflow_id ? processLink(r.workflow_id) : null, when(r.at)])));
  }
  return out;
}

async function recordSection(eventId) {
  let r;
  try { r = await api("GET", `/events/${enc(eventId)}/record`); } catch (err) {
    return h("section", { id: "record", "aria-labelledby": "h-record" }, h("h2", { id: "h-record" }, "Record"), muted(err.message));
  }
  return h("section", { id: "record", "aria-labelledby": "h-record" }, h("h2", { id: "h-record" }, "Record"),
    h("p", { class: "muted" }, `${r.topic} [${r.partition}] @ ${r.offset}, key ${r.key ?? "none"}`),
    h("div", { class: "two" },
      h("div", {}, h("h3", {}, "Data"), r.error ? h("p", { class: "warn" }, r.error) : json(r.data)),
      h("div", {}, h("h3", {}, "Headers"), json(r.headers))));
}

async function eventPage(eventId) {
  const [e, record] = await Promise.all([api("GET", `/events/${enc(eventId)}`), recordSection(eventId)]);
  const steps = [];
  if (e.produced) steps.push(h("li", {}, h("strong", {}, "Produced "), `through the API to ${loc(e.produced)}`));
  if (e.read) steps.push(h("li", {}, h("strong", {}, "Read "), `from ${loc(e.read)}`));
  else steps.push(h("li", {}, h("strong", {}, "Not read yet "), muted("the bridge has not handled it (or records no provenance)")));
  if (e.outcome) {
    steps.push(h("li", { class: e.outcome === "dead_lettered" ? "failed" : null },
      h("strong", {}, e.route ? `Route ${e.route}` : "No route"), e.action ? ` → ${e.action}` : "", " → ", statusBadge(e.outcome),
      e.detail ? h("div", { class: "muted" }, e.detail) : null));
  }
  if (e.workflow_id) {
    steps.push(h("li", { class: e.status === "failed" ? "failed" : null }, h("strong", {}, "Process "), processLink(e.workflow_id),
      e.run_id ? [" run ", code(e.run_id)] : "", " ", statusBadge(e.status), " ", temporalLink(e.workflow_id, e.run_id)));
  }
  for (const p of e.published) {
    steps.push(h("li", { class: p.kind === "compensation" ? "failed" : null }, h("strong", {}, `Published ${p.kind} `), code(p.type),
      h("div", { class: "muted" }, `ce_id ${p.ce_id} at ${p.topic} [${p.partition}] @ ${p.offset}, ${when(p.at)}`)));
  }
  const later = e.handlings.slice(1);
  for (const x of later) {
    steps.push(h("li", {}, h("strong", {}, `Handled again (${x.via}) `), `from ${loc(x.read)}: `, x.route || "no route", " → ", statusBadge(x.outcome),
      x.workflow_id ? [" → ", processLink(x.workflow_id)] : "", h("div", { class: "muted" }, when(x.at))));
  }
  return [
    h("h1", {}, "Event ", code(e.event_id)),
    facts([["Type", e.type], ["Tenant", e.tenant_id], ["Business key", e.key], ["Status", statusBadge(e.status)]]),
    h("h2", {}, "Timeline"), h("ol", { class: "timeline", "aria-label": "What happened to the event" }, steps),
    record,
    e.key ? h("p", {}, link(`/console/events${query({ by: "key", key: e.key })}`, "Every record of this business key")) : null,
    h("h2", {}, "Every handling"),
    table(["Via", "Read at", "Route", "Action", "Outcome", "Process", "At"], e.handlings.map((x) =>
      [x.via, loc(x.read), x.route, x.action, x.outcome, x.workflow_id ? processLink(x.workflow_id) : null, when(x.at)])),
  ];
}

// ---- processes --------------------------------------------------------------------

const STATUSES = ["", "running", "completed", "failed", "canceled", "terminated", "continued_as_new", "timed_out"];

async function processesPage() {
  const params = new URLSearchParams(location.search);
  const input = (name, label) => lab({ for: `p-${name}` }, label, h("input", { id: `p-${name}`, name, value: params.get(name) || "" }));
  const form = h("form", { class: "filters", onsubmit: (e) => {
    e.preventDefault();
    navigate(`/console/processes${query(Object.fromEntries(new FormData(form).entries()))}`);
  } },
  input("type", "Type"),
  lab({ for: "p-status" }, "Status", h("select", { id: "p-status", name: "status" },
    STATUSES.map((s) => h("option", { value: s, selected: s === (params.get("status") || "") }, s || "any")))),
  session.authentication ? null : input("tenant", "Tenant"),
  input("key", "Business key"),
  h("button", { type: "submit", class: "primary" }, "Filter"));
  const filters = Object.fromEntries(["type", "status", "tenant", "key", "page_token"].map((k) => [k, params.get(k)]));
  const page = await api("GET", `/processes${query({ ...filters, page_size: 50 })}`);
  const next = page.next_page_token
    ? h("p", {}, link(`/console/processes${query({ ...filters, page_token: page.next_page_token })}`, "Next page")) : null;
  return [h("h1", {}, "Processes"), form,
    table(["Process", "Type", "Status", "Tenant", "Business key", "Started", "Closed"], page.items.map((p) =>
      [processLink(p.workflow_id), p.workflow_type, statusBadge(p.status), p.tenant_id, p.business_key, when(p.start_time), when(p.close_time)])),
    next];
}

async function processPage(workflowId) {
  const p = await api("GET", `/processes/${enc(workflowId)}`);
  const status = h("span", { id: "process-status" }, statusBadge(p.status));
  const progress = h("div", { id: "process-progress" }, p.progress ? json(p.progress) : muted("no progress reported"));
  const outcome = h("div", { id: "process-outcome" });
  const live = h("p", { class: "muted", id: "live" });
  const show = (s) => {
    fill(status, statusBadge(s.status));
    fill(progress, s.progress ? json(s.progress) : muted("no progress reported"));
    fill(outcome,
      s.result !== null && s.result !== undefined ? [h("h2", {}, "Result"), json(s.result)] : [],
      s.failure ? [h("h2", {}, "Failure"), h("p", { class: "bad" }, s.failure.message)] : []);
  };
  show(p);
  if (p.status === "running") {
    const source = new EventSource(`/processes/${enc(workflowId)}/stream`, { withCredentials: true });
    live.textContent = "Live: following the process.";
    source.addEventListener("state", (m) => {
      const s = JSON.parse(m.data);
      show(s);
      if (s.status !== "running") { live.textContent = "The process has closed."; source.close(); }
    });
    source.addEventListener("error", (m) => {
      if (m.data) live.textContent = `Stream ended: ${JSON.parse(m.data).detail}`;
      if (source.readyState === EventSource.CLOSED || m.data) source.close();
    });
    leaving.push(() => source.close());
  }
  const published = (items) => table(["Kind", "Type", "ce_id", "Written to", "At"],
    items.map((x) => [x.kind, code(x.type), x.ce_id, `${x.topic} [${x.partition}] @ ${x.offset}`, when(x.at)]));
  return [
    h("h1", {}, "Process ", code(p.workflow_id)),
    facts([["Status", status], ["Type", p.workflow_type], ["Run", code(p.run_id)], ["Tenant", p.tenant_id],
      ["Business key", p.business_key], ["Started by", p.event_id ? eventLink(p.event_id) : null],
      ["Started", when(p.start_time)], ["Closed", when(p.close_time)], ["Temporal", temporalLink(p.workflow_id, p.run_id)]]),
    live,
    h("h2", {}, "Progress"), progress, outcome,
    h("h2", {}, "Published events"), published(p.published),
    h("h2", {}, "Compensations"), published(p.compensations),
  ];
}

// ---- dead letters -------------------------------------------------------------------

async function dlqIndexPage() {
  const o = overviewCache || await loadOverview();
  const counts = {};
  for (const d of o.dead_letters) counts[d.topic] = (counts[d.topic] || 0) + d.letters;
  return [h("h1", {}, "Dead letters"),
    table(["Dead-letter topic", "Letters"], o.dead_letter_topics.map((t) => [link(`/console/dlq/${enc(t)}`, t), counts[t] || 0]))];
}

async function readLetters(topic, errorType) {
  const letters = [];
  let cursor = null;
  do {
    const page = await api("GET", `/dlq${query({ topic, error_type: errorType, limit: 500, cursor })}`);
    letters.push(...page.letters);
    cursor = page.next_cursor;
  } while (cursor && letters.length < 5000);
  return { letters, more: Boolean(cursor) };
}

function letterId(l) { return `${l.partition}:${l.offset}`; }

async function dlqPage(topic) {
  const params = new URLSearchParams(location.search);
  const errorType = params.get("error_type") || "";
  const since = params.get("since") || "";
  const until = params.get("until") || "";
  const { letters: all, more } = await readLetters(topic, errorType);
  const letters = all.filter((l) => {
    const t = l.failed_at ? new Date(l.failed_at).getTime() : null;
    if (since && (t === null || t < new Date(since).getTime())) return false;
    if (until && (t === null || t >= new Date(until).getTime())) return false;
    return true;
  });
  const original = topic.replace(/\.dlq$/, "");
  const form = h("form", { class: "filters", onsubmit: (e) => {
    e.preventDefault();
    navigate(`/console/dlq/${enc(topic)}${query(Object.fromEntries(new FormData(form).entries()))}`);
  } },
  lab({ for: "d-error" }, "Error type", h("input", { id: "d-error", name: "error_type", value: errorType })),
  lab({ for: "d-since" }, "Failed from", h("input", { id: "d-since", name: "since", type: "datetime-local", value: since })),
  lab({ for: "d-until" }, "Failed before", h("input", { id: "d-until", name: "until", type: "datetime-local", value: until })),
  h("button", { type: "submit", class: "primary" }, "Filter"));
  const movable = (l) => !l.redriven && !l.copy_of;
  const boxes = new Map();
  const rows = letters.map((l) => {
    const box = h("input", { type: "checkbox", "aria-label": `Select letter ${letterId(l)}`, "data-letter": letterId(l) });
    boxes.set(letterId(l), box);
    return [box, h("button", { type: "button", class: "linklike", onclick: () => showLetter(topic, l, detail) }, letterId(l)),
      l.error_type, h("span", { title: l.error_message || "" }, (l.error_message || "").slice(0, 120)),
      l.event_id ? eventLink(l.event_id) : null, l.key, when(l.failed_at),
      l.redriven ? `→ ${l.redriven.topic} [${l.redriven.partition}] @ ${l.redriven.offset} (${when(l.redriven.at)})` : (l.copy_of ? `copy of ${l.copy_of}` : ""),
      l.parked || ""];
  });
  const detail = h("section", { id: "letter", "aria-live": "polite" });
  const history = h("section", { id: "history", "aria-labelledby": "h-history" }, h("h2", { id: "h-history" }, "Redrive history"),
    table(["Letter", "Event", "Redriven to", "At", "Redrives"], all.filter((l) => l.redriven).map((l) =>
      [letterId(l), l.event_id ? eventLink(l.event_id) : null, `${l.redriven.topic} [${l.redriven.partition}] @ ${l.redriven.offset}`,
        when(l.redriven.at), l.redrive_count])));
  const selected = () => [...boxes.entries()].filter(([, b]) => b.checked).map(([id]) => id);
  const after = () => render();
  const toolbar = h("div", { class: "toolbar" },
    h("button", { type: "button", class: "primary", onclick: () => redriveLetters(topic, selected(), after) }, "Redrive selected"),
    h("button", { type: "button", onclick: () => redriveLetters(topic, letters.filter(movable).map(letterId), after, true) },
      `Redrive all matching (${letters.filter(movable).length})`),
    h("button", { type: "button", class: "danger", onclick: () => discardLetters(topic, selected(), after) }, "Discard selected"));
  let parked = [];
  try { parked = (await api("GET", `/parked${query({ topic: original })}`)).records; } catch (_) { parked = []; }
  return [
    h("h1", {}, "Dead letters of ", code(topic)), form,
    h("p", { class: "muted" }, `${letters.length} ${letters.length === 1 ? "letter" : "letters"} shown${more ? " (the first 5,000 read; more follow)" : ""}.`),
    toolbar,
    table(["", "Letter", "Error type", "Message", "Event", "Key", "Failed", "Redriven", "Parked"], rows),
    detail,
    h("section", { "aria-labelledby": "h-parked-records" }, h("h2", { id: "h-parked-records" }, `Parked on ${original}`),
      table(["Partition", "Offset", "Key", "Blocked by", "Event", "Released when"], parked.map((r) =>
        [r.partition, r.offset, r.key, r.blocking_letter, r.event_id ? eventLink(r.event_id) : null, r.released_when]))),
    history,
  ];
}

async function showLetter(topic, letter, into) {
  fill(into, h("p", { class: "muted" }, "Loading the letter…"));
  try {
    const d = await api("GET", `/dlq/${enc(topic)}/letters/${enc(letterId(letter))}`);
    fill(into, h("h2", { tabindex: "-1", id: "letter-title" }, `Letter ${letterId(letter)}`),
      h("h3", {}, "Error (from the letter's headers)"),
      facts([["Error type", d.error_type], ["Message", d.error_message],
        ["Original", `${d.original_topic} [${d.original_partition}] @ ${d.original_offset}`],
        ["Failed", when(d.failed_at)], ["Redrives", d.redrive_count], ["Copy of", d.copy_of],
        ["Original error", d.original_error_type ? `${d.original_error_type}: ${d.original_error_message}` : null]]),
      h("div", { class: "two" },
        h("div", {}, h("h3", {}, "Data"), d.data !== undefined ? json(d.data) : h("p", { class: "warn" }, d.data_error || "not in the letter"),
          d.value_hex ? json(d.value_hex) : null),
        h("div", {}, h("h3", {}, "Record headers"), json(d.headers || {}))));
    document.getElementById("letter-title").focus();
  } catch (err) { fill(into, failure(err)); }
}

async function redriveLetters(topic, ids, after, all) {
  if (!ids.length) { say("Select letters first.", true); return; }
  const text = `Redrive ${ids.length} ${ids.length === 1 ? "record" : "records"} from ${topic} to ${topic.replace(/\.dlq$/, "")}? ${ids.length} ${ids.length === 1 ? "record" : "records"} will move.`;
  if (!await confirmDialog(text, all ? "Redrive all" : "Redrive")) return;
  try {
    let redriven = 0; let refused = 0;
    for (let i = 0; i < ids.length; i += 1000) {
      const r = await api("POST", "/dlq/redrive", { topic, offsets: ids.slice(i, i + 1000) });
      redriven += r.redriven.length; refused += r.refused.length;
    }
    await after();
    say(`Redriven: ${redriven}${refused ? `, refused: ${refused}` : ""}.`);
  } catch (err) { say(err.message, true); }
}

async function discardLetters(topic, ids, after) {
  if (!ids.length) { say("Select letters first.", true); return; }
  const text = `Discard ${ids.length} ${ids.length === 1 ? "letter" : "letters"} of ${topic}? Nothing is republished; keys they block are released.`;
  if (!await confirmDialog(text, "Discard")) return;
  try {
    const r = await api("POST", "/dlq/discard", { topic, offsets: ids });
    await after();
    say(`Discarded ${ids.length}; released keys: ${r.released.length}.`);
  } catch (err) { say(err.message, true); }
}

// ---- replays ----------------------------------------------------------------------

function replayBody(form, dryRun) {
  const data = Object.fromEntries(new FormData(form).entries());
  const list = (s) => (s || "").split(",").map((x) => x.trim()).filter(Boolean);
  return { topic: data.topic, from: data.from, to: data.to || "now",
    partitions: list(data.partitions).map(Number), routes: list(data.routes), mode: data.mode, dry_run: dryRun };
}

async function waitReplay(replayId, onProgress) {
  for (;;) {
    const r = await api("GET", `/replays/${enc(replayId)}`);
    onProgress(r);
    if (r.state !== "running") return r;
    await new Promise((resolve) => { setTimeout(resolve, 700); });
  }
}

function reportTable(report) {
  if (!report) return muted("no report yet");
  const rows = [];
  for (const [route, counts] of Object.entries(report.per_route)) {
    for (const [what, n] of Object.entries(counts)) rows.push([route, what, n, report.examples[route] || ""]);
  }
  return [facts([["Read", report.read], ["Matched", report.matched], ["Would act", report.would_act], ["Started", report.started],
    ["Duplicates", report.duplicates], ["Signalled", report.signalled], ["Skipped", report.skipped], ["Dead-lettered", report.dead_lettered]]),
  table(["Route", "Outcome", "Records", "First workflow"], rows, "Per route")];
}

async function replayFormPage() {
  const o = overviewCache || await loadOverview();
  const topics = h("datalist", { id: "topics" }, o.topics.map((t) => h("option", { value: t })));
  const field = (name, label, attrs) => lab({ for: `r-${name}` }, label, h("input", { id: `r-${name}`, name, ...(attrs || {}) }));
  const result = h("section", { id: "dry-run", "aria-live": "polite" });
  const form = h("form", { class: "filters", onsubmit: async (e) => {
    e.preventDefault();
    const body = replayBody(form, true);
    fill(result, h("p", { class: "muted" }, "Dry run running…"));
    try {
      const accepted = await api("POST", "/replays", body);
      const done = await waitReplay(accepted.replay_id, () => {});
      const start = h("button", { type: "button", class: "primary", id: "start-replay", onclick: async () => {
        if (!await confirmDialog(`Start the replay of ${accepted.total} offsets of ${body.topic} (mode ${body.mode})? ${done.report ? done.report.would_act : 0} records would be acted on.`, "Start replay")) return;
        try {
          const started = await api("POST", "/replays", { ...body, dry_run: false });
          navigate(`/console/replays/${enc(started.replay_id)}`);
        } catch (err) { say(err.message, true); }
      } }, "Start the replay");
      fill(result, h("h2", { tabindex: "-1", id: "dry-run-title" }, "Dry run ", statusBadge(done.state)),
        h("p", {}, `${accepted.total} offsets in ${accepted.ranges.length} partition ranges.`),
        reportTable(done.report), done.error ? h("p", { class: "bad" }, done.error) : null,
        done.state === "completed" ? h("p", {}, start) : null);
      document.getElementById("dry-run-title").focus();
    } catch (err) { fill(result, failure(err)); }
  } },
  field("topic", "Topic", { required: true, list: "topics" }),
  field("partitions", "Partitions (comma-separated; empty: all)"),
  field("from", "From (offset, ISO time or earliest)", { required: true, value: "earliest" }),
  field("to", "To (offset, ISO time or now)", { value: "now" }),
  field("routes", "Routes (comma-separated; empty: all)"),
  lab({ for: "r-mode" }, "Mode", h("select", { id: "r-mode", name: "mode" },
    h("option", { value: "idempotent" }, "idempotent"), h("option", { value: "fresh" }, "fresh"))),
  h("button", { type: "submit", class: "primary" }, "Dry run"));
  return [h("h1", {}, "Replay a topic range"),
    h("p", {}, "A dry run comes first and acts on nothing; the replay starts only once you confirm."),
    topics, form, result];
}

async function replayPage(replayId) {
  const bar = h("progress", { max: 1, value: 0, "aria-label": "Replay progress" });
  const line = h("p", { id: "replay-line" });
  const report = h("div", { id: "replay-report" });
  const head = h("span", {});
  let first = null;
  let stopped = false;
  leaving.push(() => { stopped = true; });
  const update = (r) => {
    fill(head, statusBadge(r.state), r.dry_run ? " (dry run)" : "");
    bar.max = Math.max(1, r.total);
    bar.value = r.done;
    const now = performance.now();
    if (first === null) first = { at: now, done: r.done };
    const seconds = (now - first.at) / 1000;
    const rate = seconds > 0 ? (r.done - first.done) / seconds : 0;
    const eta = rate > 0 && r.state === "running" ? `, about ${Math.ceil((r.total - r.done) / rate)} s left` : "";
    line.textContent = `${r.done} of ${r.total} offsets${rate > 0 ? `, ${rate.toFixed(1)} records/s` : ""}${eta}.`;
    fill(report, h("h2", {}, r.state === "running" ? "Report so far" : "Final report"), reportTable(r.report),
      r.error ? h("p", { class: "bad" }, r.error) : null);
  };
  const r = await api("GET", `/replays/${enc(replayId)}`);
  update(r);
  if (r.state === "running") {
    (async () => {
      while (!stopped) {
        await new Promise((resolve) => { setTimeout(resolve, 1000); });
        if (stopped) return;
        try {
          const s = await api("GET", `/replays/${enc(replayId)}`);
          update(s);
          if (s.state !== "running") return;
        } catch (err) { say(err.message, true); return; }
      }
    })();
  }
  return [h("h1", {}, "Replay ", code(replayId), " ", head),
    facts([["Topic", r.topic], ["Mode", r.mode], ["Generation", r.generation]]), bar, line, report];
}

// ---- start ------------------------------------------------------------------------

async function start() {
  try {
    adopt(await api("GET", "/session"));
  } catch (err) {
    fill(document.getElementById("main"), failure(err));
    return;
  }
  render();
}

start();
