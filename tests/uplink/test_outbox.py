"""The outbox alone (a real SQLite store, no broker): order, seq numbering across restarts,
and the drop policy."""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sitectl.store import Store
from sitectl.uplink.messages import Kind, Message
from sitectl.uplink.outbox import Outbox

SITE = "up-test"


def message(kind: Kind, n: int, key: str | None = None, pad: int = 0) -> Message:
    topic = f"sitectl/{SITE}/{kind}" + (f"/{key}" if key else "")
    body = {"ts": "2026-11-27T06:00:00.000Z", "n": n, "pad": "x" * pad}
    return Message(kind, topic, body, retain=kind is Kind.CHARGER, key=key)


def numbers(rows) -> list[int]:
    return [json.loads(r.payload)["n"] for r in rows]


def open_outbox(path: Path, max_messages: int = 1000, max_bytes: int = 10**7) -> Outbox:
    return Outbox(Store(path), SITE, max_messages, max_bytes)


def test_order_and_seq(tmp_path) -> None:
    outbox = open_outbox(tmp_path / "s.sqlite")
    outbox.append([message(Kind.SESSION, n) for n in range(5)])
    first = outbox.claim(0, 3)
    assert [r.seq for r in first] == [1, 2, 3]
    assert numbers(first) == [0, 1, 2]
    assert first[0].payload.startswith(b'{"seq":1,"ts":')
    rest = outbox.claim(first[-1].id, 10, acked=[r.id for r in first])
    assert [r.seq for r in rest] == [4, 5]
    assert outbox.count == 2
    outbox.ack([r.id for r in rest])
    assert outbox.count == 0 and outbox.bytes == 0
    assert outbox.seq == 5


def test_numbers_survive_a_restart_and_come_first(tmp_path) -> None:
    path = tmp_path / "s.sqlite"
    outbox = open_outbox(path)
    outbox.append([message(Kind.ALARM, n) for n in range(4)])
    handed = outbox.claim(0, 2)  # in flight when the process dies
    outbox.store.close()

    outbox = open_outbox(path)
    assert outbox.count == 4 and outbox.seq == 2
    again = outbox.claim(0, 10, numbered_only=True)
    assert [(r.seq, r.payload) for r in again] == [(r.seq, r.payload) for r in handed]
    assert outbox.take_seq() == 3  # the birth goes between
    after = outbox.claim(again[-1].id, 10)
    assert [r.seq for r in after] == [4, 5]
    assert numbers(after) == [2, 3]


def test_counters_are_per_site(tmp_path) -> None:
    store = Store(tmp_path / "s.sqlite")
    a = Outbox(store, "a", 1000, 10**7)
    a.take_seq()
    a.take_seq()
    assert Outbox(store, "a", 1000, 10**7).seq == 2
    assert Outbox(store, "b", 1000, 10**7).seq == 0


def test_full_drops_oldest_summaries_then_superseded_charger_states(tmp_path, caplog) -> None:
    outbox = open_outbox(tmp_path / "s.sqlite", max_messages=10)
    batch = [
        message(Kind.SUMMARY, 0),
        message(Kind.CHARGER, 1, "CP1"),
        message(Kind.SESSION, 2),
        message(Kind.SUMMARY, 3),
        message(Kind.CHARGER, 4, "CP2"),
        message(Kind.ALARM, 5),
        message(Kind.CHARGER, 6, "CP1"),
        message(Kind.SUMMARY, 7),
        message(Kind.CHARGER, 8, "CP1"),
        message(Kind.SESSION, 9),
    ]
    outbox.append(batch)
    assert outbox.count == 10
    with caplog.at_level(logging.WARNING):
        outbox.append([message(Kind.ALARM, 10), message(Kind.SESSION, 11)])
    # Two over: the two oldest summaries go.
    assert numbers(outbox.claim(0, 100)) == [1, 2, 4, 5, 6, 7, 8, 9, 10, 11]
    assert outbox.stats()["dropped_summaries"] == 2
    assert "dropped 2 summaries" in caplog.text


