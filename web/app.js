// The reference web client (docs/web.md). Each tab is a device: its login,
// cursor and read positions live in sessionStorage, so two tabs of one
// user are two devices kept in sync by the server.

import { Api, ApiError, directConv, cmpId } from "/api.js";
import { Session } from "/session.js";
import { el, $, convItem, messageItem, memberItems, friendItems } from "/view.js";

const PAGE = 30;
const TYPING_SEND_MS = 2000;
const TYPING_SHOW_MS = 4000;

const api = new Api();
let session = null;
let saved = null; // {token, user_id, username, device_id, cursor, read, unread}
const names = new Map(); // user id -> username
const presence = new Map(); // user id -> online|offline
const convs = new Map(); // conv id -> conversation
const groups = new Map(); // group id -> {members, role}
let open = null; // conv id on screen
let lastTyping = 0;
const typing = new Map(); // conv -> {user, until}

// --- per-tab storage --------------------------------------------------------

function deviceId() {
  let d = sessionStorage.getItem("chat.device");
  if (!d) {
    const bytes = crypto.getRandomValues(new Uint8Array(6));
    d = "web-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
    sessionStorage.setItem("chat.device", d);
  }
  return d;
}

function persist() {
  if (!saved) return;
  saved.unread = {};
  for (const c of convs.values()) if (c.unread.size) saved.unread[c.conv] = [...c.unread];
  sessionStorage.setItem("chat.session", JSON.stringify(saved));
}

// --- conversations ------------------------------------------------------------

function conv(id) {
  let c = convs.get(id);
  if (!c) {
    c = { conv: id, type: id.startsWith("g-") ? "group" : "direct", title: id, last: null, ts: 0,
      unread: new Set((saved.unread || {})[id] || []), msgs: null, hasMore: true, loading: false, left: false };
    if (c.type === "group") c.group = id.slice(2);
    else {
      const [a, b] = id.slice(3).split("-");
      c.peer = a === saved.user_id ? b : a;
      c.title = nameOf(c.peer);
    }
    convs.set(id, c);
  }
  return c;
}

function nameOf(id) {
  if (names.has(id)) return names.get(id);
  names.set(id, "user " + id);
  api.user(id).then((u) => { names.set(id, u.username); render(); }).catch(() => {});
  return names.get(id);
}

function readPos(c) {
  return saved.read[c.conv] || "0";
}

function markRead(c) {
  if (c.msgs && c.msgs.length) {
    const last = c.msgs.filter((m) => m.id).pop();
    if (last && cmpId(last.id, readPos(c)) > 0) saved.read[c.conv] = last.id;
  }
  if (c.last && c.last.id && cmpId(c.last.id, readPos(c)) > 0) saved.read[c.conv] = c.last.id;
  c.unread.clear();
  persist();
}

async function loadConversations() {
  const { conversations } = await api.conversations();
  for (const s of conversations) {
    const c = conv(s.conv);
    c.title = s.title || s.name || s.username || c.title;
    if (s.type === "direct") names.set(s.user_id, s.username);
    if (s.role) c.role = s.role;
    const m = s.last_message;
    if (m && (!c.last || cmpId(m.id, c.last.id) > 0)) setLast(c, { ...m, text: m.body });
    // A conversation this tab has never read counts what it held then as read.
    if (!(c.conv in saved.read)) saved.read[c.conv] = m ? m.id : "0";
  }
  persist();
}

let refreshing = null;
function refreshConversations() {
  if (!refreshing) refreshing = loadConversations().catch(() => {}).finally(() => { refreshing = null; render(); });
}

function setLast(c, m) {
  c.last = { id: m.id, from: m.from, kind: m.kind, raw: m.body, event: m.event, body: m.body, fromName: "" };
  c.ts = m.ts || Date.now();
}

function displayText(m) {
  const e = m.event;
  if (m.kind !== "system" || !e) return m.body;
  const who = (id) => (id === saved.user_id ? "you" : nameOf(id));
  switch (e.op) {
    case "created": return who(e.actor) + " created the group";
    case "added": return who(e.actor) + " added " + who(e.user);
    case "removed": return who(e.actor) + " removed " + who(e.user);
    case "left": return who(e.user) + " left";
    case "role": return who(e.actor) + " changed the role of " + who(e.user);
    default: return m.body;
  }
}

// A message from the session or from history, merged by id (and by cid
// for this device's own sends).
function merge(c, m) {
  if (!c.msgs) return null;
  let x = m.cid ? c.msgs.find((y) => y.cid === m.cid) : null;
  if (!x) x = c.msgs.find((y) => y.id === m.id);
  if (x) {
    Object.assign(x, { id: m.id, ts: m.ts, state: "sent", error: null });
    return x;
  }
  const entry = { id: m.id, cid: m.cid, from: m.from, kind: m.kind, event: m.event, text: m.body, ts: m.ts, state: "sent" };
  c.msgs.push(entry);
  sortMsgs(c);
  return entry;
}

