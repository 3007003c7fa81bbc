"""A simulated site judged by its physics: sitectl as `sitectl run` wires it, misbehaving devices.

sitectl side, in-process: store, state, OCPP server, observer, profile keeper, session recovery,
sessions under way, meter pool (I/O modules too), the §14a source when configured, and control
loop — and it can be *restarted* on the same store,
as after a crash or an update. Field side: a `SimDepot` whose chargers carry `Quirks` (how real
chargers depart from the book) and whose meters can freeze. Tests assert on what flows (the
depot's real currents, the vehicles' energy), not on what sitectl sent.

Used by the scenario tests (tests/scenarios) and by bench/scenarios.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from devices.meter import MeterPool
from sitectl.config import Config, load_config
from sitectl.control.loop import ControlLoop
from sitectl.grid14a import Dimming14a
from sitectl.ocpp.csms_guard import CsmsProfileGuard
from sitectl.ocpp.keeper import ProfileKeeper
from sitectl.ocpp.observe import StateObserver
from sitectl.ocpp.probe import CapabilityProbe
from sitectl.ocpp.recovery import SessionRecovery
from sitectl.ocpp.sampling import SamplingSetup
from sitectl.ocpp.server import OcppServer
from sitectl.sessions import ActiveSessions
from sitectl.sim.depot import SimDepot
from sitectl.sim.ports import free_ports
from sitectl.state import SiteState
from sitectl.store import Store

__all__ = [
    "CONTROL",
    "DIMMING_DEVICE",
    "RAMP_S",
    "FastClock",
    "Site",
    "scenario_config",
    "start_site",
]

PASSWORD = "scenario-password-0001"
#: The I/O module of `scenario_config(dimming=...)`: the grid operator's §14a contact.
DIMMING_DEVICE = "dso-box"

#: A vehicle follows a new limit within this (the simulated lag is 0.2 s; a few of them, and a
#: control period): the longest a circuit may carry more than its limit.
RAMP_S = 1.5

CONTROL = {
    "period_s": 0.5,
    "profile_validity_s": 3,
    "dispatch_timeout_s": 1,
    "meter_grace_s": 0.6,
    "failsafe_hold_s": 2,
    "good_readings_to_recover": 3,
    "compliance_grace_s": 1,
    "deadband_a": 0.5,
    "min_pause_s": 0,
    "min_charge_s": 0,
    "step_s": 300,
    "horizon_steps": 24,
    "ev_measurement_max_age_s": 2,
    "non_ev_hold_s": 3,
    "ev_learn_s": 1,
    "solver_budget_s": 0.5,
}


def scenario_config(
    tmp_path: Path,
    chargers: list[dict[str, Any]],
    *,
    phase_limit_a: float = 100,
    feeders: list[dict[str, Any]] | None = None,
    site: dict[str, Any] | None = None,
    control: dict[str, Any] | None = None,
    meter: dict[str, Any] | None = None,
    csms_url: str | None = None,
    http: dict[str, Any] | None = None,
    tariff: dict[str, Any] | None = None,
    dimming: dict[str, Any] | None = None,
) -> Config:
    """A depot with a metered grid connection (SDM630 on Modbus TCP) and the given chargers.

    `dimming`: add the grid operator's §14a contact — an I/O module ``dso-box`` (Moxa ioLogik
    E1210, unit 3 beside the meter) whose ``di0`` is `grid_signals.dimming_14a`'s input, with
    these settings on top (switch it with ``site.depot.io["dso-box"].set("di0", True)``).
    """
    meter_port, ocpp_port = free_ports(2)
    data = {
        "site": {
            "id": "scenario",
            "limit_kw": 1000,
            "phase_limit_a": phase_limit_a,
            "meter": "grid-meter",
            "non_ev_max_a": 40,
            **(site or {}),
        },
        "circuits": feeders or [{"id": "feeder", "limit_a": phase_limit_a}],
        "charger_defaults": {
            "circuit": "feeder",
            "max_current_a": 32,
            "failsafe_current_a": 6,
            "password": PASSWORD,
        },
        "chargers": chargers,
        "devices": [
            {
                "name": "grid-meter",
                "profile": "eastron-sdm630",
                "host": "127.0.0.1",
                "port": meter_port,
                "unit_id": 1,
                "poll_period_s": 0.1,
                "timeout_s": 0.3,
                **(meter or {}),
            }
        ],
        "ocpp": {
            "listen_host": "127.0.0.1",
            "listen_port": ocpp_port,
            "upstream_url": csms_url,
            "offline": {"local_id_tags": ["FLEET"]},
            "meter_values_interval_s": 1,  # within ev_measurement_max_age_s below
        },
        "control": {**CONTROL, **(control or {})},
        "mqtt": {"enabled": False},
        # sitectl's HTTP server is not started by `start_site`; a test may serve it itself.
        "http": {"enabled": False, "listen_host": "127.0.0.1", **(http or {})},
        "storage": {"path": str(tmp_path / "scenario.sqlite")},
    }
    if tariff is not None:
        data["tariff"] = tariff
    if dimming is not None:
        data["devices"].append(
            {
                "name": DIMMING_DEVICE,
                "profile": "moxa-iologik-e1210",
                "host": "127.0.0.1",
                "port": meter_port,
                "unit_id": 3,
                "poll_period_s": 0.1,
                "timeout_s": 0.3,
            }
        )
        data["grid_signals"] = {
            "dimming_14a": {"device": DIMMING_DEVICE, "input": "di0", **dimming}
        }
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(data))
    config, _ = load_config(path, environ={})
    return config


class FastClock:
    """A plan clock (`ControlLoop.plan_clock`) that runs `speed` times faster than real time.

    It shows `origin` until `start`, then ``origin + speed × (monotonic − start)``. A scenario
    gives the depot ``energy_factor=speed`` too, so the vehicles' energy follows the plan's
    time: a two-hour limit window plays in four minutes at 30×, while profiles, validities and
    ramps keep the real clocks (the chargers' own).
    """

    def __init__(self, origin: datetime, speed: float) -> None:
        self.origin = origin
        self.speed = speed
        self._started: float | None = None

    def start(self) -> None:
        self._started = time.monotonic()

    def __call__(self) -> datetime:
        if self._started is None:
            return self.origin
        return self.origin + timedelta(seconds=self.speed * (time.monotonic() - self._started))

    def monotonic_at(self, moment: datetime) -> float:
        """The monotonic time at which the clock shows `moment` (once started)."""
        assert self._started is not None, "start the clock first"
        return self._started + (moment - self.origin).total_seconds() / self.speed


class Site:
    """sitectl (restartable) around a simulated depot."""

    def __init__(
        self,
        config: Config,
        depot: SimDepot,
        confirm_s: float,
        plan_clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.config = config
        self.depot = depot
        self.confirm_s = confirm_s
        self.plan_clock = plan_clock
        self.tasks: list[asyncio.Task] = []
        self.store: Store | None = None
        self.state: SiteState
        self.loop: ControlLoop
        self.observer: StateObserver
        self.dimming: Dimming14a | None = None  # the §14a source, when configured

    async def start_sitectl(self) -> None:
        """Start sitectl's parts on the store file (the state is rebuilt from it)."""
        config = self.config
        self.store = Store(config.storage.path)
        self.state = state = SiteState(config)
        self.observer = StateObserver(state)
        ActiveSessions(self.store, state)
        server = OcppServer(config, self.observer, store=self.store)
        guard = CsmsProfileGuard(config.ocpp.profile_stack_levels)
        server.csms_rewriters.append(guard.rewrite)
        server.charger_rewriters.append(guard.report)
        self.server = server
        keeper = ProfileKeeper(state, server.call)
        recovery = SessionRecovery(
            state, server.call, self.observer.end_restored, confirm_s=self.confirm_s
        )
        # As `sitectl run` wires them: the probe (and the sampling interval behind its gate)
        # with a short grace, as a charger reconnecting to a restarted sitectl is registered.
        probe = CapabilityProbe(
            state,
            server.call,
            store=self.store,
            grace_s=3.0,
            reconnect_grace_s=1.0,
            sampling=SamplingSetup(config, state, server.call),
        )
        self.probe = probe
        self.loop = ControlLoop(
            config,
            state,
            keeper.set_profile,
            store=self.store,
            call=server.call,
            on_not_supported=probe.record_not_supported,
            plan_clock=self.plan_clock,
        )
        pool = MeterPool(
            [d.to_spec() for d in config.devices],
            on_reading=lambda r: state.set_reading(r.device, r),
        )
        self.tasks = [
            asyncio.create_task(server.run()),
            asyncio.create_task(keeper.run()),
            asyncio.create_task(recovery.run()),
            asyncio.create_task(probe.run()),
            asyncio.create_task(pool.run()),
        ]
        if config.grid_signals.dimming_14a is not None:
            self.dimming = Dimming14a(config, state)
            self.tasks.append(asyncio.create_task(self.dimming.run()))
        await asyncio.wait_for(server.ready.wait(), 10)
        self.tasks.append(asyncio.create_task(self.loop.run()))

    async def stop_sitectl(self) -> None:
        """sitectl goes away (a crash: nothing is cleaned up on the chargers' side)."""
        for task in reversed(self.tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.tasks = []
        if self.store is not None:
            self.store.close()
            self.store = None

    async def restart_sitectl(self) -> None:
        """Stop, start again on the same store; the chargers reconnect (they do not reboot)."""
        await self.stop_sitectl()
        await self.start_sitectl()
        await self.depot.reconnect_chargers()

    async def cycles(self, n: int = 1, timeout: float = 10) -> None:
        """Wait for `n` more complete control cycles."""
        for _ in range(n):
            self.loop.cycle_done.clear()
            await asyncio.wait_for(self.loop.cycle_done.wait(), timeout)

    async def stop(self) -> None:
        """Stop sitectl and the simulated depot."""
        await self.stop_sitectl()
        await self.depot.stop()

    def draw(self, charger_id: str, connector: int = 1) -> float:
        """What the vehicle on a connector really draws now (A per phase)."""
        plug = self.depot.chargers[charger_id].plugs.get(connector)
        return plug.draw_a if plug is not None else 0.0

    def energy_kwh(self, charger_id: str, connector: int = 1) -> float:
        """What the vehicle on a connector has really been given (kWh)."""
        plug = self.depot.chargers[charger_id].plugs.get(connector)
        return plug.register_wh / 1000 if plug is not None else 0.0


async def start_site(
    config: Config,
    building: dict | None = None,
    confirm_s: float = 3.0,
    secured: tuple[str, ...] | None = None,
    timeout_s: float = 10.0,
    plan_clock: Callable[[], datetime] | None = None,
    **depot_options: Any,
) -> Site:
    """A running site; returns once the chargers in `secured` (default all) hold their
    fail-safe, with the samples taken before cleared. Stop it with `Site.stop`.

    `plan_clock` is the control loop's (e.g. a `FastClock`, with ``energy_factor`` to match).
    """
    options = {"tick_s": 0.05, "report_s": 0.25, "lag_s": 0.2, **depot_options}
    depot = SimDepot(
        config,
        f"ws://127.0.0.1:{config.ocpp.listen_port}/ocpp",
        building=building or {},
        **options,
    )
    site = Site(config, depot, confirm_s, plan_clock)
    await depot.start_meters()
    await site.start_sitectl()
    await depot.start()
    expected = secured if secured is not None else tuple(site.loop.memory)
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not all(site.loop.memory[c].failsafe_installed for c in expected):
        if asyncio.get_running_loop().time() > deadline:
            await site.stop()
            raise TimeoutError(f"no fail-safe on {expected} within {timeout_s:g} s")
        await asyncio.sleep(0.02)
    depot.samples.clear()
    depot.physical.clear()
    return site
