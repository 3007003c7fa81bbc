"""``sitectl demo``: a whole simulated depot on one machine, and sitectl controlling it.

Started from ``sitectl/sim/demo.yaml`` (ports replaced by free ones, data in a temporary directory):
a stub CSMS, simulated chargers (OCPP 1.6 and 2.0.1, three- and single-phase vehicles, rotated
wiring, one charger that ignores its limit), a Modbus grid meter and transformer monitor that
measure a building-load curve plus what the chargers really draw, vehicles that arrive, charge
and leave on a compressed schedule, and a vendor's download server with one firmware image that
the chargers really fetch and install when rolled out, and the grid operator's §14a contact (a
coil the operator switches with any Modbus client: the demo prints the command). sitectl itself
runs exactly as ``sitectl run`` would. MQTT goes to the demo's own mosquitto on a free port
(never the machine's port 1883, which may be someone else's broker), or to ``--mqtt HOST:PORT``,
or nowhere when mosquitto is not installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import shlex
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO
from urllib.parse import urlsplit

from aiohttp import web

from sitectl.app import App
from sitectl.config import Config, load_config
from sitectl.logs import set_secrets
from sitectl.sim.broker import pick_broker
from sitectl.sim.charger import SimEv
from sitectl.sim.csms import StubCsms
from sitectl.sim.depot import SimDepot
from sitectl.sim.firmware import FirmwareSimCharger, sim_image
from sitectl.sim.ports import free_ports
from sitectl.state import SiteState

__all__ = ["DemoParts", "prepare_config", "run_demo"]

log = logging.getLogger("sitectl.demo")

NONCOMPLIANT = "DEMO-12"


@dataclass(frozen=True)
class DemoParts:
    """The running demo's parts (for the end-to-end tests)."""

    app: App
    depot: SimDepot
    csms: StubCsms
    config: Config
    firmware_url: str  # an image on the demo's stand-in for a vendor's download server


#: The demo vendor's firmware image: the simulator's header with its version, then random
#: bytes, the same every run. The chargers come back from installing it as 2.0.
FIRMWARE_VERSION = "2.0"
FIRMWARE_NAME = f"sim-charger-{FIRMWARE_VERSION}.bin"
FIRMWARE_BYTES = 4 * 1024 * 1024


async def _vendor_server(directory: Path) -> tuple[web.AppRunner, str]:
    """Serve one firmware image over HTTP on a free loopback port (Range like any file server)."""
    image = directory / FIRMWARE_NAME
    image.write_bytes(sim_image(FIRMWARE_VERSION, random.Random(2).randbytes(FIRMWARE_BYTES)))

    async def serve(request: web.Request) -> web.FileResponse:
        return web.FileResponse(image)

    app = web.Application()
    app.router.add_get(f"/{FIRMWARE_NAME}", serve)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}/{FIRMWARE_NAME}"


def prepare_config(
    path: Path, data_dir: Path, chargers: int | None = None, mqtt: tuple[str, int] | None = None
) -> Config:
    """The demo configuration on free ports, with `chargers` chargers (limits scaled).

    `mqtt` is the broker's address; ``None`` turns MQTT off (the configured address is never
    used: it is a placeholder).
    """
    config, _ = load_config(path)
    meter_port, ocpp_port, csms_port, http_port = free_ports(4)
    data = config.model_dump(mode="python")
    # Secrets are dumped masked; put the real ones back.
    for item, charger in zip(data["chargers"], config.chargers, strict=True):
        for key in ("password", "upstream_password"):
            value = getattr(charger, key)
            item[key] = value.get_secret_value() if value else None
    base = data["chargers"]
    wanted = chargers or len(base)
    if wanted > len(base):
        rotations = ("L1-L2-L3", "L2-L3-L1", "L3-L1-L2")
        for i in range(len(base), wanted):
            extra = dict(
                base[i % len(base)],
                id=f"DEMO-{i + 1:02d}",
                phase_rotation=rotations[i % 3]
                if base[i % len(base)]["phases"] == 3
                else rotations[i % 3][:2],
            )
            base.append(extra)
        scale = wanted / len(config.chargers)
        data["site"]["phase_limit_a"] = tuple(a * scale for a in data["site"]["phase_limit_a"])
        data["site"]["limit_kw"] *= scale
        for circuit in data["circuits"]:
            circuit["limit_a"] = tuple(a * scale for a in circuit["limit_a"])
    data["chargers"] = base[:wanted]
    if NONCOMPLIANT not in {c["id"] for c in data["chargers"]}:
        data["chargers"][-1]["id"] = NONCOMPLIANT
    for device in data["devices"]:
        device["port"] = meter_port
    data["ocpp"]["listen_port"] = ocpp_port
    upstream = urlsplit(data["ocpp"]["upstream_url"])
    data["ocpp"]["upstream_url"] = f"ws://{upstream.hostname}:{csms_port}{upstream.path}"
    data["http"]["listen_port"] = http_port
    data["storage"]["path"] = data_dir / "demo.sqlite"
    data["firmware"]["cache_dir"] = data_dir / "firmware"
    data["firmware"]["base_url"] = f"http://127.0.0.1:{http_port}"
    if mqtt is not None:
        data["mqtt"]["host"], data["mqtt"]["port"] = mqtt
    else:
        data["mqtt"]["enabled"] = False
    return Config.model_validate(data)


