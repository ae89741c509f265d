// Conversations: what the list (GET /v1/conversations, paged) and live
// frames say of each, people's names, and what a tab keeps across a
// reload (its cursor and 1:1 receipts).

import { cmpId } from "/api.js";
import { api, st, names, convs } from "/state.js";

// The cursor, and the receipts of 1:1 conversations (the `delivered` and
// `receipt` frames before the cursor are not sent again after a reload).
export function persist() {
  if (!st.saved) return;
  st.saved.receipts = {};
  for (const c of convs.values()) {
    if (c.peerRead || c.peerDelivered) st.saved.receipts[c.conv] = [c.peerRead || null, c.peerDelivered || null];
  }
  sessionStorage.setItem("chat.session", JSON.stringify(st.saved));
}

export function conv(id) {
  let c = convs.get(id);
  if (!c) {
    const type = id.startsWith("g-") ? "group" : id.startsWith("r-") ? "room" : "direct";
    c = { conv: id, type, title: id, last: null, ts: 0, msgs: null, hasMore: true, hasMoreAfter: false,
      loading: false, left: false, readUpTo: null, later: [] };
    if (type === "group") c.group = id.slice(2);
    else if (type === "room") c.room = id.slice(2);
    else {
      const [a, b] = id.slice(3).split("-");
      c.peer = a === st.saved.user_id ? b : a;
      c.title = nameOf(c.peer);
      const r = (st.saved.receipts || {})[id];
      if (r) [c.peerRead, c.peerDelivered] = r;
    }
    convs.set(id, c);
  }
  return c;
}

export function nameOf(id) {
  if (names.has(id)) return names.get(id);
  names.set(id, id === "0" ? "operator" : "user " + id);
  if (id !== "0") api.user(id).then((u) => { names.set(id, u.username); st.render(); }).catch(() => {});
  return names.get(id);
}

export function maxId(a, b) {
  return !a ? b : !b ? a : cmpId(a, b) >= 0 ? a : b;
}

// A page of GET /v1/conversations: titles, last messages, counts.
function takeConversations(page) {
  for (const s of page.conversations) {
    const c = conv(s.conv);
    c.title = s.title || s.name || s.username || c.title;
    if (s.type === "direct") names.set(s.user_id, s.username);
    if (s.role) c.role = s.role;
    c.readUpTo = maxId(c.readUpTo, s.read_up_to);
    st.unread.seed(s);
    const m = s.last_message;
    if (m && (!c.last || cmpId(m.id, c.last.id) > 0)) setLast(c, m);
  }
}

export async function loadConversations() {
  const page = await api.conversations(null);
  takeConversations(page);
  // Later pages are loaded on request ("More conversations"); a refresh
  // reads the first page again (protocol.md, "Conversations").
  if (st.convPage === null || !page.next_before) st.convPage = page.next_before;
}

export async function moreConversations() {
  if (!st.convPage) return;
  const page = await api.conversations(st.convPage);
  takeConversations(page);
  st.convPage = page.next_before;
  st.render();
}

let refreshing = null;
export function refreshConversations() {
  if (!refreshing) refreshing = loadConversations().catch(() => {}).finally(() => { refreshing = null; st.render(); });
}

export function setLast(c, m) {
  c.last = { id: m.id, from: m.from, kind: m.kind, raw: m.body, event: m.event, body: m.body, fromName: "", deleted: false };
  c.ts = m.ts || Date.now();
}

export function displayText(m) {
  const e = m.event;
  if (m.kind !== "system" || !e) return m.body;
  const who = (id) => (id === st.saved.user_id ? "you" : nameOf(id));
  switch (e.op) {
    case "created": return who(e.actor) + " created the group";
    case "added": return who(e.actor) + " added " + who(e.user);
    case "removed": return who(e.actor) + " removed " + who(e.user);
    case "left": return who(e.user) + " left";
    case "role": return who(e.actor) + " changed the role of " + who(e.user);
    default: return m.body;
  }
}
