"""``sitectl detect-phases``: check a charger's wiring now, through the running sitectl.

The test runs in the controller's control loop (`sitectl.control.phase_test`), so this command
is a client of the local HTTP API (``/api/chargers/{id}/detect-phases``), like ``sitectl
firmware``: the address and the token come from the same YAML file.

    sitectl detect-phases -c FILE CHARGER [--no-wait] [--timeout S] [--json]

Exit codes: 0 wired as configured, 3 wired otherwise (``phase_rotation_mismatch``), 4 no answer
(no session, offline, no meter, a balanced vehicle...: the text says why), 1 sitectl
unreachable or refused.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from sitectl.config import Config
from sitectl.firmware_cli import ApiError, LocalApi

__all__ = ["add_parser", "run"]

#: Seconds between two looks at a running test.
POLL_S = 1.0
EXIT = {"matches": 0, "mismatch": 3}
EXIT_NO_ANSWER = 4


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add ``detect-phases`` to the ``sitectl`` parser."""
    parser = commands.add_parser(
        "detect-phases",
        parents=[common],
        help="check a charger's phase rotation now (via the running sitectl)",
    )
    parser.add_argument("-c", "--config", required=True, help="the depot's YAML file")
    parser.add_argument("charger", help="the charger's id; a vehicle must be charging on it")
    parser.add_argument("--api-url", help="sitectl's HTTP address (default: from the config)")
    parser.add_argument("--json", action="store_true", help="print the API's JSON answer")
    parser.add_argument("--no-wait", action="store_true", help="start it and return at once")
    parser.add_argument("--timeout", type=float, help="give up after S seconds (5-3600)")


def run(
    args: argparse.Namespace,
    config: Config,
    sleep: Callable[[float], None] = time.sleep,
    monotonic: Callable[[], float] = time.monotonic,
) -> int:
    """Carry out ``sitectl detect-phases``; returns the exit code."""
    api = LocalApi(config, args.api_url)
    path = f"/api/chargers/{quote(args.charger, safe='')}/detect-phases"
    body = {"timeout_s": args.timeout} if args.timeout is not None else {}
    try:
        test = api.request("POST", path, body)
        if not args.no_wait:
            # The test's own timeout bounds it; a little more for the last cycles.
            deadline = monotonic() + float(test.get("timeout_s") or 600) + 30
            while not test["done"] and monotonic() < deadline:
                sleep(POLL_S)
                test = api.request("GET", path)
    except (ApiError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(test, indent=2) if args.json else _render(test))
    if not test["done"]:
        return 0 if args.no_wait else EXIT_NO_ANSWER
    return EXIT.get(test["state"], EXIT_NO_ANSWER)


def _render(test: dict[str, Any]) -> str:
    head = f"{test['charger']}: {test['state'].replace('_', ' ')}"
    if not test["done"]:
        head += f" (stage {test.get('stage')}, {test.get('steps', 0)} steps so far)"
    return f"{head}\n  {test['text']}"