function sortMsgs(c) {
  c.msgs.sort((a, b) => (a.id && b.id ? cmpId(a.id, b.id) : a.id ? -1 : b.id ? 1 : a.seq - b.seq));
}

// --- session frames -------------------------------------------------------------

function onMsg(f) {
  const known = convs.has(f.conv);
  const c = conv(f.conv);
  if (!known) refreshConversations();
  if (!c.last || cmpId(f.id, c.last.id) >= 0) setLast(c, f);
  merge(c, f);
  const mine = f.from === saved.user_id && f.kind !== "system";
  if (f.kind === "system" && f.event) {
    groups.delete(c.group);
    c.left = !f.event.members.includes(saved.user_id);
    if (open === c.conv) loadGroup(c);
  }
  if (!mine && cmpId(f.id, readPos(c)) > 0) {
    if (open === c.conv && !document.hidden) saved.read[c.conv] = f.id;
    else c.unread.add(f.id);
  }
  persist();
  render();
}

function onFrame(f) {
  if (f.type === "msg") onMsg(f);
  else if (f.type === "presence") { presence.set(f.user, f.status); render(); }
  else if (f.type === "typing") {
    typing.set(f.conv, { user: f.user, until: Date.now() + TYPING_SHOW_MS });
    renderTyping();
    setTimeout(renderTyping, TYPING_SHOW_MS + 50);
  }
}

function onSendResult(cid, ack, err) {
  for (const c of convs.values()) {
    const m = c.msgs && c.msgs.find((x) => x.cid === cid);
    if (!m) continue;
    if (ack) {
      Object.assign(m, { id: ack.id, ts: ack.ts, state: "sent", error: null });
      if (c.msgs.filter((x) => x.id === ack.id).length > 1) c.msgs.splice(c.msgs.indexOf(m), 1);
      sortMsgs(c);
      if (!c.last || cmpId(ack.id, c.last.id) >= 0) setLast(c, { ...m, body: m.text });
    } else {
      Object.assign(m, { state: "failed", error: err.message || err.code });
    }
  }
  render();
}

function setConn(state, wait) {
  const label = { connecting: "connecting…", syncing: "catching up…", online: "online",
    offline: "offline, reconnecting" + (wait ? " in " + Math.ceil(wait / 1000) + " s" : ""), logged_out: "logged out" }[state];
  $("conn").dataset.state = state;
  $("conn").textContent = label || state;
  if (state === "logged_out") logout(false);
}

// --- sending -------------------------------------------------------------------

let seq = 0;
function newCid() {
  const r = crypto.getRandomValues(new Uint8Array(8));
  return "w" + Date.now().toString(36) + "-" + Array.from(r, (b) => b.toString(16).padStart(2, "0")).join("");
}

function send(c, text) {
  const to = c.type === "group" ? { group: c.group } : { user: c.peer };
  const m = { id: null, cid: newCid(), from: saved.user_id, kind: "text", text, ts: Date.now(), state: "pending", seq: seq++, to };
  if (!c.msgs) c.msgs = [];
  c.msgs.push(m);
  session.send(m.cid, to, text);
  render(true);
}

function retry(c, m) {
  m.state = "pending";
  m.error = null;
  session.send(m.cid, m.to || (c.type === "group" ? { group: c.group } : { user: c.peer }), m.text);
  render();
}

// --- opening a conversation -----------------------------------------------------

async function openConv(id) {
  open = id;
  document.body.dataset.pane = "conv";
  const c = conv(id);
  markRead(c);
  $("members-panel").hidden = true;
  $("members-btn").setAttribute("aria-expanded", "false");
  render(true);
  if (!c.msgs) {
    c.msgs = [];
    await loadOlder(c);
    markRead(c);
    render(true);
  }
  if (c.type === "group") loadGroup(c);
  else if (c.peer !== saved.user_id && session) session.raw({ type: "presence.subscribe", users: [c.peer] });
  $("composer-input").focus();
}

async function loadOlder(c) {
  if (c.loading || !c.hasMore) return;
  c.loading = true;
  try {
    const oldest = c.msgs.find((m) => m.id);
    const page = await api.history(c.conv, oldest ? oldest.id : null, PAGE);
    for (const m of page.messages) merge(c, m);
    c.hasMore = page.has_more;
  } catch (e) {
    if (e instanceof ApiError && e.status === 403) { c.hasMore = false; c.left = true; }
  } finally {
    c.loading = false;
  }
}

