// The analysts' page. Every panel reads the console's JSON endpoints (/api/reports/<name>,
// /api/journey, /api/query): the numbers are those of `tracker report` and `tracker journey`.
// Each panel's <section> carries data-state: loading, ready, empty, idle or error.
"use strict";

const $ = (id) => document.getElementById(id);
const COLORS = ["#2458b3", "#e07b24", "#2e9e5b", "#c23b3b", "#7d52b8", "#8c6d3f", "#d161a6", "#5f6b7a",
  "#2bb3b8", "#a3a82b"];
const STAGE_COLORS = {awareness: "#9ec1f0", consideration: "#f6c77b", purchase: "#8fd6a8",
  post_purchase: "#c7b3e6", support: "#f2a7a7"};
const MODELS = ["first_touch", "last_touch", "last_non_direct", "linear", "position_based",
  "time_decay", "markov", "shapley"];
const PLOT_CONFIG = {displaylogo: false, responsive: true};

// -- talking to the console ---------------------------------------------------------------------

class Refused extends Error {}

function headers() {
  const token = $("token").value;
  return token ? {Authorization: "Bearer " + token} : {};
}

async function answer(response) {
  if (response.ok) return response;
  let reason = response.status + " " + response.statusText;
  try { reason = (await response.json()).error || reason; } catch (_) { /* not JSON */ }
  throw new Refused(reason);
}

function range() {
  const params = {from: $("from").value, to: $("to").value};
  if ($("include-bots").checked) params.include_bots = "true";
  return params;
}

async function report(name, options) {
  const query = new URLSearchParams({...range(), ...options});
  const response = await answer(await fetch(`/api/reports/${name}?${query}`, {headers: headers()}));
  const text = await response.text();
  return text.split("\n").filter((line) => line.trim()).map((line) => JSON.parse(line));
}

// -- small helpers ------------------------------------------------------------------------------

function isoDay(date) { return date.toISOString().slice(0, 10); }

function number(value, digits = 2) {
  if (value === null || value === undefined) return "–";
  if (Number.isInteger(value)) return value.toLocaleString("en");
  return value.toLocaleString("en", {maximumFractionDigits: digits});
}

function percent(value) {
  return value === null || value === undefined ? "–" : (100 * value).toFixed(1) + " %";
}

function seconds(value) {
  if (value === null || value === undefined) return "–";
  if (value < 120) return value.toFixed(0) + " s";
  if (value < 7200) return (value / 60).toFixed(1) + " min";
  if (value < 172800) return (value / 3600).toFixed(1) + " h";
  return (value / 86400).toFixed(1) + " d";
}

function interval(low, high, show = number) {
  return low === null || low === undefined ? "" : ` [${show(low)}, ${show(high)}]`;
}

// A table whose cells keep the report's value in data-value, beside the text shown.
function table(element, columns, rows) {
  element.replaceChildren();
  const head = element.createTHead().insertRow();
  for (const column of columns) {
    const th = document.createElement("th");
    th.textContent = column.title;
    if (column.text) th.className = "text";
    head.append(th);
  }
  const body = element.createTBody();
  for (const row of rows) {
    const tr = body.insertRow();
    for (const column of columns) {
      const td = tr.insertCell();
      const value = column.value ? column.value(row) : row[column.key];
      td.dataset.key = column.key;
      td.dataset.value = JSON.stringify(value === undefined ? null : value);
      td.textContent = column.show ? column.show(value, row) : (value ?? "–");
      if (column.text) td.className = "text";
    }
  }
}

function setState(panel, state, message = "") {
  $(panel).dataset.state = state;
  $(panel + "-message").textContent = message;
  if (state !== "ready") {
    const chart = $(panel + "-chart");
    if (chart && window.Plotly) Plotly.purge(chart);
    const rows = $(panel + "-table");
    if (rows) rows.replaceChildren();
  }
}

function noData(what) {
  return `No ${what} between ${$("from").value} and ${$("to").value}` +
    ($("include-bots").checked ? "." : " (bots excluded).");
}

