"""``sitectl firmware ...``: local rollouts from the command line, through the running sitectl.

The rollouts live in the running controller, so this command is a client of its local HTTP API
(``/api/firmware``): the address and the token come from the same YAML file, so the installer
types only what differs. Output is a short table; ``--json`` prints the API's answer as is.

    sitectl firmware list   -c FILE
    sitectl firmware start  -c FILE URL (--all | --charger ID ... | --model MODEL)
                            [--md5 HEX] [--sha256 HEX]
    sitectl firmware status -c FILE ROLLOUT_ID
    sitectl firmware stop   -c FILE ROLLOUT_ID
"""

from __future__ import annotations

import argparse
import json
import ssl
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from sitectl.config import Config

__all__ = ["ApiError", "LocalApi", "add_parser", "run"]

_TIMEOUT_S = 15.0


class ApiError(Exception):
    """The local API could not be reached, or refused the request (the message says why)."""


class LocalApi:
    """A small synchronous client of sitectl's local HTTP API.

    Args:
        config: the depot's configuration (``http`` section: address, port, TLS, token).
        base_url: override the address (e.g. sitectl on another machine).
    """

    def __init__(self, config: Config, base_url: str | None = None) -> None:
        http = config.http
        host = http.listen_host
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1"  # listening everywhere: reach it on this machine
        scheme = "https" if http.tls else "http"
        self.base_url = (base_url or f"{scheme}://{host}:{http.listen_port}").rstrip("/")
        self.token = http.token.get_secret_value() if http.token else None
        self._ssl: ssl.SSLContext | None = None
        if self.base_url.startswith("https://"):
            cert = config.ocpp.tls_cert_file
            # The site certificate is usually self-issued: trust exactly it, not any name.
            self._ssl = ssl.create_default_context(cafile=str(cert) if cert else None)
            if cert is not None:
                self._ssl.check_hostname = False
                self._ssl.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # a leaf as anchor

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """Send one request; returns the decoded JSON answer.

        Raises:
            ApiError: sitectl unreachable, or an error answer (with its message and field).
        """
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(
            self.base_url + path, data=data, method=method, headers=headers
        )
        try:
            with urllib.request.urlopen(request, timeout=_TIMEOUT_S, context=self._ssl) as reply:
                return json.loads(reply.read() or b"null")
        except urllib.error.HTTPError as exc:
            try:
                answer = json.loads(exc.read())
                message = answer.get("error", exc.reason)
                field = answer.get("field")
            except (ValueError, AttributeError):
                message, field = exc.reason, None
            where = f" ({field})" if field else ""
            raise ApiError(f"sitectl refused: {message}{where} [HTTP {exc.code}]") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ApiError(
                f"cannot reach sitectl at {self.base_url}: {reason} (is it running, with "
                "http enabled? --api-url points elsewhere)"
            ) from None


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add ``firmware`` and its subcommands to the ``sitectl`` parser."""
    firmware = commands.add_parser(
        "firmware", parents=[common], help="local firmware rollouts (via the running sitectl)"
    )
    actions = firmware.add_subparsers(dest="firmware_command", required=True, metavar="ACTION")
    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument("-c", "--config", required=True, help="the depot's YAML file")
    shared.add_argument("--api-url", help="sitectl's HTTP address (default: from the config)")
    shared.add_argument("--json", action="store_true", help="print the API's JSON answer")

    actions.add_parser("list", parents=[common, shared], help="the cache and every rollout")
    start = actions.add_parser("start", parents=[common, shared], help="start a rollout")
    start.add_argument("url", help="where the image comes from (http, https or ftp)")
    targets = start.add_mutually_exclusive_group(required=True)
    targets.add_argument("--all", action="store_true", help="every charger")
    targets.add_argument(
        "--charger", action="append", metavar="ID", help="this charger (repeat for more)"
    )
    targets.add_argument("--model", help="every charger of this model")
    start.add_argument("--md5", help="the image's MD5, checked before any charger gets it")
    start.add_argument("--sha256", help="the image's SHA-256 (preferred to the MD5), checked too")
    start.add_argument("--signature-file", type=Path, help="signed firmware: the signature")
    start.add_argument(
        "--certificate-file", type=Path, help="signed firmware: the signing certificate (PEM)"
    )
    for name, text in (("status", "one rollout, charger by charger"), ("stop", "stop one")):
        action = actions.add_parser(name, parents=[common, shared], help=text)
        action.add_argument("rollout_id", type=int, help="the rollout's number")


def run(args: argparse.Namespace, config: Config) -> int:
    """Carry out ``sitectl firmware <action>``; returns the exit code."""
    api = LocalApi(config, args.api_url)
    try:
        if args.firmware_command == "list":
            answer = api.request("GET", "/api/firmware")
            text = _render_list(answer)
        elif args.firmware_command == "start":
            answer = api.request("POST", "/api/firmware/rollouts", _start_body(args))
            text = _render_rollout(answer["rollout"], "started")
        elif args.firmware_command == "status":
            answer = api.request("GET", f"/api/firmware/rollouts/{args.rollout_id}")
            text = _render_rollout(answer)
        else:
            answer = api.request("POST", f"/api/firmware/rollouts/{args.rollout_id}/stop")
            text = _render_rollout(answer["rollout"], "stopped")
    except (ApiError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(answer, indent=2) if args.json else text)
    return 0


def _start_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {"url": args.url}
    if args.all:
        body["targets"] = "all"
    elif args.model:
        body["targets"] = {"model": args.model}
    else:
        body["targets"] = args.charger
    if args.md5:
        body["md5"] = args.md5
    if args.sha256:
        body["sha256"] = args.sha256
    if args.signature_file is not None:
        body["signature"] = args.signature_file.read_text().strip()
    if args.certificate_file is not None:
        body["signing_certificate"] = args.certificate_file.read_text()
    return body


def _mb(size: int) -> str:
    return f"{size / 1_048_576:.1f} MB"


def _counts(rollout: dict[str, Any]) -> str:
    counts = rollout.get("counts") or {}
    return ", ".join(f"{n} {step}" for step, n in counts.items() if n) or "no chargers"


def _render_list(answer: dict[str, Any]) -> str:
    if not answer.get("enabled"):
        return "firmware is disabled on this sitectl (firmware.enabled, http.enabled)"
    lines = []
    cache = answer.get("cache") or {}
    lines.append(
        f"cache: {_mb(cache.get('used_bytes', 0))} of {_mb(cache.get('max_bytes', 0))}"
        + (", downloading" if cache.get("downloading") else "")
    )
    for image in cache.get("images", []):
        pinned = "  (in use)" if image["pinned"] else ""
        lines.append(
            f"  {image['sha256'][:16]}  {_mb(image['size_bytes']):>9}  "
            f"{image['source_url']}{pinned}"
        )
    rollouts = answer.get("rollouts", [])
    lines.append(f"rollouts: {len(rollouts)}" if rollouts else "rollouts: none")
    for rollout in rollouts:
        lines.append(
            f"  #{rollout['id']:<4} {rollout['state']:<8} {rollout['created_at']}  "
            f"{_counts(rollout)}  {rollout['url']}"
        )
    return "\n".join(lines)


def _render_rollout(rollout: dict[str, Any], verb: str | None = None) -> str:
    head = f"rollout #{rollout['id']} {verb or rollout['state']}: {rollout['url']}"
    lines = [head, f"  state {rollout['state']}: {_counts(rollout)}"]
    if rollout.get("reason"):
        lines.append(f"  {rollout['reason']}")
    for charger in rollout.get("chargers") or []:
        canary = " (canary)" if charger["canary"] else ""
        detail = charger.get("detail") or charger.get("charger_status") or ""
        lines.append(f"  {charger['charger']:<16} {charger['state']:<12}{canary} {detail}")
    return "\n".join(lines)
