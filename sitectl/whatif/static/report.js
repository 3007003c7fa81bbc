// sitectl simulate: the what-if report. Self-contained (its data is in the page, uPlot is
// inlined), no network. Sets document.body.dataset.plots / .points / .ready when drawn (tests).
"use strict";

const DATA = JSON.parse(document.getElementById("data").textContent);
const ZONE = DATA.timezone;
const COLORS = ["#4c6ef5", "#e8590c", "#2f9e44", "#ae3ec9", "#1098ad", "#f08c00"];
const PHASES = ["#4c6ef5", "#2f9e44", "#e8590c"];
let plots = 0;
let points = 0;

function esc(text) {
  return String(text ?? "").replace(/[&<>"']/g, (c) =>
    ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

function num(value, digits = 0) {
  if (value === null || value === undefined) return "–";
  return Number(value).toLocaleString("en-GB", {
    minimumFractionDigits: digits, maximumFractionDigits: digits,
  });
}

function chart(box, title, series, data, yLabel) {
  const width = Math.max(320, box.clientWidth || 600);
  const plot = new uPlot({
    title, width, height: 220,
    tzDate: (ts) => uPlot.tzDate(new Date(ts * 1e3), ZONE),
    series: [{}, ...series],
    axes: [{}, { label: yLabel, size: 60 }],
    scales: { x: { time: true } },
  }, data, box);
  plots += 1;
  for (let k = 1; k < data.length; k++) {
    points += data[k].filter((v) => v !== null && v !== undefined).length;
  }
  return plot;
}

function renderVerdict() {
  const runs = DATA.runs;
  const head = runs.map((r) => `<th>${esc(r.label)}</th>`).join("");
  const cells = runs.map((r) =>
    `<td><ul>${r.verdict.map((line) => `<li>${esc(line)}</li>`).join("")}</ul></td>`).join("");
  let html = `<table><thead><tr>${head}</tr></thead><tbody><tr>${cells}</tr></tbody></table>`;
  if (DATA.compare && DATA.compare.length) {
    html += `<h3>What changes</h3><ul>${DATA.compare.map((l) => `<li>${esc(l)}</li>`).join("")}</ul>`;
  }
  document.getElementById("verdict").innerHTML = html;
}

function renderNumbers() {
  const rows = [
    ["departures", (r) => num(r.departures.total)],
    ["met their need", (r) => num(r.departures.met)],
    ["short", (r) => num(r.departures.short)],
    ["short in total, kWh", (r) => num(r.departures.short_kwh, 1)],
    ["found no charger", (r) => num(r.departures.no_charger)],
    ["energy into the vehicles, kWh", (r) => num(r.energy.to_vehicles_kwh)],
    ["energy from the grid, kWh", (r) => num(r.energy.grid_kwh)],
    ["peak at the grid connection, kW", (r) => num(r.peak.grid_kw)],
    ["highest quarter-hour, kW", (r) => num(r.peak.grid_15min_kw)],
    ["contract, kW", (r) => num(r.peak.limit_kw)],
    ["energy cost, EUR", (r) => num(r.cost.energy_eur)],
    ["demand charge, EUR", (r) => num(r.cost.demand_eur)],
    ["cost in all, EUR", (r) => num(r.cost.total_eur)],
    ["control cycles", (r) => num(r.run.cycles)],
    ["solve median, ms", (r) => num(r.run.solve_ms_median, 1)],
    ["wall time, s", (r) => num(r.run.wall_s, 1)],
  ];
  const head = DATA.runs.map((r) => `<th class="num">${esc(r.label)}</th>`).join("");
  const body = rows.map(([name, get]) =>
    `<tr><td>${esc(name)}</td>${DATA.runs.map((r) => `<td class="num">${get(r)}</td>`).join("")}</tr>`);
  document.getElementById("numbers").innerHTML =
    `<table><thead><tr><th></th>${head}</tr></thead><tbody>${body.join("")}</tbody></table>`;
}

function renderGrid() {
  const box = document.getElementById("grid-chart");
  const base = DATA.runs[0].plot;
  const data = [base.t];
  const series = [];
  DATA.runs.forEach((run, k) => {
    const p = run.plot;
    const label = DATA.runs.length > 1 ? ` (${run.label})` : "";
    // Runs share the time axis (same start, step and length).
    data.push(p.grid_kw, p.chargers_kw);
    series.push({ label: `grid kW${label}`, stroke: COLORS[k * 2 % COLORS.length], width: 2 });
    series.push({ label: `chargers kW${label}`, stroke: COLORS[(k * 2 + 1) % COLORS.length], width: 1 });
    data.push(p.t.map(() => run.peak.limit_kw));
    series.push({ label: `contract kW${label}`, stroke: "#c92a2a", dash: [6, 4], width: 1 });
  });
  data.push(base.building_kw);
  series.push({ label: "building kW", stroke: "#868e96", width: 1 });
  chart(box, "Power at the grid connection", series, data, "kW");
}

function renderCircuits() {
  const box = document.getElementById("circuits");
  const nodes = Object.keys(DATA.runs[0].plot.nodes);
  for (const node of nodes) {
    const row = document.createElement("div");
    row.className = "runs";
    box.appendChild(row);
    // Every run's cell first, so each chart is sized to its column, not to the whole row.
    const cells = DATA.runs.map(() => {
      const cell = document.createElement("div");
      cell.className = "chart";
      row.appendChild(cell);
      return cell;
    });
    DATA.runs.forEach((run, k) => {
      const p = run.plot;
      const found = p.nodes[node];
      if (!found) return;
      const cell = cells[k];
      const c = run.circuits[node];
      const limit = Math.min(...c.limit_a);
      const series = [0, 1, 2].map((k) => ({
        label: `L${k + 1} A`, stroke: PHASES[k], width: 1.5,
      }));
      series.push({ label: "limit A", stroke: "#c92a2a", dash: [6, 4], width: 1 });
      const binds = c.binds_h > 0 ? `, binds ${num(c.binds_h, 1)} h` : "";
      const title = `${node === "grid" ? "grid connection" : node}${DATA.runs.length > 1 ? ` — ${run.label}` : ""}: ` +
        `peak ${num(Math.max(...c.peak_a))} of ${num(limit)} A${binds}`;
      chart(cell, title, series, [p.t, found.l1, found.l2, found.l3, p.t.map(() => limit)], "A");
    });
  }
}

function renderBinding() {
  const box = document.getElementById("binding");
  let html = "";
  for (const run of DATA.runs) {
    const rows = Object.entries(run.circuits).filter(([, c]) => c.binds.length > 0)
      .sort((a, b) => b[1].binds_h - a[1].binds_h)
      .map(([node, c]) => `<tr><td>${esc(node)}</td><td class="num">${num(c.binds_h, 2)}</td>` +
        `<td>${c.binds.map((b) => esc(b.text)).join(", ")}</td></tr>`);
    if (run.demand_charge_binds.length) {
      rows.push(`<tr><td>demand charge</td><td></td><td>` +
        `${run.demand_charge_binds.map((b) => esc(b.text)).join(", ")}</td></tr>`);
    }
    html += `<h3>${esc(run.label)}</h3>` + (rows.length === 0
      ? `<p class="muted">no limit held a session back</p>`
      : `<table><thead><tr><th>limit</th><th class="num">hours</th><th>when</th></tr></thead>` +
        `<tbody>${rows.join("")}</tbody></table>`);
  }
  box.innerHTML = html;
}

let socPlot = null;

function socData(id) {
  const base = DATA.runs[0].plot;
  const data = [base.t];
  const series = [];
  DATA.runs.forEach((run, k) => {
    const trace = run.plot.soc[id];
    const values = base.t.map(() => null);
    if (trace) {
      for (const [i, soc] of trace) values[i] = soc;
    }
    data.push(values);
    series.push({ label: `SoC %${DATA.runs.length > 1 ? ` (${run.label})` : ""}`,
      stroke: COLORS[k % COLORS.length], width: 2 });
  });
  return { data, series };
}

function renderVehicle(id) {
  const box = document.getElementById("soc-chart");
  const { data, series } = socData(id);
  if (socPlot !== null) socPlot.destroy();
  box.innerHTML = "";
  const run = DATA.runs[0];
  const v = run.vehicles.find((x) => x.id === id);
  const title = v ? `${v.id} on ${v.charger ?? "no charger"}: ${num(v.energy_kwh, 1)} of ` +
    `${num(v.need_kwh, 1)} kWh, ${v.status}` : id;
  socPlot = chart(box, title, series, data, "%");
}

function renderVehicles() {
  const run = DATA.runs[0];
  const select = document.getElementById("vehicle");
  const ordered = [...run.vehicles].sort((a, b) =>
    (b.shortfall_kwh ?? 0) - (a.shortfall_kwh ?? 0));
  select.innerHTML = ordered.map((v) =>
    `<option value="${esc(v.id)}">${esc(v.id)} — ${esc(v.status)}` +
    `${v.shortfall_kwh ? `, ${num(v.shortfall_kwh, 1)} kWh short` : ""}</option>`).join("");
  select.addEventListener("change", () => renderVehicle(select.value));
  if (ordered.length) renderVehicle(ordered[0].id);
  const other = DATA.runs[1];
  const statusB = other ? Object.fromEntries(other.vehicles.map((v) => [v.id, v])) : {};
  const rows = run.vehicles.map((v) => {
    const b = statusB[v.id];
    const extra = other ? `<td><span class="badge ${esc((b?.status ?? "").replace(" ", "-"))}">` +
      `${esc(b?.status ?? "–")}</span></td><td class="num">${num(b?.shortfall_kwh, 1)}</td>` : "";
    return `<tr><td>${esc(v.id)}</td><td>${esc(v.charger ?? "–")}</td>` +
      `<td>${esc(v.arrival_local)}</td><td>${esc(v.departure_local)}</td>` +
      `<td class="num">${num(v.need_kwh, 1)}</td><td class="num">${num(v.energy_kwh, 1)}</td>` +
      `<td>${esc(v.ready_local ?? "–")}</td><td class="num">${num(v.ready_margin_min)}</td>` +
      `<td class="num">${num(v.soc_arrival)} → ${num(v.soc_end)}</td>` +
      `<td><span class="badge ${esc(v.status.replace(" ", "-"))}">${esc(v.status)}</span></td>` +
      `<td class="num">${num(v.shortfall_kwh, 1)}</td>${extra}</tr>`;
  });
  const extraHead = other ? `<th>${esc(other.label)}</th><th class="num">short kWh</th>` : "";
  document.getElementById("vehicles").innerHTML =
    `<table><thead><tr><th>visit</th><th>charger</th><th>arrives</th><th>leaves</th>` +
    `<th class="num">need kWh</th><th class="num">got kWh</th><th>ready</th>` +
    `<th class="num">min to spare</th><th class="num">SoC %</th><th>${esc(run.label)}</th>` +
    `<th class="num">short kWh</th>${extraHead}</tr></thead><tbody>${rows.join("")}</tbody></table>`;
}

function main() {
  renderVerdict();
  renderNumbers();
  renderGrid();
  renderCircuits();
  renderBinding();
  renderVehicles();
  document.body.dataset.plots = String(plots);
  document.body.dataset.points = String(points);
  document.body.dataset.ready = "1";
}

main();
