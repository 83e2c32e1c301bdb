// edgefleet dashboard: polls the fleet REST API (/api/v1) with the operator's token and
// renders devices, rollouts, model versions, the alerts feed, the newest shadow rollout
// (champion vs challenger) and SVG plots.
"use strict";

const REFRESH_MS = 3000;
const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777"];
let token = sessionStorage.getItem("edgefleet-token") || "";
let timer = null;

function $(sel) { return document.querySelector(sel); }

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(c == null ? "" : String(c)));
  return node;
}

function when(ts) {
  if (!ts) return "-";
  return new Date(ts * 1000).toISOString().replace("T", " ").slice(0, 19);
}

function banner(id, text) {
  const node = $(id);
  node.textContent = text || "";
  node.hidden = !text;
}

async function api(path, options = {}) {
  const headers = { Authorization: "Bearer " + token };
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch("/api/v1" + path, {
    method: options.method || "GET",
    headers,
    body: options.body === undefined ? undefined : JSON.stringify(options.body),
  });
  let data = null;
  try { data = await resp.json(); } catch (e) { data = null; }
  if (!resp.ok) {
    const err = new Error((data && data.error) || ("HTTP " + resp.status));
    err.fix = data && data.fix;
    err.status = resp.status;
    throw err;
  }
  return data;
}

// Every item of a paged list (fleet/paging.py): follows `next` until the last page.
async function all(path) {
  const items = [];
  let cursor = null;
  do {
    const sep = path.includes("?") ? "&" : "?";
    const page = await api(path + sep + "limit=1000" + (cursor ? "&cursor=" + encodeURIComponent(cursor) : ""));
    items.push(...page.items);
    cursor = page.next;
  } while (cursor);
  return items;
}

// The newest `n` items of a list whose pages come newest first (drift windows, telemetry), oldest first for plotting.
async function newest(path, n) {
  const items = [];
  let cursor = null;
  do {
    const page = await api(path + "?limit=1000" + (cursor ? "&cursor=" + encodeURIComponent(cursor) : ""));
    items.push(...page.items);
    cursor = page.next;
  } while (cursor && items.length < n);
  return items.slice(0, n).reverse();
}

function fillTable(id, rows) {
  const body = $(id + " tbody");
  body.replaceChildren(...rows);
}

// The newest row per device (alarms, pools of frames collecting towards the next window).
function newestByDevice(rows) {
  const out = {};
  for (const r of rows) {
    if (!out[r.device] || r.updated_at > out[r.device].updated_at) out[r.device] = r;
  }
  return out;
}

// "alarm (6.680)", "collecting: 40 of 100 frames", or both: a slow camera is judged once its
// telemetry windows add up to a drift window, and says so until then instead of showing nothing.
function driftText(a, c) {
  const parts = [];
  if (a) parts.push(a.state + (a.score != null ? " (" + a.score.toFixed(3) + ")" : ""));
  if (c) parts.push("collecting: " + c.frames + " of " + c.target + " frames");
  return parts.join(" · ") || "-";
}

function renderDevices(devices, alarms, collecting) {
  const drift = newestByDevice(alarms), pools = newestByDevice(collecting);
  fillTable("#devices", devices.map((d) => {
    const a = drift[d.id];
    return el("tr", { "data-device": d.id },
      el("td", {}, d.id),
      el("td", { class: "status " + d.status }, d.status),
      el("td", { class: "version" }, d.model ? d.model.name + " " + d.model.version : "-"),
      el("td", { class: "last-seen" }, when(d.last_seen)),
      el("td", { class: "drift state-" + (a ? a.state : "none") }, driftText(a, pools[d.id])));
  }));
  $("#count-online").textContent = devices.filter((d) => d.status === "online").length;
  $("#count-offline").textContent = devices.filter((d) => d.status === "offline").length;
  $("#count-alarms").textContent = alarms.filter((a) => a.state === "alarm" || a.state === "recovering").length;
}

