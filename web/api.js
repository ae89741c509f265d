// The HTTP API of docs/protocol.md: one function per route the client uses.
// Every id is a decimal string; errors become ApiError with the stable code.

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message || code);
    this.status = status;
    this.code = code;
  }
}

export class Api {
  constructor() {
    this.token = null;
  }

  async call(method, path, body) {
    const headers = {};
    if (this.token) headers["authorization"] = "Bearer " + this.token;
    if (body !== undefined) headers["content-type"] = "application/json";
    let resp;
    try {
      resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    } catch (e) {
      throw new ApiError(0, "unreachable", "the server cannot be reached");
    }
    const text = await resp.text();
    let value = null;
    try {
      value = text ? JSON.parse(text) : null;
    } catch (e) {
      throw new ApiError(resp.status, "bad_response", "the server sent something that is not JSON");
    }
    if (!resp.ok) {
      const err = (value && value.error) || {};
      throw new ApiError(resp.status, err.code || "http_" + resp.status, err.message || resp.statusText);
    }
    return value;
  }

  signup(username, password) { return this.call("POST", "/v1/signup", { username, password }); }
  login(username, password, device_id) { return this.call("POST", "/v1/login", { username, password, device_id }); }
  logout() { return this.call("POST", "/v1/logout"); }
  userByName(name) { return this.call("GET", "/v1/users/by-name/" + encodeURIComponent(name)); }
  user(id) { return this.call("GET", "/v1/users/" + id); }
  conversations(before) {
    return this.call("GET", "/v1/conversations?limit=50" + (before ? "&before=" + encodeURIComponent(before) : ""));
  }
  // `where` is null (the newest page) or {before|after|around: id}.
  history(conv, where, limit) {
    let q = "?limit=" + limit;
    for (const [k, v] of Object.entries(where || {})) if (v) q += "&" + k + "=" + v;
    return this.call("GET", "/v1/conversations/" + conv + "/messages" + q);
  }
  reads(conv) { return this.call("GET", "/v1/conversations/" + conv + "/reads"); }
  search(q, conv, before) {
    let query = "?limit=20&q=" + encodeURIComponent(q);
    if (conv) query += "&conv=" + conv;
    if (before) query += "&before=" + before;
    return this.call("GET", "/v1/search" + query);
  }
  createRoom(title) { return this.call("POST", "/v1/rooms", { title }); }
  room(id) { return this.call("GET", "/v1/rooms/" + encodeURIComponent(id)); }
  group(id) { return this.call("GET", "/v1/groups/" + id); }
  createGroup(name, members) { return this.call("POST", "/v1/groups", { name, members }); }
  addMember(group, user_id) { return this.call("POST", "/v1/groups/" + group + "/members", { user_id }); }
  removeMember(group, user) { return this.call("DELETE", "/v1/groups/" + group + "/members/" + user); }
  friends() { return this.call("GET", "/v1/friends"); }
  befriend(user) { return this.call("PUT", "/v1/friends/" + user); }
  unfriend(user) { return this.call("DELETE", "/v1/friends/" + user); }
}

// The 1:1 conversation id of two users (smaller id first, compared as
// 64-bit numbers: ids do not fit a JavaScript number).
export function directConv(a, b) {
  const [lo, hi] = BigInt(a) <= BigInt(b) ? [a, b] : [b, a];
  return "dm-" + lo + "-" + hi;
}

// -1, 0 or 1 for two decimal id strings.
export function cmpId(a, b) {
  const x = BigInt(a), y = BigInt(b);
  return x < y ? -1 : x > y ? 1 : 0;
}
