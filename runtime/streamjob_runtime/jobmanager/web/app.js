// The streamjob web UI: plain JavaScript and SVG, no build step, no third-party code.
//
// Contracts:
// - Every request uses a relative URL ("jobs/<id>"), so the UI works wherever the page is
//   served from: http://localhost:8081/ through kubectl port-forward, or a Service proxy path
//   such as /api/v1/namespaces/ns/services/x:8081/proxy/ (the page URL must end in "/").
// - Requests carry "Authorization: Bearer <token>" once a token is known. A 401 answer opens
//   the token prompt; the token is kept in sessionStorage (this tab only) and the request
//   is retried. The static files themselves need no token: they hold no data.
// - Pages re-render from the REST API every REFRESH_MS; rates (busy, back-pressure) are
//   computed from the difference between two refreshes.
"use strict";

const REFRESH_MS = 2000;
const TOKEN_KEY = "streamjob.token";

// -- DOM helpers -------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  append(node, children);
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  append(node, children);
  return node;
}

function append(node, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

function table(headers, rows, testid) {
  const head = el("tr", {}, headers.map((h) => {
    const [label, cls] = Array.isArray(h) ? h : [h, null];
    return el("th", { class: cls }, label);
  }));
  if (!rows.length) {
    return el("div", { class: "panel", "data-testid": testid },
      el("div", { class: "empty" }, "Nothing yet."));
  }
  return el("div", { class: "panel" },
    el("table", { "data-testid": testid }, el("thead", {}, head), el("tbody", {}, rows)));
}

function badge(state) {
  return el("span", { class: `badge ${state}` }, state);
}

function kv(pairs, testid) {
  return el("dl", { class: "kv", "data-testid": testid },
    pairs.map(([k, v]) => [el("dt", {}, k), el("dd", {}, v ?? "—")]));
}

// -- formatting --------------------------------------------------------------------------

function fmtTime(ms) {
  if (!ms) return "—";
  const d = new Date(ms);
  return d.toLocaleDateString(undefined, { month: "short", day: "numeric" }) + " " +
    d.toLocaleTimeString(undefined, { hour12: false });
}

function fmtDuration(ms) {
  if (ms === null || ms === undefined) return "—";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(1)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${Math.floor(s % 60)}s`;
  const h = Math.floor(m / 60);
  return h < 48 ? `${h}h ${m % 60}m` : `${Math.floor(h / 24)}d ${h % 24}h`;
}

function fmtBytes(n) {
  if (n === null || n === undefined) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}

function fmtCount(n) {
  if (n < 1e4) return String(n);
  if (n < 1e6) return `${(n / 1e3).toFixed(1)}K`;
  if (n < 1e9) return `${(n / 1e6).toFixed(2)}M`;
  return `${(n / 1e9).toFixed(2)}G`;
}

// -- REST access -------------------------------------------------------------------------

class HttpError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

let tokenPrompt = null; // one prompt at a time; concurrent 401s wait for the same answer

function askToken() {
  if (tokenPrompt) return tokenPrompt;
  const dialog = document.getElementById("token");
  const input = document.getElementById("token-input");
  input.value = "";
  tokenPrompt = new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      const token = input.value.trim();
      if (token) sessionStorage.setItem(TOKEN_KEY, token);
      tokenPrompt = null;
      resolve(Boolean(token));
    }, { once: true });
  });
  dialog.showModal();
  return tokenPrompt;
}

async function api(path, options = {}) {
  for (;;) {
    const headers = { ...(options.headers || {}) };
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = `Bearer ${token}`;
    if (options.body !== undefined) headers["Content-Type"] = "application/json";
    const resp = await fetch(path, {
      method: options.method || "GET",
      headers,
      body: options.body === undefined ? undefined : JSON.stringify(options.body),
      cache: "no-store",
    });
    if (resp.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      if (await askToken()) continue;
      throw new HttpError(401, "a token is needed to read this JobManager's REST API");
    }
    const text = await resp.text();
    let body = null;
    try { body = text ? JSON.parse(text) : null; } catch { body = null; }
    if (!resp.ok) {
      throw new HttpError(resp.status, (body && body.error) || `HTTP ${resp.status}: ${text}`);
    }
    return body;
  }
}

function toast(message, kind) {
  const node = el("div", { class: `toast ${kind || ""}`, role: "status" }, message);
  document.getElementById("toasts").append(node);
  setTimeout(() => node.remove(), 6000);
}

function confirmAction(title, text, okLabel) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-title").textContent = title;
  document.getElementById("confirm-text").textContent = text;
  document.getElementById("confirm-ok").textContent = okLabel;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.returnValue = "";
    dialog.showModal();
  });
}

// -- routing and refresh -----------------------------------------------------------------

const previous = new Map(); // vertex id -> {t, busy, bp} of the last refresh, for rates
const expanded = new Set(); // checkpoint ids whose subtask rows are open
let timer = null;
let generation = 0;

function route() {
  const parts = (location.hash.replace(/^#\/?/, "") || "").split("/").filter(Boolean);
  if (parts[0] === "jobs" && parts[1]) {
    return { page: "job", job: encodeURIComponent(decodeURIComponent(parts[1])), tab: parts[2] || "overview" };
  }
  if (parts[0] === "taskmanagers") return { page: "taskmanagers" };
  return { page: "overview" };
}

async function refresh() {
  const mine = ++generation;
  clearTimeout(timer);
  const r = route();
  for (const a of document.querySelectorAll("[data-nav]")) {
    a.classList.toggle("active", a.dataset.nav === r.page);
  }
  let content;
  try {
    if (r.page === "job") content = await jobPage(r.job, r.tab);
    else if (r.page === "taskmanagers") content = await taskManagersPage();
    else content = await overviewPage();
    document.getElementById("conn").textContent = `updated ${new Date().toLocaleTimeString(undefined, { hour12: false })}`;
  } catch (e) {
    content = el("div", { class: "error-box", "data-testid": "error" }, e.message);
  }
  if (mine !== generation) return; // a newer navigation already rendered
  const main = document.getElementById("main");
  const scroll = window.scrollY;
  main.replaceChildren(content);
  window.scrollTo(0, scroll);
  timer = setTimeout(refresh, REFRESH_MS);
}

// -- pages -------------------------------------------------------------------------------

async function overviewPage() {
  const [ov, jobs] = await Promise.all([api("overview"), api("jobs")]);
  const byState = {};
  for (const j of jobs.jobs) byState[j.state] = (byState[j.state] || 0) + 1;
  const card = (label, value, testid) => el("div", { class: "card", "data-testid": testid },
    el("div", { class: "label" }, label), el("div", { class: "value" }, value));
  return el("div", { "data-testid": "overview-page" },
    el("h1", {}, "Cluster overview"),
    el("p", { class: "muted" }, `streamjob ${ov.version}`),
    el("div", { class: "cards" },
      card("TaskManagers", ov.taskmanagers, "card-taskmanagers"),
      card("Slots available", `${ov.slots_available} / ${ov.slots_total}`, "card-slots"),
      card("Running jobs", ov.jobs_running, "card-running"),
      card("Finished", ov.jobs_finished, "card-finished"),
      card("Canceled", ov.jobs_canceled, "card-canceled"),
      card("Failed", ov.jobs_failed, "card-failed")),
    el("h2", {}, "Jobs"),
    table(["Name", "Job id", "State", "Started", "Restarts"], jobs.jobs
      .slice().sort((a, b) => b.start_time - a.start_time)
      .map((j) => el("tr", { class: "clickable", onclick: () => { location.hash = `#/jobs/${j.jid}`; } },
        el("td", {}, el("a", { href: `#/jobs/${j.jid}` }, j.name)),
        el("td", { class: "mono" }, j.jid),
        el("td", {}, badge(j.state)),
        el("td", {}, fmtTime(j.start_time)),
        el("td", { class: "num" }, j.restarts))), "jobs-table"),
    Object.keys(byState).length
      ? el("p", { class: "muted" }, "By state: " +
        Object.entries(byState).map(([s, n]) => `${s} ${n}`).join(", "))
      : null);
}