async function act(label, fn) {
  banner("#error", "");
  try {
    await fn();
    banner("#notice", label + ": done");
  } catch (e) {
    banner("#error", label + " failed: " + e.message + (e.fix ? " (" + e.fix + ")" : ""));
  }
  refresh();
}

function rolloutButtons(r) {
  const actions = { created: ["pause", "abort"], deploying: ["pause", "abort"], baking: ["pause", "abort"], paused: ["resume", "abort"], shadowing: ["promote", "stop"] }[r.state] || [];
  return el("td", {}, ...actions.map((a) => el("button", {
    "data-action": a,
    onclick: () => act(a + " rollout " + r.id, () => api("/rollouts/" + r.id + "/" + a, { method: "POST", body: { reason: "from the dashboard" } })),
  }, a)));
}

function renderRollouts(rollouts, lastEvents) {
  const active = rollouts.filter((r) => ["created", "deploying", "baking", "paused", "aborting", "shadowing"].includes(r.state));
  $("#count-rollouts").textContent = active.length;
  fillTable("#rollouts", rollouts.slice().reverse().map((r) => {
    const waves = r.waves || [];
    const installs = Object.entries(r.installs || {}).map(([k, v]) => k + " " + v).join(", ") || "-";
    const plan = r.plan || {};
    const gates = "success ≥ " + (plan.success_threshold ?? "-") + ", failure ≤ " + (plan.failure_threshold ?? "-");
    const detail = lastEvents[r.id] || r.reason || "";
    return el("tr", { "data-rollout": r.id },
      el("td", {}, r.id),
      el("td", {}, r.model.group + " " + r.model.version),
      el("td", { class: "state state-" + r.state }, r.state),
      el("td", { class: "wave" }, (r.wave + 1) + " / " + waves.length + (waves.length ? " (" + (waves[Math.max(r.wave, 0)] || 0) + " of " + r.devices + " devices)" : "")),
      el("td", { class: "installs" }, installs),
      el("td", { class: "gates", title: detail }, gates + (detail ? " — " + detail : "")),
      rolloutButtons(r));
  }));
}

function renderModels(groups, versionsByGroup) {
  const rows = [];
  for (const g of groups) {
    for (const v of versionsByGroup[g.name] || []) {
      const buttons = v.approval !== "Approved" ? [el("button", {
        "data-action": "approve",
        onclick: () => act("approve " + g.name + " " + v.version, () => api("/models/" + encodeURIComponent(g.name) + "/versions/" + encodeURIComponent(v.version) + "/approval", { method: "POST", body: { state: "Approved", note: "approved from the dashboard" } })),
      }, "approve")] : [];
      rows.push(el("tr", { "data-model": g.name + "/" + v.version },
        el("td", {}, g.name), el("td", {}, v.version),
        el("td", { class: "approval" }, v.approval),
        el("td", {}, (v.builds || []).map((b) => b.target).join(", ")),
        el("td", {}, ...buttons)));
    }
  }
  fillTable("#models", rows);
}

function renderAlerts(driftEvents, telemetry) {
  const items = driftEvents.map((e) => ({ at: e.at, cls: e.event === "raised" ? "state-alarm" : "state-ok",
    text: e.scope === "fleet"
      ? "fleet-wide drift alarm " + e.event + " on " + e.model.name + " " + e.model.version + " (" + e.drifting + " of " + e.devices + " devices drifting)"
      : "drift alarm " + e.event + " on " + e.device + " (" + e.model.name + " " + e.model.version + ", " + (e.feature || "-") + " " + e.score.toFixed(3) + ")" }));
  for (const t of telemetry) {
    if (t.alerts > 0) items.push({ at: t.at, cls: "", text: t.alerts + " alert(s) from " + t.device });
  }
  items.sort((a, b) => b.at - a.at);
  $("#alerts-feed").replaceChildren(...items.slice(0, 50).map((i) => el("li", { class: i.cls }, el("span", { class: "muted" }, when(i.at) + " "), i.text)));
}

