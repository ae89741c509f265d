// A conversation's messages on this device: entries built from history
// pages and live frames, merged by id (and by cid for this device's own
// sends), and the changes (`edit`, `delete`, `react`) applied to them.
// History pages hold the current state, so a reload shows the same.

import { cmpId } from "/api.js";

// An entry from a history message or a live `msg` of kind text/system.
export function entry(m) {
  return {
    id: m.id, cid: m.cid, from: m.from, kind: m.kind, event: m.event, text: m.body, ts: m.ts, state: "sent",
    editedAt: m.edited_at || null, deleted: !!m.deleted, reactions: m.reactions || [],
    replyTo: m.reply_to || null, mentions: m.mentions || null,
  };
}

// Id order; a room's `gap` notice (no id) stays after the message it
// followed (`at`); this device's unsent messages come last.
export function sortMsgs(c) {
  const key = (m) => m.id || m.at;
  c.msgs.sort((a, b) => {
    const ka = key(a), kb = key(b);
    if (ka && kb) return cmpId(ka, kb) || (a.kind === "gap") - (b.kind === "gap");
    return ka ? -1 : kb ? 1 : a.seq - b.seq;
  });
}

// Adds a message or brings a known one up to date; returns the entry.
export function merge(c, m) {
  let x = m.cid ? c.msgs.find((y) => y.cid === m.cid) : null;
  if (!x) x = c.msgs.find((y) => y.id === m.id);
  if (x) {
    const fresh = entry(m);
    // A page is the current state; a live copy of a message may be older
    // than a change already applied, so it never undoes one.
    Object.assign(x, { id: m.id, ts: m.ts, state: "sent", error: null });
    if (m.reply_to) x.replyTo = fresh.replyTo;
    if (m.mentions) x.mentions = fresh.mentions;
    if (m.deleted) Object.assign(x, { deleted: true, text: "", reactions: [], replyTo: null });
    else if (m.edited_at && (!x.editedAt || m.edited_at >= x.editedAt)) Object.assign(x, { text: m.body, editedAt: m.edited_at });
    if (m.reactions && !x.deleted) x.reactions = m.reactions;
    return x;
  }
  const e = entry(m);
  c.msgs.push(e);
  sortMsgs(c);
  return e;
}

// Applies an edit, delete or react frame to the messages held (a target
// not held is left to history, which shows it changed).
export function applyChange(c, f, me) {
  const list = c.msgs || [];
  const t = list.find((m) => m.id === f.target);
  if (f.kind === "edit") {
    if (t && !t.deleted) Object.assign(t, { text: f.body, editedAt: f.ts });
  } else if (f.kind === "delete") {
    if (t) Object.assign(t, { deleted: true, text: "", reactions: [], replyTo: null, mentions: null });
    for (const m of list) if (m.replyTo && m.replyTo.id === f.target) m.replyTo = { id: m.replyTo.id, from: m.replyTo.from, n: m.replyTo.n, deleted: true };
  } else if (f.kind === "react") {
    if (!t || t.deleted) return;
    t.reactions = f.reactions || [];
    if (f.from === me && f.reaction) {
      if (!t.myReacts) t.myReacts = new Set();
      if (f.reaction.op === "add") t.myReacts.add(f.reaction.emoji);
      else t.myReacts.delete(f.reaction.emoji);
    }
  }
}

// The newest message this device may mark read: the last stored one
// that is not a tombstone.
export function newestReadable(c) {
  for (let i = (c.msgs || []).length - 1; i >= 0; i--) {
    const m = c.msgs[i];
    if (m.id && m.kind !== "gap" && !m.deleted && m.state === "sent") return m;
  }
  return null;
}

// sent → delivered → read for one's own message in a 1:1 (ids compared
// with the peer's highest delivered and read positions).
export function receipt(c, m) {
  if (!m.id || c.type !== "direct" || c.peer === m.from) return "sent";
  if (c.peerRead && cmpId(m.id, c.peerRead) <= 0) return "read";
  if (c.peerDelivered && cmpId(m.id, c.peerDelivered) <= 0) return "delivered";
  return "sent";
}
