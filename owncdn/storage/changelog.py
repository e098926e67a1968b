"""
The change log: how a L{Change} is stored and read back.

Each row of C{changes} is both a numbered change and the version it
made, so recording a change is also what makes a version current.  The
engine writes through these functions and the offline tools in
L{owncdn.storage.restore} read and rewind through them.
"""

import json
import sqlite3
from contextlib import contextmanager

from owncdn.interfaces import Change, FileInfo

CHANGE_COLUMNS = (
    "c.id, c.time, c.op, c.path, c.version, c.size, c.etag, c.sha256, "
    "c.content_type, c.metadata"
)


def _metadata(text: str) -> dict:
    # Most files have none; a listing reads a thousand rows at a time.
    return {} if text == "{}" else json.loads(text)


def change_from_row(row: sqlite3.Row | tuple) -> Change:
    """
    The L{Change} of a row that starts with the C{CHANGE_COLUMNS}.
    """
    return Change(
        id=row[0], time=row[1], op=row[2], path=row[3], version=row[4],
        size=row[5], etag=row[6], sha256=row[7], content_type=row[8],
        metadata=_metadata(row[9]),
    )


def info_from_row(row: sqlite3.Row | tuple, current: bool) -> FileInfo:
    """
    C{info_from_change(change_from_row(row), current)} without the
    L{Change} in between, for listings.
    """
    return FileInfo(
        path=row[3], size=row[5], modified=row[1], etag=row[6], content_type=row[8],
        version=row[4], sha256=row[7], deleted=row[2] == "delete", current=current,
        metadata=_metadata(row[9]),
    )


def info_from_change(change: Change, current: bool) -> FileInfo:
    return FileInfo(
        path=change.path, size=change.size, modified=change.time,
        etag=change.etag, content_type=change.content_type,
        version=change.version, sha256=change.sha256,
        deleted=change.op == "delete", current=current,
        metadata=change.metadata,
    )


