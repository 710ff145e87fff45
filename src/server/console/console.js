// perch console. Plain JS, no build step. Reads the admin API with the signed-in
// admin's session; every POST carries the session's CSRF token. Names and values are
// inserted with textContent; only the card renderer's escaped HTML is set as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { csrf: "", events: [], selected: null, scopeEvent: null, templates: [], platforms: [] };

async function api(method, path, body) {
  const opts = { method, headers: {} };
  if (method !== "GET" && state.csrf) opts.headers["x-csrf-token"] = state.csrf;
  if (body !== undefined) {
    opts.headers["content-type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const resp = await fetch(path, opts);
  let data = null;
  try { data = await resp.json(); } catch (_) { /* not JSON */ }
  if (resp.status === 401) { location.href = "/login?next=/console"; throw new Error("not signed in"); }
  if (!resp.ok) throw new Error((data && data.error) || resp.status + " " + resp.statusText);
  return data;
}

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const c of cells) {
    const td = document.createElement("td");
    if (c instanceof Node) td.append(c); else td.textContent = c == null ? "" : String(c);
    tr.append(td);
  }
  return tr;
}

function toast(text) {
  const t = $("toast");
  t.textContent = text;
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.hidden = true; }, 3500);
}

function pre(value) { return el("pre", JSON.stringify(value, null, 2)); }
function when(iso) { return iso ? new Date(iso).toLocaleString() : ""; }

// ---- tabs ----------------------------------------------------------------------

function showTab() {
  const tab = (location.hash.slice(1).split("/")[0]) || "events";
  for (const s of document.querySelectorAll(".tab")) s.hidden = s.id !== tab;
  for (const a of document.querySelectorAll("#tabs a")) a.classList.toggle("on", a.dataset.tab === tab);
  const load = { events: loadEvents, deliveries: loadDeliveries, schedules: loadSchedules, connectors: loadConnectors, bots: loadBots, cards: loadCards, charts: loadCharts }[tab];
  // `#events/<id>` (a link from a schedule's ledger) opens that event.
  const id = location.hash.slice(1).split("/")[1];
  if (load) load().then(() => (tab === "events" && id ? openEvent(id) : null)).catch((e) => toast(e.message));
  // The live stream is open only while the Events tab shows.
  if ((tab === "events") !== Boolean(state.stream)) liveEvents();
}
window.addEventListener("hashchange", showTab);

// ---- events --------------------------------------------------------------------

// The time filter's fields (local time in the page) as RFC 3339 for the API.
function timeRange() {
  const f = $("event-filters").elements;
  const iso = (v) => (v ? new Date(v).toISOString() : "");
  return { since: iso(f.since.value), until: iso(f.until.value) };
}

function matches(entry, f) {
  const ev = entry.event;
  const has = (v, want) => !want || (v || "").toLowerCase().includes(want.toLowerCase());
  const t = timeRange();
  const at = new Date(ev.received_at);
  return has(ev.connector, f.connector) && has(ev.kind, f.kind) && has(ev.topic, f.topic) &&
    has(ev.chat && ev.chat.id, f.chat) && (!f.fate || entry.fate.state === f.fate) &&
    (!t.since || at >= new Date(t.since)) && (!t.until || at <= new Date(t.until));
}

async function loadEvents() {
  const t = timeRange();
  const q = new URLSearchParams({ limit: "200" });
  if (t.since) q.set("since", t.since);
  if (t.until) q.set("until", t.until);
  const data = await api("GET", "/api/events?" + q);
  state.events = data.events;
  renderEvents();
}

// Live: the server pushes each new event and each recorded fate over SSE
// (`/api/events/stream`); on (re)connecting, and when told we fell behind, the list is
// reloaded so nothing in between is missed.
function upsertEvent(entry) {
  const i = state.events.findIndex((e) => e.event.id === entry.event.id);
  if (i >= 0) state.events[i] = entry;
  else {
    state.events.unshift(entry);
    state.events.sort((a, b) => (a.event.received_at < b.event.received_at ? 1 : -1));
    state.events.length = Math.min(state.events.length, 500);
  }
  renderEvents();
  if (entry.event.id === state.selected) openEvent(entry.event.id).catch(() => {});
}

