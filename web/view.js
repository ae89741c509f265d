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

// One entry of the conversation list.
export function convItem(c, current, status, onOpen) {
  const unread = c.unread.size;
  const last = c.last;
  const preview = last ? (last.fromName ? last.fromName + ": " : "") + last.body : "no messages yet";
  return el("li", {},
    el("button", { class: "conv", type: "button", "data-conv": c.conv, "aria-current": current ? "true" : "false", onclick: onOpen },
      el("span", { class: "dot", "data-status": c.type === "direct" ? status || "offline" : "group", "aria-label": c.type === "direct" ? status || "offline" : "group" }),
      el("span", { class: "title", text: c.title }),
      unread ? el("span", { class: "badge", "data-unread": String(unread), "aria-label": unread + " unread", text: String(unread) }) : el("span"),
      el("span", { class: "preview", text: preview })));
}

// One message of the conversation view.
export function messageItem(m, mine, fromName, onRetry) {
  const system = m.kind === "system";
  const state = m.state || "sent";
  const label = { pending: "sending…", sent: "sent", failed: "failed" }[state];
  return el("li", {
    class: "msg" + (mine ? " mine" : "") + (system ? " system" : ""),
    "data-id": m.id, "data-cid": m.cid, "data-state": state, "data-from": m.from,
  },
    system || mine ? null : el("span", { class: "from", text: fromName }),
    el("span", { class: "body", text: m.text }),
    el("span", { class: "meta", text: clock(m.ts) + (mine && !system ? " · " + label : "") + (m.error ? " · " + m.error : "") },
      state === "failed" ? el("button", { class: "retry", type: "button", onclick: onRetry, text: "Retry" }) : null));
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
