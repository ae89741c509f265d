// The reference web client (docs/web.md). Each tab is a device: its login
// and cursor live in sessionStorage, so two tabs of one user are two
// devices kept in sync by the server. Unread and mentions counts, read
// positions and receipts are the server's (unread.js, `read`, `receipt`,
// `delivered` frames, GET /v1/conversations and /reads).

import { ApiError, directConv, cmpId } from "/api.js";
import { Session } from "/session.js";
import { Unread } from "/unread.js";
import { api, st, names, presence, convs, groups } from "/state.js";
import { persist, conv, nameOf, maxId, loadConversations, moreConversations, refreshConversations, setLast, displayText } from "/conversations.js";
import { atBottom, maybeRead, refreshReads, loadReads, readers } from "/reads.js";
import { joinRoom, leaveRoom, roomFrame } from "/rooms.js";
import { entry, merge, sortMsgs, applyChange, receipt } from "/messages.js";
import { el, $, convItem, messageItem, memberItems, friendItems } from "/view.js";
import { wireSearch } from "/search.js";

const PAGE = 30;
const TYPING_SEND_MS = 2000;
const TYPING_SHOW_MS = 4000;

let lastTyping = 0;
const typing = new Map(); // conv -> {user, until}
let compose = null; // {mode: "reply"|"edit", msg} while replying or editing
let picking = null; // message id whose reaction picker is open
let confirming = null; // message id whose Delete asks to be confirmed
const seenLists = new Map(); // message id -> "read by …" text asked for
const commands = new Map(); // cid -> what an edit/delete/react was, until answered

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

// --- session frames -------------------------------------------------------------

function onMsg(f) {
  const known = convs.has(f.conv);
  const c = conv(f.conv);
  if (!known && c.type !== "room") refreshConversations();
  st.unread.apply(f);
  if (f.kind === "edit" || f.kind === "delete" || f.kind === "react") {
    applyChange(c, f, st.saved.user_id);
    if (c.hasMoreAfter) c.later.push(f);
    if (c.last && c.last.id === f.target && f.kind !== "react") {
      if (f.kind === "delete") c.last.deleted = true;
      else c.last.raw = f.body;
    }
    if (f.kind === "delete" && compose && compose.msg.id === f.target) setCompose(null);
  } else {
    if (!c.last || cmpId(f.id, c.last.id) >= 0) setLast(c, f);
    // Away from the newest page (after a jump): newer pages are read
    // from history, and live messages wait until that reaches them.
    if (c.msgs && c.hasMoreAfter) c.later.push(f);
    else if (c.msgs) merge(c, f);
    if (f.kind === "system" && f.event && c.type === "group") {
      groups.delete(c.group);
      c.left = !f.event.members.includes(st.saved.user_id);
      if (st.open === c.conv) loadGroup(c);
    }
    if (c.type === "group" && f.from !== st.saved.user_id && st.open === c.conv) refreshReads(c);
  }
  render();
  maybeRead(c);
}

function onFrame(f) {
  if (roomFrame(f)) return;
  const c = f.conv ? convs.get(f.conv) : null;
  switch (f.type) {
    case "msg": return onMsg(f);
    case "read":
      st.unread.apply(f);
      if (c) c.readUpTo = maxId(c.readUpTo, f.up_to);
      return render();
    case "receipt":
    case "delivered": {
      const d = conv(f.conv);
      if (f.type === "receipt") d.peerRead = maxId(d.peerRead, f.up_to);
      else d.peerDelivered = maxId(d.peerDelivered, f.up_to);
      persist();
      return render();
    }
    case "presence":
      presence.set(f.user, f.status);
      return render();
    case "typing":
      typing.set(f.conv, { user: f.user, until: Date.now() + TYPING_SHOW_MS });
      renderTyping();
      setTimeout(renderTyping, TYPING_SHOW_MS + 50);
      return;

  }
}

