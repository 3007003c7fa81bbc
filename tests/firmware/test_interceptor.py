"""The UpdateFirmware rewrite: unit checks of the rules, then 20 real chargers through sitectl."""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from ocpp.v16 import call as call16
from ocpp.v201 import call as call201

from sitectl.firmware import FirmwareCache, FirmwareInterceptor, FirmwareServer
from sitectl.firmware.cache import CachedImage
from sitectl.firmware.interceptor import ASSUMED_PROTOCOLS
from sitectl.ocpp.link import CallErrorResponse, CallTimeout
from sitectl.state import SiteState
from tests.firmware.conftest import Depot, fw_config
from tests.firmware.support import FtpOrigin, FwSimCharger, Origin, image_bytes, sha256
from tests.helpers import wait_for

MB = 1024 * 1024
BASE = "http://192.168.10.2:8080"
CERT = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass
class Rig:
    cache: FirmwareCache
    files: FirmwareServer
    interceptor: FirmwareInterceptor
    image: CachedImage
    url: str


@pytest.fixture
async def rig(origin: Origin, make_cache, tmp_path) -> AsyncIterator[Rig]:
    chargers = [
        {"id": "CP16", "ocpp_version": "1.6"},
        {"id": "CP201", "ocpp_version": "2.0.1"},
    ]
    config = fw_config(tmp_path, chargers, base_url=BASE)
    cache: FirmwareCache = make_cache(config)
    url = origin.add("vendor/fw.bin", image_bytes(100_000, seed=70))
    image = await cache.ensure(url)
    files = FirmwareServer(cache, config)
    interceptor = FirmwareInterceptor(cache, files, SiteState(config), config)
    for identity in ("CP16", "CP201"):
        interceptor.set_protocols(identity, {"HTTP", "HTTPS", "FTP"})
    yield Rig(cache, files, interceptor, image, url)


def requests_for(url: str) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (
            "1.6",
            "UpdateFirmware",
            {
                "location": url,
                "retrieveDate": "2026-11-27T01:00:00Z",
                "retries": 5,
                "retryInterval": 9,
            },
        ),
        (
            "1.6",
            "SignedUpdateFirmware",
            {
                "requestId": 42,
                "retries": 2,
                "firmware": {
                    "location": url,
                    "retrieveDateTime": "2026-11-27T01:00:00Z",
                    "installDateTime": "2026-11-27T03:00:00Z",
                    "signingCertificate": CERT,
                    "signature": "c2lnbmF0dXJl",
                },
            },
        ),
        (
            "2.0.1",
            "UpdateFirmware",
            {
                "requestId": 7,
                "retryInterval": 60,
                "firmware": {
                    "location": url,
                    "retrieveDateTime": "2026-11-27T01:00:00Z",
                    "signature": "c2lnbmF0dXJl",
                    "signingCertificate": CERT,
                    "customData": {"vendorId": "acme", "x": 1},
                },
                "customData": {"vendorId": "acme"},
            },
        ),
    ]


@pytest.mark.parametrize("case", range(3))
def test_only_location_changes(rig: Rig, case: int) -> None:
    version, action, payload = requests_for(rig.url)[case]
    identity = "CP16" if version == "1.6" else "CP201"
    original = copy.deepcopy(payload)
    out = rig.interceptor.rewrite(identity, version, action, payload)
    assert out is not None and payload == original  # the input is not modified
    location = rig.files.local_url(identity, rig.image)
    expected = copy.deepcopy(original)
    (expected.get("firmware") or expected)["location"] = location
    assert out == expected
    assert location.startswith(f"{BASE}/firmware/{rig.image.sha256}/")


async def test_not_cached_is_forwarded_and_cached_in_background(rig: Rig, origin: Origin) -> None:
    url = origin.add("new.bin", image_bytes(50_000, seed=71))
    payload = {"location": url, "retrieveDate": _now()}
    assert rig.interceptor.rewrite("CP16", "1.6", "UpdateFirmware", payload) is None
    assert rig.cache.downloading(url)
    await wait_for(lambda: rig.cache.lookup(url) is not None, message="cached")
    out = rig.interceptor.rewrite("CP16", "1.6", "UpdateFirmware", payload)
    assert out is not None and out["location"].startswith(BASE)


