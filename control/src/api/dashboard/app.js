// weir's operator dashboard: plain JavaScript, no library, no build step. It reads only the
// public API (/api/v1), follows /api/v1/events (server-sent events) and posts the CLI's actions.
// Everything from the API is written as text (textContent), never as HTML.
"use strict";

const API = "/api/v1";
const TOKEN_KEY = "weir.token";
const REFRESH_MS = 2000;
const SVG = "http://www.w3.org/2000/svg";

const view = { services: [], traffic: {}, detail: null, series: null, live: false, timer: null };

// ---- DOM helpers -------------------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "onclick") el.addEventListener("click", v);
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  for (const c of children) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

function fmtTime(ms) {
  return ms ? new Date(ms).toLocaleTimeString() : "";
}

function fmtDateTime(ms) {
  return ms ? new Date(ms).toLocaleString() : "";
}

function pct(x) {
  return (Math.round(x * 10) / 10).toFixed(1) + "%";
}

// ---- API ---------------------------------------------------------------------------------------

async function getJson(path) {
  const res = await fetch(API + path, { cache: "no-store", headers: { Accept: "application/json" } });
  if (!res.ok) throw new Error(path + ": " + res.status);
  return res.json();
}

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

async function askToken() {
  const dialog = document.getElementById("token");
  const input = document.getElementById("token-input");
  input.value = token() || "";
  const answer = await modal(dialog, input);
  if (answer === "ok" && input.value.trim() !== "") {
    sessionStorage.setItem(TOKEN_KEY, input.value.trim());
    return true;
  }
  return false;
}

function modal(dialog, focus) {
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue), { once: true });
    dialog.returnValue = "cancel";
    dialog.showModal();
    (focus || dialog.querySelector("button")).focus();
  });
}

async function confirmAction(text) {
  document.getElementById("confirm-text").textContent = text;
  return (await modal(document.getElementById("confirm"), document.getElementById("confirm-cancel"))) === "ok";
}

const ACTIONS = [
  { verb: "promote", label: "Promote" },
  { verb: "promote", full: true, label: "Promote full", confirm: "Promote {name} fully, skipping every remaining step and analysis?" },
  { verb: "pause", label: "Pause" },
  { verb: "resume", label: "Resume" },
  { verb: "retry", label: "Retry" },
  { verb: "abort", label: "Abort", danger: true, confirm: "Abort the rollout of {name}? Stable takes 100% of traffic." },
  { verb: "undo", label: "Undo", danger: true, confirm: "Undo {name}: roll back to the previous revision?" },
];

async function act(name, action) {
  if (action.confirm && !(await confirmAction(action.confirm.replace("{name}", name)))) {
    showResult(action.label + " " + name + ": cancelled", false);
    return;
  }
  const url = API + "/services/" + encodeURIComponent(name) + "/" + action.verb + (action.full ? "?full=true" : "");
  for (let attempt = 0; attempt < 2; attempt++) {
    const headers = { Accept: "application/json" };
    if (token()) headers.Authorization = "Bearer " + token();
    let res;
    try {
      res = await fetch(url, { method: "POST", headers, cache: "no-store" });
    } catch (e) {
      showResult(action.label + " " + name + ": weir unreachable (" + e.message + ")", true);
      return;
    }
    let body = {};
    try { body = await res.json(); } catch (_) { /* not JSON */ }
    if (res.status === 401 && attempt === 0) {
      showResult(action.label + " " + name + ": refused (401) " + (body.error || "token needed"), true);
      if (await askToken()) continue;
      return;
    }
    if (res.ok) {
      showResult(action.label + " " + name + ": " + res.status + " — " + (body.message || "done"), false);
    } else {
      showResult(action.label + " " + name + ": refused (" + res.status + ") " + (body.error || res.statusText), true);
    }
    refresh();
    return;
  }
}

function showResult(text, refused) {
  const el = document.getElementById("result");
  el.textContent = text;
  el.className = "result" + (refused ? " refused" : "");
  el.hidden = false;
}

// ---- live updates --------------------------------------------------------------------------------

function setLive(up, text) {
  view.live = up;
  const el = document.getElementById("live");
  el.textContent = text;
  el.className = "live" + (up ? "" : " down");
}

let source = null;
let retryTimer = null;

