"""The ``sitectl`` command.

    sitectl run -c FILE            start the controller (until SIGTERM/SIGINT)
    sitectl check-config -c FILE   validate a depot configuration and summarise it
    sitectl schema                 print the JSON Schema of the configuration
    sitectl demo                   run a simulated depot (sitectl/sim/demo.yaml)
    sitectl probe -c FILE          read every Modbus device once
    sitectl firmware ACTION -c FILE  local firmware rollouts (list, start, status, stop)
    sitectl detect-phases -c FILE ID  check a charger's phase rotation now (running sitectl)
    sitectl backup FILE -c FILE    copy the store (while running); restore: put a copy back
    sitectl quirks [NAME]          list the charger quirk files (or show one)
    sitectl report -c FILE         utilization from the store (--from -7d --to now, --csv)
    sitectl simulate -c FILE ...   what-if: the site's day on sitectl's own controller, simulated

Exit codes: 0 success, 1 invalid configuration or a component failure, 2 usage errors
(detect-phases also: 3 wired otherwise than configured, 4 no answer; see sitectl.phase_cli).
Errors an installer can cause end in one clear message, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence

from sitectl import __version__
from sitectl.backup import add_parsers as add_backup_parsers
from sitectl.config import Config, ConfigError, load_config, secret_values
from sitectl.firmware_cli import add_parser as add_firmware_parser
from sitectl.fleet_cli import add_parser as add_fleet_parser
from sitectl.logs import set_secrets, setup_logging
from sitectl.phase_cli import add_parser as add_phase_parser
from sitectl.store import StoreError
from sitectl.summary import render_summary
from sitectl.utilization.cli import add_parser as add_report_parser
from sitectl.whatif_cli import add_parser as add_simulate_parser

__all__ = ["main"]

log = logging.getLogger("sitectl")


def _logging_options() -> argparse.ArgumentParser:
    # SUPPRESS lets the options appear before or after the subcommand without clobbering.
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--log-level",
        default=argparse.SUPPRESS,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        type=str.upper,
        help="log level (default INFO)",
    )
    parent.add_argument(
        "--log-format",
        default=argparse.SUPPRESS,
        choices=["human", "json"],
        help="human-readable lines or JSON lines (default human)",
    )
    return parent


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and shell completion)."""
    common = _logging_options()
    parser = argparse.ArgumentParser(
        prog="sitectl",
        description="Edge site controller for EV charging depots.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"sitectl {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", parents=[common], help="start the controller")
    run.add_argument("-c", "--config", required=True, help="the depot's YAML file")

    check = commands.add_parser(
        "check-config", parents=[common], help="validate a configuration and summarise it"
    )
    check.add_argument("file", nargs="?", help="the depot's YAML file (or -c FILE)")
    check.add_argument("-c", "--config", help="the depot's YAML file, as for every other command")
    check.add_argument("-q", "--quiet", action="store_true", help="print only problems")

    commands.add_parser("schema", parents=[common], help="print the configuration JSON Schema")
    commands.add_parser("openapi", parents=[common], help="print the local API's OpenAPI document")

    probe = commands.add_parser(
        "probe", parents=[common], help="read every Modbus device once and print what it says"
    )
    probe.add_argument("-c", "--config", required=True, help="the depot's YAML file")
    probe.add_argument("--device", help="only this device")
    probe.add_argument("--raw", action="store_true", help="also print the raw registers")

    quirks = commands.add_parser(
        "quirks", parents=[common], help="list the charger quirk files (or show one)"
    )
    quirks.add_argument("name", nargs="?", help="show only this one")

    add_firmware_parser(commands, common)
    add_phase_parser(commands, common)
    add_fleet_parser(commands, common)
    add_backup_parsers(commands, common)
    add_report_parser(commands, common)
    add_simulate_parser(commands, common)

    demo = commands.add_parser("demo", parents=[common], help="run a simulated depot")
    demo.add_argument("--chargers", type=int, default=None, help="number of simulated chargers")
    demo.add_argument(
        "--speed",
        type=float,
        default=60.0,
        help="simulated time per real time (default 60: a minute a second)",
    )
    demo.add_argument("--duration", type=float, default=None, help="stop after S seconds")
    demo.add_argument(
        "--mqtt",
        type=_broker_address,
        default=None,
        metavar="HOST:PORT",
        help="publish to this broker (default: the demo starts its own mosquitto on a free port)",
    )
    return parser


def _broker_address(text: str) -> tuple[str, int]:
    from sitectl.sim.broker import parse_address

    try:
        return parse_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _load(path: str) -> Config | None:
    try:
        config, warnings = load_config(path)
    except ConfigError as exc:
        print(exc.render(), file=sys.stderr)
        return None
    for warning in warnings:
        log.warning("config: %s", warning)
    set_secrets(secret_values(config))
    return config


def _check_config_file(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    # `check-config FILE` and `check-config -c FILE` both work; two different files do not.
    if args.file is not None and args.config is not None and args.file != args.config:
        parser.error(f"check-config: two files given ({args.file}, {args.config}); give one")
    path = args.config if args.config is not None else args.file
    if path is None:
        parser.error("check-config: give the depot's YAML file: sitectl check-config -c FILE")
    return path


def _cmd_check(args: argparse.Namespace) -> int:
    try:
        config, warnings = load_config(args.file)
    except ConfigError as exc:
        print(exc.render(), file=sys.stderr)
        return 1
    if args.quiet:
        for warning in warnings:
            print(f"warning: {warning}")
    else:
        print(render_summary(config, args.file, warnings))
    return 0


def _cmd_schema(_: argparse.Namespace) -> int:
    print(json.dumps(Config.model_json_schema(), indent=2, sort_keys=True))
    return 0


def _cmd_openapi(_: argparse.Namespace) -> int:
    from sitectl.http.openapi import openapi_document

    print(json.dumps(openapi_document(), indent=2, sort_keys=True))
    return 0


def _cmd_probe(args: argparse.Namespace) -> int:
    from devices.probe import main_probe

    config = _load(args.config)
    if config is None:
        return 1
    devices = config.devices
    if args.device is not None:
        devices = [d for d in devices if d.name == args.device]
        if not devices:
            known = ", ".join(d.name for d in config.devices) or "none"
            print(
                f"error: no device {args.device!r} in {args.config} (devices: {known})",
                file=sys.stderr,
            )
            return 1
    if not devices:
        print(f"{args.config}: no devices configured")
        return 0
    return main_probe([d.to_spec() for d in devices], raw=args.raw)


def _cmd_quirks(args: argparse.Namespace) -> int:
    from sitectl.quirks import DEFAULTS, describe, load_quirks

    files = load_quirks()
    if args.name is not None and args.name not in files:
        print(f"error: no quirks {args.name!r} (known: {', '.join(files)})", file=sys.stderr)
        return 1
    if args.name is None:
        print("default (a charger no file matches, before what its probe finds):")
        for key, value in DEFAULTS.as_dict().items():
            if key not in ("name", "unsure", "sources"):
                print(f"  {key}: {value}")
    chosen = [files[args.name]] if args.name is not None else list(files.values())
    print(describe(chosen))
    return 0


def _run_app(config: Config, duration_s: float | None = None) -> int:
    from sitectl.app import App

    async def main() -> int:
        app = App(config)
        if duration_s is not None:
            asyncio.get_running_loop().call_later(duration_s, app.stop)
        return await app.run()

    try:
        return asyncio.run(main())
    except StoreError as exc:
        log.error("cannot open the store: %s", exc)
        return 1


def _cmd_run(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return 1
    return _run_app(config)


def _cmd_firmware(args: argparse.Namespace) -> int:
    from sitectl.firmware_cli import run

    config = _load(args.config)
    if config is None:
        return 1
    return run(args, config)


def _cmd_detect_phases(args: argparse.Namespace) -> int:
    from sitectl.phase_cli import run

    config = _load(args.config)
    if config is None:
        return 1
    return run(args, config)


def _cmd_fleet(args: argparse.Namespace) -> int:
    from sitectl.fleet_cli import run

    config = _load(args.config)
    if config is None:
        return 1
    return run(args, config)


def _cmd_backup(args: argparse.Namespace) -> int:
    from sitectl.backup import run_command

    config = _load(args.config)
    if config is None:
        return 1
    return run_command(args, config.storage.path)


def _cmd_report(args: argparse.Namespace) -> int:
    from sitectl.utilization.cli import run

    config = _load(args.config)
    if config is None:
        return 1
    return run(args, config)


def _cmd_demo(args: argparse.Namespace) -> int:
    from sitectl.sim import DEMO_CONFIG
    from sitectl.sim.demo import run_demo

    path = DEMO_CONFIG
    if _load(str(path)) is None:
        return 1
    try:
        return asyncio.run(run_demo(path, args.chargers, args.speed, args.duration, mqtt=args.mqtt))
    except KeyboardInterrupt:
        return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    from sitectl.whatif_cli import run

    return run(args)


COMMANDS = {
    "run": _cmd_run,
    "check-config": _cmd_check,
    "schema": _cmd_schema,
    "openapi": _cmd_openapi,
    "probe": _cmd_probe,
    "quirks": _cmd_quirks,
    "demo": _cmd_demo,
    "firmware": _cmd_firmware,
    "detect-phases": _cmd_detect_phases,
    "fleet": _cmd_fleet,
    "backup": _cmd_backup,
    "restore": _cmd_backup,
    "report": _cmd_report,
    "simulate": _cmd_simulate,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sitectl`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "check-config":
        args.file = _check_config_file(parser, args)
    # The demo's live line is the point; its logs stay quiet unless asked for.
    # A simulation's controller raises alarms by the hundred (that is its point): the report
    # counts them; its log says only what went wrong.
    default_level = {"demo": "WARNING", "simulate": "ERROR"}.get(args.command, "INFO")
    setup_logging(getattr(args, "log_level", default_level), getattr(args, "log_format", "human"))
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
