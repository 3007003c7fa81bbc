"""The limit-source model: windows, heartbeats and their fail-safe, the tightest hard limit."""

from datetime import UTC, datetime, timedelta

import pytest

from sitectl.limits import GridLimit, LimitBoard, tightest

NOW = datetime.now(UTC).replace(microsecond=0)


def window(source: str = "openadr:p1", **kw) -> GridLimit:
    kw.setdefault("node", "grid")
    kw.setdefault("start", NOW + timedelta(hours=1))
    kw.setdefault("end", NOW + timedelta(hours=3))
    kw.setdefault("limit_kw", 400.0)
    return GridLimit(source=source, **kw)


def test_bad_limits_are_refused_with_the_field_named():
    with pytest.raises(ValueError, match="no limit_a or limit_kw"):
        GridLimit("grid", "x", NOW)
    with pytest.raises(ValueError, match="limit_a"):
        GridLimit("grid", "x", NOW, limit_a=(1.0, -1.0, 1.0))
    with pytest.raises(ValueError, match="limit_kw"):
        GridLimit("grid", "x", NOW, limit_kw=float("nan"))
    with pytest.raises(ValueError, match="not after start"):
        GridLimit("grid", "x", NOW, NOW, limit_kw=1.0)
    with pytest.raises(ValueError, match="timezone-aware"):
        GridLimit("grid", "x", NOW.replace(tzinfo=None), limit_kw=1.0)


def test_a_source_replaces_its_whole_set_and_windows_are_found_by_overlap():
    board = LimitBoard()
    board.publish("openadr:p1", [window(), window(node="c1", limit_kw=50.0)], NOW)
    board.publish("14a:relay", [window("14a:relay", start=NOW, end=None, limit_kw=42.0)], NOW)
    # A horizon of 30 min sees only the open-ended §14a window; one of 2 h sees all three.
    assert [w.source for w in board.windows(NOW, NOW + timedelta(minutes=30), NOW)] == ["14a:relay"]
    assert len(board.windows(NOW, NOW + timedelta(hours=2), NOW)) == 3
    board.publish("openadr:p1", [], NOW)
    assert [w.source for w in board.windows(NOW, NOW + timedelta(hours=5), NOW)] == ["14a:relay"]
    with pytest.raises(ValueError, match="published as"):
        board.publish("openadr:p1", [window("other")], NOW)


def test_a_silent_source_gets_its_fail_safe_from_the_lapse_for_its_duration():
    board = LimitBoard()
    lapse = NOW + timedelta(minutes=5)
    fail_safe = window(start=NOW, end=None, limit_kw=250.0, reason="")
    board.publish(
        "openadr:p1", [window()], NOW, valid_until=lapse, fail_safe=[fail_safe], fail_safe_s=3600
    )
    assert not board.silent("openadr:p1", lapse - timedelta(seconds=1))
    assert [w.limit_kw for w in board.in_force(lapse - timedelta(seconds=1))] == []
    assert board.silent("openadr:p1", lapse)
    held = board.in_force(lapse + timedelta(seconds=1))
    assert [(w.limit_kw, w.start, w.end) for w in held] == [
        (250.0, lapse, lapse + timedelta(hours=1))
    ]
    assert held[0].reason == "source silent"
    # What it announced still stands while silent (a lower limit is not lifted by silence),
    # beside the fail-safe.
    assert sorted(w.limit_kw for w in board.windows(NOW, NOW + timedelta(hours=3), lapse)) == [
        250.0,
        400.0,
    ]
    board.publish("openadr:p1", [window()], lapse + timedelta(seconds=2))
    assert not board.silent("openadr:p1", lapse + timedelta(seconds=2))
    assert board.status(lapse)[0].limits[0].limit_kw == 400.0


