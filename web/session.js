// The session over WebSocket (docs/protocol.md, "Sessions"): sync from the
// saved cursor, live frames, a ping every 5 s, automatic reconnect with
// backoff, and sends that survive a reconnect: a send without its ack is
// sent again with the same cid, so the server stores it once (edits,
// deletes and reactions too: each has a cid and is answered like a send).
// Joined live rooms are joined again after every reconnect.

const PING_MS = 5000;
const BACKOFF_MS = [250, 500, 1000, 2000, 4000, 8000];

export class Session {
  // handlers: onFrame(frame), onState(state, detail), onCursor(cursor),
  // onSendResult(cid, ack|null, error|null)
  constructor(tokenFn, cursor, handlers) {
    this.tokenFn = tokenFn;
    this.cursor = cursor;
    this.h = handlers;
    this.ws = null;
    this.outbox = new Map(); // cid -> send frame, until acked or refused
    this.rooms = new Set(); // live rooms to be in (joined again on reconnect)
    this.attempt = 0;
    this.stopped = false;
    this.timer = null;
    this.pinger = null;
  }

  start() {
    this.stopped = false;
    this.connect();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    clearInterval(this.pinger);
    if (this.ws) this.ws.close(1000, "bye");
    this.ws = null;
  }

  connect() {
    clearTimeout(this.timer);
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    const url = scheme + location.host + "/v1/ws?token=" + encodeURIComponent(this.tokenFn());
    this.h.onState("connecting");
    const ws = new WebSocket(url);
    this.ws = ws;
    ws.onopen = () => {
      if (ws !== this.ws) return;
      this.h.onState("syncing");
      ws.send(JSON.stringify(this.cursor ? { type: "sync", cursor: this.cursor } : { type: "sync" }));
      for (const frame of this.outbox.values()) ws.send(JSON.stringify(frame));
      for (const room of this.rooms) ws.send(JSON.stringify({ type: "join", room }));
      clearInterval(this.pinger);
      this.pinger = setInterval(() => this.raw({ type: "ping" }), PING_MS);
    };
    ws.onmessage = (ev) => {
      if (ws !== this.ws) return;
      let f;
      try {
        f = JSON.parse(ev.data);
      } catch (e) {
        return;
      }
      this.frame(f);
    };
    ws.onclose = (ev) => {
      if (ws !== this.ws) return;
      clearInterval(this.pinger);
      this.ws = null;
      if (this.stopped) return;
      if (ev.code === 4001) {
        this.h.onState("logged_out");
        return;
      }
      const wait = BACKOFF_MS[Math.min(this.attempt, BACKOFF_MS.length - 1)];
      this.attempt += 1;
      this.h.onState("offline", wait);
      this.timer = setTimeout(() => this.connect(), wait);
    };
  }

  frame(f) {
    // Inbox frames (msg, read, receipt, delivered) carry the cursor after
    // them; room messages and answers carry none.
    if (typeof f.cursor === "string" && f.type !== "synced" && !f.room) {
      this.cursor = f.cursor;
      this.h.onCursor(f.cursor);
    }
    switch (f.type) {
      case "synced":
        this.attempt = 0;
        this.cursor = f.cursor;
        this.h.onCursor(f.cursor);
        this.h.onState("online");
        break;
      case "ack":
        this.outbox.delete(f.cid);
        this.h.onSendResult(f.cid, f, null);
        return;
      case "error":
        if (f.code === "bad_cursor") {
          // A cursor of another deployment: start again from the beginning.
          this.cursor = null;
          this.raw({ type: "sync" });
          return;
        }
        if (f.cid && this.outbox.has(f.cid)) {
          this.outbox.delete(f.cid);
          this.h.onSendResult(f.cid, null, f);
          return;
        }
        break;
    }
    this.h.onFrame(f);
  }

  raw(frame) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify(frame));
      return true;
    }
    return false;
  }

  // Sends now if connected, else at the next connect; `cid` names it for
  // its ack and for every retry.
  send(cid, to, body, replyTo) {
    const frame = { type: "send", cid, to, body };
    if (replyTo) frame.reply_to = replyTo;
    this.command(frame);
  }

  // An edit, delete or react frame (with its cid): kept until answered.
  command(frame) {
    this.outbox.set(frame.cid, frame);
    this.raw(frame);
  }

  join(room) {
    this.rooms.add(room);
    this.raw({ type: "join", room });
  }

  leave(room) {
    this.rooms.delete(room);
    this.raw({ type: "leave", room });
  }

  connected() {
    return !!this.ws && this.ws.readyState === WebSocket.OPEN;
  }
}
