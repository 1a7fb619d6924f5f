"""The example services' SQLite store: a database kept across an upgrade gets the new columns."""

from __future__ import annotations

import pytest

from bridge import DatabaseError
from services.store import Store

OLD = "CREATE TABLE IF NOT EXISTS payments (order_id TEXT PRIMARY KEY, status TEXT NOT NULL);"
NEW = """
CREATE TABLE IF NOT EXISTS payments (
    order_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    customer_id TEXT,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS payments_customer ON payments (customer_id);
"""


async def test_a_table_of_an_older_schema_gains_the_new_columns_before_their_indexes(tmp_path):
    path = tmp_path / "payments.db"
    old = Store(path, OLD)
    await old.run(lambda c: c.execute("INSERT INTO payments VALUES ('o-1', 'captured')"))
    old.close()
    store = Store(path, NEW)
    try:
        rows = await store.rows("SELECT * FROM payments")
        assert rows == [
            {"order_id": "o-1", "status": "captured", "customer_id": None, "attempts": 0}
        ]
        indexes = await store.rows("SELECT name FROM sqlite_master WHERE type = 'index'")
        assert {"name": "payments_customer"} in indexes
    finally:
        store.close()


def test_a_new_column_that_cannot_be_added_is_a_database_error(tmp_path):
    path = tmp_path / "t.db"
    Store(path, "CREATE TABLE IF NOT EXISTS t (a TEXT);").close()
    with pytest.raises(DatabaseError, match=r"t\.b is NOT NULL without a default"):
        Store(path, "CREATE TABLE IF NOT EXISTS t (a TEXT, b TEXT NOT NULL);")
