// The feed explorer: watch one user's feed adapt to their clicks, through the reader's public API only.
//
// A click on a card posts the views of every card shown so far (impressions not reported yet) and the
// click, in one POST /v1/events, then fetches the first page again until the clicked item is gone:
// the worker has applied the events (seen set, history, new candidates). The time from the click to
// that feed is what the page reports. Everything from the API is put into the page as text, never as
// markup.

const PAGE_SIZE = 10;
const CHANGE_POLL_MS = 150;
const CHANGE_TIMEOUT_MS = 15000;
const STATS_EVERY_MS = 1000;
const MAX_NOT_INTERESTED = 256; // the preferences route's bound
const KEY_STORE = "recstream.explorer.apiKey"; // sessionStorage: the key lives as long as the tab
const USERS_STORE = "recstream.explorer.users";

const $ = (id) => document.getElementById(id);
const ui = {
  form: $("user-form"), user: $("user-id"), category: $("category"), recent: $("recent-users"), key: $("api-key"),
  newUser: $("new-user"), refresh: $("refresh"), status: $("status"), error: $("error"),
  degraded: $("degraded"), feedSection: $("feed-section"), feed: $("feed"), meta: $("feed-meta"),
  more: $("load-more"), itemView: $("item-view"), itemTitle: $("item-title"), itemMeta: $("item-meta"),
  similar: $("similar"), closeItem: $("close-item"),
  stats: {
    events: $("stat-events"), feeds: $("stat-feeds"), freshness: $("stat-freshness"),
    ctr: $("stat-ctr"), redis: $("stat-redis"),
  },
};

const state = {
  user: null,
  category: "", // the filter of the current scroll session: its cursor continues only under it
  cursor: null,
  session: null,
  shown: new Map(), // item id → feed item, in the order shown, for this user since the last refresh
  reported: new Set(), // item ids whose view was posted
  busy: false,
};
const eventPrefix = `explorer-${Math.random().toString(36).slice(2, 10)}`;
let eventCount = 0;
let cardCount = 0;

class ApiError extends Error {
  constructor(status, detail) {
    super(`${status}: ${detail}`);
    this.status = status;
  }
}

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  const key = sessionStorage.getItem(KEY_STORE);
  if (key) headers["X-API-Key"] = key;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const payload = await response.json().catch(() => null);
  if (!response.ok) {
    const detail = payload && payload.detail;
    const text = typeof detail === "string" ? detail : JSON.stringify(detail ?? response.statusText);
    throw new ApiError(response.status, response.status === 401 ? `${text} — enter the reader's API key` : text);
  }
  return payload;
}

const feedPath = (user, cursor) =>
  `/v1/feed/${encodeURIComponent(user)}?limit=${PAGE_SIZE}` +
  (state.category ? `&category=${encodeURIComponent(state.category)}` : "") +
  (cursor ? `&cursor=${encodeURIComponent(cursor)}` : "");

function say(text) {
  ui.status.textContent = text;
}

function fail(error) {
  ui.error.textContent = `Error ${error.message}`;
  ui.error.hidden = false;
}

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (className) node.className = className;
  return node;
}

function button(text, onClick, className) {
  const node = el("button", text, className);
  node.type = "button";
  node.addEventListener("click", onClick);
  return node;
}

// --- the feed ------------------------------------------------------------------------------------

function card(item) {
  const id = `card-${++cardCount}`;
  const li = el("li", undefined, `card source-${item.source}`);
  li.dataset.itemId = item.item_id;
  li.dataset.source = item.source;
  const article = el("article");
  article.setAttribute("aria-labelledby", id);
  const heading = el("h3");
  const open = button(item.item_id, () => clickItem(item), "open");
  open.id = id;
  open.setAttribute("aria-label", `Click ${item.item_id}`);
  open.title = "Record a click on this item, then watch the feed change";
  heading.append(open);
  const reason = el("p", item.reason, "reason");
  reason.id = `${id}-reason`;
  open.setAttribute("aria-describedby", reason.id);
  const categories = item.categories.length ? item.categories.join(" · ") : "categories not known yet";
  // a ranked page's items carry the ranker's click probability and the feature that raised it most
  const ranking = item.score === null || item.score === undefined ? null
    : `score ${item.score.toFixed(3)} · top feature ${item.top_feature ?? "none"}`;
  const actions = el("div", undefined, "actions");
  actions.append(
    button("Similar items", (event) => showItem(item.item_id, event.currentTarget), "similar-button"),
    button("Not interested", () => notInterested(item, li), "hide"),
  );
  article.append(heading, el("span", item.source, `badge badge-${item.source}`), reason,
    el("p", categories, "categories"), ...(ranking ? [el("p", ranking, "ranking")] : []), actions);
  li.append(article);
  return li;
}