function connect() {
  if (source) source.close();
  source = new EventSource(API + "/events");
  source.onopen = () => {
    setLive(true, "live");
    refresh();
  };
  source.onerror = () => {
    setLive(false, "disconnected — reconnecting…");
    // The browser retries a dropped stream by itself; a refused one (503, 404) is closed for
    // good, so retry it here.
    if (source.readyState === EventSource.CLOSED && !retryTimer) {
      retryTimer = setTimeout(() => { retryTimer = null; connect(); }, 2000);
    }
  };
  source.onmessage = refresh;
  // Each event is named by its kind; the 2 s refresh covers a kind not listed here.
  for (const kind of ["Started", "Advance", "Paused", "Resumed", "Promoted", "PromoteFull", "Aborted", "Halt",
    "Retry", "Undo", "Rollback", "Superseded", "Inconclusive", "Progressing", "AnalysisStarted", "AnalysisPassed",
    "WebhookPassed", "Switched", "SwitchedBack", "ScaledDown", "ScaleDownDelay", "HeaderRoute", "MirrorRoute",
    "StepsChanged", "StrategyChanged", "WeightsChanged", "StateUnreadable"]) {
    source.addEventListener(kind, refresh);
  }
}

let pending = null;
function refresh() {
  if (pending) return pending;
  pending = load().finally(() => { pending = null; });
  return pending;
}

async function load() {
  const route = parseRoute();
  try {
    if (route.service) {
      const [detail, series] = await Promise.all([
        getJson("/services/" + encodeURIComponent(route.service)),
        getJson("/services/" + encodeURIComponent(route.service) + "/series?window=15m"),
      ]);
      view.detail = detail;
      view.series = series;
    } else {
      const [services, traffic] = await Promise.all([getJson("/services"), getJson("/traffic?window=10s")]);
      view.services = services;
      view.traffic = traffic.services || {};
    }
    if (source && source.readyState === EventSource.OPEN) setLive(true, "live");
    // The API answers but the event stream is refused (admin.maxEventSubscribers): still live,
    // by the 2 s refresh.
    else if (source && source.readyState === EventSource.CLOSED) setLive(true, "live (polling)");
    render(route);
  } catch (e) {
    setLive(false, "disconnected — reconnecting…");
    if (route.service && String(e.message).endsWith(": 404")) {
      // The API answered: connected, and the service is not (or no longer) in the config.
      if (source && source.readyState === EventSource.OPEN) setLive(true, "live");
      view.detail = { missing: route.service };
      render(route);
    }
  }
}

// Besides events, refresh on a timer: observed shares, charts and countdowns move on their own.
function schedule() {
  clearInterval(view.timer);
  view.timer = setInterval(() => {
    refresh();
    if (source && source.readyState === EventSource.CLOSED && !retryTimer) connect();
  }, REFRESH_MS);
}

// ---- routing -----------------------------------------------------------------------------------