function onSendResult(cid, ack, err) {
  const what = commands.get(cid);
  if (what) {
    commands.delete(cid);
    if (err) $("conv-error").textContent = what + " refused: " + (err.message || err.code);
    return;
  }
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
  if (state === "online" && st.open) maybeRead(convs.get(st.open));
}

// --- sending and changing ---------------------------------------------------------

let seq = 0;
function newCid() {
  const r = crypto.getRandomValues(new Uint8Array(8));
  return "w" + Date.now().toString(36) + "-" + Array.from(r, (b) => b.toString(16).padStart(2, "0")).join("");
}

function target(c) {
  return c.type === "group" ? { group: c.group } : c.type === "room" ? { room: c.room } : { user: c.peer };
}

async function send(c, text) {
  if (c.hasMoreAfter) await showNewest(c);
  const to = target(c);
  const reply = compose && compose.mode === "reply" ? compose.msg : null;
  const m = { ...entry({ id: null, from: st.saved.user_id, kind: "text", body: text, ts: Date.now() }),
    cid: newCid(), state: "pending", seq: seq++, to };
  if (reply) m.replyTo = { id: reply.id, from: reply.from, preview: reply.text.slice(0, 100) };
  if (!c.msgs) c.msgs = [];
  c.msgs.push(m);
  st.session.send(m.cid, to, text, reply ? reply.id : null);
  setCompose(null);
  render(true);
}

function command(c, what, frame) {
  const cid = newCid();
  commands.set(cid, what);
  $("conv-error").textContent = "";
  st.session.command({ ...frame, cid, conv: c.conv });
}

function retry(c, m) {
  m.state = "pending";
  m.error = null;
  st.session.send(m.cid, m.to || target(c), m.text, m.replyTo ? m.replyTo.id : null);
  render();
}

function setCompose(next) {
  compose = next;
  const bar = $("compose-context");
  bar.hidden = !next;
  if (next) {
    $("compose-what").textContent = (next.mode === "edit" ? "Editing: " : "Replying to " + nameOf(next.msg.from) + ": ") + next.msg.text.slice(0, 80);
    if (next.mode === "edit") $("composer-input").value = next.msg.text;
    $("composer-input").focus();
  }
}

function canDelete(c, m) {
  if (m.from === st.saved.user_id) return true;
  if (c.type === "group") {
    const g = groups.get(c.group);
    const role = g ? g.role : c.role;
    return role === "owner" || role === "admin";
  }
  return c.type === "room" && c.info && (c.info.owner === st.saved.user_id || (c.info.moderators || []).includes(st.saved.user_id));
}

// --- opening a conversation -----------------------------------------------------

async function openConv(id) {
  st.open = id;
  document.body.dataset.pane = "conv";
  const c = conv(id);
  $("members-panel").hidden = true;
  $("members-btn").setAttribute("aria-expanded", "false");
  $("conv-error").textContent = "";
  setCompose(null);
  render(true);
  if (!c.msgs) {
    c.msgs = [];
    await loadOlder(c);
    render(true);
  }
  maybeRead(c);
  if (c.type === "group") {
    loadGroup(c);
    loadReads(c);
  } else if (c.type === "direct") {
    if (c.peer !== st.saved.user_id && st.session) st.session.raw({ type: "presence.subscribe", users: [c.peer] });
    if (c.peer !== st.saved.user_id) loadReads(c);
  }
  $("composer-input").focus();
}

async function loadOlder(c) {
  if (c.loading || !c.hasMore) return;
  c.loading = true;
  try {
    const oldest = c.msgs.find((m) => m.id);
    const page = await api.history(c.conv, oldest ? { before: oldest.id } : null, PAGE);
    for (const m of page.messages) merge(c, m);
    c.hasMore = page.has_more;
  } catch (e) {
    if (e instanceof ApiError && e.status === 403) { c.hasMore = false; c.left = true; }
  } finally {
    c.loading = false;
  }
}

