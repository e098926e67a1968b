"""
Reading the storage database: opening a version, its chunks, the
listings of files and of versions, and the change log.

Each function runs one query on the reader connection it is given
(L{owncdn.storage.connection.ReaderConnections}: any worker thread, on
a connection of its own), which in WAL mode sees the last committed
state and never waits for the writer.  L{StorageEngine
<owncdn.storage.engine.StorageEngine>} calls them on its reader
connections; the disk cache opens its items into the same
L{StoredVersion} and L{LoadedVersion}.
"""

import sqlite3
from dataclasses import dataclass

from owncdn.errors import NoSuchFile, NoSuchVersion
from owncdn.interfaces import Change, FileInfo
from owncdn.storage import DeleteMarkerVersion, change_id_of
from owncdn.storage.changelog import (
    CHANGE_COLUMNS,
    change_from_row,
    info_from_change,
    info_from_row,
)
from owncdn.storage.chunks import decode_chunk

# The version columns, whether the version is the newest of its path,
# and (for single-chunk files) how chunk 0 is stored.  length() of a
# BLOB reads no content; the CASE reads it only for small files.
_OPEN_VERSION = f"""
    SELECT {CHANGE_COLUMNS}, c.chunk_size, c.pruned, c.superseded IS NULL,
           k.compressed, length(k.data),
           CASE WHEN c.size <= :small THEN k.data END, coalesce(c.content_id, c.id)
    FROM changes c
    LEFT JOIN chunks k ON k.change_id = coalesce(c.content_id, c.id) AND k.idx = 0
        AND c.size <= c.chunk_size
"""


@dataclass(frozen=True)
class StoredVersion:
    """
    Where one version's content lives.

    @ivar change_id: the key its chunks are stored under: the ID of the
        change that made it, or of the staged content it was stored as
        (L{owncdn.storage.staging}).
    @ivar br_size: the stored size of the content when it is one chunk
        kept Brotli-compressed (a complete C{br} stream), else C{None}.
    """

    change_id: int
    info: FileInfo
    chunk_size: int
    br_size: int | None


@dataclass(frozen=True)
class LoadedVersion:
    """
    A version opened for reading.  Small files come with their whole
    content (C{data}, and C{br} when stored compressed), so they can be
    served without going back to the database.
    """

    stored: StoredVersion
    data: bytes | None
    br: bytes | None


def prefix_upper_bound(prefix: str) -> str | None:
    """
    The smallest string greater than every string that starts with
    C{prefix}, in code point order (which is UTF-8 byte order, the order
    of SQLite's BINARY collation); C{None} when there is none.
    """
    chars = list(prefix)
    while chars:
        code = ord(chars.pop()) + 1
        if 0xD800 <= code <= 0xDFFF:
            code = 0xE000
        if code <= 0x10FFFF:
            return "".join(chars) + chr(code)
    return None


def open_version(conn: sqlite3.Connection, path: str, version: str | None,
                 small_file_limit: int) -> LoadedVersion:
    """
    Find the current version of C{path}, or the given version; with its
    content when it is at most C{small_file_limit} bytes.

    @raise NoSuchFile: C{path} has no live current version.
    @raise NoSuchVersion: C{path} has no version C{version}.
    @raise DeleteMarkerVersion: that version is a delete marker.
    """
    params = {"small": small_file_limit, "path": path, "version": version}
    if version is None:
        row = conn.execute(
            _OPEN_VERSION + " JOIN files f ON f.change_id = c.id WHERE f.path = :path",
            params,
        ).fetchone()
        if row is None:
            raise NoSuchFile(f"no file {path!r}")
    else:
        row = conn.execute(
            _OPEN_VERSION + " WHERE c.version = :version AND c.op != 'purge'"
            " AND c.path = :path",
            params,
        ).fetchone()
        if row is None or row[11]:  # unknown, or pruned
            raise NoSuchVersion(f"no version {version!r} of {path!r}")
    change = change_from_row(row)
    chunk_size, _, current, compressed, stored_size, stored, key = row[10:]
    if change.op == "delete":
        raise DeleteMarkerVersion(f"version {version!r} of {path!r} is a delete marker")
    found = StoredVersion(
        change_id=key, info=info_from_change(change, bool(current)),
        chunk_size=chunk_size, br_size=stored_size if compressed else None,
    )
    if change.size > small_file_limit:
        return LoadedVersion(found, None, None)
    if change.size == 0:
        return LoadedVersion(found, b"", None)
    return LoadedVersion(
        found, decode_chunk(stored, bool(compressed)),
        stored if compressed else None,
    )