function render(page, append) {
  if (!append) {
    ui.feed.replaceChildren();
    state.shown.clear();
  }
  for (const item of page.items) {
    state.shown.set(item.item_id, item);
    ui.feed.append(card(item));
  }
  state.cursor = page.next_cursor;
  state.session = page.session;
  ui.degraded.hidden = !page.degraded;
  ui.feedSection.hidden = false;
  ui.more.hidden = !page.next_cursor;
  ui.refresh.disabled = false;
  ui.meta.textContent = [
    `user ${page.user_id}`,
    page.warm ? "warm (has history)" : "cold (no history yet)",
    page.ranked ? "ranked by the online ranker" : "fixed blend",
    `model ${page.model_version ?? "none"}`,
    `${state.shown.size} items shown`,
  ].join(" · ");
}

async function guarded(work) {
  if (state.busy) return;
  state.busy = true;
  ui.feed.setAttribute("aria-busy", "true");
  ui.error.hidden = true;
  try {
    await work();
  } catch (error) {
    fail(error);
  } finally {
    state.busy = false;
    ui.feed.removeAttribute("aria-busy");
  }
}

function showFeed(user) {
  return guarded(async () => {
    if (user !== state.user) state.reported.clear();
    state.user = user;
    state.category = ui.category.value.trim();
    rememberUser(user);
    const url = new URL(window.location.href);
    url.searchParams.set("user", user);
    window.history.replaceState(null, "", url);
    const page = await api("GET", feedPath(user));
    render(page, false);
    say(`Feed of ${user}: ${page.items.length} items.`);
  });
}

function loadMore() {
  return guarded(async () => {
    if (!state.cursor) return;
    let page;
    try {
      page = await api("GET", feedPath(state.user, state.cursor));
    } catch (error) {
      if (!(error instanceof ApiError) || error.status !== 410) throw error;
      page = await api("GET", feedPath(state.user)); // the scroll session expired: start a new one
      render(page, false);
      say("The scroll session expired; started again from the top.");
      return;
    }
    render(page, true);
    say(`Loaded ${page.items.length} more items.`);
  });
}

function newEvent(type, item, ts) {  // the reader stamps the experiment variant itself
  return {
    type, user_id: state.user, item_id: item.item_id, ts, event_id: `${eventPrefix}-${++eventCount}`,
    context: { source: item.source, ...(state.session ? { feed: state.session } : {}) },
  };
}

function clickItem(item) {
  return guarded(async () => {
    const started = performance.now();
    const ts = Date.now();
    const views = [...state.shown.values()].filter((shown) => !state.reported.has(shown.item_id));
    const events = [...views.map((shown) => newEvent("view", shown, ts)), newEvent("click", item, ts)];
    await api("POST", "/v1/events", events);
    views.forEach((shown) => state.reported.add(shown.item_id));
    say(`Clicked ${item.item_id}; waiting for the feed to change…`);
    const deadline = started + CHANGE_TIMEOUT_MS;
    for (;;) {
      const page = await api("GET", feedPath(state.user));
      const changed = !page.degraded && !page.items.some((shown) => shown.item_id === item.item_id);
      if (changed || performance.now() > deadline) {
        render(page, false);
        const ms = Math.round(performance.now() - started);
        ui.feedSection.dataset.changeMs = changed ? String(ms) : "";
        say(changed
          ? `Feed changed ${ms} ms after the click on ${item.item_id}.`
          : `The feed did not change within ${CHANGE_TIMEOUT_MS / 1000} s: is a worker consuming the events topic?`);
        ui.feed.querySelector("button.open")?.focus();
        return;
      }
      await new Promise((resolve) => setTimeout(resolve, CHANGE_POLL_MS));
    }
  });
}

function notInterested(item, li) {
  return guarded(async () => {
    const path = `/v1/users/${encodeURIComponent(state.user)}/preferences`;
    const current = await api("GET", path);
    const hidden = [...current.not_interested.filter((id) => id !== item.item_id), item.item_id];
    await api("PUT", path, { categories: current.categories, not_interested: hidden.slice(-MAX_NOT_INTERESTED) });
    const next = li.nextElementSibling ?? li.previousElementSibling;
    li.remove();
    state.shown.delete(item.item_id);
    say(`${item.item_id} will not be shown again to ${state.user}.`);
    (next?.querySelector("button.open") ?? ui.refresh).focus();
  });
}