def test_transfer_protocols_decide(rig: Rig) -> None:
    payload = {"location": rig.url, "retrieveDate": _now()}
    interceptor = rig.interceptor
    interceptor._protocols.pop("CP16")
    assert interceptor.rewrite("CP16", "1.6", "UpdateFirmware", payload) is None  # not read yet
    interceptor.set_protocols("CP16", {"FTP"})
    assert interceptor.rewrite("CP16", "1.6", "UpdateFirmware", payload) is None
    interceptor.set_protocols("CP16", {"HTTPS"})  # the cache speaks http here
    assert interceptor.rewrite("CP16", "1.6", "UpdateFirmware", payload) is None
    interceptor.set_protocols("CP16", {"http"})
    assert interceptor.rewrite("CP16", "1.6", "UpdateFirmware", payload) is not None


async def test_https_origin_is_not_downgraded_silently(rig: Rig, tmp_path) -> None:
    https_url = "https://vendor.example/fw.bin"
    await rig.cache.import_file(rig.image.path, https_url)
    payload = {"location": https_url, "retrieveDate": _now()}
    assert rig.interceptor.rewrite("CP16", "1.6", "UpdateFirmware", payload) is None
    config = fw_config(tmp_path, [{"id": "CP16"}], base_url=BASE, allow_https_downgrade=True)
    allowed = FirmwareInterceptor(rig.cache, rig.files, SiteState(config), config)
    allowed.set_protocols("CP16", {"HTTP"})
    assert allowed.rewrite("CP16", "1.6", "UpdateFirmware", payload) is not None


def test_location_length_limits(rig: Rig, tmp_path) -> None:
    long_base = "http://192.168.10.2:8080/" + "p" * 400
    config = fw_config(
        tmp_path, [{"id": "CP16"}, {"id": "CP201", "ocpp_version": "2.0.1"}], base_url=long_base
    )
    files = FirmwareServer(rig.cache, config)
    interceptor = FirmwareInterceptor(rig.cache, files, SiteState(config), config)
    for identity in ("CP16", "CP201"):
        interceptor.set_protocols(identity, {"HTTP"})
    plain, signed, v201 = requests_for(rig.url)
    out = interceptor.rewrite("CP16", *plain)
    assert out is not None and len(out["location"]) > 512  # 1.6 location has no maxLength
    assert interceptor.rewrite("CP16", *signed) is None  # ≤ 512 (F3)
    assert interceptor.rewrite("CP201", *v201) is None  # ≤ 512 (F4)
    assert interceptor.rewrite("CP201", "2.1", *v201[1:]) is not None  # 2.1: ≤ 2000


def test_a_published_url_gets_the_chargers_own_token(rig: Rig) -> None:
    published = rig.files.publish(rig.image, rig.image.md5, 3)
    _, _, payload = requests_for(published)[2]
    out = rig.interceptor.rewrite("CP201", "2.0.1", "UpdateFirmware", payload)
    assert out["firmware"]["location"] == rig.files.local_url("CP201", rig.image)


@pytest.mark.parametrize(
    ("action", "payload"),
    [
        ("Reset", {"type": "Hard"}),
        ("UpdateFirmware", {"retrieveDate": "x"}),
        ("UpdateFirmware", {"location": 5}),
        ("UpdateFirmware", {"firmware": "nope"}),
        ("UpdateFirmware", {"location": "gopher://x/y"}),
        ("SignedUpdateFirmware", {"firmware": {"location": None}}),
    ],
)
def test_odd_payloads_pass_untouched(rig: Rig, action: str, payload: dict) -> None:
    assert rig.interceptor.rewrite("CP16", "1.6", action, payload) is None
    assert rig.interceptor.rewrite("CP201", "2.0.1", action, payload) is None


