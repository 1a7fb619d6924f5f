"""The read model of provenance in PostgreSQL: what every API replica looks events up in.

- ``database``: the connection pool, and the one place database errors become
  ``DatabaseUnavailable``.
- ``migrations``: the versioned schema (``ktb provision`` applies it).
- ``partitions``: daily partitions, created ahead of the records and dropped whole
  when older than the retention.
- ``provenance``: the writes of the indexer and every query of the lookups.
- ``indexer``: the consumer of ``ktb.provenance`` that fills the tables.
"""

from bridge.store.database import Database
from bridge.store.indexer import Indexer
from bridge.store.migrations import LATEST_VERSION, migrate, schema_version
from bridge.store.provenance import ANYONE, ProvenanceStore, Reservation, Scope

__all__ = [
    "ANYONE",
    "LATEST_VERSION",
    "Database",
    "Indexer",
    "ProvenanceStore",
    "Reservation",
    "Scope",
    "migrate",
    "schema_version",
]
