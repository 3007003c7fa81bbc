"""Frozen meters: the pure rules with injected monotonic times, then against a real pymodbus server.

A frozen reading is ``stale`` with an error text starting ``frozen:``; ``sitectl.control.meters``
does not use a meter whose latest quality is ``stale``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from devices.api import DeviceSpec, Sign, TcpTransport
from devices.frozen import DEFAULT_FROZEN_AFTER_S, FreezeDetector, FreezeRules, Sample
from devices.meter import MeterPool, ProfileMeter, Quality, Reading, make_links
from devices.profile import parse_profile, resolve_profile
from devices.registers import DType, Quantity, Register, Table, encode_words
from devices.sim import SimMeter, SimServer

AMPS = (100.0, 101.0, 99.0)
IDLE = (0.0, 0.0, 0.0)


def _run(
    det: FreezeDetector,
    times: list[float],
    words: Callable[[int], tuple[int, ...]] = lambda i: (1, 2, 3),
    **fields: object,
) -> list[str | None]:
    """Feed one sample per time; ``words(i)`` gives the registers of the i-th poll."""
    return [det.observe(Sample(mono=t, words=words(i), **fields)) for i, t in enumerate(times)]  # type: ignore[arg-type]


def _noisy(i: int) -> tuple[int, ...]:
    return (1, 2, 3 + i % 2)  # the last digit of one current moves


# Rule 1: identical registers while current flows.


def test_identical_registers_while_current_flows_freeze_after_the_time_bound() -> None:
    det = FreezeDetector()
    assert DEFAULT_FROZEN_AFTER_S == 30.0
    out = _run(det, [float(t) for t in range(0, 32)], current_a=AMPS)
    assert out[:30] == [None] * 30  # 0..29 s: not yet
    assert out[30] == (
        "frozen: every value register unchanged for 30 s (31 polls) while 101 A flows; a live "
        "meter's last digits move (stuck meter, or a gateway serving cached registers?)"
    )
    assert out[31] is not None  # stays frozen
    # The registers move again: ok at once (the control side decides when to trust it again).
    assert det.observe(Sample(mono=32.0, words=(1, 2, 4), current_a=AMPS)) is None


def test_noisy_registers_never_freeze() -> None:
    out = _run(FreezeDetector(), [float(t) for t in range(0, 300)], _noisy, current_a=AMPS)
    assert set(out) == {None}


def test_an_idle_meter_reading_zero_is_legitimately_constant() -> None:
    out = _run(FreezeDetector(), [float(t) for t in range(0, 300)], current_a=IDLE)
    assert set(out) == {None}
    # A little current (below 1 A) is idle too: a meter's low-current cut-off.
    out = _run(FreezeDetector(), [float(t) for t in range(0, 300)], current_a=(0.4, 0.0, 0.0))
    assert set(out) == {None}


def test_slow_polling_needs_three_identical_polls() -> None:
    out = _run(FreezeDetector(), [0.0, 40.0, 80.0], current_a=AMPS)
    assert out[:2] == [None, None]  # two polls 40 s apart: not enough to judge
    assert out[2] is not None and "80 s (3 polls)" in out[2]


def test_frozen_after_s_is_a_setting() -> None:
    det = FreezeDetector(FreezeRules(frozen_after_s=5.0))
    out = _run(det, [float(t) for t in range(0, 7)], current_a=AMPS)
    assert out[:5] == [None] * 5 and out[5] is not None


def test_a_device_without_currents_is_judged_on_power() -> None:
    times = [float(t) for t in range(0, 40)]
    out = _run(FreezeDetector(), times, power_total_kw=-50.0)
    assert out[30] is not None and "while -50 kW flows" in out[30]
    assert set(_run(FreezeDetector(), times, power_total_kw=0.5)) == {None}
    assert set(_run(FreezeDetector(), times)) == {None}  # nothing to tell flow by: no verdict


# Rule 2: energy counters not advancing while power flows.


def _energy_run(
    det: FreezeDetector,
    times: list[float],
    power: Callable[[float], float],
    counters: Callable[[float], tuple[float | None, float | None]],
    resolution_kwh: float | None = None,
) -> list[str | None]:
    return [
        det.observe(
            Sample(
                mono=t,
                words=(i % 2,),  # noisy registers: rule 1 never fires here
                current_a=AMPS,
                power_total_kw=power(t),
                energy_kwh=counters(t),
                resolution_kwh=resolution_kwh,
            )
        )
        for i, t in enumerate(times)
    ]


def test_stuck_counter_at_high_power_freezes_after_the_time_bound() -> None:
    # 100 kW carries 0.2 kWh (2 steps of 0.1 kWh) in 7.2 s, but the bound is 30 s of flow.
    out = _energy_run(
        FreezeDetector(), [float(t) for t in range(0, 32)], lambda t: 100.0, lambda t: (5000.0, 7.0)
    )
    assert out[:30] == [None] * 30
    assert out[30] == (
        "frozen: energy counters unchanged (import 5000 kWh, export 7 kWh) over 30 s with power "
        "flowing (now 100 kW): 0.833 kWh should have been counted, counter step 0.1 kWh"
    )


def test_stuck_counter_at_low_power_waits_for_two_counter_steps() -> None:
    # 2.1 kW: 0.2 kWh takes 343 s, far beyond the 30 s bound.
    times = [float(t) for t in range(0, 400, 2)]
    out = _energy_run(FreezeDetector(), times, lambda t: 2.1, lambda t: (5000.0, None))
    first = next(t for t, o in zip(times, out, strict=True) if o)
    assert first == 344.0  # carried 0.2007 kWh > 0.2 kWh (0.1995 at 342 s)


def test_advancing_counters_never_freeze() -> None:
    times = [float(t) for t in range(0, 600)]
    # 100 kW with a 0.1 kWh counter: one step every 3.6 s.
    out = _energy_run(
        FreezeDetector(), times, lambda t: 100.0, lambda t: (round(t * 100 / 3600, 1), None)
    )
    assert set(out) == {None}
    # Exporting: the import counter stands still, the export counter counts.
    out = _energy_run(
        FreezeDetector(), times, lambda t: -100.0, lambda t: (5000.0, round(t / 36, 1))
    )
    assert set(out) == {None}


def test_a_single_counter_is_judged_only_in_its_direction() -> None:
    times = [float(t) for t in range(0, 120)]
    # An import-only map at a site exporting PV: the counter rightly stands still.
    out = _energy_run(FreezeDetector(), times, lambda t: -100.0, lambda t: (5000.0, None))
    assert set(out) == {None}
    out = _energy_run(FreezeDetector(), times, lambda t: 100.0, lambda t: (None, 70.0))
    assert set(out) == {None}
    out = _energy_run(FreezeDetector(), times, lambda t: -100.0, lambda t: (None, 70.0))
    assert out[30] is not None and "(export 70 kWh)" in out[30]


def test_no_power_no_verdict() -> None:
    times = [float(t) for t in range(0, 3600, 5)]
    out = _energy_run(FreezeDetector(), times, lambda t: 0.9, lambda t: (5000.0, None))
    assert set(out) == {None}  # below 1 kW: a starting current, a CT offset


def test_only_time_with_power_flowing_counts() -> None:
    # An hour idle, then 100 kW: 30 s of flow are still needed, not 7.2 s.
    times = [float(t) for t in range(0, 3700)]
    out = _energy_run(
        FreezeDetector(), times, lambda t: 0.0 if t < 3600 else 100.0, lambda t: (5000.0, None)
    )
    first = next(t for t, o in zip(times, out, strict=True) if o)
    assert first == 3630.0  # the interval 3600..3601 is the first with power at both ends


def test_a_coarse_counter_needs_more_energy() -> None:
    # A float32 counter at 10^7 kWh steps by 1 kWh: 2 kWh at 110 kW take 65.5 s.
    times = [float(t) for t in range(0, 100)]
    out = _energy_run(
        FreezeDetector(), times, lambda t: 110.0, lambda t: (1e7, None), resolution_kwh=1.0
    )
    first = next(t for t, o in zip(times, out, strict=True) if o)
    assert first == 66.0


def test_a_gap_longer_than_max_gap_restarts_the_count() -> None:
    det = FreezeDetector(max_gap_s=5.0)
    times = [0.0, 1.0, 2.0, 20.0, *[20.0 + t for t in range(1, 32)]]
    out = _energy_run(det, times, lambda t: 100.0, lambda t: (5000.0, None))
    first = next(t for t, o in zip(times, out, strict=True) if o)
    assert first == 50.0  # counted from 20 s on: what happened in 2..20 s is unknown


def test_counter_step_from_the_register() -> None:
    from devices.meter import counter_step_kwh

    def reg(dtype: DType, scale: float = 1.0, unit: str = "kWh") -> Register:
        return Register(
            0, Quantity.ENERGY_IMPORT, None, "E", Table.HOLDING, 0, 0, dtype, scale=scale, unit=unit
        )

    assert counter_step_kwh(
        reg(DType.U32, 0.01), encode_words(1234567, DType.U32), 12345.67
    ) == pytest.approx(0.01)
    assert counter_step_kwh(
        reg(DType.I64, unit="Wh"), encode_words(123, DType.I64), 0.123
    ) == pytest.approx(0.001)
    f32 = reg(DType.F32)
    assert counter_step_kwh(f32, encode_words(1e7, DType.F32), 1e7) == 1.0
    assert counter_step_kwh(f32, encode_words(12345.6, DType.F32), 12345.6) == pytest.approx(
        2.0**-10
    )
    assert counter_step_kwh(f32, encode_words(0.0, DType.F32), 0.0) is None  # no step to see
    assert counter_step_kwh(f32, encode_words(1.0, DType.F32), None) is None


# Against a real pymodbus server.

FAST = {"poll_period_s": 0.05, "timeout_s": 0.3, "retries": 1}
FROZEN_AFTER_S = 0.5
# The pool's no-poll watchdog is not under test here: a loaded test machine can stall a 0.05 s
# schedule for a few periods, which must not read as a verdict on the values.
STALE_PERIODS = 20.0
# 3 × 230 V × 220 A = 152 kVA: a 150 kW load, more than a 160 A connection should carry.
BUSY = {
    "current_l1": 220.0,
    "current_l2": 220.0,
    "current_l3": 220.0,
    "power_l1": 50.0,
    "power_l2": 50.0,
    "power_l3": 50.0,
    "power_total": 150.0,
}
IDLE_SITE = {
    **{f"current_l{k}": 0.0 for k in (1, 2, 3)},
    **{f"power_l{k}": 0.0 for k in (1, 2, 3)},
    "power_total": 0.0,
}


def _spec(server: SimServer, **kw: object) -> DeviceSpec:
    return DeviceSpec(
        "m",
        "eastron-sdm630",
        server.transport,
        **{**FAST, "frozen_after_s": FROZEN_AFTER_S, **kw},  # type: ignore[arg-type]
    )


async def test_server_freezing_while_current_flows_turns_stale_within_the_bound(
    readings, start_pool, until
) -> None:
    meter = SimMeter("eastron-sdm630", values=BUSY, noise=1e-3)
    async with SimServer([meter]) as server:
        pool = MeterPool([_spec(server)], readings, stale_periods=STALE_PERIODS)
        start_pool(pool)
        await readings.wait(lambda r: r.ok and r.current_a[0] > 200)
        mark = len(readings.items)
        frozen_at = time.monotonic()
        meter.frozen = True  # the gateway lost its meter and serves the cache
        r = await readings.wait_quality("m", Quality.STALE, since=mark, timeout=FROZEN_AFTER_S + 2)
        assert r.error.startswith("frozen: every value register unchanged for ")
        assert "A flows" in r.error
        # Not before the bound (counted from the last poll before the freeze: it may already
        # have read the words served from then on), and within it plus a few poll periods.
        assert r.mono - readings.items[mark - 1].mono >= FROZEN_AFTER_S
        assert r.mono - frozen_at <= FROZEN_AFTER_S + 1.0
        assert all(x.ok for x in readings.items[mark : readings.items.index(r)])
        assert r.current_a == pytest.approx((220.0, 220.0, 220.0), rel=2e-3)  # values kept
        # What control reads of it: nothing, once the last ok reading is stale.
        await until(lambda: pool.meter("m").currents_a() is None, timeout=3)
        mark = len(readings.items)
        meter.frozen = False
        await readings.wait_quality("m", Quality.OK, since=mark)


async def _span(readings, since: int, seconds: float) -> list[Reading]:
    """Wait until the readings after ``since`` span ``seconds``; return them."""
    start = readings.items[since].mono
    await readings.wait(lambda r: r.mono - start >= seconds, since=since, timeout=seconds + 3)
    return readings.items[since:]


async def test_noisy_server_stays_ok(readings, start_pool) -> None:
    meter = SimMeter("eastron-sdm630", values=BUSY, noise=1e-3)
    async with SimServer([meter]) as server:
        start_pool(MeterPool([_spec(server)], readings, stale_periods=STALE_PERIODS))
        await readings.wait_quality("m", Quality.OK)
        got = await _span(readings, len(readings.items) - 1, 3 * FROZEN_AFTER_S)
    assert len(got) >= 10
    assert all(r.ok for r in got), {r.error for r in got if not r.ok}


async def test_idle_server_reading_zero_stays_ok(readings, start_pool) -> None:
    meter = SimMeter("eastron-sdm630", values=IDLE_SITE)  # no noise: an idle meter is constant
    async with SimServer([meter]) as server:
        start_pool(MeterPool([_spec(server)], readings, stale_periods=STALE_PERIODS))
        await readings.wait_quality("m", Quality.OK)
        got = await _span(readings, len(readings.items) - 1, 3 * FROZEN_AFTER_S)
    assert len({tuple(sorted(r.raw.items())) for r in got}) == 1  # truly identical registers
    assert all(r.ok for r in got), {r.error for r in got if not r.ok}


async def test_the_check_can_be_turned_off(readings, start_pool) -> None:
    # Constant registers at 220 A, the counter too.
    meter = SimMeter("eastron-sdm630", values=BUSY, integrate_energy=False)
    async with SimServer([meter]) as server:
        start_pool(
            MeterPool([_spec(server, frozen_after_s=None)], readings, stale_periods=STALE_PERIODS)
        )
        await readings.wait_quality("m", Quality.OK)
        got = await _span(readings, len(readings.items) - 1, 3 * FROZEN_AFTER_S)
    assert all(r.ok for r in got), {r.error for r in got if not r.ok}


def test_the_setting_reaches_the_detector() -> None:
    def meter(**kw: object) -> ProfileMeter:
        spec = DeviceSpec("m", "eastron-sdm630", TcpTransport("127.0.0.1", 1), **kw)  # type: ignore[arg-type]
        return ProfileMeter(spec, resolve_profile(spec), make_links([spec])["m"])

    assert meter().freeze.rules == FreezeRules(frozen_after_s=DEFAULT_FROZEN_AFTER_S)
    assert meter(frozen_after_s=12.0).freeze.rules.frozen_after_s == 12.0
    assert meter(frozen_after_s=None).freeze is None
    # A gap past the stale limit (3 × the 1 s deadline) restarts the energy rule.
    assert meter(poll_period_s=1.0, timeout_s=0.5).freeze.max_gap_s == 3.0
    spec = DeviceSpec("m", "eastron-sdm630", TcpTransport("127.0.0.1", 1), frozen_after_s=None)
    rules = FreezeRules(frozen_after_s=5.0, min_current_a=2.0)
    explicit = ProfileMeter(
        spec, resolve_profile(spec), make_links([spec])["m"], freeze_rules=rules
    )
    assert explicit.freeze.rules is rules  # given explicitly, the rules apply


async def _drive(
    meter: ProfileMeter, stop: Callable[[Reading], bool], timeout: float
) -> list[Reading]:
    """Poll back to back (no sleeps) until ``stop`` holds for a reading or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    out: list[Reading] = []
    while time.monotonic() < deadline:
        r = await meter.poll()
        meter.record(r)
        out.append(r)
        if stop(r):
            break
    return out


