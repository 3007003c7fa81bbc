"""The composition root: build every component from the validated config and run them.

Components run in one `asyncio.TaskGroup`. Stopping (SIGTERM, SIGINT, or `App.stop`) cancels
them one at a time in reverse start order, so that, for example, the OCPP server stops accepting
before the control loop ends and the store closes last. A component that crashes is logged with
its name and the whole process stops with a non-zero exit code: systemd restarts a clean process
rather than leaving one running half-alive.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import signal
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from sitectl import __version__
from sitectl.config import Config
from sitectl.state import Severity, SiteState
from sitectl.store import Store

if TYPE_CHECKING:  # imported where used: `sitectl check-config` need not load them
    from sitectl.firmware import FirmwareCache, FirmwareServer, FirmwareTracker, RolloutManager
    from sitectl.ocpp.server import OcppServer

__all__ = ["App", "Component", "FunctionComponent", "build_components"]

log = logging.getLogger(__name__)

#: Exit codes of `App.run`.
EXIT_OK = 0
EXIT_COMPONENT_FAILED = 1


class Component(Protocol):
    """A long-running part of sitectl. ``run`` returns only when cancelled (or on failure)."""

    name: str

    async def run(self) -> None: ...


@dataclass
class FunctionComponent:
    """Adapts a coroutine function into a `Component`."""

    name: str
    func: Callable[[], Awaitable[None]]

    async def run(self) -> None:
        await self.func()


def build_components(config: Config, state: SiteState, store: Store) -> list[Component]:
    """Create the components the configuration asks for, in start order.

    Start order is chosen for the reverse stop order: the control loop stops dispatching first,
    then the OCPP side closes the chargers' sockets, and the uplink, last, reports ``offline``.
    """
    from sitectl.control.loop import ControlLoop
    from sitectl.control.phase_test import PhaseTests
    from sitectl.firmware import FanoutListener, FirmwareTracker
    from sitectl.http.server import HttpServer
    from sitectl.ocpp.csms_guard import CsmsProfileGuard
    from sitectl.ocpp.keeper import ProfileKeeper
    from sitectl.ocpp.observe import StateObserver
    from sitectl.ocpp.recovery import SessionRecovery
    from sitectl.ocpp.server import OcppServer
    from sitectl.sessions import ActiveSessions, SessionLog
    from sitectl.store_health import store_failed
    from sitectl.uplink.commands import handle_command

    observer = StateObserver(state, config.ocpp.profile_stack_levels, config.ocpp.profile_id_base)
    # Both subscribe to session changes: history of every ended session (with or without the
    # HTTP API), and the sessions under way, reloaded here from the last run.
    session_log = SessionLog(store, state)
    ActiveSessions(store, state)
    tracker = FirmwareTracker()
    from sitectl.control.fleet import Fleet

    # Binds sessions to vehicles and turns SoC targets into energy (issue #19).
    fleet = Fleet(config, state)

    def alarm(code: str, subject: str, text: str) -> None:
        state.raise_alarm(code, subject, Severity.WARNING, text)

    ocpp_server = OcppServer(config, FanoutListener(observer, tracker), store=store, alarm=alarm)
    ocpp_server.security_event = lambda type_, text: state.security_events.record(type_, text)
    ocpp_server.store_failed = lambda exc: store_failed(
        state,
        store.path,
        exc,
        "the OCPP journal",
        "chargers' transaction messages are refused with a CALLERROR (they keep and resend them)",
    )
    # The CSMS's charger-wide profiles go below sitectl's stack levels (issue #17.1).
    guard = CsmsProfileGuard(config.ocpp.profile_stack_levels)
    ocpp_server.csms_rewriters.append(guard.rewrite)
    ocpp_server.charger_rewriters.append(guard.report)
    keeper = ProfileKeeper(state, ocpp_server.call)
    firmware = _firmware_components(config, state, store, ocpp_server, tracker)
    rollouts = firmware.rollouts if firmware is not None else None
    components: list[Component] = []
    recorder = None
    if config.storage.utilization.enabled:
        from sitectl.utilization.recorder import UtilizationRecorder  # the report's data (#21)

        # First to start, last to stop: it sees the chargers' sockets close.
        recorder = UtilizationRecorder(config, state, store)
        components.append(recorder)
    # On-demand phase detection: started by the commands, run by the control loop.
    phase_tests = PhaseTests(config, state) if config.chargers else None
    uplink = None
    if config.mqtt.enabled:
        from sitectl.uplink.uplink import Uplink

        uplink = Uplink(config, state, store, rollouts=rollouts, phase_tests=phase_tests)
        components.append(uplink)
        if recorder is not None and config.storage.utilization.daily_message:
            from sitectl.utilization.daily import DailyUtilization

            components.append(
                DailyUtilization(config, state, store, uplink.publish, recorder.flush)
            )
    if config.http.enabled:
        extra: dict[str, tuple[str, Callable[[], float]]] = {}
        if ocpp_server.journal is not None:
            journal = ocpp_server.journal
            extra["sitectl_journal_messages"] = (
                "Messages waiting for the CSMS",
                lambda: float(journal.pending()),
            )
        if uplink is not None:
            outbox = uplink.outbox
            extra["sitectl_outbox_messages"] = (
                "MQTT messages waiting in the outbox",
                lambda: float(outbox.count),
            )
            # What never reached the cloud, by why (the summary's outbox counters, #22.12).
            for key, text in (
                ("lost", "MQTT messages lost: the store could not write them"),
                ("rejected", "MQTT messages the broker refused (dropped)"),
                ("dropped_summaries", "Summaries dropped by the outbox bound"),
                ("dropped_charger_states", "Superseded charger states dropped by the bound"),
                ("thinned_summaries", "Summaries thinned by the outbox bound"),
            ):
                extra[f"sitectl_outbox_{key}_total"] = (
                    text,
                    lambda key=key: float(outbox.stats()[key]),
                )

        def commands(name: str, payload: dict[str, Any]) -> dict[str, Any]:
            republish = uplink.republish if uplink is not None else None
            return handle_command(
                state,
                config,
                name,
                payload,
                republish=republish,
                rollouts=rollouts,
                phase_tests=phase_tests,
                origin="http",
            )

        components.append(
            HttpServer(
                config,
                state,
                sessions=session_log,
                commands=commands,
                extra_metrics=extra,
                routes=[firmware.files.add_routes] if firmware is not None else None,
                tracker=tracker,
                cache=firmware.cache if firmware is not None else None,
                rollouts=rollouts,
                raw_frames=observer.raw_frames,
                phase_tests=phase_tests,
                fleet=fleet,
                store=store,
            )
        )
    if config.devices:
        from devices.meter import MeterPool

        pool = MeterPool(
            [d.to_spec() for d in config.devices],
            on_reading=lambda reading: state.set_reading(reading.device, reading),
        )
        components.append(FunctionComponent("devices", pool.run))
    if config.grid_signals.dimming_14a is not None:
        from sitectl.grid14a import Dimming14a  # the §14a contact as a grid limit (#20.3)

        components.append(Dimming14a(config, state))
    from sitectl.clock import ClockMonitor

    recovery = SessionRecovery(state, ocpp_server.call, observer.end_restored)
    from sitectl.ocpp.probe import CapabilityProbe  # what each charger declares (issue #17)
    from sitectl.ocpp.sampling import SamplingSetup  # draws reported often enough (#16)

    sampling = SamplingSetup(config, state, ocpp_server.call)
    probe = CapabilityProbe(state, ocpp_server.call, store=store, sampling=sampling)
    components += [ocpp_server, keeper, recovery, probe, ClockMonitor(state)]
    from sitectl.certwatch import CertificateWatch  # expiry alarms ahead of time (#22.10)

    watch = CertificateWatch(config, state)
    if watch.files():
        components.append(FunctionComponent("certificates", watch.run))
    if config.fleet.vdv463.enabled:
        from sitectl.vdv.server import VdvServer  # the depot system's interface (issue #19.3)

        components.append(VdvServer(config, state, fleet))
    if config.grid_signals.openadr.enabled:
        from sitectl.openadr.ven import OpenAdrVen  # grid operator's limits, prices (#20.2)

        components.append(OpenAdrVen(config, state))
    if firmware is not None:
        components += firmware.components
    if config.chargers:
        unavailable = rollouts.updating if rollouts is not None else None
        components.append(
            ControlLoop(
                config,
                state,
                keeper.set_profile,
                unavailable,
                on_cycle=watchdog_ping,
                store=store,
                on_not_supported=probe.record_not_supported,
                call=ocpp_server.call,
                phase_tests=phase_tests,
            )
        )
    else:
        # Nothing to control: the watchdog only proves that the event loop runs.
        components.append(FunctionComponent("watchdog", _watchdog_timer))
    return components


def watchdog_ping() -> None:
    """Tell systemd's watchdog (``WatchdogSec=``) that sitectl is alive; a no-op elsewhere."""
    _sd_notify("WATCHDOG=1")


