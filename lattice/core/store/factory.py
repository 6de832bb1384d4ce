"""Which store a head uses: ``memory``, or ``sqlite:///PATH`` (the default, in the data dir)."""

from __future__ import annotations

from pathlib import Path

from lattice.core.run.log import EventStore, InMemoryEventStore
from lattice.exceptions import LatticeUsageError

#: the store's file name inside the data directory
DEFAULT_DB_NAME = "lattice.db"
SQLITE_PREFIX = "sqlite:///"


def default_store_spec(data_dir: str | Path) -> str:
    return f"{SQLITE_PREFIX}{Path(data_dir).expanduser() / DEFAULT_DB_NAME}"


def check_store_spec(spec: str) -> None:
    """Raise LatticeUsageError, saying what is accepted, for a spec that names no store."""
    if spec == "memory":
        return
    if not spec.startswith(SQLITE_PREFIX) or not spec[len(SQLITE_PREFIX) :].strip():
        raise LatticeUsageError(
            f"store must be 'memory' or 'sqlite:///PATH' (--store), got {spec!r}"
        )


def open_store(spec: str, max_finished: int = 1000, max_age: float | None = None) -> EventStore:
    """The store ``spec`` names, opened (and read back, for SQLite). Raises
    LatticeUsageError for a bad spec and StoreError for a store that cannot be opened."""
    check_store_spec(spec)
    if spec == "memory":
        return InMemoryEventStore(max_finished, max_age)
    from lattice.core.store.sqlite import SQLiteEventStore

    path = Path(spec[len(SQLITE_PREFIX) :]).expanduser()
    return SQLiteEventStore(path, max_finished, max_age)