// Runs one panel: loading, then ready, empty or error with its reason; never an uncaught error.
// draw() returns null when drawn, a string saying why there is nothing, or {note} beside a chart.
async function panel(name, draw) {
  setState(name, "loading", "Loading…");
  try {
    const result = await draw();
    if (typeof result === "string") setState(name, "empty", result);
    else setState(name, "ready", result ? result.note : "");
  } catch (error) {
    setState(name, "error", error instanceof Refused ? error.message : `Could not draw: ${error}`);
    if (!(error instanceof Refused)) console.warn(error);
  }
}

// -- scorecard ----------------------------------------------------------------------------------

const KEYS = {touchpoint: ["channel", "type", "name"], channel: ["channel"], stage: ["stage"]};
const METRICS = {
  conversion_rate: {title: "conversion rate", low: "conversion_ci_low", high: "conversion_ci_high",
    scale: 100, unit: " %"},
  nps: {title: "NPS", low: "nps_ci_low", high: "nps_ci_high", scale: 1, unit: ""},
  csat: {title: "CSAT", low: "csat_ci_low", high: "csat_ci_high", scale: 1, unit: " %"},
  ces: {title: "CES (1–7)", low: "ces_ci_low", high: "ces_ci_high", scale: 1, unit: ""},
};

function touchpointLabel(row, by) {
  return KEYS[by].map((k) => row[k] || "-").join(" · ");
}

async function scorecard() {
  const by = $("scorecard-by").value;
  const rows = await report("scorecard", {by, window_days: $("scorecard-window").value});
  if (!rows.length) return noData("touchpoints");
  const metric = METRICS[$("scorecard-metric").value];
  const key = $("scorecard-metric").value;
  const shown = rows.filter((r) => r[key] !== null);
  const label = (r) => touchpointLabel(r, by);
  const trace = {
    type: "bar", orientation: "h", name: metric.title, marker: {color: COLORS[0]},
    y: shown.map(label), x: shown.map((r) => r[key] * metric.scale),
    error_x: {
      type: "data", symmetric: false, color: "#1b1f24",
      array: shown.map((r) => (r[metric.high] - r[key]) * metric.scale),
      arrayminus: shown.map((r) => (r[key] - r[metric.low]) * metric.scale),
    },
    customdata: shown.map((r) => [r.customers, r[metric.low] * metric.scale, r[metric.high] * metric.scale]),
    hovertemplate: `%{y}<br>${metric.title} %{x:.1f}${metric.unit} [%{customdata[1]:.1f}, %{customdata[2]:.1f}]` +
      "<br>customers %{customdata[0]}<extra></extra>",
  };
  await Plotly.react($("scorecard-chart"), [trace], {
    margin: {l: 220, r: 20, t: 10, b: 40}, yaxis: {automargin: true, autorange: "reversed"},
    xaxis: {title: {text: metric.title + metric.unit + ", 95 % interval"}, zeroline: true},
  }, PLOT_CONFIG);
  const keys = KEYS[by].map((k) => ({key: k, title: k, text: true}));
  table($("scorecard-table"), [
    ...keys,
    {key: "events", title: "events", show: number},
    {key: "customers", title: "customers", show: number},
    {key: "conversion_rate", title: "conversion", show: (v, r) => percent(v) + interval(r.conversion_ci_low, r.conversion_ci_high, percent)},
    {key: "friction_rate", title: "friction", show: percent},
    {key: "nps", title: "NPS", show: (v, r) => number(v, 1) + interval(r.nps_ci_low, r.nps_ci_high) + ` n=${r.nps_n}`},
    {key: "csat", title: "CSAT", show: (v, r) => number(v, 1) + interval(r.csat_ci_low, r.csat_ci_high) + ` n=${r.csat_n}`},
    {key: "ces", title: "CES", show: (v, r) => number(v, 2) + interval(r.ces_ci_low, r.ces_ci_high) + ` n=${r.ces_n}`},
  ], rows);
  return shown.length ? null : {note: `No ${metric.title} answers in this range.`};
}

// -- funnel -------------------------------------------------------------------------------------

