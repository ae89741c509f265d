// DOM building. Text from the server (message bodies, names, titles) only
// ever goes into the page through textContent or attribute values, never
// as HTML: el() has no way to set markup.

export function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k.startsWith("data-")) node.dataset[k.slice(5).replace(/-(.)/g, (_, c) => c.toUpperCase())] = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    node.append(typeof c === "string" ? document.createTextNode(c) : c);
  }
  return node;
}

export function $(id) {
  return document.getElementById(id);
}

export function clock(ts) {
  if (!ts) return "";
  const d = new Date(ts);
  const now = new Date();
  const time = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  return d.toDateString() === now.toDateString() ? time : d.toLocaleDateString() + " " + time;
}

// One entry of the conversation list; `unread` and `mentions` are the
// server's counts (unread.js).
export function convItem(c, current, status, unread, mentions, onOpen) {
  const last = c.last;
  const preview = c.type === "room" ? "live room " + c.room + (last ? " · " + last.body : "")
    : last ? (last.fromName ? last.fromName + ": " : "") + last.body : "no messages yet";
  const dot = c.type === "direct" ? status || "offline" : c.type;
  return el("li", {},
    el("button", { class: "conv", type: "button", "data-conv": c.conv, "aria-current": current ? "true" : "false", onclick: onOpen },
      el("span", { class: "dot", "data-status": dot, "aria-label": dot }),
      el("span", { class: "title", text: c.title }),
      el("span", { class: "badges" },
        mentions ? el("span", { class: "badge mention", "data-mentions": String(mentions), "aria-label": mentions + " mentions", text: "@" + mentions }) : null,
        unread ? el("span", { class: "badge", "data-unread": String(unread), "aria-label": unread + " unread", text: String(unread) }) : null),
      el("span", { class: "preview", text: preview })));
}

// A username can hold these; a mention is `@name` not preceded by one.
const NAME_CHAR = /[A-Za-z0-9_.-]/;

// A body as text nodes, with the `@name`s that resolved to `mentions`
// (user ids, names from `nameOf`) in highlighted spans.
export function bodyNodes(text, mentions, nameOf, me) {
  if (!mentions || !mentions.length) return [text];
  const wanted = new Map(mentions.map((id) => [String(nameOf(id)).toLowerCase(), id]));
  const out = [];
  let from = 0;
  const re = /@([A-Za-z0-9_.-]+)/g;
  for (let m; (m = re.exec(text));) {
    if (m.index > 0 && NAME_CHAR.test(text[m.index - 1])) continue;
    const name = m[1].replace(/\.+$/, "");
    const id = wanted.get(name.toLowerCase());
    if (!id || name.length < 3 || name.length > 32) continue;
    if (m.index > from) out.push(text.slice(from, m.index));
    out.push(el("span", { class: "mention" + (id === me ? " me" : ""), "data-user": id, text: "@" + name }));
    from = m.index + 1 + name.length;
    re.lastIndex = from;
  }
  if (from < text.length) out.push(text.slice(from));
  return out;
}

// A search hit's body with its highlights, `[start, end)` in characters
// (code points), as text nodes and <mark> elements: never markup.
export function highlightNodes(body, ranges) {
  const chars = Array.from(body);
  const out = [];
  let at = 0;
  for (const [a, b] of ranges || []) {
    if (a < at || b <= a || b > chars.length) continue;
    if (a > at) out.push(chars.slice(at, a).join(""));
    out.push(el("mark", { text: chars.slice(a, b).join("") }));
    at = b;
  }
  if (at < chars.length) out.push(chars.slice(at).join(""));
  return out;
}

export const EMOJI = ["👍", "❤️", "😂", "🎉", "😮", "😢"];