async def _watchdog_timer(period_s: float = 5.0) -> None:
    while True:
        watchdog_ping()
        await asyncio.sleep(period_s)


@dataclass
class _Firmware:
    cache: FirmwareCache
    files: FirmwareServer
    rollouts: RolloutManager
    components: list[Component]


def _firmware_components(
    config: Config,
    state: SiteState,
    store: Store,
    ocpp_server: OcppServer,
    tracker: FirmwareTracker,
) -> _Firmware | None:
    """The firmware cache, its file routes, the UpdateFirmware rewriter and the rollouts.

    Only with the local HTTP server, which serves the files; without it UpdateFirmware passes
    through untouched.
    """
    if not (config.firmware.enabled and config.http.enabled):
        return None
    from sitectl.firmware import (
        FirmwareCache,
        FirmwareInterceptor,
        FirmwareServer,
        LocalControllerClient,
        RolloutManager,
    )

    cache = FirmwareCache(store, config.firmware)
    cache.security_event = lambda type_, text: state.security_events.record(type_, text)
    files = FirmwareServer(cache, config)
    interceptor = FirmwareInterceptor(cache, files, state, config, call=ocpp_server.call)
    ocpp_server.csms_rewriters.append(interceptor.rewrite)
    rollouts = RolloutManager(
        store,
        state,
        cache,
        files,
        ocpp_server.call,
        config,
        protocols=interceptor.protocols,
        tracker=tracker,
    )
    components: list[Component] = [cache, interceptor, rollouts]
    if config.ocpp.upstream_url and config.ocpp.local_controller_identity:
        password = config.ocpp.local_controller_password
        lc = LocalControllerClient(
            config, cache, files, password=password.get_secret_value() if password else None
        )
        state.security_events.listeners.append(lc.security_event)
        components.append(lc)
    return _Firmware(cache, files, rollouts, components)