async def test_reading_transfer_protocols(rig: Rig, tmp_path) -> None:
    answers: dict[str, Any] = {}

    async def call(identity: str, action: str, payload: dict, timeout: float) -> dict:
        answer = answers[identity]
        if isinstance(answer, Exception):
            raise answer
        return answer

    config = fw_config(tmp_path, [{"id": "CP16"}, {"id": "CP201", "ocpp_version": "2.0.1"}])
    state = SiteState(config)
    interceptor = FirmwareInterceptor(rig.cache, rig.files, state, config, call=call)
    answers["CP16"] = {
        "configurationKey": [{"key": "SupportedFileTransferProtocols", "value": "FTP, http"}]
    }
    assert await interceptor.probe("CP16") == {"FTP", "HTTP"}
    answers["CP201"] = {
        "getVariableResult": [
            {
                "attributeStatus": "Accepted",
                "attributeValue": "HTTPS",
                "component": {"name": "OCPPCommCtrlr"},
                "variable": {"name": "FileTransferProtocols"},
            }
        ]
    }
    assert await interceptor.probe("CP201") == {"HTTPS"}
    answers["CP16"] = CallErrorResponse("NotSupported", "no", {})
    assert await interceptor.probe("CP16") == ASSUMED_PROTOCOLS
    answers["CP16"] = {"configurationKey": [], "unknownKey": ["SupportedFileTransferProtocols"]}
    assert await interceptor.probe("CP16") == ASSUMED_PROTOCOLS
    answers["CP201"] = CallTimeout("slow")
    assert await interceptor.probe("CP201") is None
    assert interceptor.protocols("CP201") == {"HTTPS"}  # the last answer is kept


# ------------------------------------------------------------------------------------------------
# Through sitectl, with real chargers


async def send_update(
    depot: Depot, sim: FwSimCharger, url: str, request_id: int, signed: bool = False
) -> None:
    if sim.version == "1.6" and signed:
        payload: Any = call16.SignedUpdateFirmware(
            request_id=request_id,
            firmware={
                "location": url,
                "retrieve_date_time": _now(),
                "signing_certificate": CERT,
                "signature": "c2lnbmF0dXJl",
            },
            retries=2,
        )
    elif sim.version == "1.6":
        payload = call16.UpdateFirmware(location=url, retrieve_date=_now(), retries=2)
    else:
        payload = call201.UpdateFirmware(
            request_id=request_id,
            firmware={
                "location": url,
                "retrieve_date_time": _now(),
                "signature": "c2lnbmF0dXJl",
                "signing_certificate": CERT,
            },
            retry_interval=30,
        )
    await depot.csms.call(sim.identity, payload)


def update_frames(depot: Depot, sim: FwSimCharger) -> list[tuple[list, list]]:
    """(as the CSMS sent it, as the charger received it) for every firmware update request."""
    actions = ('"UpdateFirmware"', '"SignedUpdateFirmware"')
    sent = [
        json.loads(f)
        for f in depot.csms.frames(sim.identity, "out")
        if any(a in f for a in actions)
    ]
    got = [json.loads(f) for f in sim.received() if any(a in f for a in actions)]
    return list(zip(sent, got, strict=True))


def status_frames(frames: list[str]) -> list[list]:
    names = (
        "FirmwareStatusNotification",
        "SignedFirmwareStatusNotification",
        "SecurityEventNotification",
    )
    return [json.loads(f) for f in frames if any(f'"{n}"' in f for n in names)]


def steps(sim: FwSimCharger, signed: bool = False) -> list[str]:
    """The statuses of one successful update: the charger reboots into the new version."""
    rebooting = ["InstallRebooting"] if signed or sim.version == "2.0.1" else []
    return ["Downloading", "Downloaded", "Installing", *rebooting, "Installed"]


