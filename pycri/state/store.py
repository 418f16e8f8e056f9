"""Metadata store: SQLite in WAL mode under the daemon's root dir.

One connection, one writer. Every change is committed before the RPC that made it is acknowledged, so a crash of
the daemon (kill -9) loses nothing it has answered for. WAL with synchronous=NORMAL is durable against process
crashes; synchronous=FULL (config `store_sync_full`) adds durability against power loss.

Rows keep a few indexed columns for lookups and the rest of the object as JSON in `data`, so adding a field to an
object does not need a schema migration. Structural changes go into MIGRATIONS, applied in order at open time;
`PRAGMA user_version` records how far a database has come.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any, Iterator

# Each entry moves the schema from version i to i+1. Never edit an entry that has shipped; append a new one.
MIGRATIONS: list[str] = [
    # 1: images (id = config digest) and the names (tags, digests) that point at them; sandboxes; containers;
    #    settings (runtime-wide values set over CRI, e.g. the pod CIDR).
    """
    CREATE TABLE images (
        id TEXT PRIMARY KEY,
        data TEXT NOT NULL
    );
    CREATE TABLE image_names (
        name TEXT PRIMARY KEY,
        image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE
    );
    CREATE INDEX image_names_by_image ON image_names(image_id);
    CREATE TABLE sandboxes (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        data TEXT NOT NULL
    );
    CREATE TABLE containers (
        id TEXT PRIMARY KEY,
        sandbox_id TEXT NOT NULL,
        name TEXT NOT NULL UNIQUE,
        data TEXT NOT NULL
    );
    CREATE INDEX containers_by_sandbox ON containers(sandbox_id);
    CREATE TABLE settings (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    """,
    # 2: unpacked layer snapshots (pycri/images/snapshots.py): chain id -> short numeric dir under <root>/snapshots.
    """
    CREATE TABLE snapshots (
        chain_id TEXT PRIMARY KEY,
        num INTEGER NOT NULL UNIQUE,
        parent TEXT,
        data TEXT NOT NULL
    );
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)


class StoreError(Exception):
    """The metadata store cannot be opened or is from a newer pycri."""


class Store:
    """A thread-safe handle on the metadata database.

    Calls are short (indexed lookups, single-row writes), so they run under one lock on whichever thread calls;
    `transaction()` groups several statements into one atomic commit.
    """

    def __init__(self, path: Path, *, sync_full: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # the store holds every container's config (env: secrets): root's alone, from the start; SQLite gives its
        # -wal and -shm files the database's mode
        os.close(os.open(self.path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(f"{self.path}{suffix}"):
                os.chmod(f"{self.path}{suffix}", 0o600)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={'FULL' if sync_full else 'NORMAL'}")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._depth = 0
        self._migrate()

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: schema version {version} is newer than this pycri understands ({SCHEMA_VERSION})"
            )
        for number in range(version, SCHEMA_VERSION):
            with self.transaction():
                # executescript() would commit mid-way, so run the statements one by one inside the transaction.
                for statement in _split_statements(MIGRATIONS[number]):
                    self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version={number + 1}")

    @property
    def schema_version(self) -> int:
        with self._lock:
            return self._db.execute("PRAGMA user_version").fetchone()[0]

    @contextlib.contextmanager
    def transaction(self) -> Iterator["Store"]:
        """Run the enclosed statements atomically; nested uses join the outer transaction."""
        with self._lock:
            if self._depth == 0:
                self._db.execute("BEGIN IMMEDIATE")
            self._depth += 1
            try:
                yield self
            except BaseException:
                self._depth -= 1
                if self._depth == 0:
                    self._db.execute("ROLLBACK")
                raise
            self._depth -= 1
            if self._depth == 0:
                self._db.execute("COMMIT")

    def execute(self, sql: str, params: tuple | dict = ()) -> int:
        """Run one writing statement (committed at once outside a transaction); returns the changed row count."""
        with self._lock:
            return self._db.execute(sql, params).rowcount

    def query(self, sql: str, params: tuple | dict = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def query_one(self, sql: str, params: tuple | dict = ()) -> sqlite3.Row | None:
        with self._lock:
            return self._db.execute(sql, params).fetchone()

    def close(self) -> None:
        with self._lock:
            self._db.close()


def dumps(obj: Any) -> str:
    """JSON for the `data` columns: compact and stable."""
    return json.dumps(obj, separators=(",", ":"), sort_keys=True)


def loads(text: str) -> Any:
    return json.loads(text)


def _split_statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]
