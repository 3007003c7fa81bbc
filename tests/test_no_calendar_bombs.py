"""Guard: no test may carry a literal date that the real clock has not yet reached.

A test that compares a fixed date with the real clock passes until that date and fails from
then on (issue #15: a departure of 2026-11-28 turned the suite red on 2026-11-29). A fixed date
is only safe with an injected clock, and then it can as well lie in the past. So every literal
date in the tests must already be in the past by the real clock: a date that is still ahead is
a time bomb, or will read like one. Write such times relative to ``now`` (or to the injected
``NOW``: ``NOW + timedelta(days=30)``).
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from pathlib import Path

TESTS = Path(__file__).resolve().parent

_ISO = re.compile(r"\b(20\d\d)-(\d\d)-(\d\d)")
_CALL = re.compile(r"\b(?:datetime|date)\(\s*(20\d\d)\s*,\s*(\d{1,2})\s*,\s*(\d{1,2})")


def literal_dates(text: str) -> list[tuple[int, date]]:
    """Every literal date in a source text, with its line number."""
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        for pattern in (_ISO, _CALL):
            for match in pattern.finditer(line):
                try:
                    found.append((number, date(*(int(g) for g in match.groups()))))
                except ValueError:
                    continue  # not a calendar date (e.g. a version string)
    return found


def test_the_scanner_finds_both_forms() -> None:
    text = 'a = "2031-02-03T05:00:00Z"\nb = datetime(2032, 4, 5, tzinfo=UTC)\nc = "2031-13-40"\n'
    assert literal_dates(text) == [(1, date(2031, 2, 3)), (2, date(2032, 4, 5))]


def test_no_literal_date_in_the_tests_is_still_ahead() -> None:
    today = datetime.now(UTC).date()
    ahead = [
        f"{path.relative_to(TESTS.parent)}:{line}: {day.isoformat()}"
        for path in sorted(TESTS.rglob("*.py"))
        if path != Path(__file__).resolve()
        for line, day in literal_dates(path.read_text(encoding="utf-8"))
        if day >= today
    ]
    assert ahead == [], (
        "literal dates not yet reached by the real clock (write them relative to now or to "
        "the injected NOW):\n" + "\n".join(ahead)
    )