async function taskManagersPage() {
  const tms = await api("taskmanagers");
  return el("div", { "data-testid": "taskmanagers-page" },
    el("h1", {}, "TaskManagers"),
    el("p", { class: "muted" }, `${tms.taskmanagers.length} registered`),
    table(["Id", "Address", "PID", ["Slots free / total", "num"], ["Memory (RSS)", "num"],
      ["Last heartbeat", "num"], ["Heartbeat timeout", "num"]],
    tms.taskmanagers.map((tm) => el("tr", {},
      el("td", { class: "mono" }, tm.id),
      el("td", { class: "mono" }, `${tm.host}:${tm.data_port}`),
      el("td", { class: "num" }, tm.pid),
      el("td", { class: "num" }, `${tm.slots_free} / ${tm.slots_total}`),
      el("td", { class: "num" }, fmtBytes(tm.memory_rss_bytes)),
      el("td", { class: "num" }, `${fmtDuration(tm.last_heartbeat_ms_ago)} ago`),
      el("td", { class: "num" }, fmtDuration(tm.heartbeat_timeout_ms)))), "taskmanagers-table"));
}

const TABS = [
  ["overview", "Overview"], ["checkpoints", "Checkpoints"], ["exceptions", "Exceptions"],
  ["savepoints", "Savepoints"], ["config", "Configuration"],
];

