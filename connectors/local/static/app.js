// perch web chat. Plain JS, no build step.
//
// Message bodies arrive as finished, escaped HTML (`html`, rendered on the server);
// everything else (names, room names) is inserted with textContent, never as HTML.
"use strict";

const API = "/chat/api";
const $ = (id) => document.getElementById(id);

const state = {
  me: localStorage.getItem("perch.name") || "",
  room: null,               // current room id
  rooms: new Map(),         // id -> room
  bots: [],                 // bot names
  shown: new Map(),         // message id -> element, for the current room
  lastId: null,             // newest message id shown in the current room
  seen: JSON.parse(localStorage.getItem("perch.seen") || "{}"), // room -> last seen message id
  unread: new Set(),
  suggest: { items: [], sel: 0, start: -1 },
  signedIn: false,          // local/proxy mode: the server knows who we are
  csrf: "",                 // sent on every POST while signed in (X-CSRF-Token)
};

// ---- helpers -------------------------------------------------------------------

function newId() {
  if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
  return Date.now().toString(36) + "-" + Math.random().toString(36).slice(2) + Math.random().toString(36).slice(2);
}

async function api(method, path, body) {
  const opts = { method, headers: {} };
  if (state.csrf && method !== "GET") opts.headers["x-csrf-token"] = state.csrf;
  if (body !== undefined) {
    opts.headers["content-type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const resp = await fetch(API + path, opts);
  let data = null;
  try { data = await resp.json(); } catch (_) { /* not JSON */ }
  if (!resp.ok) throw new Error((data && data.error) || resp.status + " " + resp.statusText);
  return data;
}

function toast(text, kind) {
  const t = $("toast");
  t.textContent = text;
  t.dataset.kind = kind || "info";
  t.hidden = false;
  clearTimeout(toast.timer);
  // Long enough to read: about 20 characters a second, at least 4 s.
  toast.timer = setTimeout(() => { t.hidden = true; }, Math.max(4000, text.length * 50));
}

const COLORS = ["#4f46e5", "#0f766e", "#b45309", "#be123c", "#7c3aed", "#0369a1", "#15803d", "#a21caf"];
function colorFor(name) {
  let h = 0;
  for (const c of name) h = (h * 31 + c.codePointAt(0)) >>> 0;
  return COLORS[h % COLORS.length];
}

function avatar(name, small) {
  const a = document.createElement("span");
  a.className = "avatar" + (small ? " small" : "");
  a.textContent = (Array.from(name)[0] || "?").toUpperCase();
  a.style.background = colorFor(name);
  return a;
}

function timeOf(iso) {
  const d = new Date(iso);
  return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

function dayOf(iso) {
  const d = new Date(iso);
  const today = new Date();
  const yesterday = new Date(Date.now() - 86400000);
  if (d.toDateString() === today.toDateString()) return "Today";
  if (d.toDateString() === yesterday.toDateString()) return "Yesterday";
  return d.toLocaleDateString([], { weekday: "short", year: "numeric", month: "short", day: "numeric" });
}

function saveSeen() {
  localStorage.setItem("perch.seen", JSON.stringify(state.seen));
}

// ---- name ----------------------------------------------------------------------

function showMe() {
  $("me-name").textContent = state.me;
  const old = $("me-avatar");
  const fresh = avatar(state.me || "?", true);
  fresh.id = "me-avatar";
  old.replaceWith(fresh);
}

function askName() {
  $("name-dialog").hidden = false;
  $("name-input").value = state.me;
  $("name-error").textContent = "";
  $("name-input").focus();
}

$("name-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const name = $("name-input").value.trim();
  let why = "";
  if (!name) why = "Pick a name first.";
  else if (Array.from(name).length > 40) why = "At most 40 characters.";
  else if (/[\u0000-\u001f\u007f]/.test(name)) why = "No control characters, please.";
  else if (state.bots.some((b) => b.toLowerCase() === name.toLowerCase())) why = "That name belongs to a bot.";
  if (why) { $("name-error").textContent = why; return; }
  state.me = name;
  localStorage.setItem("perch.name", name);
  $("name-dialog").hidden = true;
  showMe();
  loadRooms();
  $("input").focus();
});
$("change-name").addEventListener("click", askName);
// Phones: the sidebar is a drawer (style.css); the shade behind it closes it.
$("nav-toggle").addEventListener("click", () => $("app").classList.toggle("nav-open"));
$("nav-shade").addEventListener("click", () => $("app").classList.remove("nav-open"));

// ---- rooms ---------------------------------------------------------------------

async function loadRooms() {
  try {
    const data = await api("GET", "/rooms?me=" + encodeURIComponent(state.me));
    state.rooms = new Map(data.rooms.map((r) => [r.id, r]));
    for (const r of data.rooms) {
      if (r.last_message_id && r.id !== state.room && (!state.seen[r.id] || state.seen[r.id] < r.last_message_id)) {
        state.unread.add(r.id);
      }
    }
    renderRooms();
  } catch (e) {
    toast("Could not load rooms: " + e.message);
  }
}

function renderRooms() {
  const ul = $("rooms");
  ul.textContent = "";
  for (const r of state.rooms.values()) {
    const li = document.createElement("li");
    if (r.id === state.room) li.classList.add("active");
    if (state.unread.has(r.id)) li.classList.add("unread");
    const hash = document.createElement("span");
    hash.className = "hash";
    hash.textContent = r.direct ? "@" : "#";
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = r.name;
    const dot = document.createElement("span");
    dot.className = "dot";
    li.append(hash, name, dot);
    li.title = r.name;
    li.addEventListener("click", () => openRoom(r.id));
    ul.append(li);
  }
}

function upsertRoom(room) {
  if (room.direct && !(room.members || []).includes(state.me)) return;
  state.rooms.set(room.id, room);
  const sorted = [...state.rooms.values()].sort((a, b) => {
    if (a.id === "general") return -1;
    if (b.id === "general") return 1;
    return a.name.toLowerCase().localeCompare(b.name.toLowerCase());
  });
  state.rooms = new Map(sorted.map((r) => [r.id, r]));
  renderRooms();
}

$("new-room-btn").addEventListener("click", () => {
  const f = $("new-room");
  f.hidden = !f.hidden;
  if (!f.hidden) $("new-room-name").focus();
});

$("new-room").addEventListener("submit", async (e) => {
  e.preventDefault();
  const name = $("new-room-name").value.trim();
  if (!name) return;
  try {
    const room = await api("POST", "/rooms", { name, author: state.me || undefined });
    $("new-room-name").value = "";
    $("new-room").hidden = true;
    upsertRoom(room);
    openRoom(room.id);
  } catch (err) {
    toast("Could not create the room: " + err.message);
  }
});
$("new-room-name").addEventListener("keydown", (e) => {
  if (e.key === "Escape") { $("new-room").hidden = true; }
});

async function openRoom(id) {
  $("app").classList.remove("nav-open"); // on a phone, picking a room closes the drawer
  state.room = id;
  location.hash = encodeURIComponent(id);
  state.unread.delete(id);
  const room = state.rooms.get(id);
  $("room-title").textContent = room ? (room.direct ? "@ " : "# ") + room.name : "# " + id;
  const members = room && room.members && room.members.length ? room.members.join(", ") : "";
  $("room-sub").textContent = members ? "Members: " + members : "Everyone can read this room. Mention a bot with @ to talk to it.";
  renderRooms();
  const box = $("messages");
  box.textContent = "";
  state.shown = new Map();
  state.lastId = null;
  try {
    const data = await api("GET", "/rooms/" + encodeURIComponent(id) + "/messages");
    if (state.room !== id) return;
    for (const m of data.messages) addMessage(m, false);
    if (!data.messages.length) showEmpty();
    scrollDown(true);
    markSeen();
  } catch (e) {
    toast("Could not load messages: " + e.message);
  }
  $("input").focus();
}

// After a reconnect: fetch what arrived while the stream was down.
async function catchUp() {
  if (!state.room) return;
  const id = state.room;
  const q = state.lastId ? "?after=" + encodeURIComponent(state.lastId) : "";
  try {
    const data = await api("GET", "/rooms/" + encodeURIComponent(id) + "/messages" + q);
    if (state.room !== id) return;
    for (const m of data.messages) addMessage(m, true);
    markSeen();
  } catch (_) { /* the next reconnect tries again */ }
  loadRooms();
}

function markSeen() {
  if (state.room && state.lastId) {
    state.seen[state.room] = state.lastId;
    saveSeen();
  }
}

function showEmpty() {
  const p = document.createElement("div");
  p.className = "empty";
  p.id = "empty";
  p.textContent = "No messages yet. Say hello, or try @help.";
  $("messages").append(p);
}

// ---- messages ------------------------------------------------------------------

function nearBottom() {
  const box = $("messages");
  return box.scrollHeight - box.scrollTop - box.clientHeight < 120;
}

function scrollDown(force) {
  const box = $("messages");
  if (force || nearBottom()) box.scrollTop = box.scrollHeight;
}

function fillBody(el, m) {
  const body = el.querySelector(".body");
  body.innerHTML = m.html; // server-rendered and escaped
  for (const b of body.querySelectorAll("[data-action]")) {
    b.addEventListener("click", (e) => { e.preventDefault(); clickAction(b, m); });
  }
  const meta = el.querySelector(".meta");
  let edited = meta.querySelector(".edited");
  if (m.edited_at && !edited) {
    edited = document.createElement("span");
    edited.className = "edited";
    edited.textContent = "(edited)";
    meta.append(edited);
  }
}

function addMessage(m, live) {
  if (m.room !== state.room || state.shown.has(m.id)) return;
  const empty = $("empty");
  if (empty) empty.remove();
  const box = $("messages");
  const stick = nearBottom();

  // A day divider, and compact follow-ups by the same author within 5 minutes.
  const prev = state.lastId ? state.shown.get(state.lastId) : null;
  const day = dayOf(m.at);
  if (!prev || prev.dataset.day !== day) {
    const d = document.createElement("div");
    d.className = "day";
    d.textContent = day;
    box.append(d);
  }
  const el = document.createElement("div");
  el.className = "msg";
  el.dataset.day = day;
  el.dataset.author = m.author;
  el.dataset.at = m.at;
  if (prev && prev.dataset.day === day && prev.dataset.author === m.author &&
      new Date(m.at) - new Date(prev.dataset.at) < 5 * 60000) {
    el.classList.add("cont");
  }
  if (!m.from_bot && m.author === state.me) el.classList.add("mine");

  const av = avatar(m.author);
  const content = document.createElement("div");
  const meta = document.createElement("div");
  meta.className = "meta";
  const author = document.createElement("span");
  author.className = "author";
  author.textContent = m.author;
  meta.append(author);
  if (m.from_bot) {
    const badge = document.createElement("span");
    badge.className = "badge";
    badge.textContent = "bot";
    meta.append(badge);
  }
  const time = document.createElement("span");
  time.className = "time";
  time.textContent = timeOf(m.at);
  time.title = new Date(m.at).toLocaleString();
  meta.append(time);
  const body = document.createElement("div");
  body.className = "body";
  content.append(meta, body);
  el.append(av, content);
  fillBody(el, m);

  // Messages arrive in id order except when a live one overtakes a history fetch;
  // ids are UUID v7, which sort by time, so compare and place.
  box.append(el);
  state.shown.set(m.id, el);
  if (!state.lastId || m.id > state.lastId) state.lastId = m.id;
  if (live) scrollDown(stick); else scrollDown(false);
}

function updateMessage(m) {
  const el = state.shown.get(m.id);
  if (el) fillBody(el, m);
}

async function clickAction(button, m) {
  if (button.disabled || button.getAttribute("aria-disabled") === "true") return;
  let action;
  try { action = JSON.parse(button.getAttribute("data-action")); } catch (_) { toast("This button is broken."); return; }
  if (!state.me) { askName(); return; }
  button.disabled = true;
  button.setAttribute("aria-disabled", "true");
  try {
    const answer = await api("POST", "/rooms/" + encodeURIComponent(m.room) + "/actions",
      { message_id: m.id, action, author: state.me, client_id: newId() });
    if (answer && answer.toast) toast(answer.toast.text, answer.toast.kind);
    // A replaced card arrives as an update with fresh buttons; otherwise (a toast only,
    // or no answer in time) the button is usable again.
    if (!(answer && answer.card_updated)) {
      button.disabled = false;
      button.removeAttribute("aria-disabled");
    }
  } catch (e) {
    button.disabled = false;
    button.removeAttribute("aria-disabled");
    toast("Could not send the click: " + e.message);
  }
}

// ---- composer ------------------------------------------------------------------

const input = $("input");

function autosize() {
  // scrollHeight leaves out the border; add it back so one line shows no scrollbar.
  input.style.height = "auto";
  const border = input.offsetHeight - input.clientHeight;
  const want = input.scrollHeight + border;
  input.style.height = Math.min(want, 200) + "px";
  input.style.overflowY = want > 200 ? "auto" : "hidden";
}

async function send() {
  const text = input.value;
  if (!text.trim()) return;
  if (!state.me) { askName(); return; }
  if (Array.from(text).length > 4000) { toast("Messages are at most 4000 characters."); return; }
  const room = state.room;
  const client_id = newId();
  $("send").disabled = true;
  try {
    let m;
    try {
      m = await api("POST", "/rooms/" + encodeURIComponent(room) + "/messages", { author: state.me, text, client_id });
    } catch (e) {
      // One retry with the same client_id: the server keeps a single copy.
      if (e instanceof TypeError) {
        m = await api("POST", "/rooms/" + encodeURIComponent(room) + "/messages", { author: state.me, text, client_id });
      } else {
        throw e;
      }
    }
    input.value = "";
    autosize();
    addMessage(m, true);
    scrollDown(true);
    markSeen();
    // Said to me only: e.g. `@nobody …` reaches no bot and no person.
    if (m.notice) toast(m.notice, "warning");
  } catch (e) {
    toast("Not sent: " + e.message);
  } finally {
    $("send").disabled = false;
    input.focus();
  }
}

$("composer").addEventListener("submit", (e) => { e.preventDefault(); send(); });

input.addEventListener("keydown", (e) => {
  const sg = state.suggest;
  if (!$("suggest").hidden && sg.items.length) {
    if (e.key === "ArrowDown") { e.preventDefault(); sg.sel = (sg.sel + 1) % sg.items.length; renderSuggest(); return; }
    if (e.key === "ArrowUp") { e.preventDefault(); sg.sel = (sg.sel + sg.items.length - 1) % sg.items.length; renderSuggest(); return; }
    if (e.key === "Enter" || e.key === "Tab") { e.preventDefault(); pick(sg.items[sg.sel]); return; }
    if (e.key === "Escape") { e.preventDefault(); hideSuggest(); return; }
  }
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    send();
  }
});

input.addEventListener("input", () => { autosize(); suggest(); });
input.addEventListener("click", suggest);
input.addEventListener("blur", () => setTimeout(hideSuggest, 150));

// @mention autocomplete: the word before the caret starts with @.
function suggest() {
  const caret = input.selectionStart;
  const before = input.value.slice(0, caret);
  const m = /(^|\s)@([\w.-]*)$/u.exec(before);
  if (!m) { hideSuggest(); return; }
  const prefix = m[2].toLowerCase();
  const items = state.bots.filter((b) => b.toLowerCase().startsWith(prefix));
  if (!items.length) { hideSuggest(); return; }
  state.suggest = { items, sel: 0, start: caret - m[2].length - 1 };
  renderSuggest();
}

function renderSuggest() {
  const ul = $("suggest");
  ul.textContent = "";
  state.suggest.items.forEach((name, i) => {
    const li = document.createElement("li");
    if (i === state.suggest.sel) li.className = "sel";
    const label = document.createElement("span");
    label.textContent = "@" + name;
    const badge = document.createElement("span");
    badge.className = "badge";
    badge.textContent = "bot";
    li.append(avatar(name, true), label, badge);
    li.addEventListener("mousedown", (e) => { e.preventDefault(); pick(name); });
    ul.append(li);
  });
  ul.hidden = false;
}

function hideSuggest() {
  $("suggest").hidden = true;
}

function pick(name) {
  const { start } = state.suggest;
  const caret = input.selectionStart;
  const v = input.value;
  const insert = "@" + name + " ";
  input.value = v.slice(0, start) + insert + v.slice(caret);
  const pos = start + insert.length;
  input.setSelectionRange(pos, pos);
  hideSuggest();
  input.focus();
}

// ---- bots ----------------------------------------------------------------------

async function loadBots() {
  try {
    const data = await api("GET", "/bots");
    state.bots = data.bots.map((b) => b.name);
  } catch (_) {
    state.bots = [];
  }
  const ul = $("bots");
  ul.textContent = "";
  for (const name of state.bots) {
    const li = document.createElement("li");
    const dot = document.createElement("span");
    dot.className = "status";
    const label = document.createElement("span");
    label.textContent = name;
    li.append(dot, label);
    li.title = "Mention @" + name;
    li.addEventListener("click", () => {
      const v = input.value;
      input.value = (v && !v.endsWith(" ") ? v + " " : v) + "@" + name + " ";
      input.focus();
      autosize();
    });
    ul.append(li);
  }
}

// ---- live updates --------------------------------------------------------------

function connect() {
  const es = new EventSource(API + "/stream");
  let wasDown = false;
  es.addEventListener("hello", () => {
    $("live").classList.remove("off");
    $("live").textContent = "● live";
    if (wasDown) catchUp();
    wasDown = false;
  });
  es.addEventListener("message", (e) => {
    const m = JSON.parse(e.data);
    if (m.room === state.room) {
      addMessage(m, true);
      if (document.visibilityState === "visible") markSeen();
    } else if (state.rooms.has(m.room)) {
      state.unread.add(m.room);
      renderRooms();
    } else {
      loadRooms().then(() => { state.unread.add(m.room); renderRooms(); });
    }
  });
  es.addEventListener("update", (e) => updateMessage(JSON.parse(e.data)));
  es.addEventListener("room", (e) => upsertRoom(JSON.parse(e.data)));
  es.addEventListener("resync", () => catchUp());
  es.addEventListener("error", () => {
    wasDown = true;
    $("live").classList.add("off");
    $("live").textContent = "● reconnecting";
  });
}

// ---- start ---------------------------------------------------------------------

// Who am I: dev mode keeps the pick-a-name flow (and says out loud that it is not
// safe); signed in, the server's name is ours and "change" becomes "sign out".
async function whoAmI() {
  const resp = await fetch("/auth/session");
  const data = await resp.json().catch(() => ({}));
  if (resp.status === 401) {
    location.href = "/login?next=" + encodeURIComponent(location.pathname + location.hash);
    return false;
  }
  if (!resp.ok) throw new Error(data.error || resp.statusText);
  if (data.mode === "dev") {
    const banner = document.createElement("div");
    banner.id = "dev-banner";
    banner.className = "dev-banner";
    banner.textContent = "Dev mode: " + data.warning;
    document.body.prepend(banner);
    return true;
  }
  state.signedIn = true;
  state.me = data.user;
  state.csrf = data.csrf;
  const btn = $("change-name");
  btn.textContent = "sign out";
  btn.removeEventListener("click", askName);
  btn.addEventListener("click", async () => {
    await fetch("/auth/logout", { method: "POST", headers: { "x-csrf-token": state.csrf } }).catch(() => {});
    location.href = "/login";
  });
  return true;
}

(async function start() {
  if (!(await whoAmI())) return;
  await loadBots();
  showMe();
  if (!state.me) askName();
  await loadRooms();
  let want = "";
  try { want = decodeURIComponent(location.hash.slice(1)); } catch (_) { /* a mangled link */ }
  openRoom(state.rooms.has(want) ? want : "general");
  connect();
})();
