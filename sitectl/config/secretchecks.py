"""Warnings about secrets: placeholders still in place, secret files every user can read.

Neither stops sitectl (a lab bench may use both on purpose), but on a depot either is a hole:
an example password is the first thing an intruder tries, and a world-readable key file is
readable by every service account on the industrial PC. The messages never contain a secret.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, SecretStr

from sitectl.config.errors import Problem

if TYPE_CHECKING:
    from sitectl.config.model import Config

__all__ = ["MIN_SECRET_LENGTH", "http_access_checks", "looks_like_placeholder", "secret_checks"]

#: OCPP asks 16 to 40 characters for a Basic password (1.6 security whitepaper §3.2.1, 2.0.1
#: A00.FR.205); a shorter secret is also easier to guess and harder to keep out of logs.
MIN_SECRET_LENGTH = 16

# Parts of the values example files and vendors ship ("example-charger-password-change-me").
_PLACEHOLDER_PARTS = (
    "change-me",
    "changeme",
    "change_me",
    "replace-me",
    "replaceme",
    "placeholder",
    "example",
    "xxxx",
    "<",
    ">",
)
# Whole values nobody should keep.
_PLACEHOLDER_VALUES = frozenset(
    {"password", "passwort", "secret", "admin", "test", "default", "token", "changeit"}
    | {"1234", "12345", "123456", "12345678", "123456789"}
)

Location = tuple[str | int, ...]


def looks_like_placeholder(secret: str) -> bool:
    """Whether ``secret`` is an example's or a factory default's value, not a site's own."""
    text = secret.strip().lower()
    return text in _PLACEHOLDER_VALUES or any(part in text for part in _PLACEHOLDER_PARTS)


def _secrets(cfg: Config) -> Iterator[tuple[Location, BaseModel, str]]:
    """(path of the section, section, field name) of every secret the configuration has."""
    for index, charger in enumerate(cfg.chargers):
        yield ("chargers", index), charger, "password"
        # An upstream password copied from `password` is the same value: warn once.
        if "upstream_password" in charger.model_fields_set or charger.upstream_password_file:
            yield ("chargers", index), charger, "upstream_password"
    yield ("ocpp",), cfg.ocpp, "local_controller_password"
    yield ("mqtt",), cfg.mqtt, "password"
    yield ("http",), cfg.http, "token"
    yield ("http",), cfg.http, "read_token"
    yield ("grid_signals", "openadr"), cfg.grid_signals.openadr, "client_secret"


def _key_files(cfg: Config) -> Iterator[tuple[Location, Path | None]]:
    yield ("ocpp", "tls_key_file"), cfg.ocpp.tls_key_file
    yield ("ocpp", "upstream_key_file"), cfg.ocpp.upstream_key_file
    yield ("mqtt", "key_file"), cfg.mqtt.key_file


def secret_checks(cfg: Config) -> list[Problem]:
    """Placeholder secrets and world-readable secret files, as warnings (one per file)."""
    problems: list[Problem] = []
    warned_files: set[Path] = set()

    def check_file(path: Location, file: Path) -> None:
        if file in warned_files:
            return
        mode = _readable_by_everyone(file)
        if mode is not None:
            warned_files.add(file)
            problems.append(
                Problem(
                    path,
                    f"'{file}' can be read by every user of this machine (mode {mode:04o}): "
                    "chmod 600 it (or 640 with sitectl's group)",
                    warning=True,
                )
            )

    placeholder_files: set[Path] = set()
    short_files: set[Path] = set()
    for section_path, section, name in _secrets(cfg):
        value = getattr(section, name)
        file = getattr(section, f"{name}_file")
        from_file = file is not None and name not in section.model_fields_set
        if file is not None:
            check_file((*section_path, f"{name}_file"), file)
        if not isinstance(value, SecretStr):
            continue
        length = len(value.get_secret_value())
        if length < MIN_SECRET_LENGTH and not (from_file and file in short_files):
            if from_file:
                short_files.add(file)
            problems.append(
                Problem(
                    (*section_path, f"{name}_file" if from_file else name),
                    f"this {name} has {length} characters: use at least {MIN_SECRET_LENGTH} "
                    "(OCPP asks 16 to 40 for a charger's Basic password)",
                    warning=True,
                )
            )
        if not looks_like_placeholder(value.get_secret_value()):
            continue
        if from_file:
            if file in placeholder_files:
                continue
            placeholder_files.add(file)
            where, what = (*section_path, f"{name}_file"), f"the {name} in '{file}'"
        else:
            where, what = (*section_path, name), f"this {name}"
        problems.append(
            Problem(
                where,
                f"{what} looks like a placeholder from an example: set the site's own",
                warning=True,
            )
        )
    for path, file in _key_files(cfg):
        if file is not None:
            check_file(path, file)
    return problems


def http_access_checks(cfg: Config) -> list[Problem]:
    """Closed reads nobody can open, and a read token that is no read-only token."""
    http = cfg.http
    if not http.enabled:
        return []
    problems: list[Problem] = []
    if not http.open_reads and http.token is None and http.read_token is None:
        problems.append(
            Problem(
                ("http", "open_reads"),
                "false without http.token or http.read_token: every read is refused and the "
                "dashboard cannot sign in; set a read_token (or open_reads: true)",
                warning=True,
            )
        )
    token, read = http.token, http.read_token
    if (
        token is not None
        and read is not None
        and token.get_secret_value() == read.get_secret_value()
    ):
        from_file = http.read_token_file is not None and "read_token" not in http.model_fields_set
        problems.append(
            Problem(
                ("http", "read_token_file" if from_file else "read_token"),
                "is the same as http.token: whoever holds the read token can write; give "
                "the monitoring system and the dashboard a token of their own",
                warning=True,
            )
        )
    return problems


def _readable_by_everyone(file: Path) -> int | None:
    """The file's mode when every user can read it (file and the directories to it), else None."""
    if os.name != "posix":
        return None  # no such permission bits to judge
    try:
        mode = file.stat().st_mode
        if not mode & stat.S_IROTH:
            return None
        # A 0644 file in a 0700 directory is private: others cannot reach it.
        for directory in file.resolve().parents:
            if not directory.stat().st_mode & stat.S_IXOTH:
                return None
    except OSError:
        return None  # a missing file is reported where it is read
    return stat.S_IMODE(mode)