function liveEvents() {
  const want = $("event-filters").elements.live.checked && !$("events").hidden;
  if (state.stream) { state.stream.close(); state.stream = null; }
  $("live-state").textContent = "";
  if (!want) return;
  const t = timeRange();
  const es = new EventSource("/api/events/stream" + (t.since ? "?since=" + encodeURIComponent(t.since) : ""));
  state.stream = es;
  es.addEventListener("hello", () => { $("live-state").textContent = "● live"; loadEvents().catch((e) => toast(e.message)); });
  es.addEventListener("entry", (m) => upsertEvent(JSON.parse(m.data)));
  es.addEventListener("resync", () => loadEvents().catch(() => {}));
  es.onerror = () => { $("live-state").textContent = "reconnecting…"; };
}

function renderEvents() {
  const f = Object.fromEntries(new FormData($("event-filters")));
  const body = $("event-list").tBodies[0];
  body.replaceChildren();
  for (const entry of state.events.filter((e) => matches(e, f))) {
    const ev = entry.event;
    const tr = row([when(ev.received_at), ev.connector, ev.kind, ev.topic || ev.text || "", ev.chat ? ev.chat.id : "", el("span", entry.fate.state, "fate-" + entry.fate.state)]);
    tr.dataset.id = ev.id;
    if (ev.id === state.selected) tr.classList.add("sel");
    tr.addEventListener("click", () => openEvent(ev.id));
    body.append(tr);
  }
}
$("event-filters").addEventListener("input", (e) => {
  if (["since", "until", "live"].includes(e.target.name)) {
    loadEvents().catch((err) => toast(err.message));
    liveEvents();
  } else renderEvents();
});

async function openEvent(id) {
  state.selected = id;
  renderEvents();
  const [entry, dl] = await Promise.all([api("GET", "/api/events/" + id), api("GET", "/api/events/" + id + "/deliveries")]);
  const d = $("event-detail");
  d.hidden = false;
  d.replaceChildren();
  d.append(el("h2", "Event " + id));
  const fate = entry.fate;
  d.append(el("p", "Fate: " + fate.state + (fate.bots ? " — bots: " + fate.bots.join(", ") + ", actions: " + fate.actions : "") + (fate.error ? " — " + fate.error : ""), "fate-" + fate.state));
  for (const f of fate.failures || []) d.append(el("p", "Bot " + f.bot + " failed: " + f.error, "error"));
  const link = el("button", "Deliveries of this event →");
  link.id = "to-deliveries";
  link.addEventListener("click", () => { state.scopeEvent = id; location.hash = "deliveries"; });
  d.append(link);
  d.append(el("h3", "Delivered (" + dl.sent.length + ")"));
  for (const s of dl.sent) d.append(el("div", s.key + " → " + s.connector + " at " + when(s.at) + (s.delivered && s.delivered.id ? " (id " + s.delivered.id + ")" : "")));
  d.append(el("h3", "Queued (" + dl.pending.length + ")"));
  for (const p of dl.pending) d.append(el("div", p.key + " → " + p.connector + ", attempts " + p.attempts + ", " + waitingText(p) + (p.last_error ? ", last error: " + p.last_error : "")));
  d.append(el("h3", "Dead (" + dl.dead.length + ")"));
  for (const x of dl.dead) d.append(el("div", x.item.key + " → " + x.item.connector + ": " + x.error, "error"));
  d.append(el("h3", "Event"));
  d.append(pre(entry.event));
}

// ---- deliveries ----------------------------------------------------------------

// Why a queued delivery waits (the outbox records it with each retry).
function waitingText(item) {
  if (new Date(item.next_at) <= new Date()) return "due";
  const until = " until " + when(item.next_at);
  const secs = (ms) => (ms / 1000).toFixed(ms < 10000 ? 1 : 0) + " s";
  const w = item.waiting || {};
  switch (w.reason) {
    case "rate_limit":
      return "rate limited by the platform" + (w.platform_wait_ms != null ? " (it asked to wait " + secs(w.platform_wait_ms) + ")" : "") + until;
    case "retry_after":
      return "Retry-After " + secs(w.platform_wait_ms) + until;
    case "backoff":
      return "backoff after attempt " + w.attempt + until;
    default:
      return "waiting" + until;
  }
}

function opSummary(op) {
  const kind = Object.keys(op)[0] || "";
  return typeof op === "object" && op.op ? op.op : kind;
}

