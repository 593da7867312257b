// Floodgate's review console: pick a queue, claim, read, resolve with one key press.
// It only calls the review API of the origin that served it, with the reviewer's key (kept
// in this tab's sessionStorage) as a Bearer token; every value is put in as text, never as
// HTML (post texts are whatever their authors wrote).
"use strict";

(() => {
  const KEY = "floodgate.review.key";
  const VERDICTS = { 1: "allow", 2: "label", 3: "limit_reach", 4: "remove" };
  const NO_REASON = "no reason given (review console)";
  const state = { queues: [], queue: null, item: null, busy: false };
  const $ = (id) => document.getElementById(id);

  // -- the API ---------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, body) {
      const detail = (body && body.detail) || [];
      const words = detail.map((d) => d.message).join("; ") || "the request failed";
      super(`${status} ${(body && body.error) || "error"}: ${words}`);
      this.status = status;
      this.kind = detail.length ? detail[0].type : null;
    }
  }

  async function api(method, path, body) {
    const headers = { Accept: "application/json" };
    const key = sessionStorage.getItem(KEY);
    if (key) headers.Authorization = `Bearer ${key}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(path, {
      method, headers, cache: "no-store", credentials: "omit",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    let data = null;
    try { data = await response.json(); } catch (_) { data = null; }
    if (!response.ok) throw new ApiError(response.status, data);
    return data;
  }

  // -- small helpers ----------------------------------------------------------------------

  function el(tag, text, cls) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }

  function fill(parent, children) {
    parent.replaceChildren(...children);
  }

  function facts(parent, pairs) {
    const nodes = [];
    for (const [name, value] of pairs) {
      if (value === undefined || value === null || value === "") continue;
      nodes.push(el("dt", name), el("dd", value));
    }
    fill(parent, nodes);
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    if (seconds < 90) return `${Math.round(seconds)} s`;
    if (seconds < 90 * 60) return `${Math.round(seconds / 60)} min`;
    return `${(seconds / 3600).toFixed(1)} h`;
  }

  function say(id, message) {
    const node = $(id);
    node.textContent = message || "";
    node.hidden = !message;
  }

  function fail(err) {
    let message = String((err && err.message) || err);
    if (err instanceof ApiError && err.status === 401) message += " — enter an API key above";
    if (err instanceof ApiError && err.kind === "missing_role") {
      message += " — the console needs a key with the review role";
    }
    say("error", message);
  }

  async function guarded(work) {
    if (state.busy) return;
    state.busy = true;
    try {
      say("error", "");
      await work();
    } catch (err) {
      fail(err);
    } finally {
      state.busy = false;
    }
  }

  // -- queues -----------------------------------------------------------------------------

  function queueRow(q) {
    const row = el("tr");
    row.dataset.queue = q.queue;
    row.tabIndex = 0;
    if (q.queue === state.queue) row.classList.add("selected");
    if (q.over_sla) row.classList.add("over-sla");
    const wait = q.waiting > 0 && q.expected_wait_s === null ? "never (no reviewers)"
      : duration(q.expected_wait_s);
    const sla = q.sla_s === null ? "no SLA" : duration(q.sla_s);
    const cells = [q.queue, q.waiting, q.in_review, duration(q.oldest_age_s),
      `${wait} / ${sla}${q.over_sla ? " · over SLA" : ""}`, q.backlog];
    fill(row, cells.map((c) => el("td", c)));
    row.addEventListener("click", () => selectQueue(q.queue));
    return row;
  }

  async function loadQueues() {
    const body = await api("GET", "/v1/review/queues");
    state.queues = body.queues.slice().sort((a, b) => a.queue.localeCompare(b.queue));
    if (!state.queues.some((q) => q.queue === state.queue)) {
      const busiest = state.queues.filter((q) => q.waiting > 0)[0];
      state.queue = (busiest || state.queues[0] || {}).queue || null;
    }
    const reads = body.languages === null ? "every language" : body.languages.join(", ");
    say("who", `reviewer ${body.reviewer} · reads ${reads}`);
    fill(document.querySelector("#queues tbody"), state.queues.map(queueRow));
  }

  function selectQueue(name) {
    state.queue = name;
    for (const row of document.querySelectorAll("#queues tbody tr")) {
      row.classList.toggle("selected", row.dataset.queue === name);
    }
  }

  function moveQueue(step) {
    if (!state.queues.length) return;
    const at = state.queues.findIndex((q) => q.queue === state.queue);
    const next = (at + step + state.queues.length) % state.queues.length;
    selectQueue(state.queues[next].queue);
  }

  // -- an item ----------------------------------------------------------------------------

  function showItem(item) {
    state.item = item;
    $("item").hidden = !item;
    if (!item) return;
    $("item-id").textContent = item.post_id;
    const text = $("item-text");
    text.textContent = item.text || "";
    text.lang = item.language || "";
    const lease = item.lease_until ? new Date(item.lease_until).toLocaleTimeString() : null;
    facts($("item-facts"), [
      ["queue", item.queue], ["kind", item.kind], ["language", item.language],
      ["market", item.market], ["automated action", item.action],
      ["labels", (item.labels || []).join(", ")], ["severity", item.severity],
      ["category", item.category], ["priority", item.priority], ["lease until", lease],
    ]);
    const appeal = item.kind === "appeal" && item.appeal;
    $("appeal").hidden = !appeal;
    if (appeal) {
      const first = item.verdict ? `first verdict: ${item.verdict.action} by ${item.verdict.reviewer}` +
        ` (${item.verdict.reason}); ` : "";
      $("appeal-text").textContent = `${first}the author says: ${item.appeal.reason}`;
    }
    // rules, then the policy's memory examples the post resembles (category, similarity, text)
    const recalled = Object.entries(item.memory || {}).map(([category, m]) =>
      el("li", `${category}: resembles the policy's example “${m.example}” ` +
        `(similarity ${m.similarity.toFixed(3)})`, "memory"));
    fill($("item-rules"), (item.rules || []).map((r) => el("li", r)).concat(recalled));
    const scores = Object.entries(item.scores || {}).sort((a, b) => b[1] - a[1]);
    fill(document.querySelector("#item-scores tbody"), scores.map(([name, value]) => {
      const row = el("tr");
      const meter = el("meter");
      meter.min = 0; meter.max = 1; meter.value = value;
      const bar = el("td");
      bar.append(meter);
      row.append(el("td", name), el("td", value.toFixed(3), "number"), bar);
      return row;
    }));
    facts($("item-language"), [["code", item.language]]);
    const author = item.author || {};
    $("author").textContent = author.id
      ? `${author.id}${author.followers ? ` · ${author.followers} followers` : ""}` : "(not given)";
    fill($("recent"), []);
    $("reason").value = "";
  }

  function recentRow(post) {
    const row = el("li");
    const when = new Date(post.at_ms).toLocaleTimeString();
    const action = post.final_action && post.final_action !== post.action
      ? `${post.action} → ${post.final_action}` : (post.action || post.status);
    row.append(el("span", `${when} · ${post.post_id} · ${post.language || "?"} · ${action}`, "meta"));
    if (post.text) row.append(el("q", post.text));
    return row;
  }

  async function loadContext(item) {
    const body = await api("GET", `/v1/review/items/${encodeURIComponent(item.post_id)}/context`);
    if (state.item !== item) return; // resolved meanwhile
    const lang = body.language || {};
    const mixed = (lang.mixed || []).map((m) => `${m.code}: ${m.text}`);
    facts($("item-language"), [
      ["code", lang.code || item.language], ["script", lang.script],
      ["confidence", typeof lang.confidence === "number" ? lang.confidence.toFixed(2) : null],
      ["mixed", mixed.join(" · ")],
    ]);
    const rows = body.recent_posts.map(recentRow);
    fill($("recent"), rows.length ? rows : [el("li", "no other recent posts", "meta")]);
  }

  async function claim() {
    if (!state.queue) throw new Error("no queue to claim from: pick one");
    const body = await api("POST", "/v1/review/claim", { queue: state.queue, count: 1 });
    const [item] = body.items;
    showItem(item || null);
    say("notice", item ? "" : `${state.queue} is empty`);
    // in the background: the item can be resolved before these arrive
    loadQueues().catch(fail);
    if (item) loadContext(item).catch(fail);
  }

  async function resolve(action) {
    const item = state.item;
    if (!item) return;
    const reason = $("reason").value.trim() || NO_REASON;
    const path = `/v1/review/items/${encodeURIComponent(item.post_id)}/resolve`;
    const body = await api("POST", path, { action, reason });
    const done = el("li", `${item.post_id}: ${body.verdict.action}` +
      `${body.verdict.outcome ? ` (${body.verdict.outcome})` : ""} — ${reason}`);
    done.dataset.postId = item.post_id;
    $("done").prepend(done);
    showItem(null);
    say("notice", `resolved ${item.post_id}: ${action}`);
    await claim();
  }

  // -- wiring -------------------------------------------------------------------------------

  function onKey(event) {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const target = event.target;
    if (target instanceof HTMLInputElement) {
      if (event.key === "Escape" || (event.key === "Enter" && target.id === "reason")) {
        event.preventDefault();
        target.blur();
      }
      return;
    }
    if (VERDICTS[event.key] && state.item) {
      event.preventDefault();
      guarded(() => resolve(VERDICTS[event.key]));
    } else if (event.key === "c") {
      guarded(claim);
    } else if (event.key === "r" && state.item) {
      event.preventDefault();
      $("reason").focus();
    } else if (event.key === "j" || event.key === "ArrowDown") {
      event.preventDefault();
      moveQueue(1);
    } else if (event.key === "k" || event.key === "ArrowUp") {
      event.preventDefault();
      moveQueue(-1);
    }
  }

  function start() {
    $("key").value = "";
    $("key-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const key = $("key").value.trim();
      if (key) sessionStorage.setItem(KEY, key); else sessionStorage.removeItem(KEY);
      $("key").value = "";
      showItem(null);
      guarded(loadQueues);
    });
    $("forget").addEventListener("click", () => {
      sessionStorage.removeItem(KEY);
      showItem(null);
      say("who", "");
      guarded(loadQueues);
    });
    $("claim").addEventListener("click", () => guarded(claim));
    $("refresh").addEventListener("click", () => guarded(loadQueues));
    for (const button of document.querySelectorAll("button[data-action]")) {
      button.addEventListener("click", () => guarded(() => resolve(button.dataset.action)));
    }
    document.addEventListener("keydown", onKey);
    guarded(loadQueues);
  }

  start();
})();