def test_tightest_takes_the_lowest_hard_limit_per_phase_and_ignores_soft_and_other_nodes():
    limits = [
        GridLimit("grid", "a", NOW, limit_a=(100.0, 80.0, 100.0)),
        GridLimit("grid", "b", NOW, limit_a=(90.0, 95.0, 120.0), limit_kw=60.0),
        GridLimit("grid", "c", NOW, limit_kw=10.0, hard=False),
        GridLimit("c1", "d", NOW, limit_kw=5.0),
        GridLimit("grid", "e", NOW + timedelta(hours=1), limit_kw=1.0),
    ]
    assert tightest(limits, "grid", NOW) == ((90.0, 80.0, 100.0), 60.0)
    assert tightest(limits, "c2", NOW) == (None, None)


def test_expire_drops_ended_windows_only():
    board = LimitBoard()
    board.publish("s", [window("s", start=NOW, end=NOW + timedelta(minutes=1)), window("s")], NOW)
    board.expire(NOW + timedelta(minutes=2))
    assert len(board.status(NOW)[0].limits) == 1


def test_the_board_refuses_unknown_nodes_and_tells_its_listener(caplog):
    heard: list[str] = []
    board = LimitBoard(nodes=["grid", "c1"], on_change=heard.append)
    board.publish("openadr:p1", [window()], NOW)
    with pytest.raises(ValueError, match=r"unknown node 'c9' \(known: c1, grid\)"):
        board.publish("openadr:p1", [window(node="c9")], NOW)
    assert "limits from openadr:p1 refused (the last set stands)" in caplog.text
    assert len(board.windows(NOW, NOW + timedelta(hours=5), NOW)) == 1  # the last set stands
    with pytest.raises(ValueError, match="need GridLimit"):
        board.publish("openadr:p1", [{"node": "grid"}], NOW)  # type: ignore[list-item]
    # The same set again (a heartbeat, with a fail-safe stamped now): no news.
    later = NOW + timedelta(seconds=5)
    fail_safe = window(start=NOW, end=None, limit_kw=1.0)
    board.publish("openadr:p1", [window()], NOW, valid_until=later, fail_safe=[fail_safe])
    board.publish(
        "openadr:p1",
        [window()],
        later,
        valid_until=later + timedelta(seconds=5),
        fail_safe=[window(start=later, end=None, limit_kw=1.0)],
    )
    board.withdraw("openadr:p1")
    assert heard == ["openadr:p1", "openadr:p1", "openadr:p1"]

    def broken(source: str) -> None:
        raise RuntimeError("listener bug")

    board.on_change = broken
    board.publish("openadr:p1", [window()], NOW)  # a failing listener does not undo it
    assert board.sources() == ["openadr:p1"]


def test_operator_overrides_are_published_per_transport():
    from sitectl.limits import LimitOverride, OperatorOverrides

    board = LimitBoard(nodes=["grid", "c1"])
    overrides = OperatorOverrides(board, lambda: NOW)
    until = NOW + timedelta(minutes=30)
    overrides["grid"] = LimitOverride("grid", (80.0,) * 3, until, "http", set_at=NOW)
    overrides["c1"] = LimitOverride("c1", (20.0,) * 3, until, "mqtt", set_at=NOW)
    assert board.sources() == ["operator:http", "operator:mqtt"]
    (grid,) = [w for w in board.in_force(NOW) if w.node == "grid"]
    assert (grid.start, grid.end, grid.ref) == (NOW, until, "override:grid")
    overrides["grid"] = LimitOverride("grid", (70.0,) * 3, until, "mqtt", set_at=NOW)
    assert board.sources() == ["operator:mqtt"]  # one per node: the last transport's
    assert sorted(w.node for w in board.in_force(NOW)) == ["c1", "grid"]
    assert overrides.expire(until) and board.sources() == [] and dict(overrides) == {}
    with pytest.raises(ValueError, match="unknown node 'c9'"):
        overrides["c9"] = LimitOverride("c9", (1.0,) * 3, until)
    with pytest.raises(ValueError, match="limit_a"):
        overrides["c1"] = LimitOverride("c1", (1.0, float("nan"), 1.0), until)
    assert board.sources() == []
    # Without the time it was set (set directly): in force from before anything.
    overrides["c1"] = LimitOverride("c1", (5.0,) * 3, until)
    assert board.in_force(NOW - timedelta(days=365))[0].limit_a == (5.0,) * 3
