"""A small depot for the utilization tests, and a store to write raw records into."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from sitectl.config import Config, load_config
from sitectl.store import Store
from sitectl.utilization.store import (
    Batch,
    CircuitBucket,
    ConnectorBucket,
    SessionOutcome,
    StatusEvent,
    UtilizationStore,
)

ZONE = "Europe/Berlin"


def depot(directory: Path, mqtt: dict[str, Any] | None = None, **utilization: Any) -> Config:
    """CP1 (two connectors) and CP2 (one) on one feeder; the store in `directory`; MQTT off
    unless `mqtt` says where."""
    data: dict[str, Any] = {
        "site": {
            "id": "util-test",
            "limit_kw": 200,
            "phase_limit_a": 300,
            "timezone": ZONE,
            "non_ev_max_a": 20,
        },
        "circuits": [{"id": "feeder", "limit_a": 100, "chargers_only": True}],
        "chargers": [
            {
                "id": "CP1",
                "circuit": "feeder",
                "max_current_a": 32,
                "connectors": 2,
                "password": "cp1-utilization-0123",
            },
            {
                "id": "CP2",
                "circuit": "feeder",
                "max_current_a": 32,
                "password": "cp2-utilization-0123",
            },
        ],
        "ocpp": {"listen_host": "127.0.0.1"},
        "firmware": {"enabled": False},
        "storage": {"path": str(directory / "sitectl.sqlite"), "utilization": utilization},
        "mqtt": {"enabled": True, **mqtt} if mqtt else {"enabled": False},
        "http": {"listen_host": "127.0.0.1"},
    }
    path = directory / "site.yaml"
    path.write_text(yaml.safe_dump(data))
    config, _ = load_config(path, environ={})
    return config


def whole_hour(days_ago: float) -> datetime:
    """A UTC whole hour some days back from the real now (never a literal date)."""
    moment = datetime.now(UTC) - timedelta(days=days_ago)
    return moment.replace(minute=0, second=0, microsecond=0)


def ms(moment: datetime) -> int:
    return round(moment.timestamp() * 1000)


class Raw:
    """Writes raw records through the store API, as the recorder would."""

    def __init__(self, store: Store) -> None:
        self.writer = UtilizationStore(store)
        self.batch = Batch()

    def status(self, at: datetime, charger: str, connector: int, status: str) -> None:
        self.batch.statuses.append(StatusEvent(ms(at), charger, connector, status))

    def run(self, start: datetime, end: datetime) -> None:
        self.writer.write(Batch(run=(ms(start), ms(end))))

    def minute(self, charger: str, connector: int, at: datetime, **values: Any) -> None:
        self.batch.connectors.append(
            ConnectorBucket(charger, connector, int(at.timestamp()), **values)
        )

    def circuit(self, node: str, at: datetime, **values: Any) -> None:
        self.batch.circuits.append(CircuitBucket(node, int(at.timestamp()), **values))

    def session(self, **values: Any) -> None:
        self.batch.sessions.append(SessionOutcome(**values))

    def flush(self) -> None:
        self.writer.write(self.batch)
        self.batch = Batch()