async function loadDeliveries() {
  const scope = $("delivery-scope");
  const prefix = state.scopeEvent ? state.scopeEvent + "/" : "";
  scope.hidden = !prefix;
  scope.replaceChildren();
  if (prefix) {
    scope.append(el("span", "Deliveries of event " + state.scopeEvent + " "));
    const back = el("button", "← back to the event");
    back.id = "back-to-event";
    back.addEventListener("click", () => { location.hash = "events"; openEvent(state.scopeEvent).catch((e) => toast(e.message)); });
    const all = el("button", "show all");
    all.addEventListener("click", () => { state.scopeEvent = null; loadDeliveries(); });
    scope.append(back, all);
  }
  const [outbox, dead] = await Promise.all([api("GET", "/api/outbox?limit=1000"), api("GET", "/api/dead-letters")]);
  const pb = $("pending").tBodies[0];
  pb.replaceChildren();
  for (const i of outbox.items.filter((i) => i.key.startsWith(prefix))) {
    pb.append(row([i.key, i.connector, opSummary(i.op), i.attempts, waitingText(i), i.last_error || ""]));
  }
  const db = $("dead").tBodies[0];
  db.replaceChildren();
  const connectors = new Set();
  for (const d of dead.dead_letters.filter((d) => d.item.key.startsWith(prefix))) {
    connectors.add(d.item.connector);
    const btn = el("button", "Replay", "primary replay");
    btn.addEventListener("click", async () => {
      btn.disabled = true;
      try {
        await api("POST", "/api/dead-letters/replay?key=" + encodeURIComponent(d.item.key));
        toast("Replayed " + d.item.key);
      } catch (e) { toast(e.message); }
      loadDeliveries();
    });
    db.append(row([d.item.key, d.item.connector, when(d.died_at), d.error, btn]));
  }
  const all = $("replay-all");
  all.replaceChildren();
  for (const c of connectors) {
    const b = el("button", "Replay all of " + c);
    b.addEventListener("click", async () => {
      try {
        const r = await api("POST", "/api/dead-letters/replay-all?connector=" + encodeURIComponent(c));
        toast("Replayed " + r.replayed.length + " of " + c);
      } catch (e) { toast(e.message); }
      loadDeliveries();
    });
    all.append(b);
  }
}

// ---- schedules -----------------------------------------------------------------

// What a ledger row says happened, in words, with the misfire policy that decided.
function runStatus(run, job) {
  if (run.status === "fired") return "fired";
  if (run.status === "caught_up") return "caught up late (misfire = " + job.misfire + ")";
  return "missed (misfire = " + job.misfire + ")";
}

function runOutcome(o) {
  if (!o) return "not handled yet";
  switch (o.result) {
    case "ok": return "ok: " + o.bots.join(", ") + " (" + o.actions + " actions)";
    case "bots_failed": return "failed: " + o.failures.map((f) => f.bot + ": " + f.error).join("; ");
    case "unrouted": return "no route took it";
    case "router_failed": return "router failed: " + o.error;
    default: return "no longer in the journal";
  }
}

// Each job: when it fires next (in its zone), alerts for missed and failed runs, and
// its ledger as a table, newest first.
async function loadSchedules() {
  const data = await api("GET", "/api/schedules?count=5");
  const box = $("schedule-list");
  box.replaceChildren();
  if (!data.schedules.length) box.append(el("p", "No schedules in the config."));
  for (const job of data.schedules) {
    const d = el("div", null, "job");
    d.dataset.job = job.name;
    d.append(el("h3", job.name + " — " + job.cron + " (" + job.timezone + ")"));
    d.append(el("p", "topic " + job.topic + " · misfire = " + job.misfire + (job.misfire === "once" ? " within " + job.catch_up_within : "") + " · last fired " + (job.last_fired || "never")));
    if (job.missed.length || job.failed.length) {
      const alert = el("div", null, "alert");
      if (job.missed.length) {
        alert.append(el("strong", job.missed.length + (job.missed.length === 1 ? " missed run" : " missed runs")));
        const ul = el("ul");
        for (const m of job.missed) ul.append(el("li", m.slot + ": " + m.why));
        alert.append(ul);
      }
      if (job.failed.length) {
        alert.append(el("strong", job.failed.length + (job.failed.length === 1 ? " failed run" : " failed runs")));
        const ul = el("ul");
        for (const r of job.failed) ul.append(el("li", r.slot + ": " + runOutcome(r.outcome)));
        alert.append(ul);
      }
      d.append(alert);
    }
    d.append(el("h4", "Next fire times (" + job.timezone + ")"));
    const next = el("ul");
    for (const t of job.next) next.append(el("li", t));
    d.append(next);
    d.append(el("h4", "Ledger"));
    if (!job.runs.length) {
      d.append(el("p", "No runs yet."));
    } else {
      const t = el("table", null, "ledger");
      const head = row(["slot", "what happened", "at", "outcome", "event"]);
      head.className = "head";
      t.append(head);
      for (const r of job.runs) {
        const link = r.event_id ? el("a", r.event_id.slice(0, 8)) : el("span", "");
        if (r.event_id) link.href = "#events/" + r.event_id;
        const tr = row([r.slot, runStatus(r, job) + (r.note ? " — " + r.note : ""), when(r.at), runOutcome(r.outcome), link]);
        tr.className = "run " + r.status;
        t.append(tr);
      }
      d.append(t);
    }
    box.append(d);
  }
}

