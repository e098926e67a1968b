"""
Point-in-time restore of a storage database: what C{owncdn log} and
C{owncdn rewind} do.

Both work on a database no daemon has open.  The storage service holds
C{<db>.lock} while it runs; these functions refuse when it is held, and
L{rewind} holds the lock itself while it writes, so a daemon cannot
open the database half-rewound.
"""

import sqlite3
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from owncdn.interfaces import Change
from owncdn.lockfile import FileLock, LockedByOther, is_locked
from owncdn.storage.changelog import (
    CHANGE_COLUMNS,
    change_from_row,
    last_change_id,
    read_meta,
    write_meta,
    write_transaction,
)
from owncdn.storage.schema import (
    SCHEMA_VERSION,
    connect,
    connect_writer,
    new_dbid,
    schema_version,
)


class RestoreError(Exception):
    """
    The log cannot be read or the rewind cannot be done; the message
    says why.
    """


class DatabaseInUse(RestoreError):
    """
    A daemon has the database open.
    """


@dataclass(frozen=True)
class RewindResult:
    """
    @ivar point: the change ID the log now ends at.
    @ivar removed: how many changes were undone.
    @ivar dbid: the database's new identity (unchanged when nothing was
        removed).
    """

    point: int
    removed: int
    dbid: str

    def __str__(self) -> str:
        return (f"now at change {self.point}, {self.removed} later changes "
                f"removed, new dbid {self.dbid}")


def _lock_path(db_path: Path) -> Path:
    return Path(f"{db_path}.lock")


def _check_usable(db_path: Path) -> None:
    if is_locked(_lock_path(db_path)):
        raise DatabaseInUse(
            f"{db_path} is open in a running daemon; stop it (or the "
            "storage service) first"
        )
    if not Path(db_path).is_file():
        raise RestoreError(f"{db_path}: no such database file")


def _seconds(when: float | datetime | None) -> float | None:
    return when.timestamp() if isinstance(when, datetime) else when


def read_log(db_path: Path, from_id: int | None = None,
             from_time: float | datetime | None = None, count: int | None = None,
             forward: bool = False) -> list[Change]:
    """
    The changes of a storage database, newest first (or oldest first
    with C{forward}).

    @param from_id: start at this change ID (inclusive).
    @param from_time: start at this time (inclusive), seconds since the
        epoch or an aware datetime.
    @param count: at most this many changes.
    @raise DatabaseInUse: a daemon has the database open.
    @raise RestoreError: no such database, or one of another schema.
    """
    db_path = Path(db_path)
    _check_usable(db_path)
    conn = connect(db_path, read_only=True)
    try:
        found = schema_version(conn)
        if found != SCHEMA_VERSION:
            raise RestoreError(
                f"{db_path} has schema version {found}, this OwnCDN reads "
                f"{SCHEMA_VERSION}: start the daemon on it once to upgrade it"
            )
        compare, order = (">=", "ASC") if forward else ("<=", "DESC")
        where, params = [], []
        if from_id is not None:
            where.append(f"c.id {compare} ?")
            params.append(from_id)
        if from_time is not None:
            where.append(f"c.time {compare} ?")
            params.append(_seconds(from_time))
        rows = conn.execute(
            f"SELECT {CHANGE_COLUMNS} FROM changes c"
            f" {'WHERE ' + ' AND '.join(where) if where else ''}"
            f" ORDER BY c.id {order} LIMIT ?",
            (*params, -1 if count is None else count),
        ).fetchall()
    finally:
        conn.close()
    return [change_from_row(row) for row in rows]


def rewind(db_path: Path, to_id: int | None = None,
           to_time: float | datetime | None = None) -> RewindResult:
    """
    Undo every change after change C{to_id}, or after the last change
    made at or before C{to_time}: files and their version lists become
    what they were then, the later changes leave the log (their IDs are
    not handed out again), and the database gets a new C{dbid} so that
    replicas notice.

    @raise DatabaseInUse: a daemon has the database open.
    @raise RestoreError: nothing or not exactly one point was given, the
        point is past the end of the log, or a version that was current
        at that point has since been pruned (it cannot come back).
    """
    if (to_id is None) == (to_time is None):
        raise RestoreError("give either a change ID or a time to rewind to")
    if to_id is not None and to_id < 0:
        raise RestoreError(f"{to_id} is not a change ID")
    db_path = Path(db_path)
    _check_usable(db_path)
    lock = FileLock(_lock_path(db_path))
    try:
        lock.acquire("owncdn rewind\n")
    except LockedByOther:
        raise DatabaseInUse(f"{db_path} was opened by another process just now") from None
    try:
        conn = connect_writer(db_path)
        try:
            with write_transaction(conn):
                result = _rewind(conn, to_id, _seconds(to_time))
            # Give back the WAL space the rewind used.
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()
    finally:
        lock.release()
    return result