def read_chunk(conn: sqlite3.Connection, change_id: int, index: int,
               decode: bool = True) -> bytes:
    """
    One chunk of a version: its original bytes, or with C{decode=False}
    the bytes as stored.

    @raise NoSuchVersion: the chunk is gone (the version was pruned
        while it was being read).
    """
    row = conn.execute(
        "SELECT compressed, data FROM chunks WHERE change_id = ? AND idx = ?",
        (change_id, index),
    ).fetchone()
    if row is None:
        raise NoSuchVersion(f"the content of change {change_id} is no longer stored")
    return decode_chunk(row[1], bool(row[0])) if decode else row[1]


def list_files(conn: sqlite3.Connection, prefix: str, after: str | None,
               limit: int) -> tuple[list[FileInfo], str | None]:
    """
    Current live files under C{prefix}, after C{after}, in UTF-8 byte
    order; see L{owncdn.interfaces.IReadableFiles.list}.
    """
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")
    where = ["f.path >= :prefix"]
    upper = prefix_upper_bound(prefix)
    if upper is not None:
        where.append("f.path < :upper")
    if after is not None:
        where.append("f.path > :after")
    rows = conn.execute(
        f"SELECT {CHANGE_COLUMNS} FROM files f JOIN changes c ON c.id = f.change_id"
        f" WHERE {' AND '.join(where)} ORDER BY f.path LIMIT :limit",
        {"prefix": prefix, "upper": upper, "after": after, "limit": limit + 1},
    ).fetchall()
    infos = [info_from_row(row, True) for row in rows[:limit]]
    return infos, (infos[-1].path if len(rows) > limit else None)


def versions(conn: sqlite3.Connection, path: str) -> list[FileInfo]:
    """
    Every kept version of C{path}, delete markers included, newest
    first.

    @raise NoSuchFile: none is kept.
    """
    rows = conn.execute(
        f"SELECT {CHANGE_COLUMNS}, c.superseded IS NULL FROM changes c"
        " WHERE c.path = ? AND c.pruned = 0 ORDER BY c.id DESC",
        (path,),
    ).fetchall()
    if not rows:
        raise NoSuchFile(f"no file {path!r}")
    return [info_from_change(change_from_row(row), bool(row[10])) for row in rows]


def list_versions(conn: sqlite3.Connection, prefix: str,
                  after: tuple[str, str | None] | None,
                  limit: int) -> tuple[list[FileInfo], tuple[str, str] | None]:
    """
    Kept versions (delete markers included) of every path under
    C{prefix}: paths in UTF-8 byte order, each path's versions newest
    first; see L{owncdn.interfaces.IVersionedFiles.list_versions}.
    """
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")
    where = ["c.path >= :lower", "c.op != 'purge'", "c.pruned = 0"]
    params = {"lower": prefix, "limit": limit + 1}
    upper = prefix_upper_bound(prefix)
    if upper is not None:
        where.append("c.path < :upper")
        params["upper"] = upper
    if after is not None:
        key, version = after
        params["lower"] = max(prefix, key)
        params["key"] = key
        if version is None:
            where.append("c.path > :key")
        else:
            where.append("(c.path > :key OR (c.path = :key AND c.id < :id))")
            params["id"] = change_id_of(version)
    rows = conn.execute(
        f"SELECT {CHANGE_COLUMNS}, c.superseded IS NULL FROM changes c"
        f" WHERE {' AND '.join(where)} ORDER BY c.path, c.id DESC LIMIT :limit",
        params,
    ).fetchall()
    infos = [info_from_change(change_from_row(row), bool(row[10])) for row in rows[:limit]]
    following = (infos[-1].path, infos[-1].version) if len(rows) > limit else None
    return infos, following


def changes_after(conn: sqlite3.Connection, after: int, limit: int) -> list[Change]:
    """
    Up to C{limit} changes of the log after change C{after}, oldest
    first; see L{owncdn.interfaces.IChangeLog.changes_after}.
    """
    rows = conn.execute(
        f"SELECT {CHANGE_COLUMNS} FROM changes c WHERE c.id > ? ORDER BY c.id LIMIT ?",
        (after, limit),
    ).fetchall()
    return [change_from_row(row) for row in rows]