def test_superseded_charger_states_go_after_the_summaries(tmp_path) -> None:
    outbox = open_outbox(tmp_path / "s.sqlite", max_messages=6)
    outbox.append(
        [
            message(Kind.SUMMARY, 0),
            message(Kind.CHARGER, 1, "CP1"),
            message(Kind.CHARGER, 2, "CP2"),
            message(Kind.CHARGER, 3, "CP1"),
            message(Kind.CHARGER, 4, "CP1"),
            message(Kind.SESSION, 5),
        ]
    )
    outbox.append([message(Kind.ALARM, 6), message(Kind.SESSION, 7), message(Kind.SESSION, 8)])
    # Three over: the summary, then CP1's two superseded states. CP2's only and CP1's latest
    # state stay.
    assert numbers(outbox.claim(0, 100)) == [2, 4, 5, 6, 7, 8]
    assert outbox.stats()["dropped_summaries"] == 1
    assert outbox.stats()["dropped_charger_states"] == 2


def test_sessions_and_alarms_are_kept_over_the_bound(tmp_path, caplog) -> None:
    outbox = open_outbox(tmp_path / "s.sqlite", max_messages=3)
    with caplog.at_level(logging.WARNING):
        outbox.append([message(Kind.SESSION, n) for n in range(5)])
    assert outbox.count == 5
    assert "nothing left that may be dropped" in caplog.text


def test_numbered_messages_are_never_dropped(tmp_path) -> None:
    outbox = open_outbox(tmp_path / "s.sqlite", max_messages=3)
    outbox.append([message(Kind.SUMMARY, n) for n in range(3)])
    handed = outbox.claim(0, 2)  # in flight: they have a seq; dropping them would leave a gap
    outbox.append([message(Kind.SUMMARY, 3), message(Kind.SUMMARY, 4)])
    rows = outbox.claim(0, 100)
    assert numbers(rows) == [0, 1, 4]
    assert [r.seq for r in rows] == [1, 2, 3]  # no gap: the dropped ones were never numbered
    assert [r.seq for r in handed] == [1, 2]


def test_bound_in_bytes(tmp_path) -> None:
    outbox = open_outbox(tmp_path / "s.sqlite", max_messages=1000, max_bytes=2000)
    outbox.append([message(Kind.SUMMARY, n, pad=400) for n in range(4)])
    outbox.append([message(Kind.SESSION, 9, pad=400)])
    assert outbox.bytes <= 2000
    kept = numbers(outbox.claim(0, 100))
    assert kept[-1] == 9 and kept[:-1] == sorted(kept[:-1]) and 0 not in kept
    assert outbox.stats()["dropped_summaries"] == 5 - len(kept)


def test_counters_survive_a_restart(tmp_path) -> None:
    path = tmp_path / "s.sqlite"
    outbox = open_outbox(path, max_messages=2)
    outbox.append([message(Kind.SUMMARY, n) for n in range(3)])
    outbox.bump("thinned_summaries", 4)
    outbox.store.close()
    stats = open_outbox(path, max_messages=2).stats()
    assert stats["dropped_summaries"] == 1
    assert stats["thinned_summaries"] == 4
    assert stats["queued"] == 2


KINDS = st.sampled_from([Kind.SUMMARY, Kind.CHARGER, Kind.SESSION, Kind.ALARM])
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.lists(st.tuples(KINDS, st.sampled_from("AB")), max_size=6)),
        st.tuples(st.just("claim"), st.integers(0, 5)),
        st.tuples(st.just("ack"), st.integers(0, 5)),
        st.just(("restart", 0)),
    ),
    max_size=40,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=OPS)
