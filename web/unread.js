// The server's unread and mentions counts, kept exact from the session's
// frames (docs/protocol.md, "Unread counts on a device"; the same as the
// Rust client's chat_client::Unread). Per conversation two ordinals, both
// only ever raised: `top`, the highest `n` of any msg, and `read`, the
// highest `n` of a read frame or of one's own text or system message.
// The badge is top - read. Seeded from GET /v1/conversations.

export class Unread {
  constructor(me) {
    this.me = me;
    this.convs = new Map(); // conv -> {top, read}
    this.mentions = new Map(); // conv -> {seeded, seedTop, ns: Set of n}
  }

  // One conversation of the list (`last_n`, `unread`, `mentions`).
  seed(c) {
    if (typeof c.last_n !== "number" || typeof c.unread !== "number") return;
    this.raise(c.conv, c.last_n, Math.max(0, c.last_n - c.unread));
    if (typeof c.mentions === "number") {
      const e = this.mentionsOf_(c.conv);
      for (const n of e.ns) if (n <= c.last_n) e.ns.delete(n);
      e.seeded = c.mentions;
      e.seedTop = c.last_n;
    }
  }

  // A server frame; true when a count may have changed.
  apply(f) {
    if (typeof f.conv !== "string" || typeof f.n !== "number" || f.room) return false;
    if (f.type === "msg") {
      const own = f.from === this.me && (f.kind === "text" || f.kind === "system");
      this.raise(f.conv, f.n, own ? f.n : 0);
      if (Array.isArray(f.mentions) && f.mentions.includes(this.me)) {
        const e = this.mentionsOf_(f.conv);
        if (f.n > e.seedTop) e.ns.add(f.n);
      }
      return true;
    }
    if (f.type === "read") {
      this.raise(f.conv, 0, f.n);
      return true;
    }
    return false;
  }

  // Marks everything known of `conv` read (this device just read its
  // newest message; the read answer confirms it).
  readAll(conv) {
    const e = this.convs.get(conv);
    if (e) e.read = Math.max(e.read, e.top);
  }

  of(conv) {
    const e = this.convs.get(conv);
    return e ? Math.max(0, e.top - e.read) : 0;
  }

  mentionsCount(conv) {
    const e = this.mentions.get(conv);
    if (!e) return 0;
    const read = (this.convs.get(conv) || { read: 0 }).read;
    let n = read < e.seedTop ? e.seeded : 0;
    for (const x of e.ns) if (x > read) n++;
    return n;
  }

  raise(conv, top, read) {
    let e = this.convs.get(conv);
    if (!e) this.convs.set(conv, (e = { top: 0, read: 0 }));
    e.top = Math.max(e.top, top);
    e.read = Math.max(e.read, read);
  }

  mentionsOf_(conv) {
    let e = this.mentions.get(conv);
    if (!e) this.mentions.set(conv, (e = { seeded: 0, seedTop: 0, ns: new Set() }));
    return e;
  }
}