async function loadGroup(c) {
  try {
    const g = await api.group(c.group);
    for (const m of g.members) names.set(m.user_id, m.username);
    const me = g.members.find((m) => m.user_id === saved.user_id);
    groups.set(c.group, { members: g.members, role: me ? me.role : null });
    c.title = g.name;
    const others = g.members.map((m) => m.user_id).filter((u) => u !== saved.user_id && !presence.has(u));
    if (others.length && session) session.raw({ type: "presence.subscribe", users: others });
  } catch (e) {
    if (e instanceof ApiError && (e.status === 403 || e.status === 404)) c.left = true;
  }
  render();
}

// --- rendering -------------------------------------------------------------------

function render(toBottom) {
  if (!saved) return;
  for (const c of convs.values()) {
    // Names may arrive after the conversation did.
    if (c.type === "direct") c.title = nameOf(c.peer);
    if (c.last) {
      c.last.fromName = c.last.kind === "system" || c.last.from === saved.user_id ? "" : nameOf(c.last.from);
      c.last.body = displayText({ kind: c.last.kind, event: c.last.event, body: c.last.raw });
    }
  }
  const list = [...convs.values()].sort((a, b) => b.ts - a.ts || (a.conv < b.conv ? -1 : 1));
  $("conv-list").replaceChildren(...list.map((c) =>
    convItem(c, c.conv === open, c.type === "direct" ? presence.get(c.peer) : null, () => openConv(c.conv))));
  renderConv(toBottom);
  document.title = (list.reduce((n, c) => n + c.unread.size, 0) || "") + (list.some((c) => c.unread.size) ? " · " : "") + "chat";
}

function renderConv(toBottom) {
  const c = open ? convs.get(open) : null;
  const box = $("messages");
  $("composer-input").disabled = $("send-btn").disabled = !c || c.left;
  $("members-btn").hidden = !c || c.type !== "group";
  if (!c) {
    $("conv-title").textContent = "Pick a conversation";
    $("message-list").replaceChildren();
    return;
  }
  $("conv-title").textContent = c.title + (c.left ? " (not a member)" : "");
  const dot = $("conv-presence");
  dot.hidden = c.type !== "direct";
  dot.dataset.status = presence.get(c.peer) || "offline";
  const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 30;
  const before = box.scrollHeight, top = box.scrollTop;
  const items = (c.msgs || []).map((m) =>
    messageItem(m.kind === "system" ? { ...m, text: displayText({ ...m, body: m.text }) } : m,
      m.from === saved.user_id, nameOf(m.from), () => retry(c, m)));
  if (c.loading) items.unshift(el("li", { class: "muted", text: "loading…" }));
  else if (c.msgs && !c.hasMore) items.unshift(el("li", { class: "muted", "data-start": "1", text: "start of the conversation" }));
  $("message-list").replaceChildren(...items);
  if (toBottom || atBottom) box.scrollTop = box.scrollHeight;
  else if (top < 5 && box.scrollHeight > before) box.scrollTop = box.scrollHeight - before + top;
  renderMembers(c);
  renderTyping();
}

function renderMembers(c) {
  const g = c.type === "group" ? groups.get(c.group) : null;
  $("member-list").replaceChildren(...(g ? memberItems(g, saved.user_id, presence,
    (m) => groupChange(() => api.removeMember(c.group, m.user_id))) : []));
  $("add-member").hidden = !g || !(g.role === "owner" || g.role === "admin");
}

function renderTyping() {
  const t = open && typing.get(open);
  $("typing").textContent = t && t.until > Date.now() ? nameOf(t.user) + " is typing…" : "";
}

async function renderFriends() {
  try {
    const f = await api.friends();
    for (const x of f.friends) {
      names.set(x.user_id, x.username);
      if (!presence.has(x.user_id)) presence.set(x.user_id, x.status);
    }
    $("friend-list").replaceChildren(...friendItems(f, presence, {
      chat: (x) => openConv(directConv(saved.user_id, x.user_id)),
      accept: (x) => api.befriend(x.user_id).then(renderFriends),
      drop: (x) => api.unfriend(x.user_id).then(renderFriends),
    }));
  } catch (e) {
    $("sidebar-error").textContent = e.message;
  }
}

async function groupChange(call) {
  $("members-error").textContent = "";
  try {
    await call();
  } catch (e) {
    $("members-error").textContent = e.message;
  }
  const c = open && convs.get(open);
  if (c && c.type === "group") loadGroup(c);
}

// --- login ---------------------------------------------------------------------

async function start(s) {
  saved = s;
  api.token = s.token;
  names.set(s.user_id, s.username);
  $("login-view").hidden = true;
  $("chat-view").hidden = false;
  $("logout").hidden = false;
  $("me").textContent = s.username + " · " + s.device_id;
  try {
    await loadConversations();
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) return logout(false);
  }
  render();
  session = new Session(() => saved.token, saved.cursor, {
    onFrame, onSendResult, onState: setConn,
    onCursor: (cur) => { saved.cursor = cur; persist(); },
  });
  session.start();
}

