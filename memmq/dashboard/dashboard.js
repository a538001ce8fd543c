// The memmq dashboard (README, "Dashboard"): polls /api/server and one page
// of /stats, publishes with fetch(), tails over WebSocket or EventSource.
// No library, nothing from elsewhere.
"use strict";

(function () {
  const SERVER_EVERY = 1000;   // ms between /api/server polls
  const TOPICS_EVERY = 2000;   // ms between /stats page polls
  const PAGE = 50;             // topics a page
  const KEEP = 200;            // tailed messages kept in the page
  const PREVIEW = 512;         // bytes of a message shown

  const $ = (id) => document.getElementById(id);
  const state = {
    token: sessionStorage.getItem("memmq-token") || "",
    sort: "subscribers", order: "desc", offset: 0, count: 0, match: "",
    previous: new Map(), previousTime: 0,
    tail: null, paused: false, held: [],
  };

  // -- requests -------------------------------------------------------------

  function headers() {
    return state.token ? { Authorization: "Bearer " + state.token } : {};
  }

  function withToken(url) {
    return state.token ? url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(state.token) : url;
  }

  async function getJSON(url) {
    const response = await fetch(url, { headers: headers(), cache: "no-store" });
    if (response.status === 401 || response.status === 403) {
      notice(response.status === 401 ? "This server needs a token: enter it above." :
        "This token may not see " + url.split("?")[0] + ".");
      throw new Error(String(response.status));
    }
    if (!response.ok) throw new Error((await response.text()).trim() || String(response.status));
    return response.json();
  }

  function notice(text) {
    const box = $("notice");
    box.textContent = text || "";
    box.hidden = !text;
  }

  // -- formatting -----------------------------------------------------------

  const number = new Intl.NumberFormat("en", { maximumFractionDigits: 1 });
  function fmt(n) { return n === undefined || n === null ? "–" : number.format(n); }
  function bytes(n) {
    const units = ["B", "KiB", "MiB", "GiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return number.format(n) + " " + units[i];
  }
  function duration(s) {
    s = Math.floor(s);
    const d = Math.floor(s / 86400), h = Math.floor(s / 3600) % 24, m = Math.floor(s / 60) % 60;
    return (d ? d + "d " : "") + (d || h ? h + "h " : "") + m + "m " + (s % 60) + "s";
  }

  // -- the server -----------------------------------------------------------

  let history = [];

  async function pollServer() {
    try {
      const s = await getJSON("/api/server");
      $("status").className = "status up";
      const mode = s.mode + (s.persist ? " · persist" : "");
      $("server-line").textContent = "v" + s.version + " · " + mode + " · up " + duration(s.uptime) + " · pid " + s.pid;
      $("subscribers").textContent = fmt(s.subscribers);
      $("topics").textContent = fmt(s.topics);
      $("published").textContent = fmt(s.published);
      $("dropped").textContent = fmt(s.dropped);
      $("rss").textContent = bytes(s.rss);
      history = s.rates || [];
      const last = history.length ? history[history.length - 1] : null;
      $("rate-in").textContent = last ? fmt(last[1]) : "–";
      $("rate-out").textContent = last ? fmt(last[2]) : "–";
      $("rate-dropped").textContent = last ? fmt(last[3]) : "–";
      const up = s.upstreams;
      $("upstreams").textContent = up ? " · upstreams: " + up.servers.join(", ") + " (" + up.errors + " errors)" : "";
      if (!$("notice").textContent.startsWith("This")) notice("");
      draw();
    } catch (e) {
      $("status").className = "status down";
    }
  }

  function draw() {
    const canvas = $("chart");
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth, height = canvas.clientHeight;
    if (canvas.width !== Math.round(width * ratio)) {
      canvas.width = Math.round(width * ratio);
      canvas.height = Math.round(height * ratio);
    }
    const g = canvas.getContext("2d");
    g.setTransform(ratio, 0, 0, ratio, 0, 0);
    g.clearRect(0, 0, width, height);
    const left = 56, bottom = height - 18, top = 8, right = width - 8;
    let max = 1;
    for (const p of history) max = Math.max(max, p[1], p[2], p[3]);
    max = niceCeiling(max);
    const now = history.length ? history[history.length - 1][0] : 0;
    // The last ten minutes at most, one at least: a young chart fills the width.
    const span = history.length ? Math.min(600, Math.max(60, now - history[0][0])) : 60;
    const x = (t) => right - (now - t) / span * (right - left);
    const y = (v) => bottom - v / max * (bottom - top);
    g.font = "11px system-ui, sans-serif";
    g.fillStyle = "#6b7385";
    g.strokeStyle = "#dde1e8";
    g.lineWidth = 1;
    for (let i = 0; i <= 4; i++) {
      const v = max * i / 4, yy = Math.round(y(v)) + 0.5;
      g.beginPath(); g.moveTo(left, yy); g.lineTo(right, yy); g.stroke();
      g.fillText(number.format(v), 4, yy + 4);
    }
    const tick = [10, 15, 30, 60, 120].find((t) => span / t <= 6) || 120;
    for (let t = 0; t <= span; t += tick) {
      const label = t === 0 ? "now" : t % 60 === 0 ? "-" + t / 60 + " min" : "-" + t + " s";
      g.fillText(label, Math.max(left, x(now - t) - (t ? 18 : 20)), height - 4);
    }
    const colours = ["#2f6fdf", "#1b9e63", "#d9472b"];
    for (let k = 1; k <= 3; k++) {
      g.strokeStyle = colours[k - 1];
      g.lineWidth = 1.6;
      g.beginPath();
      let started = false;
      for (const p of history) {
        if (now - p[0] > span) continue;
        if (started) g.lineTo(x(p[0]), y(p[k])); else { g.moveTo(x(p[0]), y(p[k])); started = true; }
      }
      g.stroke();
    }
  }

  function niceCeiling(v) {
    const step = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 5, 10]) if (m * step >= v) return m * step;
    return 10 * step;
  }

  // -- topics ---------------------------------------------------------------

  async function pollTopics() {
    const query = new URLSearchParams({
      offset: state.offset, limit: PAGE, sort: state.sort, order: state.order,
    });
    if (state.match) query.set("match", state.match);
    let s;
    try {
      s = await getJSON("/stats?" + query);
    } catch (e) {
      return;
    }
    const now = performance.now() / 1000;
    const elapsed = now - state.previousTime;
    const body = $("topics-body");
    const rows = document.createDocumentFragment();
    const seen = new Map();
    for (const t of s.topics || []) {
      const before = state.previous.get(t.topic);
      const rate = before === undefined || elapsed <= 0 ? null : Math.max(0, (t.published - before) / elapsed);
      seen.set(t.topic, t.published);
      const tr = document.createElement("tr");
      tr.dataset.topic = t.topic;
      for (const [text, numeric] of [[t.topic, false], [fmt(t.subscribers), true], [fmt(t.published), true],
        [rate === null ? "–" : fmt(rate), true], [fmt(t.dropped), true], [fmt(t.buffered), true]]) {
        const td = document.createElement("td");
        td.textContent = text;
        if (numeric) td.className = "num";
        tr.appendChild(td);
      }
      rows.appendChild(tr);
    }
    body.replaceChildren(rows);
    state.previous = seen;
    state.previousTime = now;
    state.count = s.topic_count || 0;
    const first = state.count ? state.offset + 1 : 0;
    $("page").textContent = fmt(first) + "–" + fmt(Math.min(state.offset + PAGE, state.count)) + " of " + fmt(state.count);
    $("prev").disabled = state.offset === 0;
    $("next").disabled = state.offset + PAGE >= state.count;
  }

  function sortBy(key) {
    if (state.sort === key) state.order = state.order === "desc" ? "asc" : "desc";
    else { state.sort = key; state.order = key === "topic" ? "asc" : "desc"; }
    for (const th of document.querySelectorAll("th[data-sort]")) {
      th.classList.toggle("sorted", th.dataset.sort === state.sort);
      th.classList.toggle("asc", th.dataset.sort === state.sort && state.order === "asc");
    }
    state.offset = 0;
    pollTopics();
  }

  // -- console --------------------------------------------------------------

  async function publish(event) {
    event.preventDefault();
    const topic = $("console-topic").value;
    const result = $("publish-result");
    try {
      const response = await fetch("/pub?topic=" + encodeURIComponent(topic), {
        method: "POST", headers: headers(), body: $("console-message").value,
      });
      if (!response.ok) throw new Error((await response.text()).trim() || String(response.status));
      result.textContent = "published";
      result.className = "ok";
    } catch (e) {
      result.textContent = e.message;
      result.className = "err";
    }
  }

  function preview(data) {
    const view = $("tail-view").value;
    const shown = data.subarray(0, PREVIEW);
    let text = null;
    if (view === "text") {
      try { text = new TextDecoder("utf-8", { fatal: true }).decode(shown); } catch (e) { text = null; }
    }
    if (text === null) text = Array.from(shown, (b) => b.toString(16).padStart(2, "0")).join(" ");
    return text + (data.length > PREVIEW ? " … (" + data.length + " bytes)" : "");
  }

  function received(data) {
    if (state.paused) {
      state.held.push(data);
      if (state.held.length > KEEP) state.held.shift();
      $("tail-state").textContent = "paused, " + state.held.length + " held";
      return;
    }
    show(data);
  }

  function show(data) {
    const log = $("tail-log");
    const li = document.createElement("li");
    li.textContent = new Date().toLocaleTimeString() + "  " + preview(data);
    log.appendChild(li);
    while (log.children.length > KEEP) log.removeChild(log.firstChild);
    log.scrollTop = log.scrollHeight;
  }

  function base64Bytes(text) {
    const raw = atob(text);
    return Uint8Array.from(raw, (c) => c.charCodeAt(0));
  }

  function tail() {
    if (state.tail) { stopTail(); return; }
    const topic = $("console-topic").value;
    if (!topic) { $("tail-state").textContent = "name a topic first"; return; }
    const path = "/sub?topic=" + encodeURIComponent(topic);
    if ($("tail-via").value === "sse") {
      const source = new EventSource(withToken(path));
      source.onmessage = (e) => received(new TextEncoder().encode(e.data));
      source.addEventListener("base64", (e) => received(base64Bytes(e.data)));
      source.onopen = () => { $("tail-state").textContent = "tailing " + topic + " (EventSource)"; };
      source.onerror = () => { $("tail-state").textContent = "reconnecting…"; };
      state.tail = { close: () => source.close() };
    } else {
      const scheme = location.protocol === "https:" ? "wss://" : "ws://";
      const socket = new WebSocket(withToken(scheme + location.host + path));
      socket.binaryType = "arraybuffer";
      socket.onmessage = (e) => received(typeof e.data === "string" ? new TextEncoder().encode(e.data) : new Uint8Array(e.data));
      socket.onopen = () => { $("tail-state").textContent = "tailing " + topic + " (WebSocket)"; };
      socket.onclose = (e) => {
        if (state.tail && state.tail.socket === socket) {
          $("tail-state").textContent = "closed" + (e.reason ? ": " + e.reason : "");
          state.tail = null;
          $("tail").textContent = "tail";
          $("pause").disabled = true;
        }
      };
      state.tail = { socket: socket, close: () => socket.close() };
    }
    $("tail").textContent = "stop";
    $("pause").disabled = false;
  }

  function stopTail() {
    const tailing = state.tail;
    state.tail = null;
    if (tailing) tailing.close();
    $("tail").textContent = "tail";
    $("pause").disabled = true;
    $("tail-state").textContent = "stopped";
    state.paused = false;
    $("pause").textContent = "pause";
  }

  function pause() {
    state.paused = !state.paused;
    $("pause").textContent = state.paused ? "resume" : "pause";
    if (!state.paused) {
      const held = state.held;
      state.held = [];
      for (const data of held) show(data);
      $("tail-state").textContent = "tailing";
    }
  }

  // -- wiring ---------------------------------------------------------------

  function every(ms, poll) {
    // One request at a time, none while the tab is hidden.
    const run = async () => {
      if (!document.hidden) await poll();
      setTimeout(run, typeof ms === "function" ? ms() : ms);
    };
    run();
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("token").value = state.token;
    $("token-form").addEventListener("submit", (e) => {
      e.preventDefault();
      state.token = $("token").value.trim();
      sessionStorage.setItem("memmq-token", state.token);
      notice("");
      pollServer();
      pollTopics();
    });
    for (const th of document.querySelectorAll("th[data-sort]")) th.addEventListener("click", () => sortBy(th.dataset.sort));
    document.querySelector('th[data-sort="subscribers"]').classList.add("sorted");
    let typing = null;
    $("filter").addEventListener("input", () => {
      clearTimeout(typing);
      typing = setTimeout(() => { state.match = $("filter").value.trim(); state.offset = 0; pollTopics(); }, 250);
    });
    $("prev").addEventListener("click", () => { state.offset = Math.max(0, state.offset - PAGE); pollTopics(); });
    $("next").addEventListener("click", () => { state.offset += PAGE; pollTopics(); });
    $("topics-body").addEventListener("click", (e) => {
      const row = e.target.closest("tr");
      if (row) $("console-topic").value = row.dataset.topic;
    });
    $("publish-form").addEventListener("submit", publish);
    $("tail").addEventListener("click", tail);
    $("pause").addEventListener("click", pause);
    $("clear").addEventListener("click", () => { $("tail-log").replaceChildren(); state.held = []; });
    window.addEventListener("resize", draw);
    every(SERVER_EVERY, pollServer);
    // Sorting 100,000 topics costs the server a good part of a second: ask less often then.
    every(() => (state.count > 10000 ? 3 * TOPICS_EVERY : TOPICS_EVERY), pollTopics);
  });
})();
