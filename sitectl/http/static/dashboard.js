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
  if (response.status === 401 || response.status === 403) throw await signIn.refused(response);
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
  const limitKw = site.grid_limit_kw ?? site.limit_kw;
  const lowered = limitKw < site.limit_kw - 0.005
    ? ` <span class="badge warn" title="configured ${site.limit_kw.toFixed(0)} kW">grid limit lowered</span>` : "";
  document.getElementById("headline").innerHTML =
    `${power} / ${limitKw.toFixed(0)} kW${lowered} · ${control.sessions_charging} charging, ` +
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

// Why a connector gets less than it could take (the API's `limited_by`): a badge beside the
// limit, its reasons on hover (title) and, for touch screens, on tap (kept open across
// redraws until tapped again).
const openWhy = new Set();

function whyReasons(c) {
  return c.connectors.flatMap((k) => (k.plan?.limited_by ?? []).map((r) =>
    (c.connectors.length > 1 ? `${k.connector_id}: ` : "") + r.text));
}

function whyBadge(c) {
  const reasons = whyReasons(c);
  if (reasons.length === 0) return "";
  const kinds = [...new Set(c.connectors.flatMap((k) => (k.plan?.limited_by ?? []).map((r) => r.kind)))];
  const open = openWhy.has(c.id);
  return ` <span class="why badge warn" tabindex="0" role="button" data-why="${esc(c.id)}"` +
    ` aria-expanded="${open}" title="${esc(reasons.join("\n"))}">why: ${esc(kinds[0])}` +
    `${kinds.length > 1 ? ` +${kinds.length - 1}` : ""}</span>` +
    (open ? `<div class="why-pop">${reasons.map((r) => `<div>${esc(r)}</div>`).join("")}</div>` : "");
}

document.addEventListener("click", (event) => {
  const badge = event.target.closest?.("[data-why]");
  if (!badge) return;
  const id = badge.dataset.why;
  if (openWhy.has(id)) openWhy.delete(id); else openWhy.add(id);
  if (lastChargers) renderChargers(lastChargers);
});
let lastChargers = null;

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
  lastChargers = chargers;
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
      `<td class="limit">${c.limit_a == null ? "–" : c.limit_a.toFixed(1) + " A"}${whyBadge(c)}</td>` +
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

// Every limit window in force (and those announced within the horizon), with its source,
// expiry and reason; each source with its heartbeat.
function limitValue(w) {
  const parts = [];
  if (w.limit_a) parts.push(`${w.limit_a.map((a) => a.toFixed(0)).join("/")} A`);
  if (w.limit_kw != null) parts.push(`${w.limit_kw.toFixed(0)} kW`);
  return parts.join(" and ");
}

function limitRow(w, announced) {
  const until = w.end ? when(w.end) : "until withdrawn";
  const kind = w.hard ? '<span class="badge bad">hard</span>' : '<span class="badge warn">soft</span>';
  return `<tr data-limit="${esc(w.source)}|${esc(w.node)}"><td>${esc(w.node)}</td>` +
    `<td>${esc(limitValue(w))} ${kind}</td><td class="source">${esc(w.source)}</td>` +
    `<td>${announced ? `from ${esc(when(w.start))} ` : ""}${w.end ? "to " : ""}${esc(until)}</td>` +
    `<td>${esc(w.reason)}</td></tr>`;
}

function renderLimits(site) {
  const box = document.getElementById("limits");
  const inForce = site.limits ?? [], announced = site.limits_announced ?? [];
  const sources = site.limit_sources ?? [];
  document.body.dataset.limits = String(inForce.length);
  if (!inForce.length && !announced.length && !sources.length) {
    box.className = "muted";
    box.textContent = "none: the configured ratings apply";
    return;
  }
  const rows = inForce.map((w) => limitRow(w, false)).join("") +
    (announced.length ? `<tr><th colspan="5">announced</th></tr>` +
      announced.map((w) => limitRow(w, true)).join("") : "");
  const beats = sources.map((s) => `<span class="badge ${s.silent ? "bad" : "ok"}" ` +
    `title="last published ${esc(when(s.published_at))}${s.valid_until ? `, due again ${esc(when(s.valid_until))}` : ""}">` +
    `${esc(s.source)}${s.silent ? ": silent, fail-safe applies" : ""}</span>`).join(" ");
  box.className = "";
  box.innerHTML = (rows ? `<table><thead><tr><th>node</th><th>limit</th><th>source</th>` +
    `<th>expires</th><th>reason</th></tr></thead><tbody>${rows}</tbody></table>` : "") +
    (beats ? `<p class="sources">sources: ${beats}</p>` : "");
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
               { label: "limit in force kW", stroke: "#c92a2a", dash: [6, 4] }],
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

// The plan view: one row per connector, time across (from the plan's start to the latest
// departure or ready time, at most the plan's end), the planned power as a band scaled to the
// highest planned power of the site, so rows compare. Sized to fit 100 connectors on a screen.
const SVG_NS = "http://www.w3.org/2000/svg";
const PLAN_EVERY = 5;  // refreshes between plan fetches: a plan changes little in 2 s
let planTick = 0;

function planTitle(p) {
  const parts = [`${p.charger}/${p.connector}`, `departs ${when(p.departure)}`];
  if (p.plan_status === "short") {
    parts.push(`${p.shortfall_kwh.toFixed(1)} kWh short`);
    if (p.ready_at) parts.push(`ready ${when(p.ready_at)} (${p.late_min.toFixed(0)} min late)`);
  } else if (p.ready_at) {
    parts.push(`ready ${when(p.ready_at)}`);
  } else if (p.reason) {
    parts.push(p.reason);
  }
  if (p.planned_kwh != null) parts.push(`${p.planned_kwh.toFixed(1)} kWh planned`);
  const why = (p.limited_by ?? []).map((r) => r.text);
  return parts.join(" · ") + (why.length ? `\nlimited by: ${why.join("; ")}` : "");
}

