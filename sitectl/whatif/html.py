"""The what-if report as one self-contained HTML file.

Everything is inside the page: the numbers (a JSON block), the dashboard's vendored uPlot
(`sitectl/http/static/vendor`, MIT, its licence kept in a comment), and the report's own script
and style (`sitectl/whatif/static`). No CDN, no network: it opens from a file or an e-mail.
Series are thinned to at most `MAX_POINTS` per chart, loads by their highest value in each
bucket (a peak must not vanish between points), powers by their mean.
"""

from __future__ import annotations

import html
import json
import math
from importlib.resources import files
from typing import Any

__all__ = ["MAX_POINTS", "render_html"]

MAX_POINTS = 1500


def _static(folder: str, name: str) -> str:
    return (files("sitectl").joinpath(*folder.split("/"), name)).read_text(encoding="utf-8")


def _thin(values: list[float], every: int, how: str) -> list[float]:
    if every <= 1:
        return values
    out = []
    for start in range(0, len(values), every):
        chunk = values[start : start + every]
        out.append(max(chunk) if how == "max" else round(sum(chunk) / len(chunk), 2))
    return out


def _plot(summary: dict[str, Any]) -> dict[str, Any]:
    """The series a run's charts draw, thinned."""
    series = summary["series"]
    n = len(series["t"])
    every = max(1, math.ceil(n / MAX_POINTS))
    nodes = {
        node: {f"l{p}": _thin(found[f"l{p}_a"], every, "max") for p in (1, 2, 3)}
        for node, found in series["nodes"].items()
    }
    soc = {
        visit: [[k // every, s] for k, s, _ in trace if k % every == 0 or k == trace[-1][0]]
        for visit, trace in series["soc"].items()
        if trace
    }
    return {
        "t": series["t"][::every],
        "grid_kw": _thin(series["grid_kw"], every, "mean"),
        "chargers_kw": _thin(series["chargers_kw"], every, "mean"),
        "building_kw": _thin(series["building_kw"], every, "mean"),
        "nodes": nodes,
        "soc": soc,
    }


def render_html(runs: list[dict[str, Any]], compare: list[str], title: str) -> str:
    """The report page for one run, or two side by side (`compare`: the differences)."""
    data = {
        "title": title,
        "timezone": runs[0]["site"]["timezone"],
        "compare": compare,
        "runs": [
            {k: v for k, v in run.items() if k != "series"} | {"plot": _plot(run)} for run in runs
        ],
    }
    payload = json.dumps(data, ensure_ascii=False, allow_nan=False).replace("</", "<\\/")
    uplot = _static("http/static/vendor", "uPlot.iife.min.js")
    uplot_css = _static("http/static/vendor", "uPlot.min.css")
    licence = _static("http/static/vendor", "uPlot.LICENSE").replace("*/", "* /")
    script = _static("whatif/static", "report.js")
    style = _static("whatif/static", "report.css")
    first = runs[0]
    site = first["site"]
    run = first["run"]
    sub = (
        f"{site['connectors']} connectors on {site['chargers']} chargers, from "
        f"{run['start_local']} for {run['steps'] * run['step_s'] / 3600:g} h in steps of "
        f"{run['step_s']:g} s, plan steps of {site['plan_step_s'] / 60:g} min"
    )
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>{uplot_css}</style>
<style>{style}</style>
</head>
<body>
<header>
<h1>{html.escape(title)}</h1>
<div class="muted">{html.escape(sub)} — simulated by sitectl's own control loop
(sitectl simulate)</div>
</header>
<main>
<section><h2>Verdict</h2><div id="verdict"></div></section>
<section><h2>Numbers</h2><div id="numbers"></div></section>
<section><h2>Grid connection</h2><div id="grid-chart" class="chart"></div></section>
<section><h2>Circuits: load per phase against the limit</h2><div id="circuits"></div></section>
<section><h2>When each limit binds</h2><div id="binding"></div></section>
<section><h2>Vehicles</h2>
<label>state of charge of <select id="vehicle"></select></label>
<div id="soc-chart" class="chart"></div>
<div id="vehicles" class="vehicles"></div>
</section>
</main>
<footer>Loads are the highest per plotted point, powers the mean. The numbers are in the
JSON and CSV files written with this report.</footer>
<script id="data" type="application/json">{payload}</script>
<script>/* uPlot: {licence} */
{uplot}</script>
<script>{script}</script>
</body>
</html>
"""
