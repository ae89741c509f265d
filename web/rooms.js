// Live rooms: join by id (or create, then join), leave, and the room
// frames (`joined`, `left`, `gap`, a refused join). The session joins
// its rooms again after every reconnect (session.js), and the repeated
// backlog is merged by id.

import { api, st, convs } from "/state.js";
import { conv } from "/conversations.js";
import { $ } from "/view.js";

let joining = null; // room id of a join not yet answered
let seq = 0;

export async function joinRoom(room) {
  const c = conv("r-" + room);
  c.title = "room " + room;
  try {
    c.info = await api.room(room);
    c.title = c.info.title;
  } catch (e) {
    $("sidebar-error").textContent = e.code === "unknown_room" ? "no such room" : e.message;
    convs.delete(c.conv);
    return;
  }
  // The backlog arrives as `msg` frames, then `joined`.
  if (!c.msgs) c.msgs = [];
  c.hasMore = false;
  joining = room;
  st.session.join(room);
  st.openConv(c.conv);
}

export function leaveRoom(c) {
  st.session.leave(c.room);
  convs.delete(c.conv);
  st.open = null;
  document.body.dataset.pane = "list";
  st.render();
}

// A frame of a room, or an error answering a join; true when handled.
export function roomFrame(f) {
  switch (f.type) {
    case "joined": {
      const r = conv("r-" + f.room);
      if (joining === f.room) joining = null;
      Object.assign(r, { joined: true, viewers: f.viewers, hasMore: f.backlog > 0 });
      st.render(st.open === r.conv);
      return true;
    }
    case "left": {
      const r = convs.get("r-" + f.room);
      if (r && f.reason === "banned") {
        st.session.rooms.delete(f.room);
        Object.assign(r, { joined: false, left: true });
        $("conv-error").textContent = "you were banned from this room";
      }
      st.render();
      return true;
    }
    case "gap": {
      // Skipped messages (this tab read too slowly): a notice where they
      // were, after the last message held.
      const r = conv("r-" + f.room);
      if (r.msgs) {
        const last = [...r.msgs].reverse().find((m) => m.id);
        r.msgs.push({ kind: "gap", at: last ? last.id : null, missed: f.missed, seq: seq++,
          text: f.missed + " messages skipped here (they are in the room's history)" });
      }
      st.render();
      return true;
    }
    case "error":
      if (!joining || !["unknown_room", "forbidden", "limit_exceeded"].includes(f.code)) return false;
      st.session.rooms.delete(joining);
      convs.delete("r-" + joining);
      if (st.open === "r-" + joining) st.open = null;
      joining = null;
      $("sidebar-error").textContent = f.code === "unknown_room" ? "no such room" : f.message || f.code;
      st.render();
      return true;
  }
  return false;
}