// After a jump: the pages after the newest held, until the live end.
async function loadNewer(c) {
  if (c.loading || !c.hasMoreAfter) return;
  c.loading = true;
  try {
    const newest = [...c.msgs].reverse().find((m) => m.id);
    const page = await api.history(c.conv, { after: newest.id }, PAGE);
    for (const m of page.messages) merge(c, m);
    c.hasMoreAfter = page.has_more;
    if (!c.hasMoreAfter) catchUpLater(c);
  } finally {
    c.loading = false;
  }
}

// Live frames held back while away from the newest page.
function catchUpLater(c) {
  const later = c.later;
  c.later = [];
  for (const f of later) {
    if (f.kind === "edit" || f.kind === "delete" || f.kind === "react") applyChange(c, f, st.saved.user_id);
    else merge(c, f);
  }
}

async function showNewest(c) {
  c.msgs = c.msgs.filter((m) => !m.id);
  Object.assign(c, { hasMore: true, hasMoreAfter: false, later: [] });
  await loadOlder(c);
  render(true);
}

// Shows message `id` of `convId` (a search result, a quote), loading the
// page around it when it is not held.
async function jumpTo(convId, id) {
  const c = conv(convId);
  if (st.open !== convId) {
    st.open = convId;
    document.body.dataset.pane = "conv";
    $("conv-error").textContent = "";
    if (c.type === "group") loadGroup(c);
  }
  if (!c.msgs || !c.msgs.some((m) => m.id === id)) {
    const page = await api.history(convId, { around: id }, PAGE);
    c.msgs = (c.msgs || []).filter((m) => !m.id);
    c.later = [];
    for (const m of page.messages) merge(c, m);
    c.hasMore = page.has_more;
    c.hasMoreAfter = !!page.has_more_after;
  }
  render();
  const node = document.querySelector('#message-list .msg[data-id="' + id + '"]');
  if (node) {
    for (const n of document.querySelectorAll(".msg.jumped")) n.classList.remove("jumped");
    node.classList.add("jumped");
    node.scrollIntoView({ block: "center" });
    node.focus({ preventScroll: true });
  }
  maybeRead(c);
}

async function loadGroup(c) {
  try {
    const g = await api.group(c.group);
    for (const m of g.members) names.set(m.user_id, m.username);
    const me = g.members.find((m) => m.user_id === st.saved.user_id);
    groups.set(c.group, { members: g.members, role: me ? me.role : null });
    c.title = g.name;
    const others = g.members.map((m) => m.user_id).filter((u) => u !== st.saved.user_id && !presence.has(u));
    if (others.length && st.session) st.session.raw({ type: "presence.subscribe", users: others });
  } catch (e) {
    if (e instanceof ApiError && (e.status === 403 || e.status === 404)) c.left = true;
  }
  render();
}

// --- rendering -------------------------------------------------------------------

function render(toBottom) {
  if (!st.saved) return;
  for (const c of convs.values()) {
    // Names may arrive after the conversation did.
    if (c.type === "direct") c.title = nameOf(c.peer);
    if (c.last) {
      c.last.fromName = c.last.kind === "system" || c.last.from === st.saved.user_id ? "" : nameOf(c.last.from);
      c.last.body = c.last.deleted ? "message deleted" : displayText({ kind: c.last.kind, event: c.last.event, body: c.last.raw });
    }
  }
  const list = [...convs.values()].sort((a, b) => (b.type === "room") - (a.type === "room") || b.ts - a.ts || (a.conv < b.conv ? -1 : 1));
  $("conv-list").replaceChildren(...list.map((c) =>
    convItem(c, c.conv === st.open, c.type === "direct" ? presence.get(c.peer) : null,
      c.type === "room" ? 0 : st.unread.of(c.conv), c.type === "group" ? st.unread.mentionsCount(c.conv) : 0, () => openConv(c.conv))));
  $("more-convs").hidden = !st.convPage;
  renderConv(toBottom);
  const total = list.reduce((n, c) => n + (c.type === "room" ? 0 : st.unread.of(c.conv)), 0);
  document.title = (total ? total + " · " : "") + "chat";
}