async function jobPage(jobId, tab) {
  const job = await api(`jobs/${jobId}`);
  const running = job.state === "RUNNING";
  const head = el("div", { class: "jobhead" },
    el("div", {},
      el("h1", { "data-testid": "job-name" }, job.name, " ", badge(job.state)),
      el("div", { class: "meta" },
        el("span", { class: "mono" }, job.jid), " · started ", fmtTime(job.start_time),
        " · running ", fmtDuration(job.duration_ms), " · attempt ", job.attempt,
        " · restarts ", el("span", { "data-testid": "job-restarts" }, job.restarts)),
      job.failure_cause ? el("div", { class: "failure" }, job.failure_cause) : null),
    el("div", { class: "actions" },
      el("button", { class: "secondary", disabled: !running, "data-testid": "action-savepoint",
        onclick: () => jobAction(job, "savepoint") }, "Trigger savepoint"),
      el("button", { class: "secondary", disabled: !running, "data-testid": "action-stop",
        onclick: () => jobAction(job, "stop") }, "Stop with savepoint"),
      el("button", { class: "danger", disabled: ["CANCELED", "FAILED", "FINISHED", "CANCELLING"].includes(job.state),
        "data-testid": "action-cancel", onclick: () => jobAction(job, "cancel") }, "Cancel job")));
  const tabs = el("nav", { class: "tabs" }, TABS.map(([id, label]) =>
    el("a", { href: `#/jobs/${jobId}/${id}`, class: id === tab ? "active" : null, "data-testid": `tab-${id}` }, label)));
  let body;
  if (tab === "checkpoints") body = checkpointsTab(await api(`jobs/${jobId}/checkpoints`));
  else if (tab === "exceptions") body = exceptionsTab(await api(`jobs/${jobId}/exceptions`));
  else if (tab === "savepoints") {
    const [requests, stats] = await Promise.all([api(`jobs/${jobId}/savepoints`), api(`jobs/${jobId}/checkpoints`)]);
    body = savepointsTab(requests, stats);
  } else if (tab === "config") body = configTab(await api(`jobs/${jobId}/config`));
  else body = graphTab(job);
  return el("div", { "data-testid": `job-page-${tab}` }, head, tabs, body);
}

async function jobAction(job, action) {
  const texts = {
    savepoint: ["Trigger a savepoint", `Write a savepoint of ${job.name} to the JobManager's savepoint directory? The job keeps running.`, "Trigger savepoint"],
    stop: ["Stop with a savepoint", `Stop ${job.name} after writing a savepoint? The job ends once the savepoint completes; it can be started again from it.`, "Stop job"],
    cancel: ["Cancel the job", `Cancel ${job.name} now, without a savepoint? Its retained checkpoints stay on disk.`, "Cancel job"],
  };
  const [title, text, ok] = texts[action];
  if (!(await confirmAction(title, text, ok))) return;
  try {
    if (action === "cancel") {
      await api(`jobs/${job.jid}?mode=cancel`, { method: "PATCH" });
      toast(`Cancelling ${job.name}.`);
    } else {
      const path = action === "stop" ? `jobs/${job.jid}/stop` : `jobs/${job.jid}/savepoints`;
      const r = await api(path, { method: "POST", body: {} });
      toast(`${action === "stop" ? "Stop-with-savepoint" : "Savepoint"} ${r.request_id.slice(0, 8)} started; see the Savepoints tab.`);
    }
  } catch (e) {
    toast(e.message, "error");
  }
  refresh();
}

// -- the job graph -----------------------------------------------------------------------

