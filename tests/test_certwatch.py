"""Certificate expiry alarms, ahead of time, from the files sitectl is configured with."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sitectl.certwatch import CertificateWatch, earliest_expiry
from sitectl.state import Severity, SiteState
from tests.ocpp.certs import Pki
from tests.ocpp.conftest import depot_config


def watch_for(tmp_path, days_ahead: float, **ocpp):
    pki = Pki(tmp_path)
    server = pki.issue("sitectl", server=True)
    config = depot_config(
        [{"id": "CP1"}],
        None,
        security_profile=3,
        tls_cert_file=str(server.cert),
        tls_key_file=str(server.key),
        tls_ca_file=str(pki.ca.cert),
        **ocpp,
    )
    state = SiteState(config)
    expires = earliest_expiry(server.cert)
    now = {"t": expires - timedelta(days=days_ahead)}
    return CertificateWatch(config, state, clock=lambda: now["t"]), state, now, server


def test_plenty_of_time_raises_nothing(tmp_path):
    watch, state, _, _ = watch_for(tmp_path, 60)
    findings = watch.check()
    assert {f.key for f in findings} == {"ocpp.tls_cert_file", "ocpp.tls_ca_file"}
    assert all(f.days_left > 30 for f in findings)
    assert not state.alarms


def test_warning_then_critical_then_expired_then_renewed(tmp_path):
    watch, state, now, server = watch_for(tmp_path, 20)
    watch.check()
    alarm = state.alarms[("certificate_expiring", "ocpp.tls_cert_file")]
    assert alarm.severity is Severity.WARNING and "20 days left" in alarm.text
    now["t"] += timedelta(days=15)
    watch.check()
    alarm = state.alarms[("certificate_expiring", "ocpp.tls_cert_file")]
    assert alarm.severity is Severity.CRITICAL
    now["t"] += timedelta(days=6)
    watch.check()
    assert "expired" in state.alarms[("certificate_expiring", "ocpp.tls_cert_file")].text
    # Renewed: a certificate valid long after "now" replaces the file; the alarm clears.
    (tmp_path / "new").mkdir()
    renewed = Pki(tmp_path / "new")
    fresh = renewed.issue("sitectl", server=True)
    server.cert.write_bytes(fresh.cert.read_bytes())
    now["t"] = earliest_expiry(server.cert) - timedelta(days=90)
    watch.check()
    assert ("certificate_expiring", "ocpp.tls_cert_file") not in state.alarms


def test_a_bundle_is_judged_by_its_earliest_certificate(tmp_path):
    pki = Pki(tmp_path)
    early = pki.issue("early")
    (tmp_path / "b").mkdir()
    other = Pki(tmp_path / "b", name="other CA")
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(other.ca.cert.read_bytes() + early.cert.read_bytes())
    assert earliest_expiry(bundle) == min(
        earliest_expiry(early.cert), earliest_expiry(other.ca.cert)
    )


def test_an_unreadable_or_empty_file_is_an_alarm_not_a_crash(tmp_path):
    watch, state, _, server = watch_for(tmp_path, 60)
    server.cert.write_text("not a certificate\n")
    findings = watch.check()
    assert any(f.problem for f in findings if f.key == "ocpp.tls_cert_file")
    assert ("certificate_unreadable", "ocpp.tls_cert_file") in state.alarms
    server.cert.unlink()
    watch.check()
    assert ("certificate_unreadable", "ocpp.tls_cert_file") in state.alarms


def test_the_thresholds_come_from_the_config(tmp_path):
    watch, state, _, _ = watch_for(tmp_path, 20, cert_warn_days=10, cert_critical_days=2)
    watch.check()
    assert not state.alarms
    assert datetime.now(UTC) < earliest_expiry(watch.files()["ocpp.tls_cert_file"])
