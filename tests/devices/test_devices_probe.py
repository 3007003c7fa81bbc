"""``sitectl probe``: every quantity with its unit, raw words, and the exact cause of failure."""

from __future__ import annotations

from devices.api import DeviceSpec, TcpTransport
from devices.probe import main_probe, probe, render
from devices.sim import SimMeter, SimServer

QUICK = {"timeout_s": 0.2, "poll_period_s": 0.3, "retries": 0}


async def test_probe_reports_values_and_every_failure_cause(free_port) -> None:
    # Exact values are printed: the counter must not count on while the test runs.
    good = SimMeter("schneider-pm5xxx-iem3xxx", unit_id=1, integrate_energy=False)
    failing = SimMeter("eastron-sdm630", unit_id=2)
    slow = SimMeter("eastron-sdm630", unit_id=3)
    garbage = SimMeter("sunspec-meter", unit_id=4)
    failing.exception = 0x02
    slow.silent = True
    garbage.set_raw(40070 + 6, [0x7000])  # A_SF of model 203: no scale factor is that large
    port = free_port
    async with SimServer([good, failing, slow, garbage]) as server:
        t = server.transport
        specs = [
            DeviceSpec("grid", "schneider-pm5xxx-iem3xxx", t, unit_id=1, **QUICK),
            DeviceSpec("sub1", "eastron-sdm630", t, unit_id=2, **QUICK),
            DeviceSpec("sub2", "eastron-sdm630", t, unit_id=3, **QUICK),
            DeviceSpec("pv", "sunspec-meter", t, unit_id=4, **QUICK),
            DeviceSpec("ghost", "eastron-sdm630", t, unit_id=99, **QUICK),
            DeviceSpec("off", "eastron-sdm630", TcpTransport("127.0.0.1", port), **QUICK),
            DeviceSpec("typo", "eastron-sdm631", t, **QUICK),
        ]
        results = await probe(specs, raw=True)
    text = render(results)
    by_name = {r.spec.name: r for r in results}
    assert by_name["grid"].ok
    assert [r.ok for r in results].count(True) == 1
    assert "grid (schneider-pm5xxx-iem3xxx, tcp 127.0.0.1:" in text
    assert "  voltage L1 L2 L3  230  231  229 V" in text
    assert "  power total       7.5 kW" in text
    assert "  energy import     12345.6 kWh" in text
    assert "  frequency         50 Hz" in text
    # --raw: the manual's register number, the protocol address, type and words.
    assert "holding  3028 (addr 0x0BD3) f32    4366 0000" in text
    assert by_name["sub1"].error.startswith("Modbus exception 0x02 ILLEGAL DATA ADDRESS")
    assert by_name["sub2"].error.startswith("timeout: no response from unit 3")
    assert by_name["pv"].error == (
        "decode error at register 40076: scale factor A_SF = 28672 is outside -10..10"
    )
    assert "0x0B GATEWAY TARGET DEVICE FAILED TO RESPOND from unit 99" in by_name["ghost"].error
    assert by_name["off"].error == f"connection refused by 127.0.0.1:{port} (nothing listens there)"
    assert by_name["typo"].error.startswith("profile 'eastron-sdm631': unknown profile")
    assert "  cause: connection refused" in text


async def test_raw_words_only_on_request() -> None:
    async with SimServer([SimMeter("eastron-sdm630")]) as server:
        (result,) = await probe([DeviceSpec("m", "eastron-sdm630", server.transport, **QUICK)])
    assert result.ok and result.reading.raw is None
    assert "raw registers" not in render([result])


def test_main_probe_prints_and_returns_exit_code(capsys, free_port) -> None:
    spec = DeviceSpec("off", "eastron-sdm630", TcpTransport("127.0.0.1", free_port), **QUICK)
    assert main_probe([spec], raw=False) == 1
    out = capsys.readouterr().out
    assert out.startswith("off (eastron-sdm630, tcp 127.0.0.1:")
    assert "cause: connection refused" in out