async function funnel() {
  const steps = $("funnel-steps").value.replace(/\s+/g, "");
  const rows = await report("funnel", {steps, window_days: $("funnel-window").value});
  if (!rows.length || rows[0].customers === 0) return noData(`customers at ${rows.length ? rows[0].step : steps}`);
  await Plotly.react($("funnel-chart"), [{
    type: "funnel", y: rows.map((r) => r.step), x: rows.map((r) => r.customers),
    textinfo: "value+percent initial+percent previous", marker: {color: COLORS[0]},
  }], {margin: {l: 200, r: 20, t: 10, b: 30}, yaxis: {automargin: true}}, PLOT_CONFIG);
  table($("funnel-table"), [
    {key: "step", title: "step", text: true},
    {key: "customers", title: "customers", show: number},
    {key: "rate_from_previous", title: "from previous", show: percent},
    {key: "rate_from_first", title: "from first", show: percent},
    {key: "median_seconds_from_previous", title: "median time from previous", show: seconds},
  ], rows);
  return null;
}

// -- paths (Sankey) -----------------------------------------------------------------------------

// Nodes are (position, touch): "1 email", "2 paid"...; each path ends at conversion or not.
function sankey(rows) {
  const nodes = new Map();
  const node = (label) => {
    if (!nodes.has(label)) nodes.set(label, nodes.size);
    return nodes.get(label);
  };
  const links = new Map();
  const link = (from, to, value) => {
    const key = from + "\u0000" + to;
    links.set(key, (links.get(key) || 0) + value);
  };
  for (const row of rows) {
    const touches = row.path.split(" > ");
    const named = touches.map((t, i) => `${i + 1}. ${t}`);
    for (let i = 0; i + 1 < named.length; i++) link(node(named[i]), node(named[i + 1]), row.paths);
    const last = node(named[named.length - 1]);
    if (row.conversions) link(last, node("conversion"), row.conversions);
    if (row.paths - row.conversions) link(last, node("no conversion"), row.paths - row.conversions);
  }
  const labels = [...nodes.keys()];
  const pairs = [...links.entries()].map(([key, value]) => [...key.split("\u0000").map(Number), value]);
  return {
    type: "sankey", arrangement: "snap",
    node: {label: labels, pad: 18, thickness: 16,
      color: labels.map((l) => l === "conversion" ? "#2e9e5b" : l === "no conversion" ? "#b8bec6" : COLORS[0])},
    link: {source: pairs.map((p) => p[0]), target: pairs.map((p) => p[1]), value: pairs.map((p) => p[2])},
  };
}

async function paths() {
  const rows = await report("paths", {
    by: $("paths-by").value, outcome: $("paths-ending").value, top: $("paths-top").value,
  });
  if (!rows.length) return noData("paths");
  await Plotly.react($("paths-chart"), [sankey(rows)], {margin: {l: 10, r: 10, t: 10, b: 10}}, PLOT_CONFIG);
  table($("paths-table"), [
    {key: "path", title: "path", text: true},
    {key: "touches", title: "touches", show: number},
    {key: "paths", title: "paths", show: number},
    {key: "share", title: "share", show: percent},
    {key: "conversions", title: "conversions", show: number},
    {key: "conversion_share", title: "converting", show: percent},
  ], rows);
  return null;
}

// -- attribution --------------------------------------------------------------------------------