def test_property_seq_is_gapless_and_nothing_precious_is_lost(tmp_path_factory, ops) -> None:
    path = tmp_path_factory.mktemp("prop") / "s.sqlite"
    outbox = open_outbox(path, max_messages=8)
    counter = 0
    precious: set[int] = set()  # sessions and alarms appended
    delivered: dict[int, int] = {}  # n -> seq, for everything ever handed
    handed: list[tuple[int, int]] = []  # (id, n) in flight
    cursor = 0
    last_seq = 0
    for op, arg in ops:
        if op == "append":
            batch = []
            for kind, key in arg:
                batch.append(message(kind, counter, key if kind is Kind.CHARGER else None))
                if kind in (Kind.SESSION, Kind.ALARM):
                    precious.add(counter)
                counter += 1
            outbox.append(batch)
        elif op == "claim":
            for row in outbox.claim(cursor, arg):
                n = json.loads(row.payload)["n"]
                if n in delivered:
                    assert delivered[n] == row.seq  # handed again: same number
                else:
                    assert row.seq == last_seq + 1  # new: the next number
                    last_seq = row.seq
                    delivered[n] = row.seq
                handed.append((row.id, n))
                cursor = row.id
        elif op == "ack":
            done, handed = handed[:arg], handed[arg:]
            outbox.ack([i for i, _ in done])
        else:
            outbox.store.close()
            outbox = open_outbox(path, max_messages=8)
            handed, cursor = [], 0
    # Drain: everything precious was handed at some point.
    for row in outbox.claim(cursor, 10_000):
        n = json.loads(row.payload)["n"]
        if n not in delivered:
            assert row.seq == last_seq + 1
            last_seq = row.seq
        delivered[n] = row.seq
    assert precious <= set(delivered)
    outbox.store.close()


def test_drops_are_logged_at_most_once_a_minute(tmp_path, caplog) -> None:
    now = [0.0]
    outbox = Outbox(Store(tmp_path / "s.sqlite"), SITE, 2, 10**7, clock=lambda: now[0])

    def drops() -> list[logging.LogRecord]:
        # Only the outbox's own lines (the store's migration lines are captured too when an
        # earlier test has set the root logger to INFO).
        return [r for r in caplog.records if r.name == "sitectl.uplink.outbox"]

    with caplog.at_level(logging.WARNING, logger="sitectl.uplink.outbox"):
        for n in range(5):  # every summary after the second drops the oldest
            outbox.append([message(Kind.SUMMARY, n)])
            now[0] += 10
        assert len(drops()) == 1 and "dropped 1 summaries" in caplog.text
        now[0] += 60
        outbox.append([message(Kind.SUMMARY, 5)])
    assert len(drops()) == 2
    assert "dropped 3 summaries" in drops()[1].getMessage()  # everything since the last
    assert outbox.stats()["dropped_summaries"] == 4


def test_an_unused_status_number_is_given_back(tmp_path) -> None:
    outbox = open_outbox(tmp_path / "s.sqlite")
    seq = outbox.take_seq()
    outbox.give_back_seq(seq)
    assert outbox.seq == 0
    outbox.append([message(Kind.ALARM, 0)])
    assert [r.seq for r in outbox.claim(0, 10)] == [1]
    outbox.give_back_seq(0)  # not the last number: nothing changes
    assert outbox.seq == 1


def test_a_failed_write_leaves_the_counts_as_they_were(tmp_path) -> None:
    outbox = open_outbox(tmp_path / "s.sqlite")
    outbox.append([message(Kind.SESSION, 0)])
    before = (outbox.count, outbox.bytes, dict(outbox.counters))
    outbox.store.execute(
        "CREATE TRIGGER no_insert BEFORE INSERT ON outbox "
        "BEGIN SELECT RAISE(ABORT, 'disk full'); END"
    )
    with pytest.raises(sqlite3.IntegrityError):
        outbox.append([message(Kind.SESSION, 1)])
    assert (outbox.count, outbox.bytes, dict(outbox.counters)) == before
    assert numbers(outbox.claim(0, 10)) == [0]


def test_a_damaged_store_is_a_clear_error_not_a_traceback(tmp_path, monkeypatch) -> None:
    """Issue #22.13: a StoreError naming the file and what to do (the CLI logs it, exits 1)."""
    from sitectl.store import StoreError

    store = Store(tmp_path / "s.sqlite")

    def damaged(*args, **kwargs):
        raise sqlite3.DatabaseError("database disk image is malformed")

    monkeypatch.setattr(store, "query", damaged)
    with pytest.raises(StoreError) as raised:
        Outbox(store, "site", 1000, 10**7)
    text = str(raised.value)
    assert "s.sqlite" in text and "malformed" in text and "Restore a backup" in text
    monkeypatch.undo()
    store.close()
