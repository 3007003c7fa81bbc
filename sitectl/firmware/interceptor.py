"""Point the CSMS's UpdateFirmware at sitectl's cache, when that is safe.

`FirmwareInterceptor.rewrite` is a `CsmsRewriter` (sitectl/ocpp/offline.py): every CSMS call to a
charger passes through it, synchronously, inside the OCPP router's call path, so it never blocks
and never awaits. Rules (reference ``ocpp-local-controller.md`` section 4):

- **Only ``location`` changes** (F1, F3, F4, F5). ``retrieveDate``/``retrieveDateTime``,
  ``installDateTime``, ``retries``, ``retryInterval``, ``requestId``, ``signature``,
  ``signingCertificate`` and anything else pass through as the CSMS sent them. Handled: 1.6
  ``UpdateFirmware`` (``location``), 1.6 ``SignedUpdateFirmware`` and 2.0.1/2.1 ``UpdateFirmware``
  (``firmware.location``).
- **Only cached and verified images** (F6). Otherwise the image starts caching in the background
  and the request goes to the charger untouched: it downloads from the origin this time.
- **Never longer than the schema allows** (F3, F4): 1.6 ``UpdateFirmware.location`` is
  ``format: uri`` with no ``maxLength`` (``ocpp/v16/schemas/UpdateFirmware.json``); 1.6 signed and
  2.0.1 allow 512 characters, 2.1 allows 2000. A local URL over the limit → the original.
- **The charger's transfer protocols decide** (F7): 1.6 ``SupportedFileTransferProtocols``, 2.0.1
  ``OCPPCommCtrlr.FileTransferProtocols``, read with GetConfiguration/GetVariables once per
  connection (`run` does it when a charger connects). Until they are known: the original. A
  charger that cannot tell (unknown key, CALLERROR) is assumed to take HTTP and HTTPS (logged).
  A charger without the local URL's scheme (FTP only, say) gets the original.
- **No silent downgrade** (F8): an ``https`` origin is rewritten to an ``http`` cache URL only with
  ``firmware.allow_https_downgrade``.
- A location that is sitectl's own published URL (2.0.1 PublishFirmware, F12) is rewritten to the
  charger's own token for that image.
- Firmware status and security notifications are never touched here (F2, F11): they are not CSMS
  calls; `FirmwareTracker` records them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from sitectl.config import Config
from sitectl.firmware.cache import FirmwareCache, safe_url
from sitectl.firmware.server import FirmwareServer
from sitectl.ocpp.link import CallErrorResponse, CallFailed
from sitectl.state import Change, SiteState
from sitectl.tasks import cancel_all

__all__ = ["ASSUMED_PROTOCOLS", "LOCATION_LIMITS", "FirmwareInterceptor"]

log = logging.getLogger(__name__)

#: Longest ``location`` per (version, action); None: the schema sets no limit (F3, F4).
LOCATION_LIMITS: dict[tuple[str, str], int | None] = {
    ("1.6", "UpdateFirmware"): None,
    ("1.6", "SignedUpdateFirmware"): 512,
    ("2.0.1", "UpdateFirmware"): 512,
    ("2.1", "UpdateFirmware"): 2000,
}
#: What a charger that does not report its transfer protocols is assumed to take.
ASSUMED_PROTOCOLS = frozenset({"HTTP", "HTTPS"})
_KEY_16 = "SupportedFileTransferProtocols"
_COMPONENT_201, _VARIABLE_201 = "OCPPCommCtrlr", "FileTransferProtocols"

Caller = Callable[..., Awaitable[dict[str, Any]]]


class FirmwareInterceptor:
    """The UpdateFirmware rewriter, and the reader of each charger's transfer protocols.

    Args:
        cache: the image cache.
        server: the firmware file server (local URLs and tokens).
        state: the site state (connections trigger the protocol reads).
        config: the configuration (``firmware.allow_https_downgrade``, call timeout).
        call: sends sitectl's own call to a charger (`OcppServer.call`); without it the protocols
            must be given with `set_protocols`.
    """

    name = "firmware-interceptor"

    def __init__(
        self,
        cache: FirmwareCache,
        server: FirmwareServer,
        state: SiteState,
        config: Config,
        call: Caller | None = None,
    ) -> None:
        self.cache = cache
        self.server = server
        self.state = state
        self.config = config
        self._call = call
        self._timeout_s = config.ocpp.call_timeout_s
        self._protocols: dict[str, frozenset[str]] = {}
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._probing: dict[str, asyncio.Task[Any]] = {}
        #: How many UpdateFirmware calls were rewritten / forwarded unchanged.
        self.rewritten = 0
        self.unchanged = 0
        if call is not None:
            state.subscribe(self._on_change)

    # Transfer protocols.

    def protocols(self, identity: str) -> frozenset[str] | None:
        """The charger's file transfer protocols (upper case), or None while unknown."""
        return self._protocols.get(identity)

    def set_protocols(self, identity: str, protocols: set[str] | frozenset[str]) -> None:
        """Set a charger's file transfer protocols (e.g. from configuration)."""
        self._protocols[identity] = frozenset(p.strip().upper() for p in protocols)

    def _on_change(self, change: Change) -> None:
        if change.kind == "charger_connected" or (
            change.kind == "charger_booted" and change.subject not in self._protocols
        ):
            self._queue.put_nowait(change.subject)

    async def run(self) -> None:
        """Read the protocols of every charger that connects; runs until cancelled."""
        for identity, charger in self.state.chargers.items():
            if charger.connected:
                self._queue.put_nowait(identity)
        try:
            while True:
                identity = await self._queue.get()
                if identity in self._probing or self._call is None:
                    continue
                task = asyncio.get_running_loop().create_task(
                    self._probe_logged(identity), name=f"firmware protocols {identity}"
                )
                self._probing[identity] = task
                task.add_done_callback(lambda t, i=identity: self._probing.pop(i, None))
        finally:
            await cancel_all(self._probing.values())

    async def _probe_logged(self, identity: str) -> None:
        try:
            await self.probe(identity)
        except Exception:  # our bug: log it, keep serving the other chargers
            log.exception("%s: reading the file transfer protocols failed", identity)

    async def probe(self, identity: str) -> frozenset[str] | None:
        """Ask a charger for its file transfer protocols (F7) and remember them.

        Returns:
            The protocols, `ASSUMED_PROTOCOLS` when the charger cannot tell, or None when it did
            not answer (it is asked again when it connects or boots).
        """
        if self._call is None:
            return self._protocols.get(identity)
        charger = self.state.chargers.get(identity)
        version = charger.ocpp_version if charger is not None else "1.6"
        value: Any = None
        try:
            if version == "1.6":
                key = _KEY_16
                answer = await self._call(
                    identity, "GetConfiguration", {"key": [_KEY_16]}, timeout=self._timeout_s
                )
                for item in answer.get("configurationKey") or []:
                    if isinstance(item, dict) and item.get("key") == _KEY_16:
                        value = item.get("value")
            else:
                key = f"{_COMPONENT_201}.{_VARIABLE_201}"
                answer = await self._call(
                    identity,
                    "GetVariables",
                    {
                        "getVariableData": [
                            {
                                "component": {"name": _COMPONENT_201},
                                "variable": {"name": _VARIABLE_201},
                            }
                        ]
                    },
                    timeout=self._timeout_s,
                )
                for item in answer.get("getVariableResult") or []:
                    if isinstance(item, dict) and item.get("attributeStatus") == "Accepted":
                        value = item.get("attributeValue")
        except CallErrorResponse as exc:
            log.warning(
                "%s answered %s when asked for %s; assuming it takes HTTP and HTTPS",
                identity,
                exc.code,
                key,
            )
            value = None
        except CallFailed as exc:
            log.info("%s: file transfer protocols not read (%s); asking again later", identity, exc)
            return None
        if not isinstance(value, str) or not value.strip():
            if isinstance(value, str) or value is None:
                log.warning(
                    "%s does not report %s; assuming it takes HTTP and HTTPS", identity, key
                )
            protocols = ASSUMED_PROTOCOLS
        else:
            protocols = frozenset(p.strip().upper() for p in value.split(",") if p.strip())
            log.info("%s: file transfer protocols %s", identity, ", ".join(sorted(protocols)))
        self._protocols[identity] = protocols
        return protocols

    # The rewriter.

    def rewrite(
        self, identity: str, version: str, action: str, payload: dict[str, Any]
    ) -> dict[str, Any] | None:
        """A `CsmsRewriter`: UpdateFirmware with a local ``location``, or None to forward as is.

        Never raises on odd payloads and never blocks (see the module rules).
        """
        if action == "UpdateFirmware":
            nested = version != "1.6"
        elif action == "SignedUpdateFirmware" and version == "1.6":
            nested = True
        else:
            return None
        holder = payload.get("firmware") if nested else payload
        location = holder.get("location") if isinstance(holder, dict) else None
        if not isinstance(holder, dict) or not isinstance(location, str):
            return None
        image = self.server.image_of(location)
        own = image is not None
        if image is None:
            image = self.cache.lookup(location)
        if image is None:
            started = self.cache.prefetch(location)
            log.info(
                "%s: %s of %s forwarded unchanged: not cached yet%s",
                identity,
                action,
                safe_url(location),
                " (caching it now)" if started else "",
            )
            self.unchanged += 1
            return None
        local = self._local_location(identity, version, action, location, image, own)
        if local is None:
            self.unchanged += 1
            return None
        self.rewritten += 1
        log.info(
            "%s: %s of %s rewritten to the cached image %s",
            identity,
            action,
            safe_url(location),
            image.sha256[:16],
        )
        rewritten = dict(holder, location=local)
        return dict(payload, firmware=rewritten) if nested else rewritten

    def _local_location(
        self, identity: str, version: str, action: str, location: str, image: Any, own: bool
    ) -> str | None:
        protocols = self._protocols.get(identity)
        why = None
        url = self.server.local_url(identity, image)
        if url is None:
            why = "firmware.base_url is not set"
        elif protocols is None:
            why = "its file transfer protocols are not known yet"
        else:
            scheme = urlsplit(url).scheme.upper()
            limit = LOCATION_LIMITS.get((version, action), 512)
            origin = urlsplit(location).scheme.lower()
            if scheme not in protocols:
                why = f"it takes {', '.join(sorted(protocols))}, not {scheme}"
            elif (
                origin == "https"
                and scheme == "HTTP"
                and not own
                and not self.config.firmware.allow_https_downgrade
            ):
                why = "the origin is https and firmware.allow_https_downgrade is off (F8)"
            elif limit is not None and len(url) > limit:
                why = f"the local URL has {len(url)} characters, over the {limit} OCPP allows"
        if why is not None:
            log.info(
                "%s: %s of cached %s forwarded unchanged: %s",
                identity,
                action,
                safe_url(location),
                why,
            )
            return None
        return url