// ---- connectors ----------------------------------------------------------------

// A connector's last success and last failure (with its reason), the newer first.
function health(okAt, failure, counts) {
  const box = el("div");
  const ok = el("div", "last ok: " + (okAt ? when(okAt) : "never"), "ok");
  const bad = el("div", failure ? "last failure " + when(failure.at) + ": " + failure.reason : "no failure", failure ? "error" : "");
  const failedLast = failure && (!okAt || new Date(failure.at) > new Date(okAt));
  box.append(...(failedLast ? [bad, ok] : [ok, bad]), el("small", counts));
  return box;
}

async function loadConnectors() {
  const status = await api("GET", "/api/status");
  const body = $("connector-list").tBodies[0];
  body.replaceChildren();
  for (const c of status.connectors) {
    const h = c.health || {};
    body.append(row([c.name, c.kind, location.origin + "/hooks/" + c.name,
      health(h.last_send_ok, h.last_send_failure, h.sends_ok + " ok, " + h.sends_failed + " failed"),
      health(h.last_ingest_ok, h.last_ingest_failure, h.events_in + " events, " + h.ingests_failed + " refused"),
      pre(c.state)]));
  }
  const text = await fetch("/metrics").then((r) => (r.ok ? r.text() : "(/metrics needs its token)"));
  $("figures").textContent = text.split("\n").filter((l) => l && !l.startsWith("#")).slice(0, 80).join("\n");
}

// ---- bots ----------------------------------------------------------------------

// Each bot: kind, config (secrets come as ***), routes, and its activity since start.
async function loadBots() {
  const data = await api("GET", "/api/bots");
  const list = $("bot-list");
  list.replaceChildren();
  for (const b of data.bots) {
    const box = el("div", null, "job bot");
    box.dataset.bot = b.name;
    const a = b.activity;
    box.append(el("h3", b.name + " (" + b.kind + ")"));
    box.append(el("p", a.events_handled + " events handled, " + a.failures + " failed"));
    if (a.last_error) box.append(el("p", "last error " + when(a.last_error.at) + ": " + a.last_error.reason, "error"));
    if (b.kind === "reminders") box.append(await openItems(b.name));
    box.append(el("h4", "Config"), pre(b.config));
    box.append(el("h4", "Routes (" + b.routes.length + ")"));
    for (const r of b.routes) box.append(pre(r));
    list.append(box);
  }
}

// A reminders bot's open items, each with Done / Snooze. A press is a card click by the
// signed-in person (the server decides who; the bot's owner rule applies). Each button
// keeps one client id, so a double click or a retry is one press.
async function openItems(bot) {
  const part = el("div", null, "items");
  part.append(el("h4", "Open items"));
  const data = await api("GET", "/api/bots/" + encodeURIComponent(bot) + "/items");
  if (!data.items.length) { part.append(el("p", "Nothing open.", "muted")); return part; }
  const table = el("table", null, "list");
  table.append(row(["id", "title", "owner", "due", "next step", ""]));
  for (const it of data.items) {
    const next = it.next_step ? it.next_step.step + " at " + when(it.next_step.at) : "none";
    const buttons = el("span", null, "actions");
    for (const action of it.actions) {
      const b = el("button", action === "done" ? "Done" : "Snooze 1 day");
      b.dataset.action = action;
      const clientId = "console-" + action + "-" + it.id + "-" + Date.now() + "-" + Math.random().toString(36).slice(2);
      b.addEventListener("click", async () => {
        b.disabled = true;
        const body = { action, client_id: clientId };
        if (state.devName !== undefined) {
          state.devName = state.devName || prompt("Press as (dev mode: say who you are)") || "";
          body.as = state.devName;
        }
        try {
          const r = await api("POST", "/api/bots/" + encodeURIComponent(bot) + "/items/" + encodeURIComponent(it.id) + "/press", body);
          toast(r.toast ? r.toast.text : (r.answered ? "Pressed." : "Pressed; the bot is still working on it."));
          loadBots().catch((e) => toast(e.message));
        } catch (e) { toast(e.message); b.disabled = false; }
      });
      buttons.append(b);
    }
    const tr = row([it.id, it.title, it.owner_name || it.owner, when(it.due), next + (it.snoozed_until ? " (snoozed)" : ""), buttons]);
    tr.dataset.item = it.id;
    table.append(tr);
  }
  part.append(table);
  return part;
}

