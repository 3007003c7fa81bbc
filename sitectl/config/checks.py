"""Every check that involves more than one field: references, cycles, fail-safe sums.

`_reference_check` works on plain data so it also runs when some fields are invalid; the others
take a validated `Config`.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from devices.digital import MODBUS_DI, resolve_io_profile
from devices.profile import ProfileError, resolve_profile
from sitectl.config.base import GRID, PHASE_NAMES
from sitectl.config.errors import Problem
from sitectl.config.secretchecks import http_access_checks, secret_checks
from sitectl.config.signalchecks import io_checks

if TYPE_CHECKING:
    from sitectl.config.model import Config


def _items(data: dict, key: str) -> list[tuple[int, dict]]:
    value = data.get(key)
    if not isinstance(value, list):
        return []
    return [(i, item) for i, item in enumerate(value) if isinstance(item, dict)]


def _text(item: dict, key: str, default: str | None = None) -> str | None:
    value = item.get(key, default)
    return value if isinstance(value, str) else None


def _duplicates(items: list[tuple[int, dict]], key: str) -> Iterator[tuple[int, str, int]]:
    first: dict[str, int] = {}
    for index, item in items:
        value = _text(item, key)
        if value is None:
            continue
        if value in first:
            yield index, value, first[value]
        else:
            first[value] = index


def _reference_check(data: dict) -> list[Problem]:
    """Checks of names and references, on plain data so they run even when fields are invalid.

    Unknown circuits and devices, duplicates, cycles: the mistakes of copy-and-paste editing.
    """
    problems: list[Problem] = []
    add = problems.append
    devices = _items(data, "devices")
    circuits = _items(data, "circuits")
    chargers = _items(data, "chargers")
    site = data.get("site") if isinstance(data.get("site"), dict) else {}

    device_names = {n for _, d in devices if (n := _text(d, "name"))}
    for index, name, first in _duplicates(devices, "name"):
        add(
            Problem(
                ("devices", index, "name"),
                f"duplicate device name '{name}' (also devices[{first}])",
            )
        )
    meter = _text(site, "meter")
    if meter is not None and meter not in device_names:
        add(Problem(("site", "meter"), f"unknown device '{meter}'" + _suggest(meter, device_names)))

    circuit_ids = {n for _, c in circuits if (n := _text(c, "id"))}
    for index, name, first in _duplicates(circuits, "id"):
        add(
            Problem(
                ("circuits", index, "id"), f"duplicate circuit id '{name}' (also circuits[{first}])"
            )
        )
    parents: dict[str, str | None] = {GRID: None}
    for index, circuit in circuits:
        cid = _text(circuit, "id")
        parent = _text(circuit, "parent", GRID)
        if cid == GRID:
            add(
                Problem(
                    ("circuits", index, "id"),
                    f"'{GRID}' is reserved for the grid connection described under `site`",
                )
            )
        elif cid is not None and parent is not None and parent != cid:
            parents.setdefault(cid, parent)
        if parent is not None and parent != GRID and parent not in circuit_ids:
            add(
                Problem(
                    ("circuits", index, "parent"),
                    f"unknown circuit '{parent}'" + _suggest(parent, circuit_ids | {GRID}),
                )
            )
        elif parent is not None and parent == cid:
            add(Problem(("circuits", index, "parent"), "a circuit cannot be its own parent"))
        meter = _text(circuit, "meter")
        if meter is not None and meter not in device_names:
            add(
                Problem(
                    ("circuits", index, "meter"),
                    f"unknown device '{meter}'" + _suggest(meter, device_names),
                )
            )

    reported: set[str] = set()
    for index, circuit in circuits:
        cid = _text(circuit, "id")
        seen: list[str] = []
        node: str | None = cid
        while node is not None and node in parents and node not in seen:
            seen.append(node)
            node = parents[node]
        if node is not None and node in seen:
            cycle = seen[seen.index(node) :]
            if reported.intersection(cycle):
                continue
            reported.update(cycle)
            add(
                Problem(
                    ("circuits", index, "parent"),
                    "cycle in the circuit tree: " + " → ".join([*cycle, node]),
                )
            )

    for index, name, first in _duplicates(chargers, "id"):
        add(
            Problem(
                ("chargers", index, "id"), f"duplicate charger id '{name}' (also chargers[{first}])"
            )
        )
    known_nodes = circuit_ids | {GRID}
    for index, charger in chargers:
        circuit = _text(charger, "circuit")
        if circuit is not None and circuit not in known_nodes:
            add(
                Problem(
                    ("chargers", index, "circuit"),
                    f"unknown circuit '{circuit}'" + _suggest(circuit, known_nodes),
                )
            )
    return problems


def _firmware_check(cfg: Config) -> list[Problem]:
    """HTTPS needs the site certificate; firmware needs a URL the chargers can reach."""
    problems = []
    if cfg.http.tls and (cfg.ocpp.tls_cert_file is None or cfg.ocpp.tls_key_file is None):
        problems.append(
            Problem(
                ("http", "tls"),
                "HTTPS uses the site certificate: set ocpp.tls_cert_file and ocpp.tls_key_file",
            )
        )
    fw = cfg.firmware
    if not fw.enabled:
        return problems
    if not cfg.http.enabled:
        if fw.base_url is None:
            return problems  # a site without local HTTP and without firmware settings
        problems.append(
            Problem(
                ("firmware", "base_url"),
                "firmware files are served by the local HTTP server, which is disabled: "
                "UpdateFirmware passes through untouched and rollouts are unavailable",
                warning=True,
            )
        )
    elif fw.base_url is None:
        problems.append(
            Problem(
                ("firmware", "base_url"),
                "not set: chargers cannot be pointed at the cache, so UpdateFirmware passes "
                "through untouched and rollouts are refused; set it to e.g. "
                f"http://<sitectl's LAN address>:{cfg.http.listen_port}, or firmware.enabled: "
                "false",
                warning=True,
            )
        )
    else:
        parts = urlsplit(fw.base_url)
        scheme = "https" if cfg.http.tls else "http"
        port = parts.port or (443 if parts.scheme == "https" else 80)
        if parts.scheme != scheme or port != cfg.http.listen_port:
            problems.append(
                Problem(
                    ("firmware", "base_url"),
                    f"'{fw.base_url}' does not match the local HTTP server "
                    f"({scheme}, port {cfg.http.listen_port}); fine only behind a proxy or a "
                    "port forward",
                    warning=True,
                )
            )
    return problems


def _cross_check(cfg: Config) -> list[Problem]:
    """Every check involving more than one field. Warnings are returned with ``warning=True``."""
    problems = _reference_check(cfg.model_dump(include={"site", "circuits", "chargers", "devices"}))
    add = problems.append
    limits = cfg.circuit_limits_a()
    for index, circuit in enumerate(cfg.circuits):
        parent_limit = limits.get(circuit.parent)
        if parent_limit and any(c > p for c, p in zip(circuit.limit_a, parent_limit, strict=True)):
            add(
                Problem(
                    ("circuits", index, "limit_a"),
                    f"limit {_fmt_phases(circuit.limit_a)} A is above its parent "
                    f"'{circuit.parent}' ({_fmt_phases(parent_limit)} A); the parent's "
                    "limit will bind",
                    warning=True,
                )
            )
        if any(n > lim for n, lim in zip(circuit.non_ev_max_a, circuit.limit_a, strict=True)):
            add(
                Problem(
                    ("circuits", index, "non_ev_max_a"),
                    "worst-case non-EV load is above the circuit's limit",
                )
            )

    for index, charger in enumerate(cfg.chargers):
        if charger.circuit not in limits:
            continue
        circuit_limit = limits[charger.circuit]
        for phase in charger.site_phases:
            if charger.failsafe_current_a > circuit_limit[phase]:
                add(
                    Problem(
                        ("chargers", index, "failsafe_current_a"),
                        f"fail-safe {charger.failsafe_current_a:g} A is above the "
                        f"{circuit_limit[phase]:g} A limit of circuit '{charger.circuit}' "
                        f"on {PHASE_NAMES[phase]}",
                    )
                )
                break
        if cfg.ocpp.security_profile in (1, 2) and charger.password is None:
            add(
                Problem(
                    ("chargers", index, "password"),
                    f"security_profile {cfg.ocpp.security_profile} needs a password for "
                    "every charger (or password_file, or SITECTL_CHARGERS__<id>__PASSWORD)",
                )
            )

    problems += _failsafe_check(cfg)
    problems += _profile_check(cfg)
    problems += io_checks(cfg)
    problems += _wiring_warnings(cfg)
    problems += _writable_path_warnings(cfg)
    problems += secret_checks(cfg)
    problems += http_access_checks(cfg)

    if cfg.ocpp.local_controller_identity and cfg.charger(cfg.ocpp.local_controller_identity):
        add(
            Problem(
                ("ocpp", "local_controller_identity"),
                "the local controller identity is also a charger id",
            )
        )

    if cfg.mqtt.enabled and cfg.mqtt.password is not None and cfg.mqtt.username is None:
        add(Problem(("mqtt", "username"), "mqtt.password is set but mqtt.username is not"))

    problems += _firmware_check(cfg)
    if cfg.firmware.canary_count > cfg.firmware.max_parallel and cfg.firmware.canary_count > 1:
        add(
            Problem(
                ("firmware", "canary_count"),
                "more canaries than firmware.max_parallel can update at once",
                warning=True,
            )
        )

    problems += _fleet_check(cfg)
    problems += _openadr_check(cfg)
    tags: dict[str, int] = {}
    for index, vehicle in enumerate(cfg.fleet.vehicles):
        for tag in vehicle.id_tags:
            if tag in tags and tags[tag] != index:
                add(
                    Problem(
                        ("fleet", "vehicles", index, "id_tags"),
                        f"id tag '{tag}' also belongs to fleet.vehicles[{tags[tag]}]",
                    )
                )
            tags.setdefault(tag, index)

    site_kw_from_a = 3 * cfg.site.nominal_voltage_v * min(cfg.site.phase_limit_a) / 1000
    if cfg.site.limit_kw > site_kw_from_a * 1.05:
        add(
            Problem(
                ("site", "limit_kw"),
                f"{cfg.site.limit_kw:g} kW cannot flow within the per-phase limit "
                f"({site_kw_from_a:.0f} kW at {cfg.site.nominal_voltage_v:g} V); the current "
                "limit will bind",
                warning=True,
            )
        )
    control = cfg.control
    if control.non_ev_hold_s < control.required_non_ev_hold_s:
        add(
            Problem(
                ("control", "non_ev_hold_s"),
                f"{control.non_ev_hold_s:g} s is shorter than max(ev_measurement_max_age_s, "
                f"meter_grace_s) + period_s = {control.required_non_ev_hold_s:g} s: a paused "
                "vehicle's last report would make the building look smaller than it is; "
                f"{control.required_non_ev_hold_s:g} s is used",
                warning=True,
            )
        )
    interval = cfg.ocpp.meter_values_interval_s
    if interval and 2 * interval > control.ev_measurement_max_age_s:
        add(
            Problem(
                ("ocpp", "meter_values_interval_s"),
                f"{interval} s: a draw is trusted for control.ev_measurement_max_age_s "
                f"({control.ev_measurement_max_age_s:g} s), less than two reports; between "
                "them a vehicle's draw counts as building load and vehicles are held back",
                warning=True,
            )
        )
    for index, circuit in enumerate(cfg.circuits):
        if not any(circuit.non_ev_max_a) and not circuit.chargers_only:
            where = "unmetered" if circuit.meter is None else "whenever its meter fails"
            add(
                Problem(
                    ("circuits", index, "non_ev_max_a"),
                    f"not set: {where}, sitectl assumes nothing but chargers draws on "
                    f"'{circuit.id}'; set the largest other load (A per phase), or "
                    "chargers_only: true to confirm",
                    warning=True,
                )
            )
    if not any(cfg.site.non_ev_max_a) and cfg.chargers:
        add(
            Problem(
                ("site", "non_ev_max_a"),
                "not set: the fail-safe check assumes the building draws nothing",
                warning=True,
            )
        )
    if cfg.ocpp.security_profile == 0:
        add(
            Problem(
                ("ocpp", "security_profile"),
                "0 accepts any charger without a password: only for a lab bench",
                warning=True,
            )
        )
    if cfg.ocpp.security_profile == 1 and not _loopback(cfg.ocpp.listen_host):
        add(
            Problem(
                ("ocpp", "security_profile"),
                f"1 on {cfg.ocpp.listen_host}: every charger's password crosses the depot "
                "network in clear (Basic auth over ws://); use 2 (TLS) where the chargers can",
                warning=True,
            )
        )
    upstream = cfg.ocpp.upstream_url
    if upstream and upstream.startswith("ws://") and not _loopback(urlsplit(upstream).hostname):
        add(
            Problem(
                ("ocpp", "upstream_url"),
                f"{upstream}: unencrypted; sitectl forwards each charger's credentials and "
                "traffic to the CSMS in clear over that network; use wss://",
                warning=True,
            )
        )
    return problems


def _loopback(host: str | None) -> bool:
    """A host only this machine reaches (localhost, 127.0.0.0/8, ::1)."""
    return host in ("localhost", "::1") or (host or "").startswith("127.")


# Line-to-line voltages of low-voltage networks (380/400/415/440/480 V) typed where sitectl wants
# line-to-neutral; 347 V (Canada's 600 V networks) stays below, 400 V of a 690 V network inside.
_LINE_TO_LINE_V = (360.0, 500.0)


#: What the shipped systemd unit (configs/sitectl.service: ProtectSystem=strict) mounts
#: read-only; only its StateDirectory /var/lib/sitectl (and /tmp, private) stays writable.
READ_ONLY_UNDER_UNIT = ("/etc", "/usr", "/opt", "/boot", "/efi")


def _writable_path_warnings(cfg: Config) -> list[Problem]:
    """Paths sitectl writes that the shipped unit would make read-only (issue #22.9).

    A relative ``storage.path`` resolves next to the config file: with the config in
    /etc/sitectl the store would be /etc/sitectl/sitectl.sqlite, which the unit mounts
    read-only, and sitectl would fail at its first write instead of at check-config.
    """
    out: list[Problem] = []
    for path, where in (
        (cfg.storage.path, ("storage", "path")),
        (cfg.firmware.cache_dir, ("firmware", "cache_dir")),
    ):
        text = str(path)
        if any(text == root or text.startswith(root + "/") for root in READ_ONLY_UNDER_UNIT):
            out.append(
                Problem(
                    where,
                    f"{text} is read-only under the shipped systemd unit (ProtectSystem=strict): "
                    "sitectl could not write there; put it under /var/lib/sitectl",
                    warning=True,
                )
            )
    return out


def _wiring_warnings(cfg: Config) -> list[Problem]:
    """Values that are valid but probably not what the installer meant about the wiring."""
    problems: list[Problem] = []
    voltage = cfg.site.nominal_voltage_v
    if _LINE_TO_LINE_V[0] <= voltage <= _LINE_TO_LINE_V[1]:
        problems.append(
            Problem(
                ("site", "nominal_voltage_v"),
                f"{voltage:g} V looks like the line-to-line voltage; sitectl wants "
                f"line-to-neutral ({voltage / math.sqrt(3):.0f} V on a {voltage:g} V network), "
                "else every power it computes is 1.7 times too high (keep it only on a 690 V "
                "network)",
                warning=True,
            )
        )
    for index, charger in enumerate(cfg.chargers):
        tokens = re.findall(r"L[123]", charger.phase_rotation.upper())
        if (
            charger.phases == 1
            and len(tokens) == 3
            and "phase_rotation" in charger.model_fields_set
        ):
            used = PHASE_NAMES[charger.site_phases[0]]
            problems.append(
                Problem(
                    ("chargers", index, "phase_rotation"),
                    f"'{charger.phase_rotation}' names three phases but the charger has "
                    f"phases: 1, so only the first is used: write '{used}' (the site phase it "
                    "is wired to), or phases: 3",
                    warning=True,
                )
            )
    return problems


def _profile_check(cfg: Config) -> list[Problem]:
    """Every device's register map loads and validates (its profile, or its inline map)."""
    problems: list[Problem] = []
    for index, device in enumerate(cfg.devices):
        try:
            if device.is_io:
                resolve_io_profile(device.to_spec())
            else:
                resolve_profile(device.to_spec())
        except ProfileError as exc:
            field = {"generic": "registers", MODBUS_DI: "inputs"}.get(device.profile, "profile")
            for line in exc.problems:
                problems.append(Problem(("devices", index, field), line))
    return problems


def _failsafe_check(cfg: Config) -> list[Problem]:
    """Fail-safe limits under every circuit, plus its worst-case non-EV load, fit its limit.

    When sitectl or its links die, every charger falls back to its fail-safe limit at once, so
    the sum must fit without sitectl (DESIGN.md safety model).
    """
    problems: list[Problem] = []
    nodes = {c.id for c in cfg.circuits} | {GRID}
    parents = cfg.circuit_parent()
    load: dict[str, list[float]] = {node: [0.0, 0.0, 0.0] for node in nodes}
    power_kw: dict[str, float] = dict.fromkeys(nodes, 0.0)
    for charger in cfg.chargers:
        if charger.circuit not in nodes:
            continue
        path = cfg.circuit_path(charger.circuit)
        if path[-1] != GRID:  # a cycle; reported elsewhere
            continue
        for node in path:
            for phase in charger.site_phases:
                load[node][phase] += charger.failsafe_current_a
            power_kw[node] += (
                charger.failsafe_current_a
                * cfg.site.nominal_voltage_v
                * len(charger.site_phases)
                / 1000
            )
    non_ev = {GRID: cfg.site.non_ev_max_a}
    non_ev.update({c.id: c.non_ev_max_a for c in cfg.circuits})
    limits = cfg.circuit_limits_a()
    location = {GRID: ("site", "phase_limit_a")}
    location.update({c.id: ("circuits", i, "limit_a") for i, c in enumerate(cfg.circuits)})
    for node in sorted(nodes, key=lambda n: (n != GRID, n)):
        if node != GRID and parents.get(node) not in nodes:
            continue
        for phase in range(3):
            budget = limits[node][phase] - non_ev[node][phase]
            if load[node][phase] > budget + 1e-9:
                problems.append(
                    Problem(
                        location[node],
                        f"fail-safe limits of the chargers under '{node}' add up to "
                        f"{load[node][phase]:g} A on {PHASE_NAMES[phase]}, above its "
                        f"{limits[node][phase]:g} A limit minus "
                        f"{non_ev[node][phase]:g} A worst-case non-EV load; lower "
                        "failsafe_current_a",
                    )
                )
                break
    site_budget_kw = cfg.site.limit_kw - (
        sum(cfg.site.non_ev_max_a) * cfg.site.nominal_voltage_v / 1000
    )
    if power_kw[GRID] > site_budget_kw + 1e-9:
        problems.append(
            Problem(
                ("site", "limit_kw"),
                f"fail-safe limits of all chargers add up to {power_kw[GRID]:.1f} kW, above the "
                f"{cfg.site.limit_kw:g} kW connection minus the worst-case non-EV load",
            )
        )
    return problems


def _fmt_phases(values: tuple[float, float, float]) -> str:
    if values[0] == values[1] == values[2]:
        return f"{values[0]:g}"
    return "/".join(f"{v:g}" for v in values)


def _suggest(value: str, candidates: set[str]) -> str:
    close = difflib.get_close_matches(value, sorted(candidates), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _fleet_check(cfg: Config) -> list[Problem]:
    """Vehicle ids and VDV 463 vehicleIds name one vehicle each (a request must find one)."""
    out: list[Problem] = []
    for field, label in (("id", "vehicle id"), ("vdv_vehicle_id", "VDV vehicleId")):
        seen: dict[str, int] = {}
        for index, vehicle in enumerate(cfg.fleet.vehicles):
            value = getattr(vehicle, field)
            if value is None:
                continue
            if value in seen:
                out.append(
                    Problem(
                        ("fleet", "vehicles", index, field),
                        f"duplicate {label} '{value}' (also fleet.vehicles[{seen[value]}])",
                    )
                )
            seen.setdefault(value, index)
    return out


def _openadr_check(cfg: Config) -> list[Problem]:
    """The VEN's node exists, its fail-safe binds, its secret does not travel in clear."""
    oadr = cfg.grid_signals.openadr
    if not oadr.enabled:
        return []
    where = ("grid_signals", "openadr")
    out: list[Problem] = []
    circuits = {c.id: c for c in cfg.circuits}
    if oadr.node != GRID and oadr.node not in circuits:
        out.append(
            Problem(
                (*where, "node"),
                f"unknown node '{oadr.node}'{_suggest(oadr.node, {GRID, *circuits})}",
            )
        )
        return out
    limit_kw = cfg.site.limit_kw if oadr.node == GRID else circuits[oadr.node].limit_kw
    limit_a = cfg.circuit_limits_a()[oadr.node]
    if oadr.failsafe_kw is not None and limit_kw is not None and oadr.failsafe_kw >= limit_kw:
        out.append(
            Problem(
                (*where, "failsafe_kw"),
                f"{oadr.failsafe_kw:g} kW is not below the {limit_kw:g} kW of '{oadr.node}': "
                "the fail-safe changes nothing",
                warning=True,
            )
        )
    if oadr.failsafe_a is not None and all(
        f >= lim for f, lim in zip(oadr.failsafe_a, limit_a, strict=True)
    ):
        out.append(
            Problem(
                (*where, "failsafe_a"),
                f"{_fmt_phases(oadr.failsafe_a)} A is not below the {_fmt_phases(limit_a)} A of "
                f"'{oadr.node}': the fail-safe changes nothing",
                warning=True,
            )
        )
    for field in ("vtn_url", "token_url"):
        parts = urlsplit(getattr(oadr, field) or "https://x")
        if parts.scheme == "http" and not _loopback(parts.hostname):
            out.append(
                Problem(
                    (*where, field),
                    "plain http: the client secret and the tokens cross the network in clear",
                    warning=True,
                )
            )
    if oadr.reports and cfg.site.meter is None:
        out.append(
            Problem(
                (*where, "reports"),
                "no site.meter: the reports events ask for (USAGE) cannot be sent",
                warning=True,
            )
        )
    return out