function messageView(c, m) {
  const mine = m.from === st.saved.user_id;
  const text = m.kind === "system" ? displayText({ ...m, body: m.text }) : m.text;
  const group = c.type === "group";
  const seen = seenLists.get(m.id);
  return messageItem({ ...m, text }, {
    mine, fromName: nameOf(m.from), nameOf, me: st.saved.user_id,
    status: receipt(c, m),
    readBy: group && mine && m.kind === "text" && !m.deleted && m.id && c.reads ? "read by " + readers(c, m).length : null,
    mentionsMe: (m.mentions || []).includes(st.saved.user_id),
    canEdit: mine && m.kind === "text",
    canDelete: canDelete(c, m), picking: picking === m.id, confirming: confirming === m.id,
    seenList: seen,
    retry: () => retry(c, m),
    reply: () => setCompose({ mode: "reply", msg: m }),
    edit: () => setCompose({ mode: "edit", msg: m }),
    del: () => {
      if (confirming !== m.id) { confirming = m.id; render(); focusAct(m.id, "delete"); return; }
      confirming = null;
      command(c, "delete", { type: "delete", id: m.id });
    },
    pick: () => { picking = picking === m.id ? null : m.id; render(); focusAct(m.id, picking ? null : "react"); },
    react: (emoji, op) => { picking = null; command(c, "reaction", { type: "react", id: m.id, emoji, op }); render(); },
    seen: group && mine ? async () => {
      await loadReads(c);
      const who = readers(c, m).map((r) => nameOf(r.user_id));
      seenLists.set(m.id, who.length ? "read by " + who.join(", ") : "not read yet");
      render();
    } : null,
    jump: (id) => jumpTo(c.conv, id),
  });
}

function focusAct(id, act) {
  const sel = '#message-list .msg[data-id="' + id + '"] ' + (act ? '[data-act="' + act + '"]' : ".pick");
  const b = document.querySelector(sel);
  if (b) b.focus();
}

// The button of a message that has focus, as a selector that finds it
// again after the list is rebuilt.
function focusedButton() {
  const a = document.activeElement;
  const m = a && a.tagName === "BUTTON" ? a.closest("#message-list .msg[data-id]") : null;
  if (!m) return null;
  const at = '#message-list .msg[data-id="' + m.dataset.id + '"] ';
  if (a.dataset.act) return at + '[data-act="' + a.dataset.act + '"]';
  if (a.dataset.emoji) return at + "." + a.className + '[data-emoji="' + a.dataset.emoji + '"]';
  return a.classList.contains("quote") ? at + ".quote" : null;
}

function renderConv(toBottom) {
  const c = st.open ? convs.get(st.open) : null;
  const box = $("messages");
  $("composer-input").disabled = $("send-btn").disabled = !c || c.left;
  $("members-btn").hidden = !c || c.type !== "group";
  $("leave-room").hidden = !c || c.type !== "room";
  if (!c) {
    $("conv-title").textContent = "Pick a conversation";
    $("conv-sub").textContent = "";
    $("message-list").replaceChildren();
    return;
  }
  $("conv-title").textContent = c.title + (c.left ? " (not a member)" : "");
  $("conv-sub").textContent = c.type === "room" ? "room " + c.room + (c.viewers ? " · " + c.viewers + " watching" : "") : "";
  const dot = $("conv-presence");
  dot.hidden = c.type !== "direct";
  dot.dataset.status = presence.get(c.peer) || "offline";
  const wasAtBottom = atBottom();
  const before = box.scrollHeight, top = box.scrollTop;
  const focusKey = focusedButton();
  const items = (c.msgs || []).map((m) => messageView(c, m));
  if (c.loading) items.unshift(el("li", { class: "muted", text: "loading…" }));
  else if (c.msgs && !c.hasMore && c.type !== "room") items.unshift(el("li", { class: "muted", "data-start": "1", text: "start of the conversation" }));
  if (c.hasMoreAfter) items.push(el("li", {}, el("button", { type: "button", id: "to-newest", onclick: () => showNewest(c), text: "Newer messages: jump to the newest" })));
  $("message-list").replaceChildren(...items);
  if (focusKey) {
    const b = document.querySelector(focusKey);
    if (b) b.focus({ preventScroll: true });
  }
  if ((toBottom || wasAtBottom) && !c.hasMoreAfter) box.scrollTop = box.scrollHeight;
  else if (top < 5 && box.scrollHeight > before) box.scrollTop = box.scrollHeight - before + top;
  renderMembers(c);
  renderTyping();
}