// Alert events with their snapshots: the JPEG is fetched once per event with the token (an <img>
// cannot send it) and the camera's boxes are drawn over it in frame pixels.
const snapshotUrls = {};
let shownEvents = "";

function snapshotUrl(e) {
  if (!e.snapshot || !e.snapshot.stored) return Promise.resolve(null);
  if (!(e.id in snapshotUrls)) {
    snapshotUrls[e.id] = fetch("/api/v1/alerts/" + e.id + "/snapshot", { headers: { Authorization: "Bearer " + token } })
      .then((r) => (r.ok ? r.blob() : null))
      .then((b) => (b ? URL.createObjectURL(b) : null));
  }
  return snapshotUrls[e.id];
}

function boxesSvg(e) {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("class", "boxes");
  if (!e.frame_size) return svg;
  const [w, h] = e.frame_size;
  svg.setAttribute("viewBox", "0 0 " + w + " " + h);
  svg.setAttribute("preserveAspectRatio", "none");
  for (const b of e.boxes) {
    const px = b.box_px || [b.box[0] * w, b.box[1] * h, b.box[2] * w, b.box[3] * h];
    const rect = document.createElementNS("http://www.w3.org/2000/svg", "rect");
    for (const [k, v] of Object.entries({ x: px[0], y: px[1], width: px[2] - px[0], height: px[3] - px[1], "data-label": b.label })) rect.setAttribute(k, v);
    const title = document.createElementNS("http://www.w3.org/2000/svg", "title");
    title.textContent = b.label + " " + b.score.toFixed(2);
    rect.append(title);
    svg.append(rect);
  }
  return svg;
}

async function renderEvents(page) {
  $("#events-total").textContent = "(" + page.items.length + " newest" + (page.next ? ", more in the API" : "") + ")";
  const key = page.items.map((e) => e.id + ":" + (e.snapshot ? e.snapshot.stored : "-")).join(",");
  if (key === shownEvents) return; // unchanged: keep the images as they are
  const cards = await Promise.all(page.items.map(async (e) => {
    const url = await snapshotUrl(e);
    const frame = url
      ? el("div", { class: "frame" }, el("img", { src: url, alt: "snapshot of alert " + e.id }), boxesSvg(e))
      : el("div", { class: "no-snapshot muted" }, e.snapshot ? "snapshot not uploaded yet" : "no snapshot");
    const model = e.model ? e.model.name + " " + e.model.version : "-";
    return el("figure", { "data-event": e.id }, frame,
      el("figcaption", {}, el("b", {}, e.label + " " + e.score.toFixed(2)), " " + e.device + " · " + when(e.received_at) + " · " + model,
        el("div", { class: "muted" }, e.rule || "")));
  }));
  $("#events").replaceChildren(...cards);
  shownEvents = key;
  // Free the images of events no longer shown (the page may stay open for days).
  const shown = new Set(page.items.map((e) => String(e.id)));
  for (const id of Object.keys(snapshotUrls)) {
    if (!shown.has(id)) {
      snapshotUrls[id].then((url) => url && URL.revokeObjectURL(url));
      delete snapshotUrls[id];
    }
  }
}

async function refreshEvents() {
  const params = new URLSearchParams({ limit: "12" });
  for (const f of ["device", "label"]) {
    const v = $("#events-" + f).value.trim();
    if (v) params.set(f, v);
  }
  try {
    await renderEvents(await api("/alerts?" + params));
    banner("#events-error", "");
  } catch (e) {
    // A token whose scope does not cover alerts.read_scope still sees the rest of the page.
    banner("#events-error", "Alert events: " + e.message + (e.fix ? " (" + e.fix + ")" : ""));
  }
}

