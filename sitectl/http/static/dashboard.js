// sitectl dashboard: polls the local JSON API every two seconds and redraws.
// No build step, no framework; the chart is uPlot (vendored, see vendor/uPlot.LICENSE).
"use strict";

const PERIOD_MS = 2000;
let chart = null;

function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => (
    { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

async function get(path) {
  const response = await fetch(path, { headers: { Accept: "application/json" } });
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response.json();
}

// Without a trusted meter the bar is the plan (non-EV budget plus the EV current dispatched),
// drawn hatched and labelled so, never passed off as a measurement.
function phaseRow(name, measured, planned, limit) {
  const max = Math.max(limit, measured ?? 0, planned, 1);
  const used = measured ?? planned;
  const share = used / limit;
  const cls = (share > 1 ? "over" : share > 0.9 ? "high" : "") + (measured == null ? " planned" : "");
  const value = measured == null ? `planned ${planned.toFixed(0)} / ${limit.toFixed(0)} A`
    : `${measured.toFixed(0)} / ${limit.toFixed(0)} A`;
  return `<div class="phase"><span>${name}</span><div class="track">` +
    `<div class="fill ${cls}" style="width:${(100 * used / max).toFixed(1)}%"></div>` +
    `<div class="plan" style="left:${(100 * planned / max).toFixed(1)}%"></div></div>` +
    `<span class="value">${value}</span></div>`;
}

function meterNote(c) {
  if (c.measured_a != null) {
    return c.meter_state === "none" ? "" : ` <span class="meter">meter ${esc(c.meter_state)}</span>`;
  }
  const why = c.meter_state === "failed" ? "meter failed" : "no meter";
  return ` <span class="meter" title="the bar is the non-EV budget plus the EV current ` +
    `dispatched, not a measurement">${why}: planned, not measured</span>`;
}

function renderTree(circuits) {
  const children = {};
  for (const c of circuits) (children[c.parent ?? ""] ??= []).push(c);
  const node = (c) => {
    const phases = ["L1", "L2", "L3"].map((p, k) =>
      phaseRow(p, c.measured_a ? c.measured_a[k] : null, c.planned_a[k], c.limit_a[k])).join("");
    const kids = (children[c.id] ?? []).map(node).join("");
    return `<div class="node" data-node="${esc(c.id)}"><div class="node-title">${esc(c.id)}${meterNote(c)}</div>` +
      phases + (kids ? `<div class="children">${kids}</div>` : "") + "</div>";
  };
  document.getElementById("circuits").innerHTML = (children[""] ?? []).map(node).join("") ||
    '<span class="muted">waiting for the first control cycle…</span>';
}

function renderHeadline(site) {
  document.getElementById("site-name").textContent = site.name || site.id;
  const control = site.control;
  const power = site.power_kw == null ? "?" : site.power_kw.toFixed(1);
  const solve = control.last_solve_ms == null ? "–" : `${control.last_solve_ms.toFixed(0)} ms ${esc(control.method)}`;
  document.getElementById("headline").innerHTML =
    `${power} / ${site.limit_kw.toFixed(0)} kW · ${control.sessions_charging} charging, ` +
    `${control.sessions_paused} paused · solve ${solve} · fallbacks ${control.fallback_count} · ` +
    (control.method === "fallback"
      ? `<span class="badge warn" title="${esc(control.fallback_reason || "")}">fallback: ` +
        `${esc((control.fallback_reason || "").split(":")[0])}` +
        (control.fallback_shortfall_pct == null ? "" : `, ${control.fallback_shortfall_pct.toFixed(0)} % below the optimum`) +
        `</span> · `
      : "") +
    `<span class="badge ${site.alarms ? "warn" : "ok"}">${site.alarms} alarm${site.alarms === 1 ? "" : "s"}</span>`;
}

// The API's `state` is one vocabulary for 1.6 and 2.0.1; the charger's own status is kept.
function connectorState(k) {
  const detail = k.state_detail ? ` <span class="muted">${esc(k.state_detail)}</span>` : "";
  return `<span data-status="${esc(k.status)}" title="OCPP status: ${esc(k.status)}">` +
    `${esc(k.state)}</span>${detail}`;
}

// Where a departure or a need came from, in the operator's words (SessionPlan's sources).
const SOURCES = { vehicle: "vehicle", fleet: "fleet file", command: "command", default: "default",
                  unknown: "unknown" };
const source = (name) => SOURCES[name] ?? name;

function departureText(k) {
  const plan = k.plan;
  if (!plan) return k.session?.departure ? when(k.session.departure) : "–";
  return `${when(plan.departure)} · ${source(plan.departure_source)}`;
}

function when(iso) {
  return new Date(iso).toLocaleString([], { weekday: "short", hour: "2-digit", minute: "2-digit" })
    .replace(",", "");
}

function needText(k) {
  const plan = k.plan;
  if (!plan) return "–";
  if (plan.capped && plan.need_kwh != null) {
    return `${plan.need_kwh.toFixed(0)} kWh · ${source(plan.need_source)}`;
  }
  if (plan.need_kwh == null || ["default", "unknown"].includes(plan.need_source)) {
    return "unknown need: charging until the vehicle stops";
  }
  return `about ${plan.need_kwh.toFixed(0)} kWh · ${source(plan.need_source)}, ` +
    "charging until the vehicle stops";
}

// Firmware statuses that say nothing is under way (1.6 §7.25, 2.0.1 FirmwareStatusEnumType).
const FIRMWARE_AT_REST = ["Idle", "Installed"];

function firmwareCell(c) {
  const version = c.firmware_version ? esc(c.firmware_version) : '<span class="muted">–</span>';
  const status = c.firmware_status && !FIRMWARE_AT_REST.includes(c.firmware_status)
    ? c.firmware_status : null;
  const cls = status && /Fail|Invalid|Error/.test(status) ? "bad" : "warn";
  if (c.firmware_update) {  // a local rollout: its step, and the charger's own word
    return `${version} <span class="badge warn" title="local rollout">rollout ${esc(c.firmware_update)}` +
      `</span>${status ? ` <span class="muted">${esc(status)}</span>` : ""}`;
  }
  return status ? `${version} <span class="badge ${cls}">${esc(status)}</span>` : version;
}

// How many chargers run each version: a rollout's progress at a glance.
function renderVersions(chargers) {
  const counts = {};
  for (const c of chargers) {
    const v = c.firmware_version ?? "unknown";
    counts[v] = (counts[v] ?? 0) + 1;
  }
  const parts = Object.keys(counts).sort().map((v) =>
    `${esc(v)} on ${counts[v]} charger${counts[v] === 1 ? "" : "s"}`);
  document.getElementById("firmware-versions").innerHTML =
    parts.length ? `versions: ${parts.join(", ")}` : "";
}

function renderChargers(chargers) {
  const rows = chargers.map((c) => {
    const status = c.connectors.map(connectorState).join(" · ");
    const draw = c.connectors.map((k) => (k.current_a ?? [null, null, null])
      .map((a) => (a == null ? "–" : a.toFixed(1))).join("/")).join(" · ");
    const sessions = c.connectors.filter((k) => k.session);
    const energy = sessions.map((k) => `${k.session.energy_kwh.toFixed(1)} kWh`).join(" · ") ||
      '<span class="muted">–</span>';
    // A floor-only connector (plugged in, no session) has a plan too, but nothing to show.
    const departure = sessions.map(departureText).join(" · ");
    const need = sessions.map(needText).join(" · ");
    const compliance = c.compliance === "ok" ? '<span class="badge ok">ok</span>'
      : `<span class="badge bad">${esc(c.compliance)}</span>`;
    const online = c.connected ? '<span class="badge ok">online</span>'
      : '<span class="badge bad">offline</span>';
    const csms = c.upstream_connected ? '<span class="badge ok">up</span>'
      : '<span class="badge warn">down</span>';
    return `<tr data-charger="${esc(c.id)}"><td class="id">${esc(c.id)} ${online}</td>` +
      `<td class="circuit">${esc(c.circuit)}</td><td class="firmware">${firmwareCell(c)}</td>` +
      `<td class="status">${status}</td>` +
      `<td class="limit">${c.limit_a == null ? "–" : c.limit_a.toFixed(1) + " A"}</td>` +
      `<td class="draw">${draw}</td><td class="session">${energy}</td>` +
      `<td class="need">${esc(need)}</td><td class="departure">${esc(departure)}</td>` +
      `<td class="compliance">${compliance}</td>` +
      `<td class="csms">${csms}</td></tr>`;
  });
  document.querySelector("#chargers tbody").innerHTML = rows.join("");
  renderVersions(chargers);
}

function renderAlarms(alarms) {
  document.getElementById("alarms").innerHTML = alarms.length === 0
    ? '<li class="muted">none</li>'
    : alarms.map((a) => `<li class="${esc(a.severity)}"><b>${esc(a.code)}</b> ${esc(a.subject)}: ` +
        `${esc(a.text)} <span class="muted">${new Date(a.raised_at).toLocaleTimeString()}</span></li>`).join("");
}

function renderChart(history) {
  const x = history.at.map((t) => Date.parse(t) / 1000);
  const data = [x, history.power_kw, history.limit_kw];
  const box = document.getElementById("chart");
  const width = Math.max(300, box.clientWidth);
  if (chart === null) {
    chart = new uPlot({
      width, height: 240,
      series: [{}, { label: "power kW", stroke: "#4c6ef5", width: 2, spanGaps: false },
               { label: "limit kW", stroke: "#c92a2a", dash: [6, 4] }],
      axes: [{}, { label: "kW" }],
    }, data, box);
  } else {
    chart.setData(data);
  }
  document.body.dataset.chartPoints = String(history.power_kw.filter((p) => p != null).length);
}

function counts(rollout) {
  return Object.entries(rollout.counts ?? {}).filter(([, n]) => n > 0)
    .map(([step, n]) => `${n} ${esc(step)}`).join(", ") || "no chargers";
}

async function renderFirmware() {
  const box = document.getElementById("firmware");
  try {
    const firmware = await get("/api/firmware");
    if (!firmware.enabled) {
      box.textContent = "firmware is disabled on this sitectl";
      return;
    }
    const cache = firmware.cache;
    const mb = (b) => (b / 1048576).toFixed(0);
    const head = cache ? `<p class="muted">cache ${mb(cache.used_bytes)} of ${mb(cache.max_bytes)} MB, ` +
      `${cache.images.length} image${cache.images.length === 1 ? "" : "s"}` +
      `${cache.downloading ? ", downloading" : ""}</p>` : "";
    const rows = (firmware.rollouts ?? []).map((r) => {
      const cls = r.state === "done" ? "ok" : ["halted", "failed"].includes(r.state) ? "bad" : "warn";
      return `<tr data-rollout="${esc(r.id)}"><td>#${esc(r.id)}</td>` +
        `<td><span class="badge ${cls}">${esc(r.state)}</span></td><td>${counts(r)}</td>` +
        `<td class="url">${esc(r.url)}</td><td>${esc(r.reason ?? "")}</td></tr>`;
    });
    box.innerHTML = head + (rows.length === 0 ? "no rollouts"
      : `<table><thead><tr><th>rollout</th><th>state</th><th>chargers</th><th>image</th>` +
        `<th></th></tr></thead><tbody>${rows.join("")}</tbody></table>`);
  } catch (error) {
    box.textContent = "not available";
  }
}

async function refresh() {
  try {
    const [site, chargers, alarms, history] = await Promise.all(
      [get("/api/site"), get("/api/chargers"), get("/api/alarms"), get("/api/history")]);
    renderHeadline(site);
    renderTree(site.circuits);
    renderChargers(chargers);
    renderAlarms(alarms);
    renderChart(history);
    document.body.dataset.updated = new Date().toISOString();
  } catch (error) {
    document.getElementById("headline").textContent = `cannot reach sitectl: ${error.message}`;
  }
  renderFirmware();
}

refresh();
setInterval(refresh, PERIOD_MS);
window.addEventListener("resize", () => {
  if (chart) chart.setSize({ width: Math.max(300, document.getElementById("chart").clientWidth), height: 240 });
});