// A layered (Sugiyama-style) layout, enough for job graphs: a vertex's layer is its
// longest path from a source; inside a layer, vertices are ordered by the mean position
// of their inputs (a few sweeps), which keeps edge crossings low for these small graphs.
function layout(vertices) {
  const byId = new Map(vertices.map((v) => [v.id, v]));
  const layer = new Map();
  const depth = (v, seen) => {
    if (layer.has(v.id)) return layer.get(v.id);
    if (seen.has(v.id)) return 0; // a cycle cannot happen in a job graph; do not loop on one
    seen.add(v.id);
    const inputs = v.inputs.map((e) => byId.get(e.id)).filter(Boolean);
    const d = inputs.length ? 1 + Math.max(...inputs.map((u) => depth(u, seen))) : 0;
    layer.set(v.id, d);
    return d;
  };
  vertices.forEach((v) => depth(v, new Set()));
  const layers = [];
  for (const v of vertices) (layers[layer.get(v.id)] ||= []).push(v);
  const pos = new Map();
  layers.forEach((l) => l.forEach((v, i) => pos.set(v.id, i)));
  for (let sweep = 0; sweep < 4; sweep += 1) {
    for (const l of layers.slice(1)) {
      const key = (v) => {
        const ins = v.inputs.filter((e) => pos.has(e.id));
        return ins.length ? ins.reduce((s, e) => s + pos.get(e.id), 0) / ins.length : pos.get(v.id);
      };
      l.sort((a, b) => key(a) - key(b));
      l.forEach((v, i) => pos.set(v.id, i));
    }
  }
  return { layers, layer, pos };
}

function rate(v, now) {
  const last = previous.get(v.id);
  previous.set(v.id, { t: now, busy: v.busy_ms, bp: v.backpressured_ms, rin: v.records_in });
  if (!last || now <= last.t) return null;
  const span = (now - last.t) * v.parallelism;
  const clamp = (x) => Math.max(0, Math.min(1, x));
  return {
    busy: clamp((v.busy_ms - last.busy) / span),
    bp: clamp((v.backpressured_ms - last.bp) / span),
    rps: Math.max(0, (v.records_in - last.rin) / ((now - last.t) / 1000)),
  };
}

function busyColour(x) {
  // Flink's convention: idle blue to busy red.
  const h = 210 - 210 * x;
  return `hsl(${h}, 65%, ${92 - 22 * x}%)`;
}