class App:
    """Runs sitectl's components until stopped.

    Args:
        config: the validated configuration.
        components: override the components (tests); default: `build_components`.
        shutdown_timeout_s: how long one component may take to stop after cancellation.
    """

    def __init__(
        self,
        config: Config,
        components: Callable[[Config, SiteState, Store], Sequence[Component]] | None = None,
        shutdown_timeout_s: float = 10.0,
    ) -> None:
        self.config = config
        self._factory = components or build_components
        self._shutdown_timeout_s = shutdown_timeout_s
        self._stop = asyncio.Event()
        self._failed: list[str] = []
        self.state: SiteState | None = None
        self.store: Store | None = None
        self.components: list[Component] = []

    def stop(self) -> None:
        """Ask the app to stop (safe to call from a signal handler)."""
        self._stop.set()

    async def run(self, install_signal_handlers: bool = True) -> int:
        """Run until stopped; returns the process exit code."""
        loop = asyncio.get_running_loop()
        if install_signal_handlers:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._on_signal, sig)
        _raise_fd_limit()
        self.store = Store(self.config.storage.path, self.config.storage.synchronous)
        try:
            self.state = SiteState(self.config)
            check_store(self.store, self.state)
            self.store.set_meta("site_id", self.config.site.id)
            self.store.set_meta("last_start", self.state.started_at.isoformat())
            components = list(self._factory(self.config, self.state, self.store))
            self.components = components
            log.info(
                "sitectl %s started: site %s, %d chargers, %d devices; components: %s",
                __version__,
                self.config.site.id,
                len(self.config.chargers),
                len(self.config.devices),
                ", ".join(c.name for c in components) or "none",
            )
            _sd_notify("READY=1")
            await self._supervise(components)
        finally:
            if install_signal_handlers:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
            self.store.close()
        if self._failed:
            log.error("sitectl stopped because a component failed: %s", ", ".join(self._failed))
            return EXIT_COMPONENT_FAILED
        log.info("sitectl stopped cleanly")
        return EXIT_OK

    def _on_signal(self, sig: signal.Signals) -> None:
        log.info("received %s, shutting down", sig.name)
        _sd_notify("STOPPING=1")
        self.stop()

    async def _supervise(self, components: Sequence[Component]) -> None:
        async with asyncio.TaskGroup() as group:
            tasks = [
                group.create_task(self._guard(component), name=component.name)
                for component in components
            ]
            await self._stop.wait()
            for component, task in reversed(list(zip(components, tasks, strict=True))):
                if task.done():
                    continue
                task.cancel()
                done, _ = await asyncio.wait({task}, timeout=self._shutdown_timeout_s)
                if not done:
                    log.error(
                        "component %s did not stop within %.0f s",
                        component.name,
                        self._shutdown_timeout_s,
                    )
                    self._failed.append(component.name)

    async def _guard(self, component: Component) -> None:
        try:
            await component.run()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("component %s crashed", component.name)
            self._failed.append(component.name)
            self._stop.set()
            return
        if not self._stop.is_set():
            log.error("component %s returned unexpectedly", component.name)
            self._failed.append(component.name)
            self._stop.set()


def _raise_fd_limit() -> None:
    """Each charger needs two sockets; a 1024-descriptor default caps a depot at ~500."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = hard if hard != resource.RLIM_INFINITY else 65536
        if soft < wanted:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (ValueError, OSError) as exc:  # pragma: no cover - platform dependent
        log.warning("cannot raise the open-file limit: %s", exc)


def check_store(store: Store, state: SiteState) -> bool:
    """SQLite's quick check at every start (issue #22.13): a damaged store is a critical alarm.

    sitectl still runs (an unattended site is better controlled than stopped; the chargers'
    fail-safes hold either way), and says what to do.
    """
    problem = store.quick_check()
    if problem is None:
        return True
    log.critical("the store %s is damaged: %s", store.path, problem)
    state.raise_alarm(
        "store_damaged",
        "store",
        Severity.CRITICAL,
        f"the store {store.path} failed SQLite's check ({problem}); journals, sessions and the "
        "outbox may be incomplete: stop sitectl and `sitectl restore` a backup "
        "(or the copy made before the last upgrade, <store>.v<N>.bak)",
    )
    return False


def _sd_notify(message: str) -> None:
    """Tell systemd (Type=notify) about our state; a no-op outside systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):  # abstract namespace socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(message.encode(), address)
    except OSError as exc:
        log.debug("sd_notify failed: %s", exc)