def _rewind(conn: sqlite3.Connection, to_id: int | None,
            to_time: float | None) -> RewindResult:
    last = last_change_id(conn)
    if to_id is None:
        to_id = conn.execute(
            "SELECT coalesce(max(id), 0) FROM changes WHERE time <= ?", (to_time,)
        ).fetchone()[0]
    elif to_id > last:
        raise RestoreError(f"the log ends at change {last}; cannot rewind to {to_id}")
    paths = [row[0] for row in conn.execute(
        "SELECT DISTINCT path FROM changes WHERE id > ?", (to_id,)
    )]
    for path in paths:
        newest = _newest_up_to(conn, path, to_id)
        if newest is not None and newest[2] == "put" and newest[3]:
            raise RestoreError(
                f"cannot rewind to change {to_id}: version {newest[1]} of {path!r}, "
                "current at that point, has been pruned since (see keepVersions)"
            )
    removed = conn.execute("SELECT count(*) FROM changes WHERE id > ?", (to_id,)).fetchone()[0]
    if removed == 0:
        return RewindResult(to_id, 0, read_meta(conn, "dbid"))
    conn.execute("DELETE FROM chunks WHERE change_id > ?", (to_id,))
    # Content that was staged while it arrived is stored under its own key.
    conn.execute("DELETE FROM chunks WHERE change_id IN"
                 " (SELECT content_id FROM changes WHERE id > ? AND content_id IS NOT NULL)",
                 (to_id,))
    conn.execute("DELETE FROM changes WHERE id > ?", (to_id,))
    for path in paths:
        _restore_current(conn, path, _newest_up_to(conn, path, to_id))
    if int(read_meta(conn, "last_applied") or 0) > to_id:
        write_meta(conn, "last_applied", str(to_id))
    dbid = new_dbid()
    write_meta(conn, "dbid", dbid)
    return RewindResult(to_id, removed, dbid)


def _newest_up_to(conn: sqlite3.Connection, path: str, change_id: int) -> tuple | None:
    """
    C{(id, version, op, pruned)} of the newest version of C{path} up to
    C{change_id}: purges are not versions, and a version purged by then
    no longer counted.
    """
    return conn.execute(
        "SELECT id, version, op, pruned FROM changes c WHERE path = :path AND id <= :id"
        " AND op != 'purge' AND NOT EXISTS (SELECT 1 FROM changes p WHERE p.op = 'purge'"
        " AND p.path = :path AND p.version = c.version AND p.id <= :id)"
        " ORDER BY id DESC LIMIT 1",
        {"path": path, "id": change_id},
    ).fetchone()


def _restore_current(conn: sqlite3.Connection, path: str, newest: tuple | None) -> None:
    """
    Make C{newest} the current state of C{path} again.
    """
    if newest is None:
        conn.execute("DELETE FROM files WHERE path = ?", (path,))
        return
    change_id, _, op, pruned = newest
    # A purge of the newest version made the one before it current; with
    # the purge undone that one is superseded again by the next version.
    conn.execute(
        "UPDATE changes SET superseded = (SELECT min(n.time) FROM changes n"
        " WHERE n.path = changes.path AND n.id > changes.id AND n.op != 'purge')"
        " WHERE path = ? AND superseded IS NULL AND id < ?",
        (path, change_id),
    )
    conn.execute("UPDATE changes SET superseded = NULL WHERE id = ?", (change_id,))
    if op == "put" and not pruned:
        conn.execute("INSERT OR REPLACE INTO files (path, change_id) VALUES (?, ?)",
                     (path, change_id))
    else:
        conn.execute("DELETE FROM files WHERE path = ?", (path,))
