"""Cross-field checks of digital I/O devices and the grid signals that read them."""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING

from devices.digital import available_io_profiles, resolve_io_profile
from devices.profile import ProfileError
from sitectl.config.base import GRID
from sitectl.config.errors import Problem

if TYPE_CHECKING:
    from sitectl.config.model import Config

#: At most this many input names are listed in a message (a 32-input module is a long line).
_LISTED = 8


def _suggest(value: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(value, sorted(candidates), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:_LISTED])
    return shown + (f", … ({len(names)} in all)" if len(names) > _LISTED else "")


def io_checks(cfg: Config) -> list[Problem]:
    """I/O devices are not meters, and the §14a contact names an input that exists."""
    problems: list[Problem] = []
    add = problems.append
    by_name = {d.name: d for d in cfg.devices}
    # A digital I/O module measures nothing: naming it as a meter is a mistake.
    meters = [(("site", "meter"), cfg.site.meter)]
    meters += [(("circuits", i, "meter"), c.meter) for i, c in enumerate(cfg.circuits)]
    for path, name in meters:
        device = by_name.get(name or "")
        if device is not None and device.is_io:
            add(
                Problem(
                    path,
                    f"device '{name}' is a digital I/O module (profile {device.profile}), "
                    "not a meter",
                )
            )
    dimming = cfg.grid_signals.dimming_14a
    if dimming is None:
        return problems
    where = ("grid_signals", "dimming_14a")
    device = by_name.get(dimming.device)
    if device is None:
        io_names = [d.name for d in cfg.devices if d.is_io]
        add(
            Problem(
                (*where, "device"),
                f"unknown device '{dimming.device}'"
                + _suggest(dimming.device, io_names or list(by_name))
                + ("" if io_names else "; no digital I/O device is configured"),
            )
        )
    elif not device.is_io:
        add(
            Problem(
                (*where, "device"),
                f"device '{dimming.device}' is a meter (profile {device.profile}), not a "
                f"digital I/O device (I/O profiles: {', '.join(available_io_profiles())})",
            )
        )
    else:
        try:
            names = list(resolve_io_profile(device.to_spec()).names)
        except ProfileError:
            names = []  # reported by the profile check
        if names and dimming.input not in names:
            add(
                Problem(
                    (*where, "input"),
                    f"device '{dimming.device}' has no input '{dimming.input}'"
                    + _suggest(dimming.input, names)
                    + f"; its inputs: {_listed(names)}",
                )
            )
    nodes = {c.id for c in cfg.circuits} | {GRID}
    if dimming.node not in nodes:
        add(
            Problem(
                (*where, "node"),
                f"unknown circuit '{dimming.node}'" + _suggest(dimming.node, sorted(nodes)),
            )
        )
        return problems
    problems += _dimming_warnings(cfg)
    return problems


def _dimming_warnings(cfg: Config) -> list[Problem]:
    """A configured limit below the §14a minimum; a node whose other load alone exceeds it."""
    from sitectl.grid14a import minimum_kw

    dimming = cfg.grid_signals.dimming_14a
    assert dimming is not None
    where = ("grid_signals", "dimming_14a")
    out: list[Problem] = []
    floor = minimum_kw(dimming.controllable_devices)
    if dimming.limit_kw is not None and dimming.limit_kw < floor - 1e-9:
        out.append(
            Problem(
                (*where, "limit_kw"),
                f"{dimming.limit_kw:g} kW is below the §14a minimum for "
                f"{dimming.controllable_devices} controllable device(s) ({floor:.4g} kW, BNetzA "
                "BK6-22-300); fine only if agreed with the grid operator",
                warning=True,
            )
        )
    if dimming.node == GRID:
        non_ev = cfg.site.non_ev_max_a
    else:
        non_ev = next(c.non_ev_max_a for c in cfg.circuits if c.id == dimming.node)
    non_ev_kw = sum(non_ev) * cfg.site.nominal_voltage_v / 1000
    if non_ev_kw > dimming.dimming_kw:
        out.append(
            Problem(
                (*where, "node"),
                f"the worst-case non-EV load on '{dimming.node}' ({non_ev_kw:.1f} kW) is above "
                f"the dimming limit ({dimming.dimming_kw:.4g} kW), which counts everything "
                "behind the node: put the limit on the circuit that feeds the chargers, or set "
                "limit_kw to what the grid operator allows including that load",
                warning=True,
            )
        )
    return out
