"""The ``store_failed`` alarm (issue #22.12): a store that cannot write is said, once.

A full disk, a read-only remount or a failing medium must not stop charging, but it must not
stay a line in the log either: the first failed write anywhere (MQTT outbox, the upstream
journal, a periodic tick) raises one critical alarm, which the state keeps until a restart.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

from sitectl.state import Severity, SiteState

__all__ = ["STORE_FAILED_ALARM", "store_failed"]

log = logging.getLogger(__name__)

#: The alarm raised on the first failed store write.
STORE_FAILED_ALARM = "store_failed"


def store_failed(
    state: SiteState, path: Path | str, exc: sqlite3.Error, what: str, consequence: str
) -> bool:
    """Raise the ``store_failed`` alarm unless it is raised already.

    Args:
        state: where the alarm goes.
        path: the store's file, for the text.
        exc: the error of the failed write.
        what: what was being written (``"the MQTT outbox"``).
        consequence: what is lost or refused because of it, for the operator.

    Returns:
        Whether it was raised now (``False``: raised before).
    """
    if (STORE_FAILED_ALARM, "store") in state.alarms:
        return False
    log.critical("the store %s cannot write (%s: %s)", path, what, exc)
    return state.raise_alarm(
        STORE_FAILED_ALARM,
        "store",
        Severity.CRITICAL,
        f"the store {path} cannot write ({what}: {exc}): {consequence}; check the disk (full, "
        "read-only, failing) and restart sitectl",
    )