function graphTab(job) {
  const now = Date.now();
  const W = 214, H = 132, GX = 64, GY = 24, PAD = 20;
  const { layers, layer, pos } = layout(job.vertices);
  const tallest = Math.max(...layers.map((l) => l.length));
  const width = PAD * 2 + layers.length * W + (layers.length - 1) * GX;
  const height = PAD * 2 + tallest * H + (tallest - 1) * GY;
  const place = (v) => {
    const l = layers[layer.get(v.id)];
    const offset = ((tallest - l.length) * (H + GY)) / 2;
    return { x: PAD + layer.get(v.id) * (W + GX), y: PAD + offset + pos.get(v.id) * (H + GY) };
  };
  // Wide graphs scale down to the page's width rather than scroll.
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, style: `width:100%;max-width:${width}px;height:auto`,
    "data-testid": "job-graph", role: "img" });
  root.append(svg("defs", {}, svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5,
    markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" }, svg("path", { d: "M0,0 L10,5 L0,10 z", fill: "#8496aa" }))));
  const byId = new Map(job.vertices.map((v) => [v.id, v]));
  for (const v of job.vertices) {
    const b = place(v);
    for (const e of v.inputs) {
      if (!byId.has(e.id)) continue;
      const a = place(byId.get(e.id));
      const x1 = a.x + W, y1 = a.y + H / 2, x2 = b.x - 2, y2 = b.y + H / 2, mx = (x1 + x2) / 2;
      root.append(svg("path", { class: "edge", d: `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}`, "marker-end": "url(#arrow)" }));
      const label = svg("text", { class: "edge-label", x: mx, y: (y1 + y2) / 2 - 5, "text-anchor": "middle" });
      label.textContent = e.ship_strategy.toUpperCase();
      root.append(label);
    }
  }
  const rows = [];
  for (const v of job.vertices) {
    const { x, y } = place(v);
    const r = rate(v, now);
    const g = svg("g", { class: "node", transform: `translate(${x},${y})`, "data-testid": "vertex", "data-vertex": v.id });
    const title = svg("title", {});
    title.textContent = `${v.name}\n${v.operators.join(", ")}`;
    g.append(title);
    g.append(svg("rect", { width: W, height: H, rx: 8, style: r ? `fill:${busyColour(r.busy)}` : "" }));
    const text = (cls, ty, s) => { const t = svg("text", { class: cls, x: 12, y: ty }); t.textContent = s; return t; };
    const name = v.name.length > 28 ? `${v.name.slice(0, 27)}…` : v.name;
    g.append(text("title", 22, name));
    g.append(text("line", 42, `Parallelism ${v.parallelism} · ${v.status}`));
    g.append(text("line", 60, `In ${fmtCount(v.records_in)} · out ${fmtCount(v.records_out)} records`));
    g.append(text("line", 78, r ? `${fmtCount(Math.round(r.rps))} records/s in` : "measuring rate…"));
    const bar = (ty, label, x) => {
      g.append(text("line", ty, `${label} ${x === null ? "—" : `${Math.round(x * 100)}%`}`));
      g.append(svg("rect", { class: "bar-bg", x: 132, y: ty - 9, width: W - 144, height: 9, rx: 3 }));
      if (x !== null) g.append(svg("rect", { x: 132, y: ty - 9, width: (W - 144) * x, height: 9, rx: 3, fill: label === "Busy" ? "#d84315" : "#6a1b9a" }));
    };
    bar(100, "Busy", r ? r.busy : null);
    bar(120, "Backpressure", r ? r.bp : null);
    root.append(g);
    rows.push(el("tr", { "data-testid": "vertex-row" },
      el("td", {}, v.name), el("td", { class: "num" }, v.parallelism), el("td", {}, badge(v.status)),
      el("td", { class: "num" }, fmtCount(v.records_in)), el("td", { class: "num" }, fmtCount(v.records_out)),
      el("td", { class: "num" }, r ? `${Math.round(r.busy * 100)}%` : "—"),
      el("td", { class: "num" }, r ? `${Math.round(r.bp * 100)}%` : "—"),
      el("td", { class: "num" }, fmtDuration(v.busy_ms)), el("td", { class: "num" }, fmtDuration(v.backpressured_ms))));
  }
  return el("div", {},
    el("div", { class: "graph" }, root),
    el("h2", {}, "Vertices"),
    table(["Name", ["Parallelism", "num"], "Status", ["Records in", "num"], ["Records out", "num"],
      ["Busy", "num"], ["Back-pressured", "num"], ["Busy time (total)", "num"], ["Back-pressured (total)", "num"]], rows, "vertices-table"));
}

// -- checkpoints -------------------------------------------------------------------------

function durationChart(history) {
  const items = history.slice(0, 30).reverse();
  if (!items.length) return null;
  const W = 720, H = 110, P = 24;
  const max = Math.max(1, ...items.map((h) => h.duration_ms));
  const bw = Math.min(24, (W - 2 * P) / items.length - 4);
  const root = svg("svg", { width: W, height: H + 20, viewBox: `0 0 ${W} ${H + 20}`, "data-testid": "checkpoint-chart" });
  items.forEach((h, i) => {
    const bh = Math.max(2, (h.duration_ms / max) * (H - P));
    const x = P + i * (bw + 4);
    const cls = h.status === "FAILED" ? "failed" : h.kind === "savepoint" ? "savepoint" : "ok";
    const rect = svg("rect", { class: cls, x, y: H - bh, width: bw, height: bh, rx: 2 });
    const t = svg("title", {});
    t.textContent = `#${h.id} ${h.kind} ${h.status}: ${fmtDuration(h.duration_ms)}, ${fmtBytes(h.bytes)}`;
    rect.append(t);
    root.append(rect);
    if (items.length <= 16 || i % 2 === 0) {
      const label = svg("text", { x: x + bw / 2, y: H + 14, "text-anchor": "middle" });
      label.textContent = `#${h.id}`;
      root.append(label);
    }
  });
  const top = svg("text", { x: P, y: 12 });
  top.textContent = `duration, max ${fmtDuration(max)}`;
  root.append(top);
  return el("div", { class: "panel chart" }, root);
}

function checkpointsTab(stats) {
  const c = stats.counts;
  const latest = stats.latest_completed;
  const restored = stats.latest_restored;
  const cfg = stats.config;
  const rows = [];
  for (const h of stats.history) {
    const open = expanded.has(h.id);
    rows.push(el("tr", { class: "clickable", "data-testid": "checkpoint-row", "data-status": h.status, "data-kind": h.kind,
      onclick: () => { if (open) expanded.delete(h.id); else expanded.add(h.id); refresh(); } },
    el("td", { class: "num" }, `${open ? "▾" : "▸"} ${h.id}`),
    el("td", {}, h.kind), el("td", {}, badge(h.status)),
    el("td", {}, fmtTime(h.trigger_timestamp)),
    el("td", { class: "num" }, fmtDuration(h.duration_ms)),
    el("td", { class: "num" }, fmtBytes(h.bytes)),
    el("td", { class: "num" }, fmtDuration(h.alignment_ms)),
    el("td", { "data-testid": "checkpoint-unaligned" }, h.unaligned ? "unaligned" : "aligned"),
    el("td", { class: "num", "data-testid": "checkpoint-persisted" }, fmtBytes(h.persisted_data_bytes || 0)),
    el("td", { class: "num" }, h.subtasks.length),
    el("td", { class: "failure" }, h.failure || "")));
    if (open) {
      rows.push(el("tr", { class: "detail" }, el("td", { colspan: 11 },
        h.subtasks.length
          ? el("table", { "data-testid": "subtask-table" },
            el("thead", {}, el("tr", {}, ["Vertex", "Subtask", "Acknowledged after", "State size", "Sync", "Async", "Alignment", "In-flight data"]
              .map((x, i) => el("th", { class: i > 1 ? "num" : null }, x)))),
            el("tbody", {}, h.subtasks.slice().sort((a, b) => a.vertex.localeCompare(b.vertex) || a.subtask - b.subtask).map((s) => el("tr", {},
              el("td", {}, s.vertex), el("td", {}, s.subtask),
              el("td", { class: "num" }, fmtDuration(s.ack_ms)), el("td", { class: "num" }, fmtBytes(s.bytes)),
              el("td", { class: "num" }, fmtDuration(s.sync_ms)), el("td", { class: "num" }, fmtDuration(s.async_ms)),
              el("td", { class: "num" }, fmtDuration(s.alignment_ms)),
              el("td", { class: "num" }, s.unaligned ? fmtBytes(s.persisted_data_bytes || 0) : "aligned")))))
          : el("div", { class: "muted" }, "No subtask acknowledged this checkpoint."))));
    }
  }
  return el("div", {},
    el("div", { class: "cards", style: "margin-top:16px" },
      el("div", { class: "card" }, el("div", { class: "label" }, "Completed"), el("div", { class: "value", "data-testid": "count-completed" }, c.completed)),
      el("div", { class: "card" }, el("div", { class: "label" }, "Failed"), el("div", { class: "value", "data-testid": "count-failed" }, c.failed)),
      el("div", { class: "card" }, el("div", { class: "label" }, "In progress"), el("div", { class: "value" }, c.in_progress))),
    el("div", { class: "grid2" },
      el("div", {}, el("h2", {}, "Latest completed"), el("div", { class: "panel" }, latest
        ? kv([["Id", latest.id], ["Completed at", fmtTime(latest.trigger_timestamp + latest.duration_ms)],
          ["Duration", fmtDuration(latest.duration_ms)], ["Size", fmtBytes(latest.bytes)],
          ["Alignment", fmtDuration(latest.alignment_ms)], ["Path", el("code", {}, latest.path)]], "latest-completed")
        : el("div", { class: "empty" }, "No completed checkpoint yet."))),
      el("div", {}, el("h2", {}, "Latest restore"), el("div", { class: "panel", "data-testid": "latest-restore" }, restored
        ? kv([["Id", restored.id], ["Kind", restored.kind], ["Restored at", fmtTime(restored.restore_timestamp)],
          ["Attempt", restored.attempt], ["Path", el("code", {}, restored.path)]], "latest-restore-kv")
        : el("div", { class: "empty" }, "This attempt did not restore state.")))),
    el("h2", {}, "Durations"),
    durationChart(stats.history),
    el("h2", {}, "History"),
    table([["Id", "num"], "Kind", "Status", "Triggered", ["Duration", "num"], ["Size", "num"], ["Alignment", "num"], "Barriers", ["In-flight data", "num"], ["Acks", "num"], "Failure"],
      rows, "checkpoint-history"),
    el("h2", {}, "Configuration"),
    el("div", { class: "panel" }, cfg ? kv([
      ["Checkpointing", cfg.enabled ? "enabled" : "disabled"], ["Mode", cfg.mode],
      ["Interval", fmtDuration(cfg.interval_ms)], ["Timeout", fmtDuration(cfg.timeout_ms)],
      ["Minimum pause", fmtDuration(cfg.min_pause_ms)], ["Max concurrent", cfg.max_concurrent],
      ["Tolerable failures", cfg.tolerable_failures], ["Retained", cfg.retained],
      ["Unaligned", cfg.unaligned ? (cfg.aligned_checkpoint_timeout_ms ? `after ${fmtDuration(cfg.aligned_checkpoint_timeout_ms)} aligned` : "yes") : "no"]], "checkpoint-config")
      : el("div", { class: "empty" }, "Not reported.")));
}

function exceptionsTab(ex) {
  return el("div", {},
    el("h2", {}, "Root exception"),
    ex.root_exception ? el("pre", { class: "trace", "data-testid": "root-exception" }, ex.root_exception)
      : el("div", { class: "panel" }, el("div", { class: "empty" }, "The job has not failed.")),
    el("h2", {}, "History"),
    table(["Time", ["Attempt", "num"], "Cause"], ex.history.map((e) => el("tr", { "data-testid": "exception-row" },
      el("td", { style: "white-space:nowrap" }, fmtTime(e.timestamp)),
      el("td", { class: "num" }, e.attempt),
      el("td", {}, el("pre", { class: "trace" }, e.cause)))), "exceptions-table"));
}

function savepointsTab(requests, stats) {
  const done = stats.history.filter((h) => h.kind === "savepoint");
  return el("div", {},
    el("h2", {}, "Requests"),
    table(["Request", "Operation", "Triggered", "Status", "Location", "Failure"], requests.requests.map((r) =>
      el("tr", { "data-testid": "savepoint-row", "data-status": r.status },
        el("td", { class: "mono" }, r.request_id.slice(0, 12)), el("td", {}, r.operation),
        el("td", {}, fmtTime(r.trigger_timestamp)), el("td", {}, badge(r.status)),
        el("td", {}, r.location ? el("code", {}, r.location) : "—"),
        el("td", { class: "failure" }, r.failure_cause || ""))), "savepoints-table"),
    el("p", { class: "muted" }, "Requests are remembered by the JobManager that received them (not across a failover)."),
    el("h2", {}, "Savepoints in the checkpoint history"),
    table([["Id", "num"], "Status", "Triggered", ["Duration", "num"], ["Size", "num"], "Failure"], done.map((h) =>
      el("tr", {}, el("td", { class: "num" }, h.id), el("td", {}, badge(h.status)), el("td", {}, fmtTime(h.trigger_timestamp)),
        el("td", { class: "num" }, fmtDuration(h.duration_ms)), el("td", { class: "num" }, fmtBytes(h.bytes)),
        el("td", { class: "failure" }, h.failure || ""))), "savepoint-history"));
}

function configTab(cfg) {
  const options = Object.entries(cfg.config);
  return el("div", {},
    el("h2", {}, "Job"),
    el("div", { class: "panel" }, kv([["Name", cfg.name], ["Job id", el("code", {}, cfg.jid)],
      ["Entrypoint", el("code", {}, cfg.entrypoint)], ["Arguments", cfg.args.length ? el("code", {}, cfg.args.join(" ")) : "none"],
      ["Parallelism", cfg.parallelism], ["Max parallelism", cfg.max_parallelism],
      ["Restart strategy", cfg.restart_strategy],
      ["Restored from (at submission)", cfg.savepoint_path ? el("code", {}, cfg.savepoint_path) : "none"],
      ["Allow non-restored state", cfg.allow_non_restored_state ? "yes" : "no"]], "job-config")),
    el("h2", {}, "Submitted options"),
    table(["Key", "Value"], options.map(([k, v]) => el("tr", {}, el("td", { class: "mono" }, k), el("td", { class: "mono" }, v))), "config-options"));
}

window.addEventListener("hashchange", () => { previous.clear(); refresh(); });
document.addEventListener("DOMContentLoaded", refresh);