@pytest.mark.parametrize("counting", [False, True])
async def test_server_energy_counter_stuck_while_power_flows(counting: bool) -> None:
    # Registers noisy (rule 1 quiet), counter stuck or counting at 150 kW. A float32 counter at
    # 12345.6 kWh steps by 1 Wh; 150 kW carries 2 Wh in 0.05 s, so the 0.5 s bound decides.
    sim = SimMeter("eastron-sdm630", values=BUSY, noise=1e-3, integrate_energy=counting)
    async with SimServer([sim]) as server:
        spec = _spec(server)
        rules = FreezeRules(frozen_after_s=FROZEN_AFTER_S, min_resolution_kwh=0.001)
        meter = ProfileMeter(
            spec, resolve_profile(spec), make_links([spec])["m"], STALE_PERIODS, freeze_rules=rules
        )
        try:
            got = await _drive(meter, lambda r: not r.ok, timeout=3 * FROZEN_AFTER_S)
        finally:
            await meter.link.close()
    if counting:
        assert all(r.ok for r in got), {r.error for r in got if not r.ok}
        assert got[-1].mono - got[0].mono >= 3 * FROZEN_AFTER_S - 0.1
        assert got[-1].energy_import_kwh > got[0].energy_import_kwh
        return
    r = got[-1]
    assert r.quality is Quality.STALE
    assert r.error.startswith(
        "frozen: energy counters unchanged (import 12345.6 kWh, export 78.9 kWh)"
    )
    assert "counter step 0.001 kWh" in r.error
    assert FROZEN_AFTER_S <= r.mono - got[0].mono <= FROZEN_AFTER_S + 0.5
    assert all(x.ok for x in got[:-1])


