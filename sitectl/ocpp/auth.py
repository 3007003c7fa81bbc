"""Authorization decisions while the CSMS is unreachable.

Sources, in the order OCPP 1.6 §3.5 gives them (the Local Authorization List takes precedence
over the cache, reference O12):

1. the charger's local list, as observed in the CSMS's SendLocalList traffic, plus the site's
   configured ``offline.local_id_tags``;
2. the authorization cache: the latest idTagInfo / idTokenInfo the CSMS returned for each tag,
   valid or not (Authorize, Start/StopTransaction, TransactionEvent answers), persisted;
3. the configured policy for unknown tags (``reject`` by default).

A tag whose entry has expired is ``Expired``, and any status but ``Accepted`` is refused
(reference O12: "apparently expired ids MUST be rejected when offline"). The cache is site-wide:
a fleet card the CSMS accepted at one charger is known at every charger of the depot.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sitectl.store import Store

__all__ = ["AuthCache", "normalise_info", "to_version"]


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def normalise_info(info: dict[str, Any]) -> dict[str, Any]:
    """One shape for 1.6 idTagInfo and 2.0.1 idTokenInfo: ``status`` and ``expiry``."""
    out: dict[str, Any] = {"status": info.get("status", "Invalid")}
    expiry = info.get("expiryDate") or info.get("cacheExpiryDateTime")
    if expiry:
        out["expiry"] = expiry
    return out


def to_version(version: str, info: dict[str, Any]) -> dict[str, Any]:
    """A normalised entry as the charger's OCPP version writes it."""
    if version == "1.6":
        out = {"status": info["status"]}
        if "expiry" in info:
            out["expiryDate"] = info["expiry"]
        return out
    status = info["status"]
    # 1.6 ConcurrentTx/Blocked/Expired/Invalid exist in 2.0.1 too; Accepted likewise.
    out = {"status": status}
    if "expiry" in info:
        out["cacheExpiryDateTime"] = info["expiry"]
    return out


class AuthCache:
    """Site-wide authorization cache and local lists, on the store.

    Args:
        store: the SQLite store.
        configured_tags: id tags accepted offline at every charger (``offline.local_id_tags``).
        unknown_policy: ``reject`` or ``accept`` for tags no source knows.
        clock: UTC now.
    """

    def __init__(
        self,
        store: Store,
        configured_tags: list[str] | None = None,
        unknown_policy: str = "reject",
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self.store = store
        self.configured = set(configured_tags or [])
        self.unknown_policy = unknown_policy
        self.clock = clock

    def remember(self, tag: str, info: dict[str, Any]) -> None:
        """Cache the CSMS's latest verdict on a tag (any status; O12)."""
        self.store.execute(
            "INSERT INTO auth_cache(id_tag, info, updated_at) VALUES (?, ?, ?) ON CONFLICT(id_tag)"
            " DO UPDATE SET info = excluded.info, updated_at = excluded.updated_at",
            (tag, json.dumps(normalise_info(info)), self.clock().isoformat()),
        )

    def update_local_list(
        self, charger: str, entries: list[tuple[str, dict[str, Any] | None]], full: bool
    ) -> None:
        """Apply an accepted SendLocalList: a full replacement or a differential update.

        An entry without info removes the tag (1.6 §6.40 differential update semantics).
        """
        with self.store.transaction() as conn:
            if full:
                conn.execute("DELETE FROM local_list WHERE charger = ?", (charger,))
            for tag, info in entries:
                if info is None:
                    conn.execute(
                        "DELETE FROM local_list WHERE charger = ? AND id_tag = ?", (charger, tag)
                    )
                else:
                    conn.execute(
                        "INSERT INTO local_list(charger, id_tag, info) VALUES (?, ?, ?) ON "
                        "CONFLICT(charger, id_tag) DO UPDATE SET info = excluded.info",
                        (charger, tag, json.dumps(normalise_info(info))),
                    )

    def decide(self, charger: str, tag: str) -> tuple[dict[str, Any], str]:
        """Decide on a tag offline.

        Returns:
            The normalised info (``status``, maybe ``expiry``) and where it came from:
            ``local_list``, ``config``, ``cache`` or ``policy``.
        """
        rows = self.store.query(
            "SELECT info FROM local_list WHERE charger = ? AND id_tag = ?", (charger, tag)
        )
        if rows:
            return self._checked(json.loads(rows[0]["info"])), "local_list"
        if tag in self.configured:
            return {"status": "Accepted"}, "config"
        rows = self.store.query("SELECT info FROM auth_cache WHERE id_tag = ?", (tag,))
        if rows:
            return self._checked(json.loads(rows[0]["info"])), "cache"
        status = "Accepted" if self.unknown_policy == "accept" else "Invalid"
        return {"status": status}, "policy"

    def _checked(self, info: dict[str, Any]) -> dict[str, Any]:
        expiry = _parse_time(info.get("expiry"))
        if info.get("status") == "Accepted" and expiry is not None and expiry <= self.clock():
            return {"status": "Expired", "expiry": info["expiry"]}
        return info
