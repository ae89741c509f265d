// The state the client's modules share: the login, the session, the
// counts, the conversation on screen, and what is known of people and
// conversations. `render` and `openConv` are app.js's.

import { Api } from "/api.js";

export const api = new Api();
export const st = {
  saved: null, // {token, user_id, username, device_id, cursor, receipts}
  session: null,
  unread: null, // unread.js
  open: null, // conv id on screen
  convPage: null, // the list's next_before, when more conversations follow
  render: () => {}, // app.js's render(toBottom)
  openConv: () => {}, // app.js's openConv(conv)
};
export const names = new Map(); // user id -> username
export const presence = new Map(); // user id -> online|offline
export const convs = new Map(); // conv id -> conversation
export const groups = new Map(); // group id -> {members, role}