@pytest.mark.parametrize("override", [None, Sign.EXPORT_POSITIVE])
async def test_server_single_counter_with_a_reversed_sign_is_not_judged(override) -> None:
    # One import counter, stuck, and the site importing 100 kW. With the sign overridden (a
    # meter wired the other way round) the device itself sees export, which its import counter
    # rightly does not count: which way the counter counts is unknown, so no verdict, rather
    # than a healthy meter called frozen.
    profile = {
        "decode": "f32",
        "registers": [
            {"quantity": "power_total", "address": 0, "unit": "kW"},
            {"quantity": "energy_import", "address": 2, "unit": "kWh"},
        ],
    }
    values = {"power_total": 100.0 if override is None else -100.0, "energy_import": 500.0}
    sim = SimMeter(parse_profile(profile, "one"), values=values, integrate_energy=False, noise=1e-3)
    async with SimServer([sim]) as server:
        spec = DeviceSpec(
            "m", "generic", server.transport, inline_registers=profile, sign=override, **FAST
        )
        rules = FreezeRules(frozen_after_s=FROZEN_AFTER_S, min_resolution_kwh=0.001)
        meter = ProfileMeter(
            spec, resolve_profile(spec), make_links([spec])["m"], STALE_PERIODS, freeze_rules=rules
        )
        try:
            got = await _drive(meter, lambda r: not r.ok, timeout=3 * FROZEN_AFTER_S)
        finally:
            await meter.link.close()
    if override is None:
        assert got[-1].quality is Quality.STALE
        assert got[-1].error.startswith("frozen: energy counters unchanged (import 500 kWh)")
    else:
        assert got[-1].power_total_kw == pytest.approx(100.0, rel=2e-3)
        assert all(r.ok for r in got), {r.error for r in got if not r.ok}
