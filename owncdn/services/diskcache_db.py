"""
The database of a C{diskcache} service: cached items and their chunks
in one SQLite file, C{<data_dir>/<sid>.db}.

Everything here blocks, so only the service's threads call it: writes
from its one writer thread, reads from its reader threads, each on a
connection of its own (WAL: readers never wait for the writer).  The
content is cut and encoded exactly as the storage engine does it
(L{owncdn.storage.chunks}: 1 MiB chunks, each Brotli-compressed when
that saves enough), and opened items are the storage engine's
L{StoredVersion}/L{LoadedVersion} (L{owncdn.storage.reads}), so the
storage service's bodies and small-file cache serve them unchanged.

An item is written while its source's body arrives, one chunk per
transaction, as a row that is not C{complete}; the transaction of its
last chunk marks it complete and the item it replaces incomplete.  The
service gives item IDs out itself (it is the only writer), so a fill's
readers know its ID before anything is written.  An item that is no
longer served but still being read is left incomplete (an orphan) until
its last reader is done; whatever is incomplete at the next open (after
a crash, say) is removed.
"""

import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from owncdn.errors import NoSuchFile
from owncdn.interfaces import FileInfo
from owncdn.services.cachepolicy import CacheKey, display_path
from owncdn.storage import SMALL_FILE_LIMIT
from owncdn.storage.changelog import write_transaction
from owncdn.storage.chunks import CHUNK_SIZE, decode_chunk, encode_chunk
from owncdn.storage.connection import ReaderConnections
from owncdn.storage.reads import LoadedVersion, StoredVersion, prefix_upper_bound
from owncdn.storage.schema import connect_wal, migrate, run_script, schema_version

# A cache can lose its last commits to a power failure without harm
# (they are fetched again); WAL with NORMAL stays consistent and does
# not fsync every item, which FULL would do in the single writer thread.
SYNCHRONOUS = "NORMAL"

# Columns: key (path as the cache keys it, query); name is path?query,
# what listings show and sort by; stored is the bytes the chunks take
# (after Brotli), what maxSize counts; validated_at and last_used drive
# refresh, expireUnused and the LRU order.
_INITIAL = """
CREATE TABLE items (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL,
    query TEXT NOT NULL,
    name TEXT NOT NULL,
    size INTEGER NOT NULL,
    stored INTEGER NOT NULL DEFAULT 0,
    chunk_size INTEGER NOT NULL,
    modified REAL NOT NULL,
    etag TEXT NOT NULL,
    content_type TEXT NOT NULL,
    version TEXT,
    sha256 TEXT,
    metadata TEXT NOT NULL,
    validated_at REAL NOT NULL,
    last_used REAL NOT NULL,
    complete INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX items_by_key ON items (path, query) WHERE complete = 1;
CREATE INDEX items_by_name ON items (name) WHERE complete = 1;
CREATE TABLE chunks (
    item_id INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    compressed INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (item_id, idx)
);
"""


def _create(conn: sqlite3.Connection) -> None:
    run_script(conn, _INITIAL)


MIGRATIONS = (_create,)

# The FileInfo of an item, named by its path (opened) or by path?query
# (listed).
_INFO_COLUMNS = "i.size, i.modified, i.etag, i.content_type, i.version, i.sha256, i.metadata"
# Like the storage engine's: chunk 0 of a single-chunk item comes with
# the row (its length always, its bytes only for small items).
_OPEN_ITEM = f"""
    SELECT i.path, {_INFO_COLUMNS}, i.chunk_size, k.compressed, length(k.data),
           CASE WHEN i.size <= :small THEN k.data END
    FROM items i
    LEFT JOIN chunks k ON k.item_id = i.id AND k.idx = 0 AND i.size <= i.chunk_size
    WHERE i.id = :id
"""


class NotACacheDatabase(Exception):
    """
    The file at the cache's path is some other database (a storage
    service's that had the same ID, say).
    """


class ItemGone(NoSuchFile):
    """
    The item was dropped (evicted, replaced, flushed) after it was
    found: the caller fetches it again.
    """


@dataclass(frozen=True)
class IndexRow:
    """
    What the service keeps in memory about one complete item.
    """

    item_id: int
    key: CacheKey
    stored: int
    validated_at: float
    last_used: float


