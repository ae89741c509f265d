// Read state: the `read` frame when the newest message is in view, and
// group members' read positions on request (GET …/reads; groups have no
// live receipts).

import { cmpId } from "/api.js";
import { api, st, convs } from "/state.js";
import { newestReadable } from "/messages.js";
import { maxId, persist } from "/conversations.js";
import { $ } from "/view.js";

export function atBottom() {
  const box = $("messages");
  return box.scrollHeight - box.scrollTop - box.clientHeight < 30;
}

// Sends `read` for the newest message once the conversation is on
// screen, the tab visible and the newest message in view.
export function maybeRead(c) {
  if (!c || st.open !== c.conv || c.type === "room" || document.hidden || !c.msgs || c.hasMoreAfter || !atBottom()) return;
  const m = newestReadable(c);
  if (!m || (c.readUpTo && cmpId(m.id, c.readUpTo) <= 0)) {
    if (m || !c.hasMore) st.unread.readAll(c.conv);
    return;
  }
  if (!st.session || !st.session.raw({ type: "read", conv: c.conv, up_to: m.id })) return;
  c.readUpTo = m.id;
  st.unread.readAll(c.conv);
  st.render();
}

// Groups: every member's read position, on request (no live receipts):
// on opening, when a member's message arrives (their send moved their
// position), when the tab is shown again, on "Seen by", and every
// READS_POLL_MS while the group is open in a visible tab.
const READS_POLL_MS = 10000;
setInterval(() => {
  const c = st.open && convs.get(st.open);
  if (c && c.type === "group" && !document.hidden && !c.left) loadReads(c);
}, READS_POLL_MS);
const readsTimers = new Map();
export function refreshReads(c) {
  clearTimeout(readsTimers.get(c.conv));
  readsTimers.set(c.conv, setTimeout(() => loadReads(c), 500));
}

export async function loadReads(c) {
  try {
    const r = await api.reads(c.conv);
    c.reads = r.reads;
    if (c.type === "direct") {
      const peer = r.reads.find((x) => x.user_id === c.peer);
      if (peer && peer.up_to) c.peerRead = maxId(c.peerRead, peer.up_to);
      persist();
    }
    st.render();
  } catch (e) {
    // Not a participant any more: nothing to show.
  }
}

export function readers(c, m) {
  return (c.reads || []).filter((r) => r.user_id !== st.saved.user_id && r.user_id !== m.from && r.up_to && cmpId(r.up_to, m.id) >= 0);
}
