"""The SQLite store's schema, versioned from the first release.

The version is SQLite's ``user_version``. :data:`MIGRATIONS` holds one step per version: step
``i`` takes a database at version ``i`` to ``i + 1``; a new release that changes the schema
appends a step and never edits an old one. Opening runs the steps a database lacks, each in
its own transaction; a database written by a newer Lattice is refused.
"""

from __future__ import annotations

import sqlite3

from lattice.exceptions import StoreError

MIGRATIONS: tuple[str, ...] = (
    # 0 -> 1: workflows, code blobs, runs and their events
    """
    CREATE TABLE code_blobs (
        digest TEXT PRIMARY KEY,
        code BLOB NOT NULL
    );
    CREATE TABLE workflows (
        workflow_id TEXT PRIMARY KEY,
        -- JSON: {"tasks": [...], "edges": [...]}; code by digest (code_blobs)
        definition TEXT NOT NULL,
        created_order INTEGER NOT NULL
    );
    CREATE TABLE runs (
        run_id TEXT PRIMARY KEY,
        workflow_id TEXT NOT NULL,
        -- the workflow's definition when the run was accepted (later edits do not reach it)
        definition TEXT NOT NULL,
        accepted_at REAL NOT NULL,
        -- NULL while it runs; then its status, and the order in which runs finished
        status TEXT,
        finished_order INTEGER
    );
    CREATE TABLE events (
        run_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        kind TEXT NOT NULL,
        -- JSON: RunEvent.to_record(); a finish_task's record holds the task's outputs
        record TEXT NOT NULL,
        PRIMARY KEY (run_id, seq)
    ) WITHOUT ROWID;
    """,
    # 1 -> 2: when a run finished, for retention by age (runs finished before stay NULL: their
    # age counts from the first time a store of version 2 reads them)
    """
    ALTER TABLE runs ADD COLUMN finished_at REAL;
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)


def migrate(conn: sqlite3.Connection, path: str) -> int:
    """Bring ``conn`` to :data:`SCHEMA_VERSION`; return the version it had. Raises StoreError
    for a database of a newer schema."""
    found = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if found > SCHEMA_VERSION:
        raise StoreError(
            f"the store {path} has schema version {found}, newer than this Lattice knows "
            f"({SCHEMA_VERSION}); upgrade Lattice or point --store elsewhere"
        )
    for version in range(found, SCHEMA_VERSION):
        # executescript commits first; BEGIN..COMMIT keeps each step all-or-nothing.
        conn.executescript(
            f"BEGIN; {MIGRATIONS[version]} PRAGMA user_version = {version + 1}; COMMIT;"
        )
    return found
