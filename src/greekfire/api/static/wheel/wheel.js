// The wheel dashboard: loads /v1/wheel/* once, then applies the `wheel` topic of /v1/wheel/stream live.
// No library: tables are plain DOM, charts plain SVG.
"use strict";

const TOKEN_KEY = "greekfire.wheel.token";
const SVG = "http://www.w3.org/2000/svg";
const model = { transitions: new Map(), states: [], positions: [], equity: [], performance: {} };
let socket = null;
let retryMs = 1000;

const $ = (id) => document.getElementById(id);
const token = () => sessionStorage.getItem(TOKEN_KEY);

function showLogin(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  if (socket) { socket.onclose = null; socket.close(); socket = null; }
  $("dashboard").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  setLive(false);
}

async function api(path) {
  const r = await fetch(path, { headers: { Authorization: "Bearer " + token() } });
  if (r.status === 401) { showLogin("Session expired: enter the key again."); throw new Error("401"); }
  if (!r.ok) throw new Error(path + ": HTTP " + r.status);
  return r.json();
}

$("login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const r = await fetch("/token", { method: "POST", headers: { "Content-Type": "application/json" },
                                    body: JSON.stringify({ api_key: $("api-key").value.trim() }) });
  if (!r.ok) { $("login-error").textContent = r.status === 401 ? "Invalid API key." : "Login failed (HTTP " + r.status + ")."; return; }
  sessionStorage.setItem(TOKEN_KEY, (await r.json()).access_token);
  $("api-key").value = "";
  start();
});

async function start() {
  if (!token()) { showLogin(); return; }
  $("login").hidden = true;
  try {
    const [positions, states, transitions, equity, performance] = await Promise.all(
      ["positions", "states", "transitions?limit=50", "equity", "performance"].map((p) => api("/v1/wheel/" + p)));
    apply({ kind: "snapshot", positions, states, transitions, equity, equity_reset: true, performance }, false);
  } catch (e) {
    if (e.message !== "401") { $("updated").textContent = String(e); }
    if (!token()) return;
  }
  $("dashboard").hidden = false;
  connect();
}

// ------------------------------------------------------------------------------------ live updates
function setLive(on) {
  $("live").textContent = on ? "live" : "offline";
  $("live").className = "pill " + (on ? "on" : "off");
}

function connect() {
  const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host +
    "/v1/wheel/stream?token=" + encodeURIComponent(token());
  socket = new WebSocket(url);
  socket.onopen = () => { retryMs = 1000; socket.send(JSON.stringify({ op: "subscribe", topics: ["wheel"] })); };
  socket.onmessage = (ev) => {
    const msg = JSON.parse(ev.data);
    if (msg.topic === "subscribed") { setLive(true); return; }
    if (msg.topic === "wheel") { setLive(true); apply(msg.data, msg.data.kind === "update"); }
  };
  socket.onclose = (ev) => {
    setLive(false);
    socket = null;
    if (ev.code === 1008) { showLogin("Session expired: enter the key again."); return; }
    setTimeout(connect, retryMs);
    retryMs = Math.min(retryMs * 2, 15000);
  };
}

function apply(d, live) {
  let fresh = [];
  if (d.transitions) {
    for (const t of d.transitions) {
      const k = tkey(t);
      if (!model.transitions.has(k)) { model.transitions.set(k, t); fresh.push(k); }
    }
    const keep = [...model.transitions.values()].sort((a, b) => order(b) - order(a)).slice(0, 100);
    model.transitions = new Map(keep.map((t) => [tkey(t), t]));
  }
  if (d.states) model.states = d.states;
  if (d.positions) model.positions = d.positions;
  if (d.performance) model.performance = d.performance;
  if (d.equity) model.equity = d.equity_reset ? d.equity : model.equity.concat(d.equity);
  render(live ? new Set(fresh) : new Set());
  $("updated").textContent = "updated " + new Date().toISOString().slice(11, 19) + " UTC";
}

const tkey = (t) => (t.id !== undefined && t.id !== null) ? "id:" + t.id : [t.ts_ns, t.symbol, t.event, t.new].join("|");
const order = (t) => (t.id !== undefined && t.id !== null) ? Number(t.id) : Number(t.ts_ns) / 1e9;

// ------------------------------------------------------------------------------------ formatting
const money = new Intl.NumberFormat("en-US", { maximumFractionDigits: 2, minimumFractionDigits: 2 });
const money0 = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
function fmtTime(ns) {
  if (ns === null || ns === undefined) return "";
  return new Date(Number(ns) / 1e6).toISOString().replace("T", " ").slice(0, 19);
}
function fmtMetric(key, v) {
  if (v === null || v === undefined) return "–";
  if (typeof v !== "number") return String(v);
  const k = key.toLowerCase();
  if (/return|cagr|vol|drawdown|rate|yield|win|turnover/.test(k) && !/days/.test(k)) return (100 * v).toFixed(2) + "%";
  if (/sharpe|sortino|calmar|ratio/.test(k)) return v.toFixed(2);
  if (/days|count|trades|n_/.test(k)) return money0.format(v);
  return money.format(v);
}
const label = (k) => k.replace(/_/g, " ");
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else if (k.startsWith("data-")) e.setAttribute(k, v); else e[k] = v;
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(c === null || c === undefined ? "" : String(c)));
  return e;
}
const sign = (v) => (typeof v === "number" ? (v > 0 ? "pos" : v < 0 ? "neg" : "") : "");

// ------------------------------------------------------------------------------------ rendering
function render(fresh) {
  renderPerformance();
  renderStates();
  renderPositions();
  renderTransitions(fresh);
  const eq = model.equity.filter((r) => typeof r.equity === "number");
  lineChart($("equity-chart"), eq.map((r) => [r.date, r.equity]), "var(--blue)", false);
  const base = eq.length ? eq[0].equity : 0;
  lineChart($("pnl-chart"), eq.map((r) => [r.date, r.equity - base]), null, true);
}