// One message of the conversation view. `x` says how to show it:
// {mine, fromName, status, readBy, nameOf, me, canEdit, canDelete,
//  picking, confirming} and the actions {retry, reply, edit, del, react,
//  pick, seen, jump}.
export function messageItem(m, x) {
  if (m.kind === "gap") return el("li", { class: "msg system gap", "data-gap": String(m.missed), text: m.text });
  const system = m.kind === "system";
  const state = m.state || "sent";
  const meta = [clock(m.ts)];
  if (m.editedAt && !m.deleted) meta.push("edited");
  if (x.mine && !system && !m.deleted) meta.push(state === "sent" ? x.status || "sent" : { pending: "sending…", failed: "failed" }[state]);
  if (x.readBy) meta.push(x.readBy);
  if (m.error) meta.push(m.error);
  const who = x.mine ? "you" : x.fromName;
  const quote = m.replyTo ? el("button", {
    class: "quote", type: "button", "data-reply-to": m.replyTo.id, "data-deleted": m.replyTo.deleted ? "1" : null,
    "aria-label": "Go to the message replied to", onclick: () => x.jump(m.replyTo.id),
  },
    el("span", { class: "quote-from", text: x.nameOf(m.replyTo.from) }),
    el("span", { class: "quote-text", text: m.replyTo.deleted ? "original deleted" : m.replyTo.preview || "" })) : null;
  const body = m.deleted ? el("span", { class: "body tombstone", text: "message deleted" })
    : el("span", { class: "body" }, ...bodyNodes(m.text, m.mentions, x.nameOf, x.me));
  const usable = !system && !m.deleted && m.id && state === "sent";
  const reactions = (m.reactions || []).filter((r) => r.count > 0);
  const mineR = (r) => (r.users || []).includes(x.me) || (m.myReacts && m.myReacts.has(r.emoji));
  const act = (name, label, onclick, attrs) => el("button", { type: "button", class: "act", "data-act": name, "aria-label": label + " (" + who + ": " + (m.text || "").slice(0, 30) + ")", onclick, ...attrs }, label);
  return el("li", {
    class: "msg" + (x.mine ? " mine" : "") + (system ? " system" : "") + (m.deleted ? " deleted" : "") + (x.mentionsMe ? " mentions-me" : ""),
    "data-id": m.id, "data-cid": m.cid, "data-state": state, "data-from": m.from,
    "data-receipt": x.mine && !system ? x.status || "sent" : null, "data-edited": m.editedAt ? "1" : null,
    "data-deleted": m.deleted ? "1" : null, tabindex: "-1",
  },
    system || x.mine ? null : el("span", { class: "from", text: x.fromName }),
    quote,
    body,
    reactions.length ? el("span", { class: "reactions" }, ...reactions.map((r) => el("button", {
      type: "button", class: "reaction", "data-emoji": r.emoji, "data-count": String(r.count), "aria-pressed": mineR(r) ? "true" : "false",
      "aria-label": r.emoji + " " + r.count + (mineR(r) ? ", yours: remove" : ": add yours"),
      onclick: () => x.react(r.emoji, mineR(r) ? "remove" : "add"),
    }, r.emoji + " " + r.count))) : null,
    el("span", { class: "meta", text: meta.filter(Boolean).join(" · ") },
      state === "failed" ? el("button", { class: "retry", type: "button", onclick: x.retry, text: "Retry" }) : null),
    usable ? el("span", { class: "actions" },
      act("reply", "Reply", x.reply),
      act("react", "React", x.pick, { "aria-expanded": x.picking ? "true" : "false" }),
      x.canEdit ? act("edit", "Edit", x.edit) : null,
      x.canDelete ? act("delete", x.confirming ? "Really delete?" : "Delete", x.del) : null,
      x.seen ? act("seen", "Seen by", x.seen) : null) : null,
    usable && x.picking ? el("span", { class: "picker", role: "group", "aria-label": "Pick a reaction" },
      ...EMOJI.map((e) => el("button", { type: "button", class: "pick", "data-emoji": e, "aria-label": "React " + e,
        onclick: () => x.react(e, reactions.some((r) => r.emoji === e && mineR(r)) ? "remove" : "add") }, e))) : null,
    x.seenList ? el("span", { class: "seen-list", text: x.seenList }) : null);
}

// One search hit: where, who, and the body with its highlights.
export function searchItem(r, convTitle, fromName, onOpen) {
  return el("li", {},
    el("button", { type: "button", class: "result", "data-id": r.id, "data-conv": r.conv, onclick: onOpen },
      el("span", { class: "where", text: convTitle + " · " + fromName + " · " + clock(r.ts) }),
      el("span", { class: "hit" }, ...highlightNodes(r.body, r.highlights))));
}

// A group's members; owners and admins get Remove where their role allows.
export function memberItems(g, me, presence, onRemove) {
  const canRemove = (m) => m.user_id !== me && m.role !== "owner" &&
    (g.role === "owner" || (g.role === "admin" && m.role === "member"));
  return g.members.map((m) => el("li", { "data-user": m.user_id },
    el("span", { class: "dot", "data-status": presence.get(m.user_id) || "offline" }),
    el("span", { class: "name", text: m.username + (m.user_id === me ? " (you)" : "") }),
    el("span", { class: "muted", text: m.role }),
    canRemove(m) ? el("button", { type: "button", text: "Remove", "aria-label": "Remove " + m.username, onclick: () => onRemove(m) }) : null));
}

// Friends (with presence and Chat), requests to answer, requests sent.
export function friendItems(f, presence, on) {
  const rows = [];
  for (const x of f.friends) rows.push(el("li", { "data-user": x.user_id },
    el("span", { class: "dot", "data-status": presence.get(x.user_id) }),
    el("span", { class: "name", text: x.username }),
    el("button", { type: "button", text: "Chat", onclick: () => on.chat(x) })));
  for (const x of f.incoming) rows.push(el("li", { "data-user": x.user_id },
    el("span", { class: "name", text: x.username + " wants to be friends" }),
    el("button", { type: "button", text: "Accept", onclick: () => on.accept(x) }),
    el("button", { type: "button", text: "Decline", onclick: () => on.drop(x) })));
  for (const x of f.outgoing) rows.push(el("li", { "data-user": x.user_id },
    el("span", { class: "name", text: x.username + " (request sent)" }),
    el("button", { type: "button", text: "Cancel", onclick: () => on.drop(x) })));
  if (!rows.length) rows.push(el("li", { class: "muted", text: "no friends yet" }));
  return rows;
}
