// The search box (GET /v1/search): every conversation, or only the open
// one; results newest first with their highlights (view.js builds them as
// text and <mark> nodes); a result opens its conversation at the message
// (history `around=`); "More results" pages on with `before`.

import { ApiError } from "/api.js";
import { $, el, searchItem } from "/view.js";

// `on`: {open() -> the open conversation or null, title(conv), nameOf(id),
// jump(conv, id)}.
export function wireSearch(api, on) {
  let last = null; // {q, conv, results, more}

  async function run(more) {
    const q = $("search-input").value.trim();
    $("search-error").textContent = "";
    if (!more) {
      const c = on.open();
      const conv = $("search-here").checked && c && c.type !== "room" ? c.conv : null;
      last = { q, conv, results: [], more: false };
    }
    if ([...last.q].length < 2) {
      $("search-error").textContent = "type at least 2 characters";
      return;
    }
    // A newer search (or Clear) while this one is on its way wins: its
    // answer is dropped.
    const mine = last;
    try {
      const before = more && mine.results.length ? mine.results[mine.results.length - 1].id : null;
      const page = await api.search(mine.q, mine.conv, before);
      if (mine !== last) return;
      mine.results.push(...page.results);
      mine.more = page.has_more;
    } catch (e) {
      if (mine !== last) return;
      $("search-error").textContent = e instanceof ApiError ? e.message : String(e);
    }
    show();
  }

  function show() {
    const items = last.results.map((r) => searchItem(r, on.title(r.conv), on.nameOf(r.from), () => on.jump(r.conv, r.id)));
    if (!items.length) items.push(el("li", { class: "muted", text: "no messages found" }));
    if (last.more) items.push(el("li", {}, el("button", { type: "button", id: "search-more", onclick: () => run(true), text: "More results" })));
    $("search-results").replaceChildren(...items);
    $("search-results").hidden = false;
    $("search-clear").hidden = false;
  }

  $("search-form").addEventListener("submit", (e) => { e.preventDefault(); run(false); });
  $("search-clear").addEventListener("click", () => {
    last = null;
    $("search-input").value = "";
    $("search-results").replaceChildren();
    $("search-results").hidden = true;
    $("search-clear").hidden = true;
    $("search-error").textContent = "";
  });
}