@contextmanager
def write_transaction(conn: sqlite3.Connection):
    """
    C{BEGIN IMMEDIATE} ... C{COMMIT}, rolled back on any exception.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def record_change(conn: sqlite3.Connection, change: Change, chunk_size: int,
                  pruned: bool = False, content_id: int | None = None) -> None:
    """
    Insert C{change} into the log and make it the current state of its
    path.  A pruned put (content gone) leaves the path without a live
    file, like a delete does.

    @param content_id: the key its chunks are stored under when that is
        not the change's own ID (staged content, L{owncdn.storage.staging}).
    """
    conn.execute(
        "UPDATE changes SET superseded = ? WHERE superseded IS NULL AND path = ?",
        (change.time, change.path),
    )
    _insert(conn, change, chunk_size, None, pruned, content_id)
    if change.op == "put" and not pruned:
        conn.execute(
            "INSERT OR REPLACE INTO files (path, change_id) VALUES (?, ?)",
            (change.path, change.id),
        )
    else:
        conn.execute("DELETE FROM files WHERE path = ?", (change.path,))


def record_purge(conn: sqlite3.Connection, change: Change, chunk_size: int) -> Change | None:
    """
    Insert the purge C{change} into the log and remove for good the
    version it names (C{change.version} of C{change.path}): its content
    goes and its row stays, marked pruned, so no listing shows it again.
    When it was the newest version, the newest remaining one (a put or a
    delete marker) becomes current.

    The purge row is never current and has no content: it is
    superseded and pruned from the start.

    @return: the purged version's own change, or C{None} when the path
        has no such version with content (the purge is recorded anyway:
        a replica applies every change the primary made).
    """
    _insert(conn, change, chunk_size, change.time, True)
    row = conn.execute(
        f"SELECT {CHANGE_COLUMNS}, c.superseded IS NULL FROM changes c"
        " WHERE c.path = ? AND c.version = ? AND c.op != 'purge' AND c.pruned = 0",
        (change.path, change.version),
    ).fetchone()
    if row is None:
        return None
    target = change_from_row(row)
    conn.execute("UPDATE changes SET pruned = 1, superseded = coalesce(superseded, ?)"
                 " WHERE id = ?", (change.time, target.id))
    delete_content(conn, target.id)
    if row[10]:
        newest = conn.execute(
            "SELECT id, op FROM changes WHERE path = ? AND op != 'purge' AND pruned = 0"
            " ORDER BY id DESC LIMIT 1",
            (change.path,),
        ).fetchone()
        if newest is not None:
            conn.execute("UPDATE changes SET superseded = NULL WHERE id = ?", (newest[0],))
        if newest is not None and newest[1] == "put":
            conn.execute("INSERT OR REPLACE INTO files (path, change_id) VALUES (?, ?)",
                         (change.path, newest[0]))
        else:
            conn.execute("DELETE FROM files WHERE path = ?", (change.path,))
    return target


def _metadata_json(metadata: dict) -> str:
    """
    The C{metadata} column of a change: sorted JSON, C{{}} for none
    (most files; json.dumps builds an encoder per call with sort_keys).
    """
    return json.dumps(metadata, sort_keys=True) if metadata else "{}"


_INSERT = ("INSERT INTO changes (id, time, op, path, version, size, etag, sha256,"
           " content_type, metadata, chunk_size, superseded, pruned{})"
           " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?{})")
# Only changes of staged content name a content_id (the column a
# version 3 schema added).
_INSERT_CHANGE = _INSERT.format("", "")
_INSERT_CHANGE_WITH_CONTENT = _INSERT.format(", content_id", ", ?")


def _insert(conn: sqlite3.Connection, change: Change, chunk_size: int,
            superseded: float | None, pruned: bool, content_id: int | None = None) -> None:
    row = (change.id, change.time, change.op, change.path, change.version,
           change.size, change.etag, change.sha256, change.content_type,
           _metadata_json(change.metadata), chunk_size, superseded, pruned)
    if content_id is None:
        conn.execute(_INSERT_CHANGE, row)
    else:
        conn.execute(_INSERT_CHANGE_WITH_CONTENT, (*row, content_id))


def delete_content(conn: sqlite3.Connection, change_id: int) -> None:
    """
    Delete the chunks of change C{change_id}'s version, wherever they
    are stored (its own ID, or the staged content it points to).
    """
    conn.execute(
        "DELETE FROM chunks WHERE change_id ="
        " (SELECT coalesce(content_id, id) FROM changes WHERE id = ?)", (change_id,))


def prune_versions(conn: sqlite3.Connection, cutoff: float) -> int:
    """
    Drop the content of every version superseded at or before C{cutoff}
    (the time of the change that replaced it), and of every current
    delete marker made at or before it: by then every older version of
    that path is gone too, so the marker hides nothing.  The change-log
    rows stay, marked pruned.

    @return: how many versions were pruned.
    """
    ids = [row[0] for row in conn.execute(
        """
        SELECT id FROM changes
        WHERE pruned = 0 AND superseded IS NOT NULL AND superseded <= :cutoff
        UNION ALL
        SELECT id FROM changes
        WHERE op = 'delete' AND superseded IS NULL AND pruned = 0
        AND time <= :cutoff
        """,
        {"cutoff": cutoff},
    )]
    for change_id in ids:
        delete_content(conn, change_id)
        conn.execute("UPDATE changes SET pruned = 1 WHERE id = ?", (change_id,))
    return len(ids)


def next_change_id(conn: sqlite3.Connection) -> int:
    """
    The ID the next change gets: one past the highest ever handed out,
    which AUTOINCREMENT remembers in sqlite_sequence even after a rewind
    removed those changes.
    """
    return conn.execute(
        "SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'changes'), 0) + 1"
    ).fetchone()[0]


def last_change_id(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT coalesce(max(id), 0) FROM changes").fetchone()[0]


def read_meta(conn: sqlite3.Connection, name: str) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
    return row[0] if row else None


def write_meta(conn: sqlite3.Connection, name: str, value: str) -> None:
    conn.execute("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", (name, value))
