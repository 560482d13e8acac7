"""SQLite files under the state directory: opened one way everywhere (WAL, shared by threads)."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def open_database(path: Path, schema: str) -> sqlite3.Connection:
    """Open (creating it and its directory if needed) a database for one owner's use.

    Autocommit, WAL and synchronous=NORMAL: each write is its own transaction, readers never
    block the writer, and a power cut loses at most the last writes, never the file. The
    connection may be used from several threads; its owner serialises access with a lock.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    db.executescript(schema)
    return db
