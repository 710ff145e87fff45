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
  const load = { events: loadEvents, deliveries: loadDeliveries, schedules: loadSchedules, connectors: loadConnectors, cards: loadCards }[tab];
  if (load) load().catch((e) => toast(e.message));
}
window.addEventListener("hashchange", showTab);

// ---- events --------------------------------------------------------------------

function matches(entry, f) {
  const ev = entry.event;
  const has = (v, want) => !want || (v || "").toLowerCase().includes(want.toLowerCase());
  return has(ev.connector, f.connector) && has(ev.kind, f.kind) && has(ev.topic, f.topic) &&
    has(ev.chat && ev.chat.id, f.chat) && (!f.fate || entry.fate.state === f.fate);
}

async function loadEvents() {
  const data = await api("GET", "/api/events?limit=200");
  state.events = data.events;
  renderEvents();
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
$("event-filters").addEventListener("input", renderEvents);

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
  for (const p of dl.pending) d.append(el("div", p.key + " → " + p.connector + ", attempts " + p.attempts + ", next " + when(p.next_at) + (p.last_error ? ", last error: " + p.last_error : "")));
  d.append(el("h3", "Dead (" + dl.dead.length + ")"));
  for (const x of dl.dead) d.append(el("div", x.item.key + " → " + x.item.connector + ": " + x.error, "error"));
  d.append(el("h3", "Event"));
  d.append(pre(entry.event));
}

// Live: new events appear as they arrive (polled every 2 s while the tab is open).
setInterval(() => {
  const live = $("event-filters").elements.live.checked;
  if (live && !$("events").hidden) loadEvents().catch(() => {});
}, 2000);

// ---- deliveries ----------------------------------------------------------------

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
    const waiting = new Date(i.next_at) > new Date() ? "backoff until " + when(i.next_at) : "due";
    pb.append(row([i.key, i.connector, opSummary(i.op), i.attempts, waiting, i.last_error || ""]));
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

async function loadSchedules() {
  const data = await api("GET", "/api/schedules?count=5");
  const box = $("schedule-list");
  box.replaceChildren();
  if (!data.schedules.length) box.append(el("p", "No schedules in the config."));
  for (const job of data.schedules) {
    const d = el("div", null, "job");
    d.append(el("h3", job.name + " — " + (job.cron || "") + " (" + (job.timezone || "") + ")"));
    d.append(el("h4", "Next fire times"));
    for (const t of job.next || job.next_fire_times || []) d.append(el("div", t));
    d.append(el("h4", "Ledger"));
    d.append(pre(Object.fromEntries(Object.entries(job).filter(([k]) => !["name", "cron", "timezone", "next", "next_fire_times"].includes(k)))));
    box.append(d);
  }
}

// ---- connectors ----------------------------------------------------------------

async function loadConnectors() {
  const status = await api("GET", "/api/status");
  const body = $("connector-list").tBodies[0];
  body.replaceChildren();
  for (const c of status.connectors) {
    body.append(row([c.name, c.kind, location.origin + "/hooks/" + c.name, pre(c.state)]));
  }
  const text = await fetch("/metrics").then((r) => (r.ok ? r.text() : "(/metrics needs its token)"));
  $("figures").textContent = text.split("\n").filter((l) => l && !l.startsWith("#")).slice(0, 80).join("\n");
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
    pickTemplate();
  }
}

function pickTemplate() {
  const t = state.templates.find((t) => t.name === $("template").value);
  $("card-data").value = JSON.stringify((t && t.sample) || {}, null, 2);
  renderCards();
}
$("template").addEventListener("change", pickTemplate);
$("card-data").addEventListener("input", () => { clearTimeout(renderCards.timer); renderCards.timer = setTimeout(renderCards, 400); });

async function renderCards() {
  const err = $("card-error");
  err.textContent = "";
  let data;
  try { data = JSON.parse($("card-data").value); } catch (e) { err.textContent = "data is not JSON: " + e.message; return; }
  const box = $("renders");
  box.replaceChildren();
  for (const platform of state.platforms) {
    const card = el("div", null, "render");
    card.dataset.platform = platform;
    card.append(el("h3", platform));
    box.append(card);
    try {
      const r = await api("POST", "/api/cards/render", { template: $("template").value, data, platform });
      const text = typeof r.output === "string" ? r.output : JSON.stringify(r.output, null, 2);
      card.append(el("div", new TextEncoder().encode(text).length + " bytes"));
      if (platform === "html") {
        const view = document.createElement("div");
        view.innerHTML = r.output; // the card renderer escapes all text (cards/render/html.rs)
        card.append(view);
      } else {
        card.append(el("pre", text));
      }
    } catch (e) {
      err.textContent = e.message;
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