// A small SVG line chart: one series per device, optional dashed threshold line.
function plot(container, series, threshold) {
  const W = 900, H = 200, L = 44, B = 20;
  const points = Object.values(series).flat();
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", "0 0 " + W + " " + (H + B));
  svg.setAttribute("preserveAspectRatio", "none");
  const node = (tag, attrs) => {
    const n = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
    svg.append(n);
    return n;
  };
  if (!points.length) {
    node("text", { x: L, y: H / 2, fill: "#8a93a6" }).textContent = "no data yet";
    container.replaceChildren(svg);
    return;
  }
  const xs = points.map((p) => p[0]), ys = points.map((p) => p[1]);
  const x0 = Math.min(...xs), x1 = Math.max(...xs) || x0 + 1;
  const top = Math.max(...ys, threshold ? threshold * 1.5 : 0) * 1.1 || 1;
  const X = (x) => L + (x1 === x0 ? (W - L) / 2 : (x - x0) / (x1 - x0) * (W - L - 8));
  const Y = (y) => H - (y / top) * (H - 8);
  node("line", { x1: L, y1: H, x2: W, y2: H, stroke: "#ccd" });
  for (const f of [0, 0.5, 1]) {
    node("text", { x: 2, y: Y(top * f) + 4, "font-size": 11, fill: "#8a93a6" }).textContent = (top * f).toPrecision(2);
  }
  node("text", { x: L, y: H + 16, "font-size": 11, fill: "#8a93a6" }).textContent = when(x0);
  node("text", { x: W - 130, y: H + 16, "font-size": 11, fill: "#8a93a6" }).textContent = when(x1);
  if (threshold) node("line", { x1: L, y1: Y(threshold), x2: W, y2: Y(threshold), stroke: "#dc2626", "stroke-dasharray": "6 4", class: "threshold" });
  const legend = el("div", { class: "legend" });
  Object.entries(series).forEach(([name, pts], i) => {
    const color = COLORS[i % COLORS.length];
    node("polyline", { fill: "none", stroke: color, "stroke-width": 2, "data-series": name, points: pts.map((p) => X(p[0]).toFixed(1) + "," + Y(p[1]).toFixed(1)).join(" ") });
    if (pts.length === 1) node("circle", { cx: X(pts[0][0]), cy: Y(pts[0][1]), r: 4, fill: color, "data-series": name }); // a line of one point draws nothing
    legend.append(el("span", { style: "color:" + color }, "■ " + name));
  });
  container.replaceChildren(svg, legend);
}

function num(v, digits) { return v == null ? "-" : v.toFixed(digits); }

// Champion (the active model) vs challenger (the candidate) of the newest shadow rollout.
async function renderShadow(rollouts) {
  const r = rollouts.filter((x) => x.plan && x.plan.mode === "shadow").pop();
  if (!r) return;
  const v = await api("/rollouts/" + r.id + "/shadow");
  const t = v.total, active = v.groups.length ? v.groups[0].active : null;
  $("#shadow-title").textContent = "(rollout " + v.rollout + ", " + v.state + (v.promoted_to ? ", promoted to rollout " + v.promoted_to : "") + ")";
  $("#shadow").dataset.rollout = v.rollout;
  fillTable("#shadow-table", [
    el("tr", { "data-side": "champion" }, el("th", {}, "champion (active)"), el("td", {}, active ? active.name + " " + active.version : "-"),
      el("td", { class: "latency" }, num(t.active_latency_p50_ms, 1)), el("td", { class: "confidence" }, num(t.active_confidence, 3))),
    el("tr", { "data-side": "challenger" }, el("th", {}, "challenger (candidate)"), el("td", {}, v.candidate.name + " " + v.candidate.version),
      el("td", { class: "latency" }, num(t.candidate_latency_p50_ms, 1)), el("td", { class: "confidence" }, num(t.candidate_confidence, 3))),
  ]);
  $("#shadow-summary").replaceChildren(el("span", { class: "agreement" }, "agreement " + num(t.agreement, 3)),
    " over " + t.frames + " frames on " + t.devices + " devices · latency ratio " + num(t.latency_ratio, 2) + " · candidate drift " + (t.drift_alarm ? "ALARM" : "ok"));
  $("#shadow-gate").replaceChildren(el("li", { class: "verdict " + (v.verdict.passed ? "ok" : "fail") }, v.verdict.passed ? "passes its promotion gate" : "does not pass its promotion gate"),
    ...v.verdict.checks.map((c) => el("li", { class: c.ok ? "ok" : "fail", "data-check": c.name }, (c.ok ? "✓ " : "✗ ") + c.detail)));
  plot($("#shadow-agreement-plot"), byDevice(v.series, (p) => p.agreement), v.gate.min_agreement);
  plot($("#shadow-latency-plot"), {
    active: v.series.filter((p) => p.active_latency_p50_ms != null).map((p) => [p.at, p.active_latency_p50_ms]),
    candidate: v.series.filter((p) => p.candidate_latency_p50_ms != null).map((p) => [p.at, p.candidate_latency_p50_ms]),
  }, null);
}

