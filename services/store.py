"""Each service's own state: one SQLite file, shared by its server and its worker.

WAL mode lets the HTTP server read while the worker writes. Calls run in a
thread so the event loop never waits on the disk; every call is one
transaction. A locked or unavailable database is a ``DatabaseError`` (retried by
the taxonomy's schedule when it happens inside an activity).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from bridge import DatabaseError

T = TypeVar("T")


def now() -> str:
    """The current UTC time as ISO 8601 (stored timestamps)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class Store:
    """One SQLite database with a schema applied at open."""

    def __init__(self, path: Path, schema: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        try:
            self._conn = sqlite3.connect(
                path, timeout=5.0, isolation_level=None, check_same_thread=False
            )
            self._conn.row_factory = sqlite3.Row
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            # Columns first: the schema's indexes may be on a column an older table lacks.
            _add_new_columns(self._conn, schema)
            self._conn.executescript(schema)
        except sqlite3.Error as exc:
            raise DatabaseError(f"cannot open {path}: {exc}", database=str(path)) from exc

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in one write transaction, off the event loop."""
        return await asyncio.to_thread(self._transaction, fn)

    def _transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise DatabaseError(f"{self.path.name}: {exc}", database=str(self.path)) from exc
            try:
                result = fn(self._conn)
            except sqlite3.OperationalError as exc:
                self._conn.execute("ROLLBACK")
                raise DatabaseError(f"{self.path.name}: {exc}", database=str(self.path)) from exc
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
            return result

    async def rows(self, sql: str, *params: Any) -> list[dict[str, Any]]:
        """A query's rows as dicts."""
        return await self.run(lambda c: [dict(r) for r in c.execute(sql, params)])

    async def row(self, sql: str, *params: Any) -> dict[str, Any] | None:
        """A query's first row as a dict, or ``None``."""
        found = await self.rows(sql, *params)
        return found[0] if found else None

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._conn.close()


def _add_new_columns(conn: sqlite3.Connection, schema: str) -> None:
    """Add the columns ``schema`` declares that a table created by an older one lacks.

    ``CREATE TABLE IF NOT EXISTS`` leaves an existing table as it is: a column a later
    version added (nullable, or with a default) is added here, so a database kept
    across upgrades serves the new queries.
    """
    declared = sqlite3.connect(":memory:")
    try:
        declared.executescript(schema)
        tables = [
            r[0] for r in declared.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        ]
        for table in tables:
            have = {r[1] for r in conn.execute(f'PRAGMA table_info("{table}")')}
            if not have:
                continue  # a new table: the schema creates it whole
            for _, name, kind, notnull, default, _pk in declared.execute(
                f'PRAGMA table_info("{table}")'
            ):
                if name in have:
                    continue
                if notnull and default is None:
                    raise sqlite3.OperationalError(
                        f"{table}.{name} is NOT NULL without a default: cannot add it"
                    )
                extra = f" DEFAULT {default}" if default is not None else ""
                conn.execute(f'ALTER TABLE "{table}" ADD COLUMN "{name}" {kind}{extra}')
    finally:
        declared.close()


def as_json(value: Any) -> str:
    """A value stored in a TEXT column."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True)