def firmware_command(config_path: Path, config: Config, firmware_url: str) -> str:
    """The rollout command to print: pasteable as it is, from any directory and shell.

    This very interpreter with ``-m sitectl``: a ``sitectl`` on the PATH may be another install
    or none (the demo often runs from a venv that is not activated).
    """
    return shlex.join(
        [
            sys.executable,
            "-m",
            "sitectl",
            "firmware",
            "start",
            "-c",
            str(Path(config_path).resolve()),
            "--api-url",
            f"http://127.0.0.1:{config.http.listen_port}",
            firmware_url,
            "--all",
        ]
    )


def dimming_command(config: Config, on: bool) -> str | None:
    """A pasteable command that closes (or opens) the demo's §14a contact: a coil write."""
    dimming = config.grid_signals.dimming_14a
    device = next((d for d in config.devices if dimming and d.name == dimming.device), None)
    if dimming is None or device is None or device.host is None or not device.inputs:
        return None
    coil = next(i for i in device.inputs if isinstance(i, dict) and i["name"] == dimming.input)
    script = (
        "from pymodbus.client import ModbusTcpClient as C; "
        f"c = C({device.host!r}, port={device.port}); c.connect(); "
        f"c.write_coil({coil['address']}, {on}, device_id={device.unit_id}); c.close()"
    )
    return shlex.join([sys.executable, "-c", script])


def _building(t: float) -> tuple[float, float, float]:
    """A workshop and office: a base load with a slow swing and a little phase imbalance."""
    swing = 20 * math.sin(2 * math.pi * t / 120)
    return (45 + swing, 40 + swing, 42 + 0.8 * swing)


def _status_line(state: SiteState, config: Config) -> str:
    status = state.control
    grid = status.circuits.get("grid")
    parts = []
    if grid is not None:
        measured = grid.measured_a
        phases = " ".join(
            f"L{k + 1} {measured[k]:.0f}/{grid.limit_a[k]:.0f} A"
            if measured
            else f"L{k + 1} ?/{grid.limit_a[k]:.0f} A"
            for k in range(3)
        )
        parts.append(f"grid {phases}")
    reading = state.readings.get(config.site.meter or "")
    if reading is not None and getattr(reading, "power_total_kw", None) is not None:
        parts.append(f"{reading.power_total_kw:.0f}/{config.site.limit_kw:.0f} kW")
    connected = sum(1 for c in state.chargers.values() if c.connected)
    parts.append(
        f"{connected} chargers, {status.sessions_charging} charging, "
        f"{status.sessions_paused} paused"
    )
    if status.last_solve_s is not None:
        parts.append(f"solve {status.last_solve_s * 1000:.0f} ms {status.method}")
    versions = Counter(c.firmware_version for c in state.chargers.values() if c.firmware_version)
    if len(versions) > 1:  # a rollout under way (or done in part): follow it here
        parts.append("firmware " + ", ".join(f"{v} ×{n}" for v, n in sorted(versions.items())))
    alarms = ", ".join(f"{code} {subject}" for code, subject in sorted(state.alarms))
    parts.append(f"alarms: {alarms or 'none'}")
    return " | ".join(parts)


