"""What a charger is told while the store cannot write (issue #22.12).

A transaction message the journal cannot store is answered with a CALLERROR InternalError that
says so, at once, never with a CallResult (the charger would drop a message sitectl did not
keep); the charger resends it, and once the store writes again it is journaled as usual. The
first failure raises the critical ``store_failed`` alarm. Real sockets, a real OCPP client
(the ``ocpp`` library in `SimCharger`), a real SQLite store made read-only under the server
(``PRAGMA query_only``: every write fails as on a read-only file).
"""

from __future__ import annotations

import json
import logging
import time

import pytest

from sitectl.sim.charger import SimCharger
from sitectl.state import Severity, SiteState
from sitectl.store import Store
from sitectl.store_health import STORE_FAILED_ALARM, store_failed
from tests.helpers import wait_for
from tests.ocpp.conftest import PASSWORD, depot_config
from tests.ocpp.test_offline import outage


def errors(sim: SimCharger) -> list[list]:
    return [f for f in (json.loads(t) for t in sim.received()) if f[0] == 4]


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_a_transaction_message_that_cannot_be_stored_gets_a_callerror_and_an_alarm(
    csms, start_server, tmp_path, caplog, version
) -> None:
    config = depot_config(
        [{"id": "CP1", "ocpp_version": version}], csms.url, offline={"unknown_id_policy": "accept"}
    )
    store = Store(tmp_path / "failing.sqlite")
    state = SiteState(config)
    server, url = await start_server(config, store=store)
    server.store_failed = lambda exc: store_failed(
        state, store.path, exc, "the OCPP journal", "transaction messages refused"
    )
    caplog.set_level(logging.WARNING, logger="sitectl")
    try:
        async with SimCharger("CP1", version, url, PASSWORD) as sim:
            await sim.boot()
            await outage(csms, server)
            store._conn.execute("PRAGMA query_only = ON")  # every write fails from here on
            started = time.monotonic()
            for n in range(20):
                await sim.start_transaction(1, "BUS-1", 1000 + n, transaction_id=f"tx-{n}")
            took_s = time.monotonic() - started
            refused = errors(sim)
            assert len(refused) == 20, sim.received()[-3:]
            assert {f[2] for f in refused} == {"InternalError"}
            assert "cannot store" in refused[0][3] and "send it again" in refused[0][3]
            assert took_s < 5  # answered at once, not left to the charger's timeout
            assert server.journal.pending("CP1") == 0
            # Non-transaction messages are still answered locally.
            assert await sim.heartbeat() is not None
            alarm = state.alarms[(STORE_FAILED_ALARM, "store")]
            assert alarm.severity is Severity.CRITICAL and "the OCPP journal" in alarm.text
            link = server.links["CP1"]
            assert link.agent is not None and link.agent.unstored == 20
            # The charger resends; the store writes again: journaled, answered as usual.
            store._conn.execute("PRAGMA query_only = OFF")
            result = await sim.start_transaction(1, "BUS-1", 5000, transaction_id="tx-again")
            assert result is not None and len(errors(sim)) == 20
            await wait_for(lambda: server.journal.pending("CP1") == 1, message="journaled")
        lines = [r for r in caplog.records if "cannot be stored" in r.getMessage()]
        assert 1 <= len(lines) <= 3  # a log budget, not a line per message
    finally:
        store.close()