function byDevice(rows, value) {
  const out = {};
  for (const r of rows) {
    const v = value(r);
    if (v == null) continue;
    (out[r.device] = out[r.device] || []).push([r.at, v]);
  }
  return out;
}

async function refresh() {
  clearTimeout(timer);
  if (!token) {
    banner("#error", "Enter an API token (edgefleet fleet tokens create) to load the fleet.");
    return;
  }
  try {
    const [devices, rollouts, groups, drift, windows, events, telemetry] = await Promise.all([
      all("/devices"), all("/rollouts"), all("/models"), api("/drift"), newest("/drift/windows", 2000), newest("/drift/events", 50), newest("/telemetry", 2000),
    ]);
    const versions = {};
    await Promise.all(groups.map(async (g) => { versions[g.name] = await all("/models/" + encodeURIComponent(g.name) + "/versions"); }));
    const lastEvents = {};
    await Promise.all(rollouts.filter((r) => r.state !== "succeeded").slice(-10).map(async (r) => {
      const ev = await all("/rollouts/" + r.id + "/events");
      const last = ev.filter((e) => e.detail).pop();
      if (last) lastEvents[r.id] = last.detail;
    }));
    renderDevices(devices, drift.alarms, drift.collecting || []);
    renderRollouts(rollouts, lastEvents);
    renderModels(groups, versions);
    renderAlerts(events, telemetry);
    await renderShadow(rollouts);
    await refreshEvents();
    plot($("#latency-plot"), byDevice(telemetry, (t) => t.latency_p95_ms), null);
    $("#drift-metric").textContent = "(" + drift.config.metric + ", alarm over " + drift.config.threshold + " for " + drift.config.windows_to_alarm + " windows)";
    plot($("#drift-plot"), byDevice(windows, (w) => w.score), drift.config.threshold);
    fillTable("#fleet-drift", drift.fleet.map((f) => el("tr", { "data-model": f.model.name + "/" + f.model.version },
      el("td", {}, f.model.name + " " + f.model.version), el("td", {}, f.devices), el("td", {}, f.frames),
      el("td", { class: "score " + (f.over ? "state-alarm" : "state-ok") }, f.score.toFixed(3)), el("td", {}, f.feature || "-"),
      el("td", { class: "alarm state-" + (f.state || "ok") }, f.state || "ok"))));
    $("#updated").textContent = "updated " + when(Date.now() / 1000);
    if (!$("#error").textContent.includes("failed:")) banner("#error", "");
    document.body.dataset.loaded = "true";
  } catch (e) {
    banner("#error", "Cannot load the fleet: " + e.message + (e.fix ? " (" + e.fix + ")" : ""));
  }
  timer = setTimeout(refresh, REFRESH_MS);
}

$("#events-filter").addEventListener("input", () => { shownEvents = ""; refresh(); });
$("#events-filter").addEventListener("submit", (ev) => ev.preventDefault());

$("#token-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  token = $("#token").value.trim();
  sessionStorage.setItem("edgefleet-token", token);
  banner("#notice", "");
  refresh();
});

refresh();