function renderPerformance() {
  const box = $("performance");
  box.replaceChildren();
  for (const [k, v] of Object.entries(model.performance)) {
    if (v !== null && typeof v === "object") continue;
    box.append(el("div", { class: "card", "data-key": k }, el("div", { class: "k" }, label(k)),
                  el("div", { class: "v " + (/pnl|return/.test(k) ? sign(v) : "") }, fmtMetric(k, v))));
  }
}

function renderStates() {
  const box = $("states");
  box.replaceChildren();
  for (const s of model.states) {
    box.append(el("div", { class: "state-tile", "data-symbol": s.symbol },
      el("div", { class: "sym" }, s.symbol),
      el("span", { class: "state " + s.state }, s.state),
      el("div", { class: "why" }, [s.event, s.reason].filter(Boolean).join(": ")),
      el("div", { class: "why" }, (s.since_ns ?? s.ts_ns) ? "since " + fmtTime(s.since_ns ?? s.ts_ns) : "")));
  }
  if (!model.states.length) box.append(el("p", { class: "dim" }, "No underlying has a state yet."));
}

const POSITION_COLUMNS = ["symbol", "instrument", "right", "strike", "expiry", "qty", "avg_cost", "mark",
                          "market_value", "unrealized_pnl", "premium"];
function renderPositions() {
  const rows = model.positions;
  const keys = new Set(rows.flatMap((r) => Object.keys(r)));
  const cols = POSITION_COLUMNS.filter((c) => keys.has(c))
    .concat([...keys].filter((c) => !POSITION_COLUMNS.includes(c) && c !== "id" && !c.endsWith("_ns")));
  const t = $("positions");
  t.tHead.replaceChildren(el("tr", {}, ...cols.map((c) => el("th", {}, label(c)))));
  t.tBodies[0].replaceChildren(...rows.map((r) => el("tr", { "data-symbol": r.symbol },
    ...cols.map((c) => {
      const v = r[c];
      const txt = c === "right" ? ({ P: "put", C: "call" }[v] || v || "shares")
        : typeof v === "number" && c !== "qty" ? money.format(v) : v;
      return el("td", { class: /pnl/.test(c) ? sign(v) : "" }, txt);
    }))));
  $("positions-empty").hidden = rows.length > 0;
}

function renderTransitions(fresh) {
  const rows = [...model.transitions.entries()].sort((a, b) => order(b[1]) - order(a[1]));
  $("transitions").tBodies[0].replaceChildren(...rows.map(([k, t]) => el("tr",
    { class: fresh.has(k) ? "new" : "", "data-id": t.id ?? k, "data-symbol": t.symbol, "data-event": t.event },
    el("td", {}, fmtTime(t.ts_ns)), el("td", {}, t.symbol),
    el("td", {}, el("span", { class: "state " + t.old }, t.old)),
    el("td", {}, el("span", { class: "state " + t.new }, t.new)),
    el("td", {}, t.event), el("td", { class: "reason" }, t.reason))));
}

// points: [[label, value], ...]; color: a fixed stroke, or null for green/red by the last value
function lineChart(box, points, color, zeroLine) {
  const W = 600, H = 220, L = 64, R = 10, T = 10, B = 24;
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("preserveAspectRatio", "none");
  const add = (tag, attrs, text) => {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    svg.append(e);
    return e;
  };
  if (points.length < 1) {
    add("text", { x: W / 2, y: H / 2, "text-anchor": "middle" }, "no snapshots yet");
    box.replaceChildren(svg);
    return;
  }
  const ys = points.map((p) => p[1]);
  let lo = Math.min(...ys, zeroLine ? 0 : Infinity), hi = Math.max(...ys, zeroLine ? 0 : -Infinity);
  if (hi === lo) { hi += 1; lo -= 1; }
  const pad = (hi - lo) * 0.05; hi += pad; lo -= pad;
  const x = (i) => L + (points.length === 1 ? (W - L - R) / 2 : (i * (W - L - R)) / (points.length - 1));
  const y = (v) => T + ((hi - v) * (H - T - B)) / (hi - lo);
  for (const v of [lo + pad, (lo + hi) / 2, hi - pad]) {
    add("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "axis" });
    add("text", { x: L - 6, y: y(v) + 3, "text-anchor": "end" }, money0.format(v));
  }
  if (zeroLine) add("line", { x1: L, x2: W - R, y1: y(0), y2: y(0), stroke: "var(--dim)", "stroke-dasharray": "3 3" });
  add("text", { x: L, y: H - 6 }, points[0][0]);
  add("text", { x: W - R, y: H - 6, "text-anchor": "end" }, points[points.length - 1][0]);
  const stroke = color || (ys[ys.length - 1] >= 0 ? "var(--green)" : "var(--red)");
  const d = points.map((p, i) => (i ? "L" : "M") + x(i).toFixed(1) + " " + y(p[1]).toFixed(1)).join(" ");
  if (zeroLine) {
    add("path", { d: d + ` L${x(points.length - 1).toFixed(1)} ${y(0)} L${x(0).toFixed(1)} ${y(0)} Z`,
                  fill: stroke, "fill-opacity": "0.15", stroke: "none" });
  }
  add("path", { d, fill: "none", stroke, "stroke-width": 2, "vector-effect": "non-scaling-stroke" });
  if (points.length === 1) add("circle", { cx: x(0), cy: y(ys[0]), r: 3, fill: stroke });
  box.replaceChildren(svg);
}

start();