// ---- charts --------------------------------------------------------------------

// One bar per minute, drawn as inline SVG (no library, works offline).
const CHARTS = [
  { key: "events_in", title: "Events in per minute", value: (m) => m.events_in, unit: "" },
  { key: "deliveries_out", title: "Deliveries out per minute", value: (m) => m.deliveries_out, unit: "" },
  { key: "latency", title: "Delivery latency (average per minute)", value: (m) => (m.latency_count ? m.latency_sum_ms / m.latency_count : 0), unit: " ms" },
  { key: "dead_letters", title: "Dead letters per minute", value: (m) => m.dead_letters, unit: "" },
];

function barChart(chart, minutes) {
  const ns = "http://www.w3.org/2000/svg";
  const w = 600, h = 100, bar = w / minutes.length;
  const values = minutes.map(chart.value);
  const max = Math.max(1, ...values);
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", "0 0 " + w + " " + (h + 14));
  svg.setAttribute("class", "chart");
  svg.dataset.chart = chart.key;
  values.forEach((v, i) => {
    const r = document.createElementNS(ns, "rect");
    const bh = Math.round((v / max) * h);
    r.setAttribute("x", String(i * bar + 1));
    r.setAttribute("width", String(Math.max(1, bar - 2)));
    r.setAttribute("y", String(h - bh));
    r.setAttribute("height", String(bh));
    r.dataset.value = String(v);
    const tip = document.createElementNS(ns, "title");
    tip.textContent = new Date(minutes[i].minute * 60000).toLocaleTimeString() + ": " + Math.round(v) + chart.unit;
    r.append(tip);
    svg.append(r);
  });
  const axis = document.createElementNS(ns, "text");
  axis.setAttribute("x", "0");
  axis.setAttribute("y", String(h + 12));
  axis.textContent = "60 min ago";
  const now = document.createElementNS(ns, "text");
  now.setAttribute("x", String(w));
  now.setAttribute("y", String(h + 12));
  now.setAttribute("text-anchor", "end");
  now.textContent = "now";
  svg.append(axis, now);
  const total = values.reduce((a, b) => a + b, 0);
  const box = el("div", null, "job");
  const summary = chart.key === "latency"
    ? "max " + Math.max(0, ...minutes.map((m) => m.latency_max_ms)) + " ms"
    : total + " in the hour, at most " + max + " a minute";
  box.append(el("h3", chart.title), el("p", summary, "muted"), svg);
  return box;
}

async function loadCharts() {
  const data = await api("GET", "/api/charts");
  $("chart-list").replaceChildren(...CHARTS.map((c) => barChart(c, data.minutes)));
  clearTimeout(loadCharts.timer);
  loadCharts.timer = setTimeout(() => { if (!$("charts").hidden) loadCharts().catch((e) => toast(e.message)); }, 10000);
}

// ---- card studio ---------------------------------------------------------------

async function loadCards() {
  if (!state.templates.length) {
    const data = await api("GET", "/api/cards");
    state.templates = data.templates;
    state.platforms = data.platforms;
    const sel = $("template");
    sel.replaceChildren();
    for (const t of data.templates) { const o = el("option", t.name); o.value = t.name; sel.append(o); }
    // Where a test render can go: the configured connectors.
    const conns = await api("GET", "/api/status").catch(() => null);
    const names = conns && conns.connectors ? conns.connectors.map((c) => c.name) : [];
    $("send-connector").replaceChildren(...names.map((n) => { const o = el("option", n); o.value = n; return o; }));
    pickTemplate();
  }
}

