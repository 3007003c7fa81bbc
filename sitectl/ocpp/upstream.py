"""Connect to the operator's CSMS on a charger's behalf.

One upstream WebSocket per charger, at ``<upstream_url>/<identity>`` with the identity exactly as
the charger percent-encoded it (2.0.1 Part 4 §6.2: "the same URI Path"), offering exactly the
subprotocols the charger offered, with the charger's own Basic credentials or sitectl's client
certificate. Failures are sorted into causes an installer can act on (DNS, refused, TLS, timeout,
HTTP status), because "connection failed" at 2 a.m. helps nobody.
"""

from __future__ import annotations

import asyncio
import base64
import random
import socket
import ssl
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidHandshake, InvalidStatus
from websockets.typing import Subprotocol

__all__ = [
    "UpstreamRejected",
    "UpstreamSettings",
    "UpstreamUnavailable",
    "backoff_delays",
    "basic_auth",
    "client_tls_context",
    "connect_upstream",
]


class UpstreamRejected(Exception):
    """The CSMS answered the handshake with an HTTP error (mirrored to the charger)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class UpstreamUnavailable(Exception):
    """The CSMS could not be reached; ``cause`` is dns, refused, tls, timeout or network."""

    def __init__(self, cause: str, message: str) -> None:
        super().__init__(message)
        self.cause = cause


@dataclass(frozen=True, slots=True)
class UpstreamSettings:
    """How to reach the CSMS (from the ``ocpp`` config section)."""

    base_url: str
    ssl: ssl.SSLContext | None = None
    open_timeout_s: float = 10.0
    ping_interval_s: float | None = 30.0
    ping_timeout_s: float | None = 30.0
    max_size: int = 1_048_576


def basic_auth(user: str, password: str) -> str:
    """The ``Authorization`` header value for HTTP Basic (RFC 7617, UTF-8)."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return f"Basic {token}"


def client_tls_context(
    ca_file: str | None, cert_file: str | None, key_file: str | None
) -> ssl.SSLContext:
    """TLS 1.2+ client context; the system CAs unless `ca_file` is given."""
    context = ssl.create_default_context(cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file is not None:
        context.load_cert_chain(cert_file, key_file)
    return context


async def connect_upstream(
    settings: UpstreamSettings,
    identity: str,
    path_segment: str,
    subprotocols: Sequence[str],
    password: str | None,
) -> ClientConnection:
    """Open the upstream socket for one charger.

    Args:
        settings: the CSMS base URL and connection options.
        identity: the charge point identity (the Basic-auth user).
        path_segment: the identity as it appeared in the charger's URL (percent-encoded).
        subprotocols: what the charger offered, in its order.
        password: the charger's upstream Basic password, or ``None`` (no Basic header).

    Raises:
        UpstreamRejected: the CSMS answered with an HTTP status (401, 404, ...).
        UpstreamUnavailable: DNS, connection, TLS or timeout failure.
    """
    uri = f"{settings.base_url}/{path_segment}"
    headers = {"Authorization": basic_auth(identity, password)} if password is not None else {}
    host = urlsplit(settings.base_url).hostname or "?"
    try:
        return await connect(
            uri,
            subprotocols=[Subprotocol(p) for p in subprotocols] or None,
            additional_headers=headers,
            ssl=settings.ssl if uri.startswith("wss:") else None,
            compression="deflate",
            open_timeout=settings.open_timeout_s,
            ping_interval=settings.ping_interval_s,
            ping_timeout=settings.ping_timeout_s,
            max_size=settings.max_size,
            close_timeout=2,
            proxy=None,
            user_agent_header="sitectl",
        )
    except InvalidStatus as exc:
        status = exc.response.status_code
        raise UpstreamRejected(status, f"CSMS answered HTTP {status} for {identity}") from None
    except socket.gaierror as exc:
        raise UpstreamUnavailable(
            "dns", f"cannot resolve CSMS host {host}: {exc.strerror}"
        ) from None
    except ConnectionRefusedError:
        raise UpstreamUnavailable("refused", f"CSMS {host} refused the connection") from None
    except ssl.SSLCertVerificationError as exc:
        raise UpstreamUnavailable(
            "tls", f"CSMS {host} certificate rejected: {exc.verify_message}"
        ) from None
    except ssl.SSLError as exc:
        raise UpstreamUnavailable("tls", f"TLS with CSMS {host} failed: {exc.reason}") from None
    except TimeoutError:
        raise UpstreamUnavailable(
            "timeout",
            f"CSMS {host} did not complete the handshake in {settings.open_timeout_s:g} s",
        ) from None
    except (InvalidHandshake, OSError, asyncio.IncompleteReadError) as exc:
        raise UpstreamUnavailable("network", f"CSMS {host}: {exc}") from None


def backoff_delays(
    base_s: float = 1.0, cap_s: float = 60.0, rng: random.Random | None = None
) -> Iterator[float]:
    """Exponential backoff with full jitter (AWS architecture blog, "Exponential Backoff And
    Jitter", 2015): spreads a depot's reconnects so 200 chargers do not hit the CSMS at once."""
    rng = rng or random.Random()
    attempt = 0
    while True:
        yield rng.uniform(0, min(cap_s, base_s * 2**attempt))
        attempt = min(attempt + 1, 30)