def _awaiting_update(app: App) -> set[str]:
    """Chargers a running firmware rollout has still to update (queued or in flight)."""
    rollouts = next((c for c in app.components if c.name == "firmware-rollouts"), None)
    if rollouts is None:
        return set()
    waiting: set[str] = set()
    for summary in rollouts.list():
        if summary["state"] != "running":
            continue
        status = rollouts.status(summary["id"]) or {}
        waiting |= {
            c["charger"]
            for c in status.get("chargers", [])
            if c["state"] in ("queued", "downloading", "installing")
        }
    return waiting


async def _fleet(
    depot: SimDepot,
    rng: random.Random,
    speed: float,
    reserved: Callable[[], set[str]] = set,
) -> None:
    """Vehicles come, charge and go; most are buses back for the night.

    A charger in `reserved` (a rollout has still to update it) gets no new vehicle, as a
    depot keeps a bay free for maintenance: otherwise, with a bus arriving within seconds of
    the last one leaving, the update would wait for hours.
    """
    config = depot.config

    def vehicle(charger_id: str) -> SimEv:
        charger = config.charger(charger_id)
        assert charger is not None
        if charger_id == NONCOMPLIANT:  # a big car, so that ignoring its limit shows
            return SimEv(phases=3, max_a=32.0, energy_wanted_kwh=200, tag="FLEET")
        single = charger.phases == 1 or rng.random() < 0.25
        return SimEv(
            phases=1 if single else 3,
            max_a=rng.choice([16.0, 32.0]),
            energy_wanted_kwh=rng.uniform(15, 60),
            tag="FLEET",
        )

    ids = list(depot.chargers)

    def free(charger_id: str) -> bool:
        # A bus is not parked at a charger that is installing firmware or rebooting.
        sim = depot.chargers[charger_id]
        return not getattr(sim, "updating", False) and charger_id not in reserved()

    # The non-compliant charger gets a vehicle at once, so the demo shows the detection.
    others = [i for i in ids if i != NONCOMPLIANT]
    first = [NONCOMPLIANT, *others[: max(1, 2 * len(ids) // 3)]]
    for charger_id in first:
        if free(charger_id):  # a rollout may have begun already
            await depot.plug_in(charger_id, vehicle(charger_id))
    while True:
        await asyncio.sleep(max(0.5, 30 / speed))
        for charger_id in ids:
            sim = depot.chargers[charger_id]
            plug = sim.plugs.get(1)
            # A bus that plugged in just as its charger took an update is moved to another
            # bay (the charger installs only once it is gone, and a canary would hold the
            # whole rollout); the others leave once they have their energy.
            moved = getattr(sim, "updating", False)
            if (
                plug is not None
                and (moved or plug.register_wh / 1000 >= plug.ev.energy_wanted_kwh)
                and rng.random() < 0.5
            ):
                await depot.unplug(charger_id)
            elif plug is None and free(charger_id) and rng.random() < 0.3:
                await depot.plug_in(charger_id, vehicle(charger_id))


async def run_demo(
    config_path: Path,
    chargers: int | None = None,
    speed: float = 60.0,
    duration_s: float | None = None,
    out: TextIO = sys.stdout,
    mqtt: tuple[str, int] | None = None,
    on_ready: Callable[[DemoParts], None] | None = None,
) -> int:
    """Run the demo until Ctrl-C or `duration_s`; returns the exit code.

    `mqtt`: the broker to publish to; ``None``: the demo's own mosquitto (or none if it is not
    installed).
    """
    with tempfile.TemporaryDirectory(prefix="sitectl-demo-") as tmp:
        broker = await asyncio.to_thread(pick_broker, mqtt, Path(tmp) / "mosquitto")
        try:
            return await _run(
                config_path,
                Path(tmp),
                broker.address,
                broker.note,
                chargers,
                speed,
                duration_s,
                out,
                on_ready,
            )
        finally:
            await asyncio.to_thread(broker.stop)


async def _run(
    config_path: Path,
    tmp: Path,
    mqtt: tuple[str, int] | None,
    mqtt_note: str,
    chargers: int | None,
    speed: float,
    duration_s: float | None,
    out: TextIO,
    on_ready: Callable[[DemoParts], None] | None,
) -> int:
    """The demo proper, its broker chosen (`mqtt` ``None``: without MQTT)."""
    config = prepare_config(config_path, tmp, chargers, mqtt)
    set_secrets([c.password.get_secret_value() for c in config.chargers if c.password])
    csms_url = urlsplit(config.ocpp.upstream_url or "")
    csms = StubCsms(port=csms_url.port or 0, path=csms_url.path)
    await csms.start()
    depot = SimDepot(
        config,
        f"ws://127.0.0.1:{config.ocpp.listen_port}{config.ocpp.path}",
        building={"transformer": lambda t: _building(t * speed / 60)},
        tick_s=0.2,
        report_s=2.0,
        lag_s=1.0,
        energy_factor=speed,
        charger_class=FirmwareSimCharger,
    )
    vendor, firmware_url = await _vendor_server(tmp)
    await depot.start_meters()
    app = App(config)
    app_task = asyncio.create_task(app.run())
    tasks: list[asyncio.Task] = []
    try:
        for _ in range(100):  # the OCPP server needs a moment to listen
            try:
                await depot.start()
                break
            except OSError:
                await asyncio.sleep(0.1)
        depot.chargers[NONCOMPLIANT].compliant = False
        where = f"{mqtt_note} under {config.topic_prefix}/" if mqtt else mqtt_note
        print(
            f"dashboard: http://127.0.0.1:{config.http.listen_port}/  MQTT: {where}",
            file=out,
            flush=True,
        )
        if mqtt is not None:
            print(
                f"watch it: mosquitto_sub -V mqttv5 -h {mqtt[0]} -p {mqtt[1]} "
                f"-t '{config.topic_prefix}/#' -v",
                file=out,
                flush=True,
            )
        print(
            f"demo depot {config.site.id}: {len(config.chargers)} chargers, OCPP on "
            f"ws://127.0.0.1:{config.ocpp.listen_port}{config.ocpp.path}, stub CSMS on "
            f"{csms.url}, speed ×{speed:g}; {NONCOMPLIANT} ignores its limit. "
            "Ctrl-C stops.",
            file=out,
            flush=True,
        )
        print(
            "try a firmware rollout (idle chargers first; none during a session), in "
            f"another terminal: {firmware_command(config_path, config, firmware_url)}",
            file=out,
            flush=True,
        )
        dim_on, dim_off = dimming_command(config, True), dimming_command(config, False)
        if dim_on and dim_off and config.grid_signals.dimming_14a:
            dimming = config.grid_signals.dimming_14a
            print(
                f"§14a: the grid operator dims {dimming.node} to {dimming.dimming_kw:.4g} kW "
                f"when this closes its contact: {dim_on}\n  and releases it with: {dim_off}",
                file=out,
                flush=True,
            )
        fleet = _fleet(depot, random.Random(1), speed, lambda: _awaiting_update(app))
        tasks.append(asyncio.create_task(fleet))
        if on_ready is not None:
            on_ready(DemoParts(app, depot, csms, config, firmware_url))
        if duration_s is not None:
            asyncio.get_running_loop().call_later(duration_s, app.stop)
        said_mqtt = False
        started = asyncio.get_running_loop().time()
        while not app_task.done():
            done, _ = await asyncio.wait({app_task}, timeout=3)
            if not done and app.state is not None:
                print(_status_line(app.state, config), file=out, flush=True)
            uplink = next((c for c in app.components if c.name == "uplink"), None)
            waited = asyncio.get_running_loop().time() - started
            if (
                uplink is not None
                and not uplink.connected
                and waited > 10
                and not said_mqtt
                and not app_task.done()
            ):
                said_mqtt = True
                print(
                    f"no MQTT broker at {config.mqtt.host}:{config.mqtt.port}: summaries "
                    "wait in the outbox until one is reachable",
                    file=out,
                    flush=True,
                )
        return app_task.result()
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if not app_task.done():
            app.stop()
            await app_task
        await vendor.cleanup()
        await depot.stop()
        await csms.stop()
