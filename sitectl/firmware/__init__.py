"""Firmware: each image cached once, served to the chargers on the LAN, rolled out in stages.

The rules come from section 4 of ``../shared/reference/ocpp-local-controller.md`` (F1–F12) and
the safety model of ``DESIGN.md`` ("No charger is rebooted for firmware while it has a session"):

- `cache`: content-addressed image store with an index in the SQLite store, LRU eviction of
  unpinned images, resumable downloads (HTTP Range, FTP REST), length and checksum checks; the
  bytes are never changed (F5, F6, F9).
- `server`: the ``/firmware/`` aiohttp routes: Range/If-Range, strong ETag, per-charger per-image
  tokens, 404 + log line for anything else (F9).
- `interceptor`: the `CsmsRewriter` for UpdateFirmware / SignedUpdateFirmware: ``location`` only,
  cached images only, within the version's length limit, only for chargers whose transfer
  protocols allow it (F1, F3–F8).
- `tracker`: firmware statuses, update requests and security events per charger (F2, F11).
- `rollout`: operator rollouts: cache first, at most ``max_parallel``, canary first, never during
  a session, halt on failures, persisted (F10).
- `lc`: PublishFirmware / UnpublishFirmware on sitectl's own 2.0.1 identity (F12).
- `schema`: the store migration (`FIRMWARE_MIGRATION`, version 4).
"""

from sitectl.firmware.cache import (
    CachedImage,
    CacheFull,
    ChecksumMismatch,
    DownloadError,
    FirmwareCache,
    FirmwareError,
    UnsupportedSource,
)
from sitectl.firmware.interceptor import FirmwareInterceptor
from sitectl.firmware.lc import LocalControllerClient
from sitectl.firmware.rollout import ChargerStep, RolloutError, RolloutManager, RolloutState
from sitectl.firmware.schema import FIRMWARE_MIGRATION
from sitectl.firmware.server import FirmwareServer
from sitectl.firmware.tracker import FanoutListener, FirmwareTracker

__all__ = [
    "FIRMWARE_MIGRATION",
    "CacheFull",
    "CachedImage",
    "ChargerStep",
    "ChecksumMismatch",
    "DownloadError",
    "FanoutListener",
    "FirmwareCache",
    "FirmwareError",
    "FirmwareInterceptor",
    "FirmwareServer",
    "FirmwareTracker",
    "LocalControllerClient",
    "RolloutError",
    "RolloutManager",
    "RolloutState",
    "UnsupportedSource",
]