function renderMembers(c) {
  const g = c.type === "group" ? groups.get(c.group) : null;
  $("member-list").replaceChildren(...(g ? memberItems(g, st.saved.user_id, presence,
    (m) => groupChange(() => api.removeMember(c.group, m.user_id))) : []));
  $("add-member").hidden = !g || !(g.role === "owner" || g.role === "admin");
}

function renderTyping() {
  const t = st.open && typing.get(st.open);
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
      chat: (x) => openConv(directConv(st.saved.user_id, x.user_id)),
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
  const c = st.open && convs.get(st.open);
  if (c && c.type === "group") loadGroup(c);
}

// --- login ---------------------------------------------------------------------

async function start(s) {
  st.saved = s;
  api.token = s.token;
  st.unread = new Unread(s.user_id);
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
  st.session = new Session(() => st.saved.token, st.saved.cursor, {
    onFrame, onSendResult, onState: setConn,
    onCursor: (cur) => { st.saved.cursor = cur; persist(); },
  });
  st.session.start();
}

async function login(signup) {
  const user = $("login-user").value.trim(), pass = $("login-pass").value;
  $("login-error").textContent = "";
  try {
    if (signup) await api.signup(user, pass);
    const l = await api.login(user, pass, deviceId());
    const s = { token: l.token, user_id: l.user_id, username: user.toLowerCase(), device_id: l.device_id, cursor: null, receipts: {} };
    sessionStorage.setItem("chat.session", JSON.stringify(s));
    start(s);
  } catch (e) {
    $("login-error").textContent = e.code === "unauthorized" ? "wrong user name or password" : e.message;
  }
}

async function logout(tellServer) {
  if (st.session) st.session.stop();
  st.session = null;
  if (tellServer) await api.logout().catch(() => {});
  sessionStorage.removeItem("chat.session");
  location.reload();
}

// --- wiring -----------------------------------------------------------------------

async function byName(input, then) {
  $("sidebar-error").textContent = "";
  try {
    const u = await api.userByName($(input).value.trim());
    names.set(u.user_id, u.username);
    $(input).value = "";
    await then(u);
  } catch (err) {
    $("sidebar-error").textContent = err.code === "not_found" ? "no such user" : err.message;
  }
}