function renderPlan(plans) {
  const box = document.getElementById("plan");
  document.body.dataset.planRows = String(plans.length);
  if (plans.length === 0) {
    box.textContent = "no vehicle plugged in";
    return;
  }
  const t = (iso) => Date.parse(iso);
  const start = Math.min(...plans.map((p) => t(p.planned_at ?? p.steps[0]?.start ?? p.departure)));
  const lastEnd = Math.max(...plans.flatMap((p) => p.steps.map((s) => t(s.start) + s.duration_s * 1000)));
  const planEnd = Number.isFinite(lastEnd) ? lastEnd : start + 86400e3;
  const marks = plans.flatMap((p) => [t(p.departure), p.ready_at ? t(p.ready_at) : 0]);
  // A little room after the last mark, so a marker at the end stays visible.
  const last = Math.max(...marks);
  const end = Math.max(start + 3600e3, Math.min(planEnd, last + (last - start) * 0.04));
  const maxKw = Math.max(1, ...plans.flatMap((p) => p.steps.map((s) => s.power_kw)));
  const width = Math.max(360, box.clientWidth || 800);
  const rowH = Math.max(8, Math.min(22, Math.floor(640 / plans.length)));
  const left = 110, axisH = 16, right = 8;
  const x = (ms) => left + (width - left - right) * Math.min(1, Math.max(0, (ms - start) / (end - start)));
  const height = axisH + rowH * plans.length;
  let out = "";
  // Hour lines and labels (local time).
  const hour = 3600e3;
  const stepH = Math.max(1, Math.ceil((end - start) / hour / 12));
  for (let h = Math.ceil(start / hour) * hour; h <= end; h += stepH * hour) {
    out += `<line class="grid" x1="${x(h)}" x2="${x(h)}" y1="${axisH}" y2="${height}"/>` +
      `<text class="axis" x="${x(h) + 2}" y="11">${new Date(h).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })}</text>`;
  }
  plans.forEach((p, k) => {
    const top = axisH + k * rowH, bottom = top + rowH - 1;
    const y = (kw) => bottom - (rowH - 2) * Math.min(1, kw / maxKw);
    let path = "";
    if (p.steps.length) {
      path = `M${x(t(p.steps[0].start))},${bottom}`;
      for (const s of p.steps) {
        const a = t(s.start), b = a + s.duration_s * 1000;
        if (a >= end) break;
        path += `L${x(a)},${y(s.power_kw)}L${x(b)},${y(s.power_kw)}`;
      }
      path += `L${x(Math.min(end, planEnd))},${bottom}Z`;
    }
    const key = `${p.charger}/${p.connector}`;
    let row = `<g data-plan="${esc(key)}" data-status="${esc(p.plan_status ?? "")}"` +
      ` class="${p.plan_status === "short" ? "short" : ""}"><title>${esc(planTitle(p))}</title>` +
      `<text class="label" x="2" y="${bottom - 1}" font-size="${Math.min(11, rowH - 1)}">${esc(key)}</text>` +
      (path ? `<path class="band" d="${path}"/>` : "");
    const dep = t(p.departure);
    if (p.plan_status === "short" && p.ready_at) {
      row += `<rect class="late" x="${x(dep)}" y="${top + 1}" width="${Math.max(1, x(t(p.ready_at)) - x(dep))}" height="${rowH - 2}"/>`;
    }
    if (dep <= end) row += `<line class="departure" x1="${x(dep)}" x2="${x(dep)}" y1="${top}" y2="${bottom}"/>`;
    if (p.ready_at && t(p.ready_at) <= end) {
      row += `<line class="ready" x1="${x(t(p.ready_at))}" x2="${x(t(p.ready_at))}" y1="${top}" y2="${bottom}"/>`;
    }
    out += row + "</g>";
  });
  box.classList.remove("muted");
  box.innerHTML = `<svg xmlns="${SVG_NS}" viewBox="0 0 ${width} ${height}" height="${height}">${out}</svg>`;
}

async function refreshPlan() {
  try {
    renderPlan(await get("/api/plans"));
  } catch (error) {
    document.getElementById("plan").textContent = "not available";
  }
}

async function refresh() {
  if (signIn.waiting) return;  // the sign-in form is up (login.js)
  try {
    const [site, chargers, alarms, history] = await Promise.all(
      [get("/api/site"), get("/api/chargers"), get("/api/alarms"), get("/api/history")]);
    renderHeadline(site);
    renderTree(site.circuits);
    renderLimits(site);
    renderChargers(chargers);
    renderAlarms(alarms);
    renderChart(history);
    if (planTick++ % PLAN_EVERY === 0) await refreshPlan();
    document.body.dataset.updated = new Date().toISOString();
  } catch (error) {
    if (signIn.waiting) return;
    document.getElementById("headline").textContent = `cannot reach sitectl: ${error.message}`;
  }
  renderFirmware();
}

signIn.start(refresh);  // asks whether reads need a sign-in first
setInterval(refresh, PERIOD_MS);
window.addEventListener("resize", () => {
  if (chart) chart.setSize({ width: Math.max(300, document.getElementById("chart").clientWidth), height: 240 });
});
