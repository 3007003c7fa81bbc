"""``/metrics``: the depot in Prometheus text format, read from SiteState at every scrape.

A custom collector (prometheus-client) turns the state into metric families on demand, so
nothing has to be updated on the hot paths. Names follow the Prometheus conventions: base units
(amperes, seconds), ``_total`` for counters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from sitectl.config import Config
from sitectl.state import SOLVE_BUCKETS_S, SiteState

__all__ = ["StateCollector", "render_metrics"]


_PHASES = ("L1", "L2", "L3")


class StateCollector:
    """Collects sitectl's metrics from the site state at scrape time.

    Args:
        state: the site state.
        config: the configuration (device names, the grid meter).
        extra: more gauges: name -> (help, function returning the value), e.g. the journal
            and outbox lengths owned by other components.
    """

    def __init__(
        self,
        state: SiteState,
        config: Config,
        extra: dict[str, tuple[str, Callable[[], float]]] | None = None,
    ) -> None:
        self.state = state
        self.config = config
        self.extra = extra or {}

    def collect(self) -> Iterator[Metric]:
        state = self.state
        current = GaugeMetricFamily(
            "sitectl_circuit_current_amperes",
            "Measured current per circuit and phase",
            labels=["circuit", "phase"],
        )
        limit = GaugeMetricFamily(
            "sitectl_circuit_limit_amperes",
            "Current limit in force per circuit and phase",
            labels=["circuit", "phase"],
        )
        planned = GaugeMetricFamily(
            "sitectl_circuit_planned_amperes",
            "Non-EV load plus EV budget per circuit and phase",
            labels=["circuit", "phase"],
        )
        for node, circuit in state.control.circuits.items():
            for k, phase in enumerate(_PHASES):
                limit.add_metric([node, phase], circuit.limit_a[k])
                planned.add_metric([node, phase], circuit.planned_a[k])
                if circuit.measured_a is not None:
                    current.add_metric([node, phase], circuit.measured_a[k])
        yield from (current, limit, planned)

        charger_limit = GaugeMetricFamily(
            "sitectl_charger_limit_amperes",
            "Dynamic limit in force per charger",
            labels=["charger"],
        )
        charger_draw = GaugeMetricFamily(
            "sitectl_charger_current_amperes",
            "Measured draw per charger and charger phase",
            labels=["charger", "phase"],
        )
        connected = GaugeMetricFamily(
            "sitectl_charger_connected",
            "1 when the charger is connected to sitectl",
            labels=["charger"],
        )
        upstream = GaugeMetricFamily(
            "sitectl_charger_upstream_connected",
            "1 when the charger's CSMS connection is up",
            labels=["charger"],
        )
        compliant = GaugeMetricFamily(
            "sitectl_charger_compliant", "1 when the charger follows its limit", labels=["charger"]
        )
        sessions = 0
        for charger_id, charger in state.chargers.items():
            connected.add_metric([charger_id], float(charger.connected))
            upstream.add_metric([charger_id], float(charger.upstream_connected))
            compliant.add_metric([charger_id], float(charger.compliance == "ok"))
            if charger.limit_a is not None:
                charger_limit.add_metric([charger_id], charger.limit_a)
            totals = [0.0, 0.0, 0.0]
            for connector in charger.connectors.values():
                sessions += connector.session is not None
                for k, amps in enumerate(connector.current_a or ()):
                    totals[k] += amps or 0.0
            for k, phase in enumerate(_PHASES):
                charger_draw.add_metric([charger_id, phase], totals[k])
        yield from (charger_limit, charger_draw, connected, upstream, compliant)

        control = state.control
        yield GaugeMetricFamily("sitectl_sessions", "Sessions in progress", value=sessions)
        yield GaugeMetricFamily(
            "sitectl_sessions_charging",
            "Sessions with a current above 0 this cycle",
            value=control.sessions_charging,
        )
        yield CounterMetricFamily(
            "sitectl_control_cycles_total", "Control cycles run", value=control.cycles
        )
        yield CounterMetricFamily(
            "sitectl_fallback_total",
            "Cycles dispatched by the fallback heuristic",
            value=control.fallback_count,
        )
        active = GaugeMetricFamily(
            "sitectl_fallback_active",
            "1 while the fallback heuristic answers, labelled with why",
            labels=["reason"],
        )
        reason = (control.fallback_reason or "").split(":", 1)[0]
        active.add_metric([reason], float(control.method == "fallback"))
        yield active
        if control.fallback_shortfall_pct is not None:
            yield GaugeMetricFamily(
                "sitectl_fallback_shortfall_percent",
                "How much less current the fallback dispatches than the last optimum",
                value=control.fallback_shortfall_pct,
            )
        buckets = []
        cumulative = 0
        for bound, count in zip(SOLVE_BUCKETS_S, control.solve_buckets, strict=False):
            cumulative += count
            buckets.append((repr(bound), cumulative))
        buckets.append(("+Inf", control.cycles))
        yield HistogramMetricFamily(
            "sitectl_solve_seconds",
            "Time to produce an allocation",
            buckets=buckets,
            sum_value=control.solve_s_total,
        )

        quality = GaugeMetricFamily(
            "sitectl_meter_ok", "1 when the device's latest reading is ok", labels=["device"]
        )
        for device in self.config.devices:
            reading = state.readings.get(device.name)
            quality.add_metric([device.name], float(bool(getattr(reading, "ok", False))))
        yield quality
        yield GaugeMetricFamily(
            "sitectl_alarms", "Alarms currently raised", value=len(state.alarms)
        )
        # One series per raised alarm, so an alert rule can name what is wrong.
        raised = GaugeMetricFamily(
            "sitectl_alarm",
            "1 for every alarm currently raised",
            labels=["code", "subject", "severity"],
        )
        for alarm in list(state.alarms.values()):
            raised.add_metric([alarm.code, alarm.subject, str(alarm.severity)], 1.0)
        yield raised
        yield from self._limits()
        for name, (help_text, read) in self.extra.items():
            yield GaugeMetricFamily(name, help_text, value=read())

    def _limits(self) -> Iterator[Metric]:
        """Limit windows in force, their sources' heartbeats, interventions (issue #20)."""
        state = self.state
        now = state.clock()
        labels = ["node", "source", "hard"]
        amps = GaugeMetricFamily(
            "sitectl_limit_window_amperes",
            "Per-phase current limit of each limit window in force (its lowest phase)",
            labels=labels,
        )
        watts = GaugeMetricFamily(
            "sitectl_limit_window_watts",
            "Active-power limit of each limit window in force",
            labels=labels,
        )
        for window in state.limits.in_force(now):
            key = [window.node, window.source, str(window.hard).lower()]
            if window.limit_a is not None:
                amps.add_metric(key, min(window.limit_a))
            if window.limit_kw is not None:
                watts.add_metric(key, window.limit_kw * 1000.0)
        silent = GaugeMetricFamily(
            "sitectl_limit_source_silent",
            "1 while a limit source's heartbeat has lapsed (its fail-safe applies)",
            labels=["source"],
        )
        for status in state.limits.status(now):
            silent.add_metric([status.source], float(status.silent))
        events = CounterMetricFamily(
            "sitectl_limit_events_total",
            "Limit interventions: windows started, changed, ended, by source",
            labels=["action", "source"],
        )
        for (action, source), count in sorted(state.control.limit_events.items()):
            events.add_metric([action, source], count)
        yield from (amps, watts, silent, events)


def render_metrics(collector: StateCollector) -> bytes:
    """The Prometheus text exposition of one scrape."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)  # type: ignore[arg-type]
    return generate_latest(registry)