async def test_twenty_chargers_one_origin_download(depot) -> None:
    ids = [f"CP{n:02d}" for n in range(1, 21)]
    d: Depot = await depot(
        [{"id": i, "ocpp_version": "1.6" if n % 2 else "2.0.1"} for n, i in enumerate(ids)]
    )
    data = image_bytes(2 * MB, seed=72)
    url = d.origin.add("vendor/fw-3.0.bin", data)
    sims = await asyncio.gather(
        *(d.charger(i, protocols=None if i == "CP20" else "FTP,HTTP,HTTPS") for i in ids)
    )
    assert d.interceptor.protocols("CP20") == ASSUMED_PROTOCOLS  # no key: HTTP assumed

    # Round 1, cold cache: every request goes to the chargers untouched; sitectl caches once.
    await asyncio.gather(*(send_update(d, s, url, 100 + n) for n, s in enumerate(sims)))
    await wait_for(
        lambda: all(
            len(s.statuses) == len(steps(s)) and s.statuses[-1][0] == "Installed" for s in sims
        ),
        timeout=20,
    )
    await wait_for(lambda: d.cache.lookup(url) is not None, message="cached")
    for sim in sims:
        [(sent, got)] = update_frames(d, sim)
        assert got == sent  # byte for byte the same request
    assert len(d.origin.seen(sitectl=True)) == 1  # one download although 20 chargers asked
    from_origin = len(d.origin.seen())

    # Round 2, cached: only the location changes, and the origin sees nothing more.
    await asyncio.gather(*(send_update(d, s, url, 200 + n) for n, s in enumerate(sims)))
    await wait_for(
        lambda: all(len(s.downloads) == 2 and s.statuses[-1][0] == "Installed" for s in sims),
        timeout=20,
    )
    assert len(d.origin.seen()) == from_origin
    locations = set()
    for sim in sims:
        _, (sent, got) = update_frames(d, sim)
        location = (got[3].get("firmware") or got[3])["location"]
        locations.add(location)
        assert location == d.files.local_url(sim.identity, d.cache.lookup(url))
        (sent[3].get("firmware") or sent[3])["location"] = location
        assert got == sent
        assert sim.downloads[1].sha256 == sha256(data) == sim.downloads[0].sha256
    assert len(locations) == 20  # a token per charger
    assert set(d.files.fetches) == set(ids)

    # Every status notification and security event reached the CSMS unchanged, and is tracked.
    assert sims[0].version == "2.0.1"
    await sims[0].call(call201.SecurityEventNotification(type="FirmwareUpdated", timestamp=_now()))
    for sim in sims:
        sent = status_frames(sim.sent())

        def forwarded(identity: str = sim.identity, count: int = len(sent)) -> bool:
            return len(status_frames(d.csms.frames(identity))) == count

        await wait_for(forwarded)
        assert status_frames(d.csms.frames(sim.identity)) == sent
        statuses = [e.status for e in d.tracker.firmware(sim.identity) if "Status" in e.action]
        assert statuses == steps(sim) * 2
    assert [e.type for e in d.tracker.security("CP01")] == ["FirmwareUpdated"]


async def test_signed_update_ftp_only_charger_and_a_resumed_download(depot, tmp_path) -> None:
    d: Depot = await depot(
        [
            {"id": "SIGNED", "ocpp_version": "1.6"},
            {"id": "FTPONLY", "ocpp_version": "1.6"},
            {"id": "RESUMER", "ocpp_version": "2.0.1"},
        ]
    )
    data = image_bytes(2 * MB, seed=73)
    url = d.origin.add("fw.bin", data)
    await d.cache.ensure(url)
    signed = await d.charger("SIGNED")
    ftp_only = await d.charger("FTPONLY", protocols="FTP")
    resumer = await d.charger("RESUMER", cut_after=700_000)

    await send_update(d, signed, url, 77, signed=True)
    await wait_for(lambda: signed.statuses and signed.statuses[-1][0] == "Installed")
    [(sent, got)] = update_frames(d, signed)
    assert got[3]["firmware"]["location"].startswith(d.files.base_url)
    sent[3]["firmware"]["location"] = got[3]["firmware"]["location"]
    assert got == sent and got[3]["requestId"] == 77
    assert signed.downloads[0].sha256 == sha256(data)
    # After the reboot, a new upstream connection: the last ones may arrive a little later.
    await wait_for(lambda: len(status_frames(d.csms.frames("SIGNED"))) == 5, message="forwarded")
    forwarded = status_frames(d.csms.frames("SIGNED"))
    assert [f[3]["status"] for f in forwarded] == steps(signed, signed=True)
    assert {f[2] for f in forwarded} == {"SignedFirmwareStatusNotification"}
    assert {f[3]["requestId"] for f in forwarded} == {77}

    ftp = await FtpOrigin({"fw/image.bin": data}).start()
    try:
        ftp_url = ftp.url("fw/image.bin")
        await d.cache.ensure(ftp_url)  # cached, yet the charger only takes FTP
        await send_update(d, ftp_only, ftp_url, 1)
        await wait_for(lambda: len(ftp_only.updates) == 1)
        assert ftp_only.update_locations() == [ftp_url]
    finally:
        await ftp.stop()

    await send_update(d, resumer, url, 5)
    await wait_for(lambda: resumer.statuses and resumer.statuses[-1][0] == "Installed")
    [download] = resumer.downloads
    assert download.requests == [(200, None), (206, "bytes=700000-")]
    assert download.sha256 == sha256(data)
