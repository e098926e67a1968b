"""
The reader connections of one SQLite database: one per thread, made on
the thread's first read, all closed together.

The storage engine and the disk cache database both read from a few
worker threads while one writer thread writes; in WAL mode each reader
thread on a connection of its own sees the last committed state and
never waits for the writer.  (Their writer connections come from
L{owncdn.storage.schema.connect_wal}.)
"""

import sqlite3
import threading
from pathlib import Path

from owncdn.storage.schema import connect


class ReaderConnections:
    """
    @param db_path: the database file.
    """

    def __init__(self, db_path: Path):
        self.db_path = Path(db_path)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def get(self) -> sqlite3.Connection:
        """
        The calling thread's read-only connection, opened on first use.
        """
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.db_path)
            conn.execute("PRAGMA query_only = 1")
            with self._lock:
                self._all.append(conn)
            self._local.conn = conn
        return conn

    def close(self) -> None:
        """
        Close every thread's connection; a later L{get} opens a new one.
        Call once no reader thread is reading.
        """
        with self._lock:
            readers, self._all = self._all, []
        self._local = threading.local()
        for conn in readers:
            conn.close()