function pickTemplate() {
  const t = state.templates.find((t) => t.name === $("template").value);
  $("card-source").value = (t && t.source) || "";
  $("card-data").value = JSON.stringify((t && t.sample) || {}, null, 2);
  renderCards();
}
$("template").addEventListener("change", pickTemplate);
for (const id of ["card-data", "card-source"]) {
  $(id).addEventListener("input", () => { clearTimeout(renderCards.timer); renderCards.timer = setTimeout(renderCards, 400); });
}

// The template as edited, when it differs from the file's.
function editedSource() {
  const t = state.templates.find((t) => t.name === $("template").value);
  const text = $("card-source").value;
  return t && text === t.source ? undefined : text;
}

// A template error points into the template: put the cursor there.
function showCardError(e) {
  const err = $("card-error");
  err.textContent = e.message;
  if (e.line) {
    err.textContent += " (template line " + e.line + (e.column ? ", column " + e.column : "") + ")";
    const lines = $("card-source").value.split("\n");
    let at = 0;
    for (let i = 0; i < e.line - 1 && i < lines.length; i++) at += lines[i].length + 1;
    at += Math.max(0, (e.column || 1) - 1);
    $("card-source").setSelectionRange(at, at);
  }
}

// The studio's POSTs answer template errors with `line` and `column`.
async function studioPost(path, body) {
  const resp = await fetch(path, { method: "POST", headers: { "content-type": "application/json", "x-csrf-token": state.csrf }, body: JSON.stringify(body) });
  const data = await resp.json().catch(() => null);
  if (!resp.ok) {
    const e = new Error((data && data.error) || resp.status + " " + resp.statusText);
    e.line = data && data.line;
    e.column = data && data.column;
    throw e;
  }
  return data;
}

$("send-test").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  let data;
  try { data = JSON.parse($("card-data").value); } catch (e) { $("card-error").textContent = "data is not JSON: " + e.message; return; }
  const body = { template: $("template").value, data, connector: $("send-connector").value, chat: $("send-chat").value,
    client_id: "studio-" + Date.now() + "-" + Math.random().toString(36).slice(2) };
  const source = editedSource();
  if (source !== undefined) body.source = source;
  $("send-button").disabled = true;
  try {
    const r = await studioPost("/api/cards/send", body);
    toast("Sent as event " + r.event_id + ": see Deliveries");
    state.scopeEvent = r.event_id;
  } catch (e) { showCardError(e); }
  $("send-button").disabled = false;
});

async function renderCards() {
  const err = $("card-error");
  err.textContent = "";
  let data;
  try { data = JSON.parse($("card-data").value); } catch (e) { err.textContent = "data is not JSON: " + e.message; return; }
  const source = editedSource();
  const box = $("renders");
  box.replaceChildren();
  for (const platform of state.platforms) {
    const card = el("div", null, "render");
    card.dataset.platform = platform;
    card.append(el("h3", platform));
    box.append(card);
    try {
      const body = { template: $("template").value, data, platform };
      if (source !== undefined) body.source = source;
      const r = await studioPost("/api/cards/render", body);
      const text = typeof r.output === "string" ? r.output : JSON.stringify(r.output, null, 2);
      // The platform's limit, measured as the renderer measures it (it cuts the card to fit).
      const z = r.size;
      card.append(z
        ? el("div", z.used + " / " + z.limit + " " + z.unit + " (" + Math.round((100 * z.used) / z.limit) + "% of " + platform + "'s limit)", "size" + (z.used > z.limit ? " over" : ""))
        : el("div", new TextEncoder().encode(text).length + " bytes (no platform limit known)", "size"));
      if (platform === "html") {
        const view = document.createElement("div");
        view.innerHTML = r.output; // the card renderer escapes all text (cards/render/html.rs)
        card.append(view);
      } else {
        card.append(el("pre", text));
      }
    } catch (e) {
      showCardError(e);
      card.append(el("div", e.message, "error"));
    }
  }
}

// ---- start ---------------------------------------------------------------------

(async function start() {
  const resp = await fetch("/auth/session");
  const me = await resp.json().catch(() => ({}));
  if (resp.status === 401) { location.href = "/login?next=/console"; return; }
  if (me.mode === "dev") {
    $("banner").hidden = false;
    $("banner").textContent = "Dev mode: " + me.warning;
    state.devName = ""; // asked for on the first button press
  } else {
    state.csrf = me.csrf;
    $("who").textContent = me.user + " (" + me.role + ")";
    $("sign-out").hidden = false;
    $("sign-out").addEventListener("click", async () => {
      await api("POST", "/auth/logout").catch(() => {});
      location.href = "/login";
    });
  }
  showTab();
})();
