"""Certificate expiry, watched ahead of time (issue #22.10).

A depot on security profile 2 or 3 stops charging the night its site certificate expires:
every charger's TLS handshake fails and it falls back to its fail-safe. The same holds for the
CA that signs charger client certificates and for sitectl's own certificate toward the CSMS.
Nobody looks at a certificate until it breaks, so sitectl does: every configured certificate
file (the earliest expiry of every certificate in a bundle) is read at start and every hour:

- fewer than ``ocpp.cert_warn_days`` left: warning ``certificate_expiring``;
- fewer than ``ocpp.cert_critical_days`` left, or expired: critical ``certificate_expiring``
  (the text says which, and when);
- a file that cannot be read or holds no certificate: warning ``certificate_unreadable``.

The subject of each alarm is the config key (``ocpp.tls_cert_file``...), so the installer knows
which file to renew. Renewing the file clears the alarm at the next check.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509

from sitectl.config import Config
from sitectl.state import Severity, SiteState

__all__ = ["CHECK_EVERY_S", "CertificateWatch", "earliest_expiry"]

log = logging.getLogger(__name__)

#: How often the files are read again (s).
CHECK_EVERY_S = 3600.0
#: The certificate files sitectl uses, by config key.
WATCHED = ("tls_cert_file", "tls_ca_file", "upstream_cert_file", "upstream_ca_file")


def earliest_expiry(path: Path) -> datetime:
    """The earliest notAfter of the PEM certificates in `path`.

    Raises:
        OSError: the file cannot be read.
        ValueError: it holds no PEM certificate.
    """
    certificates = x509.load_pem_x509_certificates(path.read_bytes())
    if not certificates:
        raise ValueError("no certificate in the file")
    return min(c.not_valid_after_utc for c in certificates)


@dataclass(frozen=True, slots=True)
class Finding:
    """One watched file's state at one check."""

    key: str
    path: Path
    expires_at: datetime | None
    days_left: float | None
    problem: str | None = None


class CertificateWatch:
    """Raises and clears certificate alarms from the configured files.

    Args:
        config: the validated configuration (the file paths and the thresholds).
        state: where alarms go.
        clock: wall clock (UTC, aware), injected for tests.
    """

    def __init__(
        self,
        config: Config,
        state: SiteState,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.config = config
        self.state = state
        self.clock = clock

    def files(self) -> dict[str, Path]:
        """Every configured certificate file, by its config key."""
        ocpp = self.config.ocpp
        found: dict[str, Path] = {}
        for name in WATCHED:
            value = getattr(ocpp, name, None)
            if value is not None:
                found[f"ocpp.{name}"] = Path(value)
        return found

    def check(self) -> list[Finding]:
        """Read every file once; raise or clear the alarms; return what was found."""
        now = self.clock()
        warn_days = self.config.ocpp.cert_warn_days
        critical_days = self.config.ocpp.cert_critical_days
        findings: list[Finding] = []
        for key, path in self.files().items():
            try:
                expires = earliest_expiry(path)
            except (OSError, ValueError) as exc:
                text = f"{path}: cannot read a certificate ({exc})"
                if self.state.raise_alarm("certificate_unreadable", key, Severity.WARNING, text):
                    log.warning("%s: %s", key, text)
                self.state.clear_alarm("certificate_expiring", key)
                findings.append(Finding(key, path, None, None, str(exc)))
                continue
            self.state.clear_alarm("certificate_unreadable", key)
            days = (expires - now).total_seconds() / 86400
            findings.append(Finding(key, path, expires, days))
            if days >= warn_days:
                self.state.clear_alarm("certificate_expiring", key)
                continue
            severity = Severity.CRITICAL if days < critical_days else Severity.WARNING
            when = f"{expires:%Y-%m-%d %H:%M} UTC"
            text = (
                f"{path} expired on {when}: chargers cannot connect over TLS"
                if days <= 0
                else f"{path} expires on {when} ({days:.0f} days left): renew it"
            )
            current = self.state.alarms.get(("certificate_expiring", key))
            if current is not None and (current.severity != severity or current.text != text):
                self.state.clear_alarm("certificate_expiring", key)  # severity or text changed
            if self.state.raise_alarm("certificate_expiring", key, severity, text):
                log.warning("%s: %s", key, text)
        return findings

    async def run(self) -> None:
        """Check at start and every `CHECK_EVERY_S` until cancelled."""
        while True:
            try:
                self.check()
            except Exception:  # a bug here must not stop sitectl
                log.exception("certificate check failed")
            await asyncio.sleep(CHECK_EVERY_S)
