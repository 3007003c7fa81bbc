"""A one-screen summary of a depot configuration, for ``sitectl check-config``.

It shows what the installer wrote as sitectl understood it: the circuit tree with limits, the
chargers on each circuit, the fail-safe load per phase, devices and services. No secrets.
"""

from __future__ import annotations

from itertools import groupby

from sitectl.config import GRID, PHASE_NAMES, ChargerConfig, Config, DeviceConfig, Problem

__all__ = ["render_summary"]


def _phases(values: tuple[float, float, float]) -> str:
    if values[0] == values[1] == values[2]:
        return f"{values[0]:g} A"
    return "/".join(f"{v:g}" for v in values) + " A"


def _charger_names(chargers: list[ChargerConfig], limit: int = 6) -> str:
    names = [c.id for c in chargers]
    shown = ", ".join(names[:limit])
    return shown + (f", … (+{len(names) - limit})" if len(names) > limit else "")


def _device_line(device: DeviceConfig) -> str:
    if device.host is not None:
        where = f"tcp {device.host}:{device.port}"
    else:
        where = f"rtu {device.serial_port} {device.baudrate} {device.parity}{device.stopbits}"
    kind = " (digital I/O)" if device.is_io else ""
    return (
        f"  {device.name}: {device.profile}{kind}, {where}, unit {device.unit_id}, "
        f"every {device.poll_period_s:g} s"
    )


def render_summary(config: Config, filename: str, warnings: list[Problem]) -> str:
    """Render the summary as text (at most a screen for a typical depot)."""
    site = config.site
    lines = [f"{filename}: OK"]
    title = f"site {site.id}" + (f" ({site.name})" if site.name else "")
    lines.append(
        f"{title}: {site.limit_kw:g} kW, {_phases(site.phase_limit_a)} per phase, "
        f"{site.nominal_voltage_v:g} V" + (f", meter {site.meter}" if site.meter else "")
    )

    children: dict[str, list[str]] = {}
    for circuit in config.circuits:
        children.setdefault(circuit.parent, []).append(circuit.id)
    by_circuit: dict[str, list[ChargerConfig]] = {}
    for charger in config.chargers:
        by_circuit.setdefault(charger.circuit, []).append(charger)
    circuits = {c.id: c for c in config.circuits}

    lines.append("circuits:")

    def node_line(node: str, prefix: str, last: bool, root: bool) -> None:
        branch = "" if root else ("└─ " if last else "├─ ")
        if node == GRID:
            text = f"{GRID} (connection) {_phases(site.phase_limit_a)}, {site.limit_kw:g} kW"
        else:
            circuit = circuits[node]
            text = f"{node} ({circuit.kind}) {_phases(circuit.limit_a)}"
            if circuit.limit_kw:
                text += f", {circuit.limit_kw:g} kW"
            if circuit.meter:
                text += f", meter {circuit.meter}"
        chargers = by_circuit.get(node, [])
        if chargers:
            text += f" — {len(chargers)} charger{'s' if len(chargers) != 1 else ''}: "
            text += _charger_names(chargers)
        lines.append(f"  {prefix}{branch}{text}")
        kids = children.get(node, [])
        for index, child in enumerate(kids):
            extension = "" if root else ("   " if last else "│  ")
            node_line(child, prefix + extension, index == len(kids) - 1, False)

    node_line(GRID, "", True, True)

    ac = sum(1 for c in config.chargers if c.kind == "ac")
    versions = {v: sum(1 for c in config.chargers if c.ocpp_version == v) for v in ("1.6", "2.0.1")}
    failsafe = [0.0, 0.0, 0.0]
    for charger in config.chargers:
        for phase in charger.site_phases:
            failsafe[phase] += charger.failsafe_current_a
    lines.append(
        f"chargers: {len(config.chargers)} ({ac} AC, {len(config.chargers) - ac} DC; "
        f"OCPP 1.6: {versions['1.6']}, 2.0.1: {versions['2.0.1']}); fail-safe load "
        + ", ".join(f"{PHASE_NAMES[p]} {failsafe[p]:g} A" for p in range(3))
    )
    if config.devices:
        lines.append(f"devices: {len(config.devices)}")
        lines += [_device_line(d) for d in config.devices]
    else:
        lines.append("devices: none (no meter: sitectl budgets on fail-safe assumptions)")

    ocpp = config.ocpp
    scheme = "wss" if ocpp.security_profile >= 2 else "ws"
    upstream = ocpp.upstream_url or "none (standalone)"
    lines.append(
        f"ocpp: {scheme}://{ocpp.listen_host}:{ocpp.listen_port}{ocpp.path}/<identity>, "
        f"security profile {ocpp.security_profile}, upstream {upstream}, "
        f"offline mode {ocpp.offline.mode}"
    )
    control = config.control
    grid = [(len(list(group)), length) for length, group in groupby(control.step_durations_s())]
    steps = " then ".join(f"{count} × {length:g} s" for count, length in grid)
    hours = control.horizon_steps * control.step_s / 3600
    lines.append(
        f"control: every {control.period_s:g} s, horizon {hours:g} h in {steps}, "
        f"solver budget {control.solver_budget_s:g} s"
    )
    mqtt = config.mqtt
    lines.append(
        f"mqtt: {mqtt.host}:{mqtt.port}{' (TLS)' if mqtt.tls else ''}, topics "
        f"{config.topic_prefix}/…"
        if mqtt.enabled
        else "mqtt: disabled"
    )
    http = config.http
    lines.append(
        f"http: {http.listen_host}:{http.listen_port}" if http.enabled else "http: disabled"
    )
    lines.append(f"storage: {config.storage.path}")
    if warnings:
        lines.append(f"warnings ({len(warnings)}):")
        lines += [f"  {w}" for w in warnings]
    return "\n".join(lines)