function parseRoute() {
  const m = location.hash.match(/^#\/services\/(.+)$/);
  return m ? { service: decodeURIComponent(m[1]) } : {};
}

function render(route) {
  const main = document.getElementById("main");
  const crumbs = document.getElementById("crumbs");
  crumbs.replaceChildren(route.service ? h("span", {}, h("a", { href: "#/" }, "services"), " / ", route.service) : "services");
  main.replaceChildren(route.service ? serviceView(route.service) : overview());
}

// ---- overview ----------------------------------------------------------------------------------

function weightBars(svc, shares) {
  const set = Number(svc.canaryWeight) || 0;
  const wrap = h("div", {});
  const bar = h("div", { class: "bar", title: "weight set: canary " + pct(set) });
  bar.append(h("div", { class: "canary", style: null }));
  bar.firstChild.style.width = set + "%";
  wrap.append(bar);
  let observed = null;
  if (svc.canaryVersion && shares && shares.length) {
    const c = shares.find((x) => x.version === svc.canaryVersion);
    observed = c ? c.percent : 0;
  } else if (shares && shares.length) {
    observed = 0;
  }
  const obs = h("div", { class: "bar observed", title: "observed over the last 10 s" });
  obs.append(h("div", { class: "canary" }));
  obs.firstChild.style.width = (observed || 0) + "%";
  wrap.append(obs);
  wrap.append(h("div", { class: "weight" },
    "set " + pct(set) + " · observed " + (observed === null ? "no traffic" : pct(observed))));
  return wrap;
}

function overview() {
  if (!view.services.length) return h("p", { class: "muted" }, "No services yet.");
  const rows = view.services.map((svc) => {
    const step = svc.progress ? svc.progress.text : (svc.stepCount ? (svc.stepIndex + 1) + "/" + svc.stepCount : "—");
    return h("tr", { "data-service": svc.name },
      h("td", {}, h("a", { href: "#/services/" + encodeURIComponent(svc.name) }, svc.name)),
      h("td", {}, h("span", { class: "phase " + svc.phase }, svc.phase)),
      h("td", { class: "strategy" }, svc.strategy || "—"),
      h("td", { class: "num step" }, step),
      h("td", {}, weightBars(svc, view.traffic[svc.name])),
      h("td", {}, svc.stableVersion),
      h("td", {}, svc.canaryVersion || "—"),
      h("td", { class: "message" }, svc.message));
  });
  return h("div", {},
    h("h1", {}, "Services"),
    h("table", { id: "services" },
      h("thead", {}, h("tr", {}, ["service", "phase", "strategy", "step", "canary weight (set · observed 10 s)", "stable", "canary", "message"].map((t) => h("th", {}, t)))),
      h("tbody", {}, rows)));
}

// ---- service page ------------------------------------------------------------------------------

function serviceView(name) {
  const svc = view.detail;
  if (svc && svc.missing === name) return h("p", { class: "muted" }, "No service named " + name + ".");
  if (!svc || svc.name !== name) return h("p", { class: "muted" }, "Loading " + name + "…");
  // The details are flattened into the service's object.
  const d = svc;
  const now = Date.now();
  const countdown = d.pauseEndsAtMs ? Math.max(0, Math.ceil((d.pauseEndsAtMs - now) / 1000)) : null;
  const out = h("div", { id: "service", "data-phase": svc.phase });
  out.append(
    h("h1", {}, svc.name, " ", h("span", { class: "phase " + svc.phase, id: "phase" }, svc.phase)),
    h("div", { class: "card summary" },
      h("div", {}, h("span", {}, "strategy"), d.strategy || "—"),
      h("div", {}, h("span", {}, "step"), h("b", { id: "step", class: "num" }, svc.progress ? svc.progress.text : "—")),
      h("div", {}, h("span", {}, "canary weight"), h("b", { class: "num" }, pct(Number(svc.canaryWeight) || 0))),
      h("div", {}, h("span", {}, "stable"), svc.stableVersion),
      h("div", {}, h("span", {}, "canary"), svc.canaryVersion || "—"),
      h("div", {}, h("span", {}, "revision"), h("b", { class: "num" }, svc.revision)),
      h("div", { style: null }, h("span", {}, "message"), h("span", { id: "message" }, svc.message))),
    h("div", { class: "actions", role: "group", "aria-label": "actions" },
      ACTIONS.map((a) => h("button", {
        type: "button",
        class: a.danger ? "danger" : null,
        "data-action": a.verb + (a.full ? "-full" : ""),
        onclick: () => act(svc.name, a),
      }, a.label))));

  if (d.steps && d.steps.length) {
    out.append(h("h2", {}, "Steps"),
      h("ol", { class: "steps", id: "steps" }, d.steps.map((st) => h("li", { class: st.state, "data-state": st.state },
        (st.index + 1) + ". " + st.description,
        st.state === "current" && countdown !== null ? h("span", { class: "countdown" }, " — " + countdown + " s left") : null))));
  }

  out.append(h("h2", {}, "Traffic, last 15 minutes"), charts(view.series));

  const runs = d.analysisRuns || [];
  out.append(h("h2", {}, "Analysis runs"));
  if (!runs.length) out.append(h("p", { class: "muted" }, "No analysis has run in this revision."));
  for (const run of runs) out.append(analysisRun(run, d.conditions || []));

  out.append(h("h2", {}, "Rules in force"), rules(d.rules || {}));

  out.append(h("h2", {}, "Events"));
  const events = (d.events || []).slice().reverse();
  out.append(events.length ? h("table", { id: "events" },
    h("thead", {}, h("tr", {}, ["time", "kind", "weight", "phase", "message"].map((t) => h("th", {}, t)))),
    h("tbody", {}, events.map((e) => h("tr", {},
      h("td", {}, fmtTime(e.atMs)), h("td", {}, e.kind), h("td", { class: "num" }, pct(e.weight)),
      h("td", {}, e.phase), h("td", { class: "message" }, e.message))))) : h("p", { class: "muted" }, "No events yet."));

  out.append(h("h2", {}, "Revisions"));
  const history = (d.history || []).slice().reverse();
  out.append(history.length ? h("table", { id: "history" },
    h("thead", {}, h("tr", {}, ["revision", "version", "from", "started", "ended", "outcome", "message"].map((t) => h("th", {}, t)))),
    h("tbody", {}, history.map((r) => h("tr", {},
      h("td", { class: "num" }, r.revision), h("td", {}, r.version), h("td", {}, r.fromVersion),
      h("td", {}, fmtDateTime(r.startedAtMs)), h("td", {}, fmtDateTime(r.endedAtMs)),
      h("td", {}, r.outcome), h("td", { class: "message" }, r.message))))) : h("p", { class: "muted" }, "No revisions yet."));
  return out;
}

function rules(r) {
  const items = [];
  for (const x of r.headerRoutes || []) items.push(h("li", {}, "header route ", h("b", {}, x.name), ": " + x.conditions));
  for (const x of r.mirrorRoutes || []) items.push(h("li", {}, "mirror ", h("b", {}, x.name), ": " + pct(x.percentage) + " of " + x.conditions));
  if (r.sessionAffinity) items.push(h("li", {}, "session affinity by " + r.sessionAffinity.kind + " " + r.sessionAffinity.name));
  if (r.preview) items.push(h("li", {}, "preview " + (r.preview.active ? "up" : "down") + (r.preview.hosts && r.preview.hosts.length ? " at " + r.preview.hosts.join(", ") : "")));
  return items.length ? h("ul", { id: "rules" }, items) : h("p", { class: "muted" }, "Only the weighted split.");
}

// ---- charts (inline SVG, drawn here: a few polylines need no library) -----------------------------

const CHARTS = [
  { key: "rate", title: "requests/s", fmt: (v) => v.toFixed(1) },
  { key: "successRate", title: "success rate", fmt: (v) => pct(v * 100), min: 0, max: 1 },
  { key: "p50", title: "p50 latency", fmt: (v) => (v * 1000).toFixed(1) + " ms" },
  { key: "p99", title: "p99 latency", fmt: (v) => (v * 1000).toFixed(1) + " ms" },
];

function versionColor(version) {
  const svc = view.detail || {};
  if (version === svc.canaryVersion) return "var(--canary)";
  if (version === svc.stableVersion) return "var(--stable)";
  return "var(--muted)";
}

function charts(series) {
  const wrap = h("div", { class: "charts", id: "charts" });
  const versions = (series && series.versions) || [];
  // The window asked for (15 min), shortened to the data there is (at least a minute), so a
  // young rollout's lines are not squeezed against the right edge.
  const end = Date.now();
  const oldest = Math.min(end, ...versions.flatMap((v) => v.points.map((p) => p.atMs)));
  const span = Math.min(((series && series.windowSeconds) || 900) * 1000, Math.max(60000, end - oldest + 2000));
  const start = end - span;
  const spanText = span >= 120000 ? "−" + Math.round(span / 60000) + " min" : "−" + Math.round(span / 1000) + " s";
  for (const c of CHARTS) {
    const W = 400, H = 140, L = 46, B = 16;
    const values = versions.flatMap((v) => v.points.map((p) => p[c.key]).filter((x) => x !== null && x !== undefined));
    const lo = c.min !== undefined ? c.min : 0;
    const hi = c.max !== undefined ? c.max : Math.max(1e-9, ...values) * 1.1;
    const x = (t) => L + ((t - start) / (end - start)) * (W - L - 4);
    const y = (v) => 4 + (1 - (v - lo) / (hi - lo || 1)) * (H - B - 8);
    const svg = s("svg", { viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": c.title, preserveAspectRatio: "none" });
    svg.append(s("line", { class: "axis", x1: L, y1: H - B, x2: W, y2: H - B }));
    svg.append(s("line", { class: "axis", x1: L, y1: 4, x2: L, y2: H - B }));
    svg.append(s("text", { x: 2, y: 12 }, c.fmt(hi)));
    svg.append(s("text", { x: 2, y: H - B }, c.fmt(lo)));
    svg.append(s("text", { x: L, y: H - 3 }, spanText));
    svg.append(s("text", { x: W - 24, y: H - 3 }, "now"));
    for (const v of versions) {
      const pts = v.points.filter((p) => p[c.key] !== null && p[c.key] !== undefined && p.atMs >= start)
        .map((p) => x(p.atMs).toFixed(1) + "," + y(p[c.key]).toFixed(1));
      if (pts.length) {
        const line = s("polyline", { points: pts.join(" "), fill: "none", "stroke-width": 1.6,
          "data-version": v.version, "vector-effect": "non-scaling-stroke" });
        // A CSS variable resolves in a style property, not in an SVG attribute.
        line.style.stroke = versionColor(v.version);
        svg.append(line);
      }
    }
    const legend = h("div", { class: "legend" }, versions.map((v) => {
      const last = v.points.length ? v.points[v.points.length - 1][c.key] : null;
      const sw = h("span", { class: "swatch" });
      sw.style.background = versionColor(v.version);
      return h("span", {}, sw, v.version + " " + (last === null || last === undefined ? "—" : c.fmt(last)));
    }));
    wrap.append(h("div", { class: "chart card", "data-chart": c.key }, h("h3", {}, c.title), svg, legend));
  }
  return wrap;
}

// The threshold of a condition that compares the result with one number (`result[0] >= 0.95`,
// `result < 500`); null for anything else (the condition is still shown as text).
function threshold(condition) {
  if (!condition) return null;
  const m = condition.match(/^\s*result(?:\[0\])?\s*(<=|>=|<|>|==)\s*(-?[0-9.]+(?:[eE][-+]?[0-9]+)?)\s*$/)
    || condition.match(/^\s*(-?[0-9.]+(?:[eE][-+]?[0-9]+)?)\s*(<=|>=|<|>|==)\s*result(?:\[0\])?\s*$/);
  if (!m) return null;
  const value = Number(/^[<>=]/.test(m[1]) ? m[2] : m[1]);
  return Number.isFinite(value) ? value : null;
}

function analysisRun(run, conditions) {
  const box = h("div", { class: "card run" },
    h("h3", {}, "run " + run.id + " ", h("span", { class: run.phase }, run.phase), " ",
      h("span", { class: "muted" }, fmtTime(run.startedAtMs) + (run.message ? " — " + run.message : ""))));
  for (const m of run.metrics || []) {
    const numeric = (v) => typeof v === "number" ? v : (Array.isArray(v) && typeof v[0] === "number" ? v[0] : null);
    const points = (m.measurements || []).filter((x) => numeric(x.value) !== null).map((x) => ({ ...x, value: numeric(x.value) }));
    const cond = conditions.find((c) => c.template === m.template && c.metric === m.name) || {};
    const limits = [
      { text: cond.successCondition, value: threshold(cond.successCondition), color: "var(--healthy)", label: "success" },
      { text: cond.failureCondition, value: threshold(cond.failureCondition), color: "var(--degraded)", label: "failure" },
    ].filter((l) => l.text);
    box.append(h("div", { class: "metric", "data-metric": m.name }, h("b", {}, m.name), " ", h("span", { class: m.phase }, m.phase),
      h("span", { class: "muted num" }, " · " + m.successful + " ok, " + m.failed + " failed, " + m.inconclusive + " inconclusive, " + m.errors + " errors"),
      limits.map((l) => h("div", { class: "muted" }, l.label + " when " + l.text))));
    if (points.length) {
      const W = 400, H = 60;
      const vals = points.map((p) => p.value).concat(limits.filter((l) => l.value !== null).map((l) => l.value));
      const lo = Math.min(0, ...vals), hi = Math.max(...vals) * 1.1 || 1;
      const svg = s("svg", { viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": m.name + " measurements" });
      for (const l of limits.filter((l) => l.value !== null)) {
        const ly = (4 + (1 - (l.value - lo) / (hi - lo || 1)) * (H - 8)).toFixed(1);
        const line = s("line", { x1: 0, x2: W, y1: ly, y2: ly, "stroke-dasharray": "4 3", "vector-effect": "non-scaling-stroke", class: "threshold" });
        line.style.stroke = l.color;
        line.append(s("title", {}, l.label + " threshold " + l.value));
        svg.append(line);
      }
      points.forEach((p, i) => {
        const cx = 8 + (i / Math.max(1, points.length - 1)) * (W - 16);
        const cy = 4 + (1 - (p.value - lo) / (hi - lo || 1)) * (H - 8);
        const dot = s("circle", { cx: cx.toFixed(1), cy: cy.toFixed(1), r: 3.5 });
        // Verdicts are camelCase here (successful, failed, inconclusive, error).
        const verdict = String(p.verdict).toLowerCase();
        dot.style.fill = verdict === "successful" ? "var(--healthy)" : verdict === "failed" || verdict === "error" ? "var(--degraded)" : "var(--paused)";
        dot.setAttribute("data-verdict", verdict);
        dot.append(s("title", {}, p.message || String(p.value)));
        svg.append(dot);
      });
      box.append(h("div", { class: "chart" }, svg));
    }
    const last = (m.measurements || []).slice(-3).reverse();
    if (last.length) box.append(h("ul", {}, last.map((p) => h("li", { class: "muted" }, fmtTime(p.atMs) + " " + p.verdict + ": " + p.message))));
  }
  return box;
}

// ---- start -------------------------------------------------------------------------------------

window.addEventListener("hashchange", () => { view.detail = null; view.series = null; render(parseRoute()); refresh(); });
document.getElementById("token-button").addEventListener("click", () => askToken());
document.getElementById("result").addEventListener("click", (e) => { e.currentTarget.hidden = true; });
connect();
schedule();
refresh();
