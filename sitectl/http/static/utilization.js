// sitectl utilization view: GET /api/reports/utilization for a window, as tables, share bars
// and a uPlot chart of the nights (vendored, see vendor/uPlot.LICENSE). No framework, no build.
"use strict";

const REFRESH_MS = 60000;
const STATES = ["charging", "idle", "available", "offline", "faulted", "unknown"];
const RANGES = { "1d": ["-1d", "now"], "7d": ["-7d", "now"], "30d": ["-30d", "now"],
                 yesterday: ["yesterday", "today"] };
let nightsChart = null;

function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => (
    { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

const pct = (share) => (share == null ? "–" : `${(100 * share).toFixed(1)} %`);
const num = (value, unit, digits = 1) => (value == null ? "–" : `${value.toFixed(digits)} ${unit}`);

async function get(path) {
  const response = await fetch(path, { headers: { Accept: "application/json" } });
  if (response.status === 401 || response.status === 403) throw await signIn.refused(response);
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    throw new Error(body.error ?? `HTTP ${response.status}`);
  }
  return response.json();
}

// The dates of the custom window are local dates of the site; "to" includes its day.
function nextDay(iso) {
  const [y, m, d] = iso.split("-").map(Number);
  const next = new Date(Date.UTC(y, m - 1, d + 1));
  return next.toISOString().slice(0, 10);
}

function chosenWindow() {
  const range = document.getElementById("range").value;
  if (range !== "custom") return RANGES[range];
  const from = document.getElementById("from-date").value;
  const to = document.getElementById("to-date").value;
  if (!from || !to) return null;
  return [from, nextDay(to)];
}

function shareBar(shares) {
  return `<div class="shares">` + STATES.map((k) => (shares[k] ? `<span class="${k}" ` +
    `style="width:${(100 * shares[k]).toFixed(2)}%" title="${k} ${pct(shares[k])}"></span>` : ""))
    .join("") + "</div>";
}

function localTime(iso, zone) {
  return new Date(iso).toLocaleString([], { timeZone: zone, year: "numeric", month: "2-digit",
    day: "2-digit", hour: "2-digit", minute: "2-digit" });
}

function renderHead(report) {
  document.getElementById("site-name").textContent = `${report.site} · utilization`;
  const recorded = report.window_s ? report.recorded_s / report.window_s : 0;
  document.getElementById("headline").textContent =
    `${localTime(report.from, report.timezone)} – ${localTime(report.to, report.timezone)} ` +
    `(${report.timezone}) · recorded ${pct(recorded)} of the time`;
  const t = report.totals;
  document.getElementById("totals").textContent =
    `${t.connectors} connectors · ${t.sessions} sessions · ${t.energy_kwh.toFixed(1)} kWh · ` +
    `charging ${pct(t.shares.charging)}, plugged in idle ${pct(t.shares.idle)}, ` +
    `available ${pct(t.shares.available)}, offline ${pct(t.shares.offline)}, ` +
    `faulted ${pct(t.shares.faulted)}`;
  const from = encodeURIComponent(report.from), to = encodeURIComponent(report.to);
  document.getElementById("csv-hint").textContent =
    `for a spreadsheet: sitectl report -c FILE --from ${report.from} --to ${report.to} --csv`;
  document.getElementById("json-link").href = `/api/reports/utilization?from=${from}&to=${to}`;
}

function renderConnectors(report) {
  const rows = report.connectors.map((c) => {
    const s = c.shares;
    return `<tr data-connector="${esc(c.charger)}/${c.connector}">` +
      `<td>${esc(c.charger)}/${c.connector}</td><td class="bar-col">${shareBar(s)}</td>` +
      `<td class="charging-share">${pct(s.charging)}</td><td>${pct(s.idle)}</td>` +
      `<td>${pct(s.available)}</td><td>${pct(s.offline)}</td><td>${pct(s.faulted)}</td>` +
      `<td>${c.sessions}</td><td class="energy">${num(c.energy_kwh, "kWh")}</td>` +
      `<td>${num(c.mean_power_kw, "kW")}</td><td>${num(c.peak_power_kw, "kW")}</td></tr>`;
  });
  document.querySelector("#connectors tbody").innerHTML = rows.join("");
  document.body.dataset.utilRows = String(rows.length);
}

function renderCircuits(report) {
  const rows = report.circuits.map((c) => {
    const share = c.share_at_limit ?? 0;
    return `<tr data-node="${esc(c.node)}"><td>${esc(c.node)}</td>` +
      `<td class="bar-col"><div class="shares"><span class="at-limit" style="width:` +
      `${(100 * share).toFixed(2)}%"></span></div> ${pct(c.share_at_limit)}</td>` +
      `<td>${num(c.lowest_limit_a, "A")}</td><td class="deferred">${num(c.deferred_kwh, "kWh")}</td>` +
      `<td>${num(c.mean_current_a, "A")}</td><td>${num(c.peak_current_a, "A")}</td></tr>`;
  });
  document.querySelector("#util-circuits tbody").innerHTML = rows.join("");
}

function renderNights(report) {
  const nights = report.nights;
  document.querySelector("#nights tbody").innerHTML = nights.map((n) =>
    `<tr data-night="${esc(n.night)}"><td>${esc(n.night)}${n.complete ? "" : ' <span class="muted">(under way)</span>'}</td>` +
    `<td>${n.sessions}</td><td>${num(n.energy_kwh, "kWh")}</td><td>${num(n.needed_kwh, "kWh")}</td>` +
    `<td>${num(n.shortfall_kwh, "kWh")}</td><td>${n.departures.met}</td>` +
    `<td class="${n.departures.missed ? "missed" : ""}">${n.departures.missed}</td>` +
    `<td>${n.departures.unknown}</td></tr>`).join("");
  const x = nights.map((n) => Date.parse(n.start) / 1000);
  const data = [x, nights.map((n) => n.energy_kwh), nights.map((n) => n.needed_kwh)];
  const box = document.getElementById("nights-chart");
  const width = Math.max(300, box.clientWidth || 600);
  if (nightsChart !== null) nightsChart.destroy();
  nightsChart = new uPlot({
    width, height: 220,
    scales: { x: { time: true }, y: { range: (u, lo, hi) => [0, Math.max(1, hi * 1.1)] } },
    series: [{},
      { label: "delivered kWh", stroke: "#4c6ef5", fill: "rgba(76,110,245,0.35)",
        paths: uPlot.paths.bars({ size: [0.6, 60] }), points: { show: false } },
      { label: "needed kWh", stroke: "#c92a2a", width: 2, points: { show: true, size: 6 } }],
    axes: [{}, { label: "kWh" }],
  }, data, box);
  document.body.dataset.nightPoints = String(nights.filter((n) => n.sessions > 0).length);
}

async function load() {
  if (signIn.waiting) return;
  const error = document.getElementById("util-error");
  const span = chosenWindow();
  if (span === null) {
    error.textContent = "choose both dates";
    return;
  }
  try {
    const query = `from=${encodeURIComponent(span[0])}&to=${encodeURIComponent(span[1])}`;
    const report = await get(`/api/reports/utilization?${query}`);
    error.textContent = "";
    renderHead(report);
    renderConnectors(report);
    renderCircuits(report);
    renderNights(report);
    document.body.dataset.updated = new Date().toISOString();
  } catch (failure) {
    if (signIn.waiting) return;
    error.textContent = `no report: ${failure.message}`;
    document.body.dataset.reportError = failure.message;
  }
}

document.getElementById("range").addEventListener("change", (event) => {
  const custom = event.target.value === "custom";
  for (const label of document.querySelectorAll("#window .custom")) label.hidden = !custom;
  if (!custom) load();
});
document.getElementById("window").addEventListener("submit", (event) => {
  event.preventDefault();
  load();
});
signIn.start(load);
setInterval(load, REFRESH_MS);
