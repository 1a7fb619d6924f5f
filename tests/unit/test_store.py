"""Pure parts of the provenance store: days and partitions, migrations, URLs in messages."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

from bridge.store import partitions
from bridge.store.database import redacted
from bridge.store.migrations import LATEST_VERSION, MIGRATIONS


def test_records_fall_on_their_utc_day_and_the_retention_keeps_whole_days():
    late = datetime(2026, 12, 3, 23, 30, tzinfo=timezone(timedelta(hours=-2)))
    assert partitions.day_of(late) == date(2026, 12, 4)
    now = datetime(2026, 12, 3, 0, 5, tzinfo=UTC)
    assert partitions.cutoff(1, now) == date(2026, 12, 3)
    assert partitions.cutoff(30, now) == date(2026, 11, 4)
    assert partitions.partition_name("ktb_handlings", date(2026, 1, 2)) == "ktb_handlings_p20260102"


def test_migrations_are_numbered_in_order():
    versions = [m.version for m in MIGRATIONS]
    assert versions == list(range(1, len(MIGRATIONS) + 1))
    assert versions[-1] == LATEST_VERSION


def test_passwords_stay_out_of_messages():
    assert redacted("postgresql://ktb:s3cret@db:5432/ktb") == "postgresql://ktb:***@db:5432/ktb"
    assert redacted("postgresql://postgres@127.0.0.1:5432/ktb") == (
        "postgresql://postgres@127.0.0.1:5432/ktb"
    )
