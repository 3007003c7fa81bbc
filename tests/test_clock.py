"""Clock synchronisation: the kernel probe and the alarm it drives."""

from __future__ import annotations

from sitectl.clock import ClockMonitor, kernel_clock_synchronized
from sitectl.config import load_config
from sitectl.state import SiteState


def test_the_kernel_probe_answers_on_linux() -> None:
    # This machine's answer is either; the probe must not fail or guess "unknown" on Linux.
    assert kernel_clock_synchronized() in (True, False)


def test_unsynchronised_clock_raises_an_alarm_once_and_clears_it(write_config) -> None:
    config, _ = load_config(write_config(), environ={})
    state = SiteState(config)
    answers = iter([False, False, None, True])
    monitor = ClockMonitor(state, probe=lambda: next(answers))
    changes: list[str] = []
    state.subscribe(lambda change: changes.append(change.subject))
    assert monitor.check() is False
    assert ("clock_unsynchronized", "site") in state.alarms
    assert monitor.check() is False
    assert changes == ["clock_unsynchronized:site"]  # raised once, not every check
    assert monitor.check() is None  # unknown: the alarm stays as it was
    assert ("clock_unsynchronized", "site") in state.alarms
    assert monitor.check() is True
    assert ("clock_unsynchronized", "site") not in state.alarms


def test_timesyncd_flag_says_synchronised_where_adjtimex_is_refused(tmp_path, monkeypatch) -> None:
    from sitectl import clock

    monkeypatch.setattr(clock, "_adjtimex_synchronized", lambda: None)  # EPERM under seccomp
    monkeypatch.setattr(clock, "TIMESYNCD_FLAG", tmp_path / "synchronized")
    assert clock.kernel_clock_synchronized() is None
    (tmp_path / "synchronized").touch()
    assert clock.kernel_clock_synchronized() is True
