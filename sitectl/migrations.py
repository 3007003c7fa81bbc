"""The store's schema: every component's migration, in version order.

`sitectl.store` holds the foundation's steps (meta, offline journal, uplink outbox); the
firmware and session-history packages own theirs. They are gathered here so that the store
module does not depend on the packages that use it.
"""

from __future__ import annotations

from sitectl.control.limit_watch import LIMIT_EVENTS_MIGRATION
from sitectl.control.memory_store import CONTROL_MEMORY_MIGRATION
from sitectl.firmware.schema import FIRMWARE_MIGRATION
from sitectl.sessions import ACTIVE_SESSIONS_MIGRATION, SESSIONS_MIGRATION
from sitectl.store import MIGRATIONS, Migration
from sitectl.utilization.store import UTILIZATION_MIGRATION

__all__ = ["SCHEMA"]

#: Every migration sitectl's store needs, in version order.
SCHEMA: tuple[Migration, ...] = (
    *MIGRATIONS,
    FIRMWARE_MIGRATION,
    SESSIONS_MIGRATION,
    ACTIVE_SESSIONS_MIGRATION,
    CONTROL_MEMORY_MIGRATION,
    LIMIT_EVENTS_MIGRATION,
    UTILIZATION_MIGRATION,
)