function wire() {
  const submit = (id, fn) => $(id).addEventListener("submit", (e) => { e.preventDefault(); fn(); });
  submit("login-form", () => login(false));
  $("signup-btn").addEventListener("click", () => { if ($("login-form").reportValidity()) login(true); });
  $("logout").addEventListener("click", () => logout(true));
  $("back").addEventListener("click", () => { document.body.dataset.pane = "list"; st.open = null; render(); });
  submit("composer", () => {
    const input = $("composer-input");
    const text = input.value;
    const c = st.open && convs.get(st.open);
    if (!c || !text.trim()) return;
    input.value = "";
    if (compose && compose.mode === "edit") {
      if (text !== compose.msg.text) command(c, "edit", { type: "edit", id: compose.msg.id, body: text });
      setCompose(null);
    } else send(c, text);
  });
  $("composer-input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); $("composer").requestSubmit(); }
    if (e.key === "Escape" && compose) { if (compose.mode === "edit") $("composer-input").value = ""; setCompose(null); }
  });
  $("compose-cancel").addEventListener("click", () => {
    if (compose && compose.mode === "edit") $("composer-input").value = "";
    setCompose(null);
  });
  $("composer-input").addEventListener("input", () => {
    const c = st.open && convs.get(st.open);
    if (c && c.type !== "room" && st.session && Date.now() - lastTyping > TYPING_SEND_MS) {
      lastTyping = Date.now();
      st.session.raw({ type: "typing", conv: st.open });
    }
  });
  $("messages").addEventListener("scroll", () => {
    const c = st.open && convs.get(st.open);
    if (!c || !c.msgs) return;
    const box = $("messages");
    if (box.scrollTop < 40 && c.hasMore && !c.loading) loadOlder(c).then(() => render());
    if (c.hasMoreAfter && box.scrollHeight - box.scrollTop - box.clientHeight < 40 && !c.loading) loadNewer(c).then(() => render());
    maybeRead(c);
  });
  submit("new-chat", () => byName("new-chat-name", (u) => openConv(directConv(st.saved.user_id, u.user_id))));
  const toggle = (btn, panel, onShow) => $(btn).addEventListener("click", () => {
    const p = $(panel);
    p.hidden = !p.hidden;
    $(btn).setAttribute("aria-expanded", String(!p.hidden));
    if (!p.hidden && onShow) onShow();
  });
  toggle("show-new-group", "new-group", () => $("group-name").focus());
  toggle("show-friends", "friends-panel", renderFriends);
  toggle("show-rooms", "rooms-panel", () => $("room-id").focus());
  toggle("members-btn", "members-panel");
  submit("new-group", async () => {
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
  submit("add-friend", () => byName("friend-name", (u) => api.befriend(u.user_id)).then(renderFriends));
  submit("add-member", () => {
    const c = convs.get(st.open);
    groupChange(async () => {
      const u = await api.userByName($("member-name").value.trim());
      await api.addMember(c.group, u.user_id);
      $("member-name").value = "";
    });
  });
  $("leave-group").addEventListener("click", () => {
    const c = convs.get(st.open);
    groupChange(() => api.removeMember(c.group, st.saved.user_id));
  });
  submit("join-room", () => {
    const id = $("room-id").value.trim();
    $("sidebar-error").textContent = "";
    if (!/^[1-9][0-9]{0,19}$/.test(id)) { $("sidebar-error").textContent = "a room id is a number"; return; }
    $("room-id").value = "";
    joinRoom(id);
  });
  submit("new-room", async () => {
    $("sidebar-error").textContent = "";
    try {
      const r = await api.createRoom($("room-title").value.trim());
      $("room-title").value = "";
      joinRoom(r.room);
    } catch (err) {
      $("sidebar-error").textContent = err.message;
    }
  });
  $("leave-room").addEventListener("click", () => leaveRoom(convs.get(st.open)));
  $("more-convs").addEventListener("click", () => moreConversations().catch((e) => { $("sidebar-error").textContent = e.message; }));
  wireSearch(api, {
    open: () => st.open && convs.get(st.open),
    title: (id) => (convs.has(id) ? convs.get(id).title : id),
    nameOf,
    jump: jumpTo,
  });
  document.addEventListener("visibilitychange", () => {
    const c = st.open && convs.get(st.open);
    if (!document.hidden && c) { maybeRead(c); if (c.type === "group") loadReads(c); }
  });
}

st.render = render;
st.openConv = openConv;
wire();
const stored = sessionStorage.getItem("chat.session");
if (stored) start(JSON.parse(stored));
else $("login-user").focus();
