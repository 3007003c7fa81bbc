"""Local firmware rollouts: one image to a set of chargers, in stages, never during a session.

Rules:

- **Cache first** (F6). The image is downloaded, verified (with the operator's MD5 if given) and
  pinned before any charger is asked; chargers get sitectl's local URL with their own token.
- **Never during a session** (DESIGN.md safety model: "No charger is rebooted for firmware while it
  has a session"; F10 leaves install timing to the charger, so sitectl does not even start an
  update while a session runs). A charger that is in a session or offline when its turn comes
  waits, up to ``firmware.session_wait_max_s`` from that moment; then it is *skipped*, never
  interrupted.
- **At most** ``firmware.max_parallel`` chargers in flight (downloading or installing).
- **Canary first.** The first ``canary_count`` chargers sent the update go alone; the others start
  only when every canary has installed. A failed canary halts the rollout.
- **Halt** when failed / (installed + failed) exceeds ``halt_failure_share``: queued chargers are
  not started, chargers in flight are still followed to their end. Alarms: ``firmware_failed``
  (subject: the charger, with its status) and ``firmware_rollout_halted`` (``rollout-<id>``).
- **Progress** comes from the charger's FirmwareStatusNotification and
  SignedFirmwareStatusNotification (F2, F3), read from SiteState (``firmware_status``
  changes), and from a new firmware version at boot (chargers that never report
  ``Installed``). ``Idle`` is ignored. A charger that reports nothing for ``progress_timeout_s``
  fails.
- **Persisted** (``fw_rollouts``, ``fw_rollout_chargers``): every change is written when it
  happens; `run` resumes after a restart.
- `updating` is the set the control loop budgets at 0 A: chargers in the install phase (image
  downloaded, installing, rebooting) without a session (F10: a charger waits for a session to
  end before installing, so one with a session still charges). A charger still downloading also
  still charges.

Per-charger states: queued, downloading, installing, installed, failed, skipped (never updated:
its session or absence outlasted the wait), canceled (the rollout was stopped first). Rollout
states: caching, running, halted, stopped, done, failed (the image could not be cached).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from sitectl.config import Config
from sitectl.firmware.cache import FirmwareCache, FirmwareError, check_url, safe_url
from sitectl.firmware.server import FirmwareServer
from sitectl.firmware.tracker import FirmwareTracker
from sitectl.ocpp.link import CallErrorResponse, CallFailed
from sitectl.state import Change, ChargerState, Severity, SiteState
from sitectl.store import Store
from sitectl.tasks import cancel_all

__all__ = [
    "ChargerStep",
    "RolloutError",
    "RolloutManager",
    "RolloutState",
    "update_request",
]

log = logging.getLogger(__name__)

Caller = Callable[..., Awaitable[dict[str, Any]]]


class ChargerStep(enum.StrEnum):
    """Where one charger of a rollout is."""

    QUEUED = "queued"
    DOWNLOADING = "downloading"
    INSTALLING = "installing"
    INSTALLED = "installed"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELED = "canceled"


class RolloutState(enum.StrEnum):
    """Where a rollout is."""

    CACHING = "caching"
    RUNNING = "running"
    HALTED = "halted"
    STOPPED = "stopped"
    DONE = "done"
    FAILED = "failed"


class RolloutError(Exception):
    """The operator's request cannot be carried out; the message says why.

    Args:
        message: what is wrong.
        field: the request field at fault (``url``, ``md5``, ``targets``...), if one is.
    """

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


#: Charger firmware statuses (1.6 §7.25, 1.6 security whitepaper, 2.0.1 FirmwareStatusEnumType)
#: and the step each one means. ``Idle`` is absent: it says nothing about our update.
STATUS_STEPS: dict[str, ChargerStep] = {
    "Downloading": ChargerStep.DOWNLOADING,
    "DownloadScheduled": ChargerStep.DOWNLOADING,
    "DownloadPaused": ChargerStep.DOWNLOADING,
    "Downloaded": ChargerStep.INSTALLING,
    "SignatureVerified": ChargerStep.INSTALLING,
    "InstallScheduled": ChargerStep.INSTALLING,
    "Installing": ChargerStep.INSTALLING,
    "InstallRebooting": ChargerStep.INSTALLING,
    "Installed": ChargerStep.INSTALLED,
    "DownloadFailed": ChargerStep.FAILED,
    "InstallationFailed": ChargerStep.FAILED,
    "InvalidSignature": ChargerStep.FAILED,
    "InstallVerificationFailed": ChargerStep.FAILED,
}
_IN_FLIGHT = (ChargerStep.DOWNLOADING, ChargerStep.INSTALLING)
_OPEN = (ChargerStep.QUEUED, *_IN_FLIGHT)
#: The charger's own download retries in our UpdateFirmware (F1, F9): a LAN download rarely
#: needs more, and a charger that cannot fetch from sitectl should report DownloadFailed soon.
UPDATE_RETRIES = 3
UPDATE_RETRY_INTERVAL_S = 60
_MD5 = re.compile(r"[0-9a-fA-F]{32}")
_REQUEST_SEQ = "firmware_request_seq"


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _parse(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text.replace("Z", "+00:00"))


def update_request(
    version: str,
    location: str,
    request_id: int,
    now: datetime,
    signature: str | None = None,
    signing_certificate: str | None = None,
) -> tuple[str, dict[str, Any]]:
    """The action and payload of sitectl's own firmware update for an OCPP version.

    1.6: ``UpdateFirmware`` (F1), or ``SignedUpdateFirmware`` with a signature (F3). 2.0.1/2.1:
    ``UpdateFirmware`` with ``requestId`` and ``firmware.retrieveDateTime`` (F4).
    """
    when = _iso(now)
    if version == "1.6" and signature is None:
        return "UpdateFirmware", {
            "location": location,
            "retrieveDate": when,
            "retries": UPDATE_RETRIES,
            "retryInterval": UPDATE_RETRY_INTERVAL_S,
        }
    firmware: dict[str, Any] = {"location": location, "retrieveDateTime": when}
    if signature is not None:
        firmware["signingCertificate"] = signing_certificate
        firmware["signature"] = signature
    action = "SignedUpdateFirmware" if version == "1.6" else "UpdateFirmware"
    return action, {
        "requestId": request_id,
        "retries": UPDATE_RETRIES,
        "retryInterval": UPDATE_RETRY_INTERVAL_S,
        "firmware": firmware,
    }


@dataclass
class _Target:
    """One charger in a rollout."""

    charger: str
    position: int
    step: ChargerStep
    updated_at: datetime
    canary: bool = False
    request_id: int | None = None
    charger_status: str | None = None
    detail: str | None = None
    version_before: str | None = None
    waiting_since: datetime | None = None
    started_at: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "charger": self.charger,
            "state": self.step.value,
            "canary": self.canary,
            "charger_status": self.charger_status,
            "detail": self.detail,
            "request_id": self.request_id,
            "started_at": _iso(self.started_at) if self.started_at else None,
            "updated_at": _iso(self.updated_at),
        }


@dataclass
class _Rollout:
    """One rollout and its chargers (in position order)."""

    id: int
    url: str
    md5: str | None
    sha256: str | None
    targets: Any
    options: dict[str, Any]
    state: RolloutState
    reason: str | None
    created_at: datetime
    updated_at: datetime
    chargers: dict[str, _Target] = field(default_factory=dict)

    def count(self, *steps: ChargerStep) -> int:
        return sum(1 for t in self.chargers.values() if t.step in steps)


class RolloutManager:
    """Starts, drives, persists and reports local firmware rollouts.

    Args:
        store: the store (with `FIRMWARE_MIGRATION`).
        state: the site state (sessions, connections, firmware statuses).
        cache: the image cache.
        server: the firmware file server (local URLs).
        call: sends sitectl's own call to a charger (`OcppServer.call`).
        config: the configuration (``firmware`` section, ``ocpp.call_timeout_s``).
        protocols: a charger's file transfer protocols if known (`FirmwareInterceptor.protocols`).
        progress_timeout_s: a charger in flight that reports nothing for this long fails.
        tracker: where the update requests sent are recorded with their answers (the API).
    """

    name = "firmware-rollouts"

    def __init__(
        self,
        store: Store,
        state: SiteState,
        cache: FirmwareCache,
        server: FirmwareServer,
        call: Caller,
        config: Config,
        *,
        protocols: Callable[[str], frozenset[str] | None] | None = None,
        progress_timeout_s: float = 2 * 3600,
        tracker: FirmwareTracker | None = None,
    ) -> None:
        self.tracker = tracker
        self.store = store
        self.state = state
        self.cache = cache
        self.server = server
        self.config = config
        self._call = call
        self._protocols = protocols
        self.progress_timeout_s = progress_timeout_s
        self._timeout_s = config.ocpp.call_timeout_s
        self._rollouts: dict[int, _Rollout] = {}
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sending: set[tuple[int, str]] = set()
        self._caching: set[int] = set()
        self._load()
        self._unsubscribe: Callable[[], None] | None = state.subscribe(self._on_change)

    # The operator's API.

    def start(
        self,
        url: str,
        targets: Any,
        md5: str | None = None,
        *,
        sha256: str | None = None,
        signature: str | None = None,
        signing_certificate: str | None = None,
    ) -> int:
        """Start rolling an image out; the work happens in `run`.

        Args:
            url: where the image comes from (http, https, ftp).
            targets: ``"all"``, a list of charger ids, ``{"ids": [...]}``, ``{"model": "X"}``
                (model as the charger reported it at boot, or as configured) or
                ``{"all": true}``.
            md5: the image's MD5 (32 hex digits), checked before any charger is asked.
            sha256: the image's SHA-256 (64 hex digits), the same and preferred (an MD5 can be
                forged by whoever chooses the file).
            signature: base64 signature for signed firmware (1.6 SignedUpdateFirmware, 2.0.1).
            signing_certificate: PEM certificate that goes with `signature`.

        Returns:
            The rollout id.

        Raises:
            RolloutError: bad URL or checksum, no or unknown chargers, a charger already in a
                rollout, no ``firmware.base_url``.
        """
        if self.server.base_url is None:
            raise RolloutError("firmware.base_url is not set: chargers cannot reach the cache")
        try:
            check_url(url)
        except FirmwareError as exc:
            raise RolloutError(str(exc), "url") from None
        if md5 is not None and not (isinstance(md5, str) and _MD5.fullmatch(md5)):
            raise RolloutError(f"md5 {str(md5)[:40]!r} is not 32 hex digits", "md5")
        if sha256 is not None and not (
            isinstance(sha256, str) and re.fullmatch(r"[0-9a-fA-F]{64}", sha256)
        ):
            raise RolloutError(f"sha256 {str(sha256)[:80]!r} is not 64 hex digits", "sha256")
        if (signature is None) != (signing_certificate is None):
            raise RolloutError("signature and signing_certificate go together", "signature")
        if signature is not None and (
            len(signature) > 800 or len(signing_certificate or "") > 5500
        ):
            raise RolloutError(
                "signature over 800 or certificate over 5500 characters (F3, F4)", "signature"
            )
        ids = self._resolve(targets)
        busy = {
            t.charger
            for r in self._rollouts.values()
            for t in r.chargers.values()
            if t.step in _OPEN and r.state in (RolloutState.CACHING, RolloutState.RUNNING)
        } | self.in_progress()
        clash = [i for i in ids if i in busy]
        if clash:
            raise RolloutError(f"already being updated: {', '.join(clash)}", "targets")
        fw = self.config.firmware
        options = {
            "max_parallel": fw.max_parallel,
            "canary_count": fw.canary_count,
            "halt_failure_share": fw.halt_failure_share,
            "session_wait_max_s": fw.session_wait_max_s,
            "signature": signature,
            "signing_certificate": signing_certificate,
            "sha256": sha256.lower() if sha256 else None,
        }
        now = self.state.clock()
        md5 = md5.lower() if md5 else None
        with self.store.transaction() as conn:
            cursor = conn.execute(
                "INSERT INTO fw_rollouts(url, md5, sha256, targets, options, state, reason, "
                "created_at, updated_at) VALUES(?,?,?,?,?,?,?,?,?)",
                (
                    url,
                    md5,
                    None,
                    json.dumps(targets),
                    json.dumps(options),
                    RolloutState.CACHING.value,
                    None,
                    _iso(now),
                    _iso(now),
                ),
            )
            rollout_id = int(cursor.lastrowid or 0)
            for position, charger in enumerate(ids):
                conn.execute(
                    "INSERT INTO fw_rollout_chargers(rollout_id, charger, position, state, "
                    "updated_at) VALUES(?,?,?,?,?)",
                    (rollout_id, charger, position, ChargerStep.QUEUED.value, _iso(now)),
                )
        rollout = _Rollout(
            rollout_id, url, md5, None, targets, options, RolloutState.CACHING, None, now, now
        )
        for position, charger in enumerate(ids):
            rollout.chargers[charger] = _Target(charger, position, ChargerStep.QUEUED, now)
        self._rollouts[rollout_id] = rollout
        log.info(
            "firmware rollout %d started: %s to %d charger(s): %s",
            rollout_id,
            safe_url(url),
            len(ids),
            ", ".join(ids),
        )
        self._wake.set()
        return rollout_id

    def stop(self, rollout_id: int) -> bool:
        """Stop a rollout: queued chargers are canceled, chargers in flight are still followed.

        Returns:
            Whether it was running (or caching, or halted) and is now stopped.
        """
        rollout = self._rollouts.get(rollout_id)
        if rollout is None or rollout.state not in (
            RolloutState.CACHING,
            RolloutState.RUNNING,
            RolloutState.HALTED,
        ):
            return False
        now = self.state.clock()
        for target in rollout.chargers.values():
            if target.step is ChargerStep.QUEUED:
                target.step = ChargerStep.CANCELED
                target.detail = "the rollout was stopped"
                self._save_target(rollout, target, now)
        self._set_state(rollout, RolloutState.STOPPED, "stopped by the operator", now)
        log.info("firmware rollout %d stopped by the operator", rollout_id)
        self._wake.set()
        return True

    def status(self, rollout_id: int) -> dict[str, Any] | None:
        """Everything about one rollout (JSON-ready), or None if there is no such rollout."""
        rollout = self._rollouts.get(rollout_id)
        if rollout is None:
            return None
        summary = self._summary(rollout)
        summary["chargers"] = [
            t.as_dict() for t in sorted(rollout.chargers.values(), key=lambda t: t.position)
        ]
        return summary

    def list(self) -> list[dict[str, Any]]:
        """Every rollout's summary (JSON-ready), newest first."""
        return [self._summary(r) for r in sorted(self._rollouts.values(), key=lambda r: -r.id)]

    def updating(self) -> set[str]:
        """Chargers the control loop must treat as unavailable (install phase, no session)."""
        return {c for c in self.installing() if not _in_session(self.state.chargers.get(c))}

    def installing(self) -> set[str]:
        """Chargers in their install phase (whatever their sessions)."""
        return {
            t.charger
            for r in self._rollouts.values()
            for t in r.chargers.values()
            if t.step is ChargerStep.INSTALLING
        }

    def in_progress(self) -> set[str]:
        """Chargers with an update in flight (downloading or installing)."""
        return {
            t.charger
            for r in self._rollouts.values()
            for t in r.chargers.values()
            if t.step in _IN_FLIGHT
        }

    def _summary(self, rollout: _Rollout) -> dict[str, Any]:
        counts = {step.value: rollout.count(step) for step in ChargerStep}
        return {
            "id": rollout.id,
            "url": safe_url(rollout.url),
            "md5": rollout.md5,
            "sha256": rollout.sha256,
            "targets": rollout.targets,
            "state": rollout.state.value,
            "reason": rollout.reason,
            "created_at": _iso(rollout.created_at),
            "updated_at": _iso(rollout.updated_at),
            "signed": rollout.options.get("signature") is not None,
            "counts": counts,
        }

    def _resolve(self, targets: Any) -> list[str]:
        chargers = self.state.chargers
        if targets == "all" or (isinstance(targets, dict) and targets.get("all") is True):
            ids = sorted(chargers)
        elif isinstance(targets, list | tuple) and all(isinstance(i, str) for i in targets):
            ids = list(dict.fromkeys(targets))
        elif isinstance(targets, dict) and isinstance(targets.get("ids"), list):
            ids = list(dict.fromkeys(str(i) for i in targets["ids"]))
        elif isinstance(targets, dict) and isinstance(targets.get("model"), str):
            model = targets["model"]
            ids = sorted(
                cid for cid, charger in chargers.items() if self._model(cid, charger) == model
            )
            if not ids:
                raise RolloutError(f"no charger of model {model!r}", "targets")
        else:
            raise RolloutError(
                "targets must be 'all', a list of charger ids, {'ids': [...]} or {'model': ...}",
                "targets",
            )
        unknown = [i for i in ids if i not in chargers]
        if unknown:
            raise RolloutError(f"unknown charger(s): {', '.join(unknown)}", "targets")
        if not ids:
            raise RolloutError("no charger to update", "targets")
        return ids

    def _model(self, charger_id: str, charger: ChargerState) -> str | None:
        """The model a charger reported at boot, else the configured one."""
        if charger.model is not None:
            return charger.model
        configured = self.config.charger(charger_id)
        return configured.model if configured is not None else None

    # The loop.

    async def run(self) -> None:
        """Drive every rollout until cancelled (event-driven, with a timer for deadlines)."""
        if self._unsubscribe is None:
            self._unsubscribe = self.state.subscribe(self._on_change)
        try:
            while True:
                self._wake.clear()
                for rollout in list(self._rollouts.values()):
                    try:
                        self._step(rollout)
                    except Exception:  # our bug: log it, keep the other rollouts going
                        log.exception("firmware rollout %d: step failed", rollout.id)
                # asyncio.timeout, not wait_for: in 3.11 wait_for can swallow a cancellation
                # that arrives as the event is set (CPython gh-86296).
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._next_check()):
                        await self._wake.wait()
        finally:
            if self._unsubscribe is not None:  # a stopped manager must not write progress
                self._unsubscribe()
                self._unsubscribe = None
            await cancel_all(self._tasks)

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _next_check(self) -> float:
        now = self.state.clock()
        due: list[float] = []
        for rollout in self._rollouts.values():
            wait_max = rollout.options["session_wait_max_s"]
            for target in rollout.chargers.values():
                if target.step in _IN_FLIGHT:
                    due.append(self.progress_timeout_s - (now - target.updated_at).total_seconds())
                elif target.step is ChargerStep.QUEUED and target.waiting_since is not None:
                    due.append(wait_max - (now - target.waiting_since).total_seconds())
        return min(30.0, max(0.05, min(due, default=30.0) + 0.01))

    def _step(self, rollout: _Rollout) -> None:
        now = self.state.clock()
        if rollout.state is RolloutState.CACHING:
            if rollout.id not in self._caching:
                self._caching.add(rollout.id)
                self._spawn(self._cache(rollout), f"firmware rollout {rollout.id} caching")
            return
        for target in rollout.chargers.values():
            if (
                target.step in _IN_FLIGHT
                and (rollout.id, target.charger) not in self._sending
                and (now - target.updated_at).total_seconds() > self.progress_timeout_s
            ):
                self._fail(
                    rollout,
                    target,
                    None,
                    f"no firmware status from the charger for {self.progress_timeout_s:.0f} s",
                )
        if rollout.state is RolloutState.RUNNING:
            self._dispatch(rollout, now)
        in_flight = rollout.count(*_IN_FLIGHT)
        if (
            rollout.state is RolloutState.RUNNING
            and in_flight == 0
            and not self._sends(rollout)
            and rollout.count(ChargerStep.QUEUED) == 0
        ):
            installed = rollout.count(ChargerStep.INSTALLED)
            failed = rollout.count(ChargerStep.FAILED)
            skipped = rollout.count(ChargerStep.SKIPPED)
            self._set_state(
                rollout,
                RolloutState.DONE,
                f"{installed} installed, {failed} failed, {skipped} skipped",
                now,
            )
            log.info("firmware rollout %d done: %s", rollout.id, rollout.reason)
        if (
            rollout.state not in (RolloutState.CACHING, RolloutState.RUNNING)
            and in_flight == 0
            and rollout.sha256 is not None
            and self.cache.pinned(rollout.sha256)
        ):
            self.cache.unpin(rollout.sha256, f"rollout:{rollout.id}")

    def _sends(self, rollout: _Rollout) -> int:
        return sum(1 for rid, _ in self._sending if rid == rollout.id)

    async def _cache(self, rollout: _Rollout) -> None:
        try:
            image = await self.cache.ensure(
                rollout.url,
                rollout.md5,
                pin=f"rollout:{rollout.id}",
                sha256=rollout.options.get("sha256"),
            )
        except FirmwareError as exc:
            if rollout.state is RolloutState.CACHING:
                now = self.state.clock()
                for target in rollout.chargers.values():
                    if target.step is ChargerStep.QUEUED:
                        target.step = ChargerStep.CANCELED
                        target.detail = "the image could not be cached"
                        self._save_target(rollout, target, now)
                reason = f"the image could not be cached: {exc}"
                self._set_state(rollout, RolloutState.FAILED, reason, now)
                log.error("firmware rollout %d failed: %s", rollout.id, reason)
                self.state.raise_alarm(
                    "firmware_rollout_halted",
                    f"rollout-{rollout.id}",
                    Severity.WARNING,
                    f"firmware rollout {rollout.id} did not start: {reason}",
                )
            else:
                log.warning(
                    "firmware rollout %d: the image is not available again yet: %s", rollout.id, exc
                )
        else:
            rollout.sha256 = image.sha256
            if rollout.state is RolloutState.CACHING:
                self._set_state(rollout, RolloutState.RUNNING, None, self.state.clock())
                log.info(
                    "firmware rollout %d: image cached (SHA-256 %s); updating chargers",
                    rollout.id,
                    image.sha256,
                )
            else:
                self._save_rollout(rollout)
        finally:
            self._caching.discard(rollout.id)
            self._wake.set()

    def _dispatch(self, rollout: _Rollout, now: datetime) -> None:
        options = rollout.options
        in_flight = rollout.count(*_IN_FLIGHT)
        canary_total = min(int(options["canary_count"]), len(rollout.chargers))
        canaries = [t for t in rollout.chargers.values() if t.canary]
        canary_phase = len(canaries) < canary_total or any(
            t.step is not ChargerStep.INSTALLED for t in canaries
        )
        wait_max = float(options["session_wait_max_s"])
        queued = sorted(
            (t for t in rollout.chargers.values() if t.step is ChargerStep.QUEUED),
            key=lambda t: t.position,
        )
        for target in queued:
            if in_flight >= int(options["max_parallel"]):
                break
            if canary_phase and len(canaries) >= canary_total:
                break  # the canaries go alone
            blocked = _blocked(self.state.chargers.get(target.charger))
            if blocked is not None:
                if target.waiting_since is None:
                    target.waiting_since = now
                    target.detail = f"waiting: {blocked}"
                    self._save_target(rollout, target, now)
                    log.info(
                        "firmware rollout %d: %s waits (%s)", rollout.id, target.charger, blocked
                    )
                elif (now - target.waiting_since).total_seconds() > wait_max:
                    target.step = ChargerStep.SKIPPED
                    target.detail = (
                        f"{blocked} for over {wait_max:.0f} s (firmware.session_wait_max_s); "
                        "not updated"
                    )
                    self._save_target(rollout, target, now)
                    log.warning(
                        "firmware rollout %d: %s skipped: %s",
                        rollout.id,
                        target.charger,
                        target.detail,
                    )
                continue
            if self._send(rollout, target, now, canary=canary_phase):
                in_flight += 1
                if canary_phase:
                    canaries.append(target)

    def _send(self, rollout: _Rollout, target: _Target, now: datetime, canary: bool) -> bool:
        assert rollout.sha256 is not None
        image = self.cache.image(rollout.sha256)
        if image is None:
            if rollout.id not in self._caching:
                # Not verified yet after a restart, or evicted as corrupt: fetch or check again.
                self._caching.add(rollout.id)
                self._spawn(self._cache(rollout), f"firmware rollout {rollout.id} re-caching")
            return False
        charger = self.state.chargers[target.charger]
        location = self.server.local_url(target.charger, image)
        if location is None:
            return False
        protocols = self._protocols(target.charger) if self._protocols else None
        scheme = urlsplit(location).scheme.upper()
        options = rollout.options
        action, payload = update_request(
            charger.ocpp_version,
            location,
            self._next_request_id(),
            now,
            options.get("signature"),
            options.get("signing_certificate"),
        )
        if protocols is not None and scheme not in protocols:
            self._fail(
                rollout,
                target,
                None,
                f"the charger takes {', '.join(sorted(protocols))}, not {scheme}",
            )
            return False
        if "firmware" in payload and len(location) > 512:
            self._fail(rollout, target, None, f"local URL of {len(location)} characters > 512 (F4)")
            return False
        target.step = ChargerStep.DOWNLOADING
        target.canary = canary
        target.request_id = payload.get("requestId")
        target.started_at = now
        target.version_before = charger.firmware_version
        target.charger_status = None
        target.detail = f"{action} sent"
        self._save_target(rollout, target, now)
        key = (rollout.id, target.charger)
        self._sending.add(key)
        self._spawn(
            self._deliver(rollout, target, action, payload, charger.ocpp_version),
            f"firmware rollout {rollout.id} {target.charger}",
        )
        log.info(
            "firmware rollout %d: %s%s sent to %s",
            rollout.id,
            action,
            " (canary)" if canary else "",
            target.charger,
        )
        return True

    async def _deliver(
        self,
        rollout: _Rollout,
        target: _Target,
        action: str,
        payload: dict[str, Any],
        version: str,
    ) -> None:
        answered: str | None = None
        try:
            answer = await self._call(target.charger, action, payload, timeout=self._timeout_s)
        except CallErrorResponse as exc:
            answered = f"CALLERROR {exc.code}"
            self._fail(rollout, target, None, f"{action} answered CALLERROR {exc.code}")
        except CallFailed as exc:
            self._fail(rollout, target, None, f"{action} not delivered: {exc}")
        except Exception as exc:  # e.g. a schema violation: our bug, but one charger's problem
            log.exception(
                "firmware rollout %d: %s to %s failed", rollout.id, action, target.charger
            )
            self._fail(rollout, target, None, f"{action} could not be sent: {exc}")
        else:
            status = answer.get("status")
            plain_16 = version == "1.6" and action == "UpdateFirmware"  # its answer is empty
            answered = "Accepted" if plain_16 else status
            if not plain_16 and status not in ("Accepted", "AcceptedCanceled"):
                self._fail(rollout, target, None, f"{action} answered {status}")
            elif target.step is ChargerStep.DOWNLOADING and target.charger_status is None:
                target.detail = f"{action} accepted"
                self._save_target(rollout, target, self.state.clock())
        finally:
            if self.tracker is not None:
                self.tracker.record_update(target.charger, action, payload, answered)
            self._sending.discard((rollout.id, target.charger))
            self._wake.set()

    # Progress from the state.

    def _on_change(self, change: Change) -> None:
        if change.kind == "firmware_status":
            self._on_status(change.subject)
        elif change.kind == "charger_booted":
            self._on_boot(change.subject)
        if change.kind in (
            "firmware_status",
            "charger_booted",
            "charger_connected",
            "charger_disconnected",
            "session_started",
            "session_ended",
        ):
            self._wake.set()

    def _in_flight(self, charger: str) -> list[tuple[_Rollout, _Target]]:
        found = []
        for rollout in self._rollouts.values():
            target = rollout.chargers.get(charger)
            if target is not None and target.step in _IN_FLIGHT:
                found.append((rollout, target))
        return found

    def _on_status(self, charger_id: str) -> None:
        charger = self.state.chargers.get(charger_id)
        status = charger.firmware_status if charger is not None else None
        for rollout, target in self._in_flight(charger_id):
            step = STATUS_STEPS.get(status or "")
            target.charger_status = status
            if step is ChargerStep.FAILED:
                self._fail(rollout, target, status, f"the charger reported {status}")
            elif step is ChargerStep.INSTALLED:
                self._installed(rollout, target, "the charger reported Installed")
            else:
                if step is not None:
                    target.step = step
                target.detail = f"charger: {status}"
                self._save_target(rollout, target, self.state.clock())

    def _on_boot(self, charger_id: str) -> None:
        charger = self.state.chargers.get(charger_id)
        if charger is None:
            return
        for rollout, target in self._in_flight(charger_id):
            before, after = target.version_before, charger.firmware_version
            if before is not None and after is not None and after != before:
                self._installed(rollout, target, f"firmware version {before} → {after} at boot")

    def _installed(self, rollout: _Rollout, target: _Target, detail: str) -> None:
        target.step = ChargerStep.INSTALLED
        target.detail = detail
        self._save_target(rollout, target, self.state.clock())
        self.state.clear_alarm("firmware_failed", target.charger)
        log.info("firmware rollout %d: %s installed (%s)", rollout.id, target.charger, detail)

    def _fail(self, rollout: _Rollout, target: _Target, status: str | None, detail: str) -> None:
        if target.step not in _OPEN:
            return
        target.step = ChargerStep.FAILED
        if status is not None:
            target.charger_status = status
        target.detail = detail
        self._save_target(rollout, target, self.state.clock())
        log.warning("firmware rollout %d: %s failed: %s", rollout.id, target.charger, detail)
        self.state.raise_alarm(
            "firmware_failed",
            target.charger,
            Severity.WARNING,
            f"firmware rollout {rollout.id}: update failed: {detail}",
        )
        self._check_halt(rollout)

    def _check_halt(self, rollout: _Rollout) -> None:
        if rollout.state is not RolloutState.RUNNING:
            return
        failed = rollout.count(ChargerStep.FAILED)
        finished = failed + rollout.count(ChargerStep.INSTALLED)
        share = failed / finished if finished else 0.0
        threshold = float(rollout.options["halt_failure_share"])
        canary = next(
            (t for t in rollout.chargers.values() if t.canary and t.step is ChargerStep.FAILED),
            None,
        )
        if canary is not None:
            reason = f"canary {canary.charger} failed: {canary.detail}"
        elif failed and share > threshold:
            reason = (
                f"{failed} of {finished} finished chargers failed ({share:.0%} > "
                f"{threshold:.0%}, firmware.halt_failure_share)"
            )
        else:
            return
        self._set_state(rollout, RolloutState.HALTED, reason, self.state.clock())
        queued = rollout.count(ChargerStep.QUEUED)
        log.error("firmware rollout %d halted: %s", rollout.id, reason)
        self.state.raise_alarm(
            "firmware_rollout_halted",
            f"rollout-{rollout.id}",
            Severity.WARNING,
            f"firmware rollout {rollout.id} halted: {reason}; {queued} charger(s) not started",
        )

    # Persistence.

    def _next_request_id(self) -> int:
        with self.store.transaction() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (_REQUEST_SEQ,)).fetchone()
            value = int(row[0]) + 1 if row else 100_000
            conn.execute(
                "INSERT INTO meta(key, value) VALUES(?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (_REQUEST_SEQ, str(value)),
            )
        return value

    def _set_state(
        self, rollout: _Rollout, state: RolloutState, reason: str | None, now: datetime
    ) -> None:
        rollout.state = state
        rollout.reason = reason
        rollout.updated_at = now
        self._save_rollout(rollout)

    def _save_rollout(self, rollout: _Rollout) -> None:
        self.store.execute(
            "UPDATE fw_rollouts SET sha256 = ?, state = ?, reason = ?, updated_at = ? WHERE id = ?",
            (
                rollout.sha256,
                rollout.state.value,
                rollout.reason,
                _iso(rollout.updated_at),
                rollout.id,
            ),
        )

    def _save_target(self, rollout: _Rollout, target: _Target, now: datetime) -> None:
        target.updated_at = now
        rollout.updated_at = now
        self.store.execute(
            "UPDATE fw_rollout_chargers SET state = ?, canary = ?, request_id = ?, "
            "charger_status = ?, detail = ?, version_before = ?, waiting_since = ?, "
            "started_at = ?, updated_at = ? WHERE rollout_id = ? AND charger = ?",
            (
                target.step.value,
                int(target.canary),
                target.request_id,
                target.charger_status,
                target.detail,
                target.version_before,
                _iso(target.waiting_since) if target.waiting_since else None,
                _iso(target.started_at) if target.started_at else None,
                _iso(now),
                rollout.id,
                target.charger,
            ),
        )

    def _load(self) -> None:
        for row in self.store.query("SELECT * FROM fw_rollouts ORDER BY id"):
            created = _parse(row["created_at"]) or self.state.clock()
            rollout = _Rollout(
                row["id"],
                row["url"],
                row["md5"],
                row["sha256"],
                json.loads(row["targets"]),
                json.loads(row["options"]),
                RolloutState(row["state"]),
                row["reason"],
                created,
                _parse(row["updated_at"]) or created,
            )
            self._rollouts[rollout.id] = rollout
        for row in self.store.query(
            "SELECT * FROM fw_rollout_chargers ORDER BY rollout_id, position"
        ):
            rollout = self._rollouts.get(row["rollout_id"])
            if rollout is None:
                continue
            rollout.chargers[row["charger"]] = _Target(
                charger=row["charger"],
                position=row["position"],
                step=ChargerStep(row["state"]),
                updated_at=_parse(row["updated_at"]) or rollout.updated_at,
                canary=bool(row["canary"]),
                request_id=row["request_id"],
                charger_status=row["charger_status"],
                detail=row["detail"],
                version_before=row["version_before"],
                waiting_since=_parse(row["waiting_since"]),
                started_at=_parse(row["started_at"]),
            )
        active = [
            r
            for r in self._rollouts.values()
            if r.state in (RolloutState.CACHING, RolloutState.RUNNING) or r.count(*_IN_FLIGHT)
        ]
        if active:
            log.info(
                "firmware rollouts resumed: %s",
                ", ".join(f"{r.id} ({r.state.value})" for r in active),
            )


def _in_session(charger: ChargerState | None) -> bool:
    return charger is not None and any(c.session is not None for c in charger.connectors.values())


def _blocked(charger: ChargerState | None) -> str | None:
    """Why a charger cannot be sent an update now, or None."""
    if charger is None:
        return "not configured"
    if not charger.connected:
        return "not connected"
    if _in_session(charger):
        return "in a session"
    return None