async function login(signup) {
  const user = $("login-user").value.trim(), pass = $("login-pass").value;
  $("login-error").textContent = "";
  try {
    if (signup) await api.signup(user, pass);
    const l = await api.login(user, pass, deviceId());
    const s = { token: l.token, user_id: l.user_id, username: user.toLowerCase(), device_id: l.device_id, cursor: null, read: {}, unread: {} };
    sessionStorage.setItem("chat.session", JSON.stringify(s));
    start(s);
  } catch (e) {
    $("login-error").textContent = e.code === "unauthorized" ? "wrong user name or password" : e.message;
  }
}

async function logout(tellServer) {
  if (session) session.stop();
  session = null;
  if (tellServer) await api.logout().catch(() => {});
  sessionStorage.removeItem("chat.session");
  location.reload();
}

// --- wiring -----------------------------------------------------------------------

function wire() {
  $("login-form").addEventListener("submit", (e) => { e.preventDefault(); login(false); });
  $("signup-btn").addEventListener("click", () => { if ($("login-form").reportValidity()) login(true); });
  $("logout").addEventListener("click", () => logout(true));
  $("back").addEventListener("click", () => { document.body.dataset.pane = "list"; open = null; render(); });
  $("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    const input = $("composer-input");
    const text = input.value;
    const c = open && convs.get(open);
    if (!c || !text.trim()) return;
    input.value = "";
    send(c, text);
  });
  $("composer-input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); $("composer").requestSubmit(); }
  });
  $("composer-input").addEventListener("input", () => {
    if (open && session && Date.now() - lastTyping > TYPING_SEND_MS) {
      lastTyping = Date.now();
      session.raw({ type: "typing", conv: open });
    }
  });
  $("messages").addEventListener("scroll", () => {
    const c = open && convs.get(open);
    if (c && c.msgs && $("messages").scrollTop < 40 && c.hasMore && !c.loading) loadOlder(c).then(() => render());
  });
  $("new-chat").addEventListener("submit", async (e) => {
    e.preventDefault();
    $("sidebar-error").textContent = "";
    try {
      const u = await api.userByName($("new-chat-name").value.trim());
      names.set(u.user_id, u.username);
      $("new-chat-name").value = "";
      openConv(directConv(saved.user_id, u.user_id));
    } catch (err) {
      $("sidebar-error").textContent = err.code === "not_found" ? "no such user" : err.message;
    }
  });
  const toggle = (btn, panel, onShow) => $(btn).addEventListener("click", () => {
    const p = $(panel);
    p.hidden = !p.hidden;
    $(btn).setAttribute("aria-expanded", String(!p.hidden));
    if (!p.hidden && onShow) onShow();
  });
  toggle("show-new-group", "new-group", () => $("group-name").focus());
  toggle("show-friends", "friends-panel", renderFriends);
  toggle("members-btn", "members-panel");
  $("new-group").addEventListener("submit", async (e) => {
    e.preventDefault();
    $("sidebar-error").textContent = "";
    try {
      const wanted = $("group-members").value.split(",").map((s) => s.trim()).filter(Boolean);
      const ids = [];
      for (const n of wanted) ids.push((await api.userByName(n)).user_id);
      const g = await api.createGroup($("group-name").value.trim(), ids);
      $("group-name").value = $("group-members").value = "";
      $("new-group").hidden = true;
      conv(g.conv).title = g.name;
      openConv(g.conv);
    } catch (err) {
      $("sidebar-error").textContent = err.code === "not_found" ? "no such user" : err.message;
    }
  });
  $("add-friend").addEventListener("submit", async (e) => {
    e.preventDefault();
    $("sidebar-error").textContent = "";
    try {
      const u = await api.userByName($("friend-name").value.trim());
      await api.befriend(u.user_id);
      $("friend-name").value = "";
    } catch (err) {
      $("sidebar-error").textContent = err.code === "not_found" ? "no such user" : err.message;
    }
    renderFriends();
  });
  $("add-member").addEventListener("submit", (e) => {
    e.preventDefault();
    const c = convs.get(open);
    groupChange(async () => {
      const u = await api.userByName($("member-name").value.trim());
      await api.addMember(c.group, u.user_id);
      $("member-name").value = "";
    });
  });
  $("leave-group").addEventListener("click", () => {
    const c = convs.get(open);
    groupChange(() => api.removeMember(c.group, saved.user_id));
  });
  document.addEventListener("visibilitychange", () => {
    const c = open && convs.get(open);
    if (!document.hidden && c) { markRead(c); render(); }
  });
}

wire();
const stored = sessionStorage.getItem("chat.session");
if (stored) start(JSON.parse(stored));
else $("login-user").focus();