async function attribution() {
  const rows = await report("attribution", {
    model: "all", seed: "1",
    lookback_days: $("attribution-lookback").value, half_life_days: $("attribution-half-life").value,
  });
  if (!rows.length) return noData("conversions");
  const channels = [...new Set(rows.map((r) => r.channel))];
  const credit = new Map(rows.map((r) => [r.model + "\u0000" + r.channel, r]));
  const get = (model, channel) => credit.get(model + "\u0000" + channel);
  const traces = MODELS.map((model, i) => {
    const found = channels.map((c) => get(model, c));
    const bootstrapped = found.some((r) => r && r.conversions_ci_low !== null);
    return {
      type: "bar", name: model.replaceAll("_", " "), x: channels,
      y: found.map((r) => r ? r.conversions : 0), marker: {color: COLORS[i % COLORS.length]},
      error_y: bootstrapped ? {
        type: "data", symmetric: false, color: "#1b1f24",
        array: found.map((r) => r && r.conversions_ci_high !== null ? r.conversions_ci_high - r.conversions : 0),
        arrayminus: found.map((r) => r && r.conversions_ci_low !== null ? r.conversions - r.conversions_ci_low : 0),
      } : undefined,
    };
  });
  await Plotly.react($("attribution-chart"), traces, {
    barmode: "group", margin: {l: 60, r: 20, t: 10, b: 40},
    yaxis: {title: {text: "conversions credited"}}, legend: {orientation: "h"},
  }, PLOT_CONFIG);
  const cells = MODELS.map((model) => ({
    key: model, title: model.replaceAll("_", " "),
    value: (channelRow) => get(model, channelRow.channel)?.conversions ?? null,
    show: (v, channelRow) => {
      const r = get(model, channelRow.channel);
      return number(v, 2) + (r ? interval(r.conversions_ci_low, r.conversions_ci_high) : "");
    },
  }));
  table($("attribution-table"), [{key: "channel", title: "channel", text: true}, ...cells],
    channels.map((channel) => ({channel})));
  return null;
}

// -- journey map --------------------------------------------------------------------------------

function shortValue(kind, value) {
  return (kind === "email" || kind === "phone") && value.length > 12 ? value.slice(0, 12) + "…" : value;
}

function fact(term, values, full) {
  const dl = document.createElement("dl");
  const dt = document.createElement("dt");
  dt.textContent = term;
  dl.append(dt);
  values.forEach((value, i) => {
    const dd = document.createElement("dd");
    dd.textContent = value;
    if (full) dd.title = full[i];
    dl.append(dd);
  });
  return dl;
}

function people(journey) {
  const facts = [fact("customer", [journey.customer_id])];
  for (const [kind, values] of Object.entries(journey.identifiers).sort()) {
    facts.push(fact(kind, values.map((v) => shortValue(kind, v)), values));
  }
  facts.push(fact("merged from", journey.merged_customer_ids.length ? journey.merged_customer_ids : ["–"]));
  const s = journey.journey;
  if (s) {
    facts.push(fact("events", [`${s.events} in ${s.sessions} session${s.sessions === 1 ? "" : "s"}`]));
    facts.push(fact("stage", [s.stage || "–"]));
    facts.push(fact("conversions", [`${s.conversions}, value ${number(s.value)}`]));
    facts.push(fact("frictions", [String(s.frictions)]));
  }
  $("journey-people").replaceChildren(...facts);
}

// Stage bands: a band from each change of stage to the next (the last ends at the last event).
function stageBands(events) {
  const bands = [];
  for (const e of events) {
    if (!e.stage) continue;
    const last = bands[bands.length - 1];
    if (last && last.stage === e.stage) { last.end = e.ts; continue; }
    if (last) last.end = e.ts;
    bands.push({stage: e.stage, start: e.ts, end: e.ts});
  }
  return bands;
}