// --- an item and its neighbours ----------------------------------------------------------------

let itemOrigin = null;

function showItem(itemId, origin) {
  return guarded(async () => {
    const body = await api("GET", `/v1/items/${encodeURIComponent(itemId)}/similar?limit=${PAGE_SIZE}`);
    itemOrigin = origin;
    ui.itemTitle.textContent = `Item ${itemId}`;
    const known = state.shown.get(itemId);
    ui.itemMeta.textContent = [
      known ? `${known.source}: ${known.reason}` : "not in the feed shown",
      known && known.categories.length ? known.categories.join(" · ") : null,
      body.degraded ? "degraded: Redis unreachable, no neighbours" : null,
    ].filter(Boolean).join(" · ");
    ui.similar.replaceChildren(...body.items.map((neighbour) => {
      const li = el("li");
      const open = button(neighbour.item_id, (event) => showItem(neighbour.item_id, event.currentTarget), "neighbour");
      open.setAttribute("aria-label", `${neighbour.item_id}, show its similar items`);
      li.append(open, el("span", ` similarity ${neighbour.score.toFixed(3)}`, "score"));
      return li;
    }));
    if (!body.items.length) ui.similar.append(el("li", "no neighbours (yet)"));
    ui.itemView.hidden = false;
    ui.itemView.focus();
    say(`Item ${itemId}: ${body.items.length} similar items.`);
  });
}

function closeItem() {
  ui.itemView.hidden = true;
  if (itemOrigin?.isConnected) itemOrigin.focus();
}

// --- the live strip ------------------------------------------------------------------------------

const number = (value, digits = 0) =>
  value === null || value === undefined ? "—" : value.toLocaleString("en", { maximumFractionDigits: digits });

async function pollStats() {
  try {
    const stats = await api("GET", "/v1/stats");
    ui.stats.events.textContent = number(stats.applied_events_per_s, 1);
    ui.stats.feeds.textContent = number(stats.feeds_per_s, 1);
    ui.stats.freshness.textContent = stats.freshness_p99_ms === null ? "idle" : `${number(stats.freshness_p99_ms)} ms`;
    ui.stats.ctr.textContent = stats.online_ctr === null ? "—" : `${(stats.online_ctr * 100).toFixed(1)} %`;
    ui.stats.redis.textContent = stats.redis ? "up" : "down";
    ui.stats.redis.classList.toggle("down", !stats.redis);
  } catch {
    Object.values(ui.stats).forEach((node) => { node.textContent = "—"; });
  } finally {
    setTimeout(pollStats, STATS_EVERY_MS);
  }
}

// --- users and the key ---------------------------------------------------------------------------

function recentUsers() {
  try {
    return JSON.parse(localStorage.getItem(USERS_STORE) ?? "[]").filter((u) => typeof u === "string");
  } catch {
    return [];
  }
}

function rememberUser(user) {
  localStorage.setItem(USERS_STORE, JSON.stringify([user, ...recentUsers().filter((u) => u !== user)].slice(0, 20)));
  listRecentUsers();
}

function listRecentUsers() {
  ui.recent.replaceChildren(...recentUsers().map((u) => Object.assign(document.createElement("option"), { value: u })));
}

ui.form.addEventListener("submit", (event) => {
  event.preventDefault();
  if (ui.form.reportValidity()) showFeed(ui.user.value.trim());
});
ui.newUser.addEventListener("click", () => {
  ui.user.value = `new-${Math.random().toString(36).slice(2, 10)}`;
  showFeed(ui.user.value);
});
ui.refresh.addEventListener("click", () => state.user && showFeed(state.user));
ui.more.addEventListener("click", loadMore);
ui.closeItem.addEventListener("click", closeItem);
ui.itemView.addEventListener("keydown", (event) => { if (event.key === "Escape") closeItem(); });
ui.key.value = sessionStorage.getItem(KEY_STORE) ?? "";
ui.key.addEventListener("input", () => {
  if (ui.key.value) sessionStorage.setItem(KEY_STORE, ui.key.value);
  else sessionStorage.removeItem(KEY_STORE);
});

listRecentUsers();
const initial = new URLSearchParams(window.location.search).get("user");
if (initial) {
  ui.user.value = initial;
  showFeed(initial);
}
pollStats();