@dataclass(frozen=True)
class Written:
    """
    What writing one chunk did.

    @ivar stored: once the item is complete, the bytes all its chunks
        take; else C{None}.
    @ivar br: the stored Brotli bytes of a complete small item held in
        one compressed chunk (its C{br} alternate), else C{None}.
    @ivar replaced: the items the completed one replaced, now orphans.
    """

    stored: int | None
    br: bytes | None
    replaced: list[int]


def _info(row) -> FileInfo:
    name, size, modified, etag, content_type, version, sha256, metadata = row[:8]
    return FileInfo(path=name, size=size, modified=modified, etag=etag,
                    content_type=content_type, version=version, sha256=sha256,
                    metadata=json.loads(metadata))


class CacheDatabase:
    """
    One disk cache's database.  L{open}, L{close} and the write methods
    run in the writer thread; the read methods in any thread.
    """

    def __init__(self, db_path: Path, chunk_size: int = CHUNK_SIZE,
                 small_limit: int = SMALL_FILE_LIMIT):
        self.db_path = Path(db_path)
        self.chunk_size = chunk_size
        self.small_limit = small_limit
        self._writer: sqlite3.Connection | None = None
        self._readers = ReaderConnections(self.db_path)

    def open(self) -> tuple[list[IndexRow], int]:
        """
        Create or upgrade the database, drop what is incomplete, and
        list the complete items, least recently used first.

        @return: the items, and the highest item ID in use.
        @raise NotACacheDatabase: the file holds another kind of
            database.
        """
        conn = connect_wal(self.db_path, SYNCHRONOUS)
        try:
            if schema_version(conn) and not conn.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'items'"
            ).fetchone():
                raise NotACacheDatabase(f"{self.db_path} is not a disk cache database")
            migrate(conn, MIGRATIONS)
            with write_transaction(conn):
                conn.execute("DELETE FROM chunks WHERE item_id IN "
                             "(SELECT id FROM items WHERE complete = 0)")
                conn.execute("DELETE FROM items WHERE complete = 0")
            rows = conn.execute(
                "SELECT id, path, query, stored, validated_at, last_used FROM items"
                " WHERE complete = 1 ORDER BY last_used, id").fetchall()
            highest = conn.execute("SELECT coalesce(max(id), 0) FROM items").fetchone()[0]
        except BaseException:
            conn.close()
            raise
        self._writer = conn
        return [IndexRow(r[0], (r[1], r[2]), r[3], r[4], r[5]) for r in rows], highest

    def close(self) -> None:
        """
        Close every connection.  Call once no reader thread is running.
        """
        self._readers.close()
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _writing(self):
        if self._writer is None:
            raise sqlite3.ProgrammingError(f"{self.db_path} is not open")
        return write_transaction(self._writer)

    def _reader(self) -> sqlite3.Connection:
        return self._readers.get()

    # Writes: writer thread only.

    def write_chunk(self, item_id: int, key: CacheKey, info: FileInfo, now: float,
                    index: int, block: bytes, last: bool) -> Written:
        """
        Store chunk C{index} of an item being filled; chunk 0 creates
        the (incomplete) item, the C{last} completes it and makes the
        item it replaces incomplete, in the same transaction.  An empty
        item is one call with an empty C{block}.
        """
        replaced: list[int] = []
        with self._writing() as conn:
            if index == 0:
                conn.execute(
                    "INSERT INTO items (id, path, query, name, size, chunk_size, modified, etag,"
                    " content_type, version, sha256, metadata, validated_at, last_used)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (item_id, key[0], key[1], display_path(key), info.size, self.chunk_size,
                     info.modified, info.etag, info.content_type, info.version, info.sha256,
                     json.dumps(info.metadata), now, now))
            stored, compressed = encode_chunk(block)
            if block:
                conn.execute(
                    "INSERT INTO chunks (item_id, idx, compressed, data) VALUES (?, ?, ?, ?)",
                    (item_id, index, compressed, stored))
            if not last:
                return Written(None, None, replaced)
            replaced = [row[0] for row in conn.execute(
                "SELECT id FROM items WHERE path = ? AND query = ? AND complete = 1", key)]
            self._orphan(conn, replaced)
            total = conn.execute(
                "SELECT coalesce(sum(length(data)), 0) FROM chunks WHERE item_id = ?",
                (item_id,)).fetchone()[0]
            conn.execute("UPDATE items SET complete = 1, stored = ?, validated_at = ?,"
                         " last_used = ? WHERE id = ?", (total, now, now, item_id))
        small_br = index == 0 and compressed and info.size <= self.small_limit
        return Written(total, stored if small_br else None, replaced)

    def discard(self, item_ids: Iterable[int]) -> None:
        """
        Drop items (complete or not) and their chunks.
        """
        with self._writing() as conn:
            for item_id in item_ids:
                conn.execute("DELETE FROM chunks WHERE item_id = ?", (item_id,))
                conn.execute("DELETE FROM items WHERE id = ?", (item_id,))

    def orphan(self, item_ids: Iterable[int]) -> None:
        """
        Stop counting items as cached, keeping their chunks for the
        readers still at them (L{discard} follows).
        """
        with self._writing() as conn:
            self._orphan(conn, list(item_ids))

    @staticmethod
    def _orphan(conn: sqlite3.Connection, item_ids: list[int]) -> int:
        if not item_ids:
            return 0
        return conn.executemany("UPDATE items SET complete = 0 WHERE id = ? AND complete = 1",
                                [(item_id,) for item_id in item_ids]).rowcount

    def touch(self, last_used: Iterable[tuple[float, int]]) -> None:
        """
        Record when items were last asked for: C{(time, item_id)}
        pairs, batched by the service so that a hit costs no write.
        """
        with self._writing() as conn:
            conn.executemany("UPDATE items SET last_used = ? WHERE id = ?", list(last_used))

    def revalidated(self, item_id: int, now: float) -> None:
        with self._writing() as conn:
            conn.execute("UPDATE items SET validated_at = ? WHERE id = ?", (now, item_id))

    def flush(self, held: Iterable[int]) -> int:
        """
        Drop every complete item; those in C{held} (being read) become
        orphans instead.  Items being filled are left to their fills.

        @return: how many items were dropped.
        """
        with self._writing() as conn:
            orphaned = self._orphan(conn, list(held))
            conn.execute("DELETE FROM chunks WHERE item_id IN "
                         "(SELECT id FROM items WHERE complete = 1)")
            return orphaned + conn.execute("DELETE FROM items WHERE complete = 1").rowcount

    # Reads: any thread.

    def open_item(self, item_id: int) -> LoadedVersion:
        """
        The item as the storage engine opens a version: small items
        with their content (and stored Brotli form), bigger ones to be
        read chunk by chunk.

        @raise ItemGone: the item is no longer stored.
        """
        row = self._reader().execute(
            _OPEN_ITEM, {"id": item_id, "small": self.small_limit}).fetchone()
        if row is None:
            raise ItemGone(f"cached item {item_id} is gone")
        info = _info(row)
        chunk_size, compressed, stored_size, stored = row[8:]
        found = StoredVersion(change_id=item_id, info=info, chunk_size=chunk_size,
                              br_size=stored_size if compressed else None)
        if info.size > self.small_limit:
            return LoadedVersion(found, None, None)
        if info.size == 0:
            return LoadedVersion(found, b"", None)
        if stored is None:
            raise ItemGone(f"cached item {item_id} lost its content")
        return LoadedVersion(found, decode_chunk(stored, bool(compressed)),
                             stored if compressed else None)

    def read_chunk(self, item_id: int, index: int, decode: bool = True) -> bytes:
        """
        @raise ItemGone: the item was dropped while it was being read.
        """
        row = self._reader().execute(
            "SELECT compressed, data FROM chunks WHERE item_id = ? AND idx = ?",
            (item_id, index)).fetchone()
        if row is None:
            raise ItemGone(f"cached item {item_id} is gone")
        return decode_chunk(row[1], bool(row[0])) if decode else row[1]

    def list_items(self, prefix: str, after: str | None,
                   limit: int) -> tuple[list[FileInfo], str | None]:
        """
        Complete items named C{path?query} under C{prefix}, after
        C{after}, in UTF-8 byte order (SQLite's BINARY collation).
        """
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        where = ["i.complete = 1", "i.name >= :prefix"]
        upper = prefix_upper_bound(prefix)
        if upper is not None:
            where.append("i.name < :upper")
        if after is not None:
            where.append("i.name > :after")
        rows = self._reader().execute(
            f"SELECT i.name, {_INFO_COLUMNS} FROM items i WHERE {' AND '.join(where)}"
            " ORDER BY i.name, i.id LIMIT :limit",
            {"prefix": prefix, "upper": upper, "after": after, "limit": limit + 1},
        ).fetchall()
        infos = [_info(row) for row in rows[:limit]]
        return infos, (infos[-1].path if len(rows) > limit else None)