function journeyChart(journey) {
  const events = journey.timeline;
  const lane = (e) => e.channel || e.source || "unknown";
  const lanes = [...new Set(events.map(lane))];
  const name = (e) => e.type + (e.name ? " " + e.name : "");
  const touch = events.filter((e) => !e.survey);
  const traces = [{
    type: "scatter", mode: "markers", name: "touchpoints", x: touch.map((e) => e.ts), y: touch.map(lane),
    text: touch.map(name), marker: {size: 11, color: COLORS[0],
      symbol: touch.map((e) => e.value !== null ? "diamond" : "circle")},
    hovertemplate: "%{text}<br>%{x}<extra>%{y}</extra>",
  }];
  const hurt = events.filter((e) => e.frictions.length);
  traces.push({
    type: "scatter", mode: "markers", name: "frictions", x: hurt.map((e) => e.ts), y: hurt.map(lane),
    text: hurt.map((e) => e.frictions.map((f) => `${f.reason} (${f.severity})`).join(", ")),
    marker: {size: 16, color: "#c23b3b", symbol: "x-thin-open", line: {width: 3}},
    hovertemplate: "friction: %{text}<extra>%{y}</extra>",
  });
  const rated = events.filter((e) => e.survey);
  traces.push({
    type: "scatter", mode: "markers+text", name: "survey scores", x: rated.map((e) => e.ts), y: rated.map(lane),
    text: rated.map((e) => `${e.survey.kind.toUpperCase()} ${e.survey.score}`), textposition: "top center",
    marker: {size: 14, color: "#e0a800", symbol: "star"},
    hovertemplate: "%{text}<extra>%{y}</extra>",
  });
  const bands = stageBands(events);
  const shapes = bands.map((b) => ({
    type: "rect", xref: "x", yref: "paper", x0: b.start, x1: b.end, y0: 0, y1: 1, layer: "below",
    fillcolor: STAGE_COLORS[b.stage] || "#dde3ea", opacity: 0.35, line: {width: 0},
  }));
  const annotations = bands.map((b) => ({
    xref: "x", yref: "paper", x: b.start, y: 1, xanchor: "left", yanchor: "bottom", showarrow: false,
    text: b.stage, font: {size: 11, color: "#57606a"},
  }));
  return Plotly.react($("journey-chart"), traces, {
    margin: {l: 90, r: 20, t: 30, b: 40}, shapes, annotations, legend: {orientation: "h", y: -0.15},
    xaxis: {type: "date", title: {text: "time (UTC)"}},
    yaxis: {type: "category", categoryorder: "array", categoryarray: lanes, title: {text: "channel"}},
  }, PLOT_CONFIG);
}

async function journey() {
  const id = $("journey-id").value.trim();
  if (!id) { setState("journey", "idle", "Type an identifier to see a customer's journey."); return; }
  $("journey-people").replaceChildren();
  await panel("journey", async () => {
    const response = await fetch(`/api/journey?${new URLSearchParams({id})}`, {headers: headers()});
    if (response.status === 404) return (await response.json()).error;
    const found = await (await answer(response)).json();
    people(found);
    if (!found.timeline.length) return "No touchpoints are stored for this customer yet.";
    await journeyChart(found);
    return null;
  });
}

// -- SQL ----------------------------------------------------------------------------------------

async function sql() {
  const response = await fetch("/api/query", {method: "POST", headers: headers(),
    body: JSON.stringify({sql: $("sql-text").value, format: "pretty"})});
  $("sql-out").textContent = await response.text();
  $("sql").dataset.state = response.ok ? "ready" : "error";
}

// -- wiring -------------------------------------------------------------------------------------

const PANELS = {scorecard, funnel, paths, attribution};

function refresh() {
  for (const [name, draw] of Object.entries(PANELS)) panel(name, draw);
  if ($("journey-id").value.trim()) journey();
}

function start() {
  // The URL may preset the form: ?from=2026-11-01&to=2026-11-30&journey=jane@example.com
  const given = new URLSearchParams(location.search);
  const today = new Date();
  $("to").value = given.get("to") || isoDay(today);
  $("from").value = given.get("from") || isoDay(new Date(today.getTime() - 29 * 86400000));
  $("include-bots").checked = given.get("include_bots") === "true";
  if (given.get("steps")) $("funnel-steps").value = given.get("steps");
  if (given.get("journey")) $("journey-id").value = given.get("journey");

  $("range").addEventListener("submit", (e) => { e.preventDefault(); refresh(); });
  $("journey-form").addEventListener("submit", (e) => { e.preventDefault(); journey(); });
  for (const [name, draw] of Object.entries(PANELS)) {
    const form = document.querySelector(`#${name} form`);
    form.addEventListener("submit", (e) => { e.preventDefault(); panel(name, draw); });
    form.addEventListener("change", () => panel(name, draw));
  }
  $("sql-run").addEventListener("click", sql);
  refresh();
  sql();
}

start();
