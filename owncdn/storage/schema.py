"""
The layout of a storage database, how it is opened, and how an older
one is brought up to date.

A database records the schema version it was last migrated to in the
C{schema_version} table; L{migrate} applies every later entry of
L{MIGRATIONS} in order, each in its own transaction, so an interrupted
upgrade resumes where it stopped.  Migrations only ever move forward: a
database written by a newer OwnCDN is refused rather than guessed at.
"""

import secrets
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path

# Large pages keep a 1 MiB chunk in 64 overflow pages instead of 256
# (reads measured 1.7x faster than with 4 KiB pages) while a small put
# still dirties only a few 16 KiB pages.  Only takes effect when the
# database is created.
PAGE_SIZE = 16384
# FULL: every commit fsyncs the WAL, so an acknowledged upload survives
# power loss and kernel panics, not only the death of the process.
# (NORMAL in WAL mode survives SIGKILL too, because the WAL write()
# is done before COMMIT returns, but may lose the last commits on power
# loss.)  One fsync per upload is cheap next to the upload itself;
# docs/storage.md has the numbers.
SYNCHRONOUS = "FULL"
BUSY_TIMEOUT_MS = 10_000
# A 5 GiB upload is one transaction and so a 5 GiB WAL; after the
# checkpoint the WAL file is truncated back to this size.
JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024

# The columns of the changes table after its version, alike in every
# schema version.
_CHANGES_TAIL = """\
    size INTEGER NOT NULL,
    etag TEXT NOT NULL,
    sha256 TEXT,
    content_type TEXT NOT NULL,
    metadata TEXT NOT NULL,
    chunk_size INTEGER NOT NULL,
    superseded REAL,
    pruned INTEGER NOT NULL DEFAULT 0"""

# The indexes of the changes table in every schema version besides
# changes_by_path: by time, and partial indexes that keep each pruning
# pass proportional to what it prunes, not to the size of the log.
_CHANGES_INDEXES = """
CREATE INDEX changes_by_time ON changes (time);
CREATE INDEX changes_superseded ON changes (superseded)
    WHERE pruned = 0 AND superseded IS NOT NULL;
CREATE INDEX current_delete_markers ON changes (time)
    WHERE op = 'delete' AND superseded IS NULL AND pruned = 0;
"""

# The first entry creates everything.  Column notes:
#   changes   one row per put or delete, which is also the version it
#             made; id is the change ID.  AUTOINCREMENT so that an ID is
#             never handed out twice, not even after a rewind removed it.
#             superseded: time of the next change of the same path (NULL
#             while this is the newest), what pruning goes by.
#             pruned=1: the version's content is gone, the log row stays.
#             (Version 2 adds op 'purge'; see _allow_purge.)
#   files     the paths whose newest change is a live put (delete
#             markers are not listed): what filelist pages through.
#   chunks    content, chunk_size bytes per row before encoding;
#             compressed=1 rows are one Brotli stream each.
#   meta      dbid, last_applied (replicas).
_INITIAL = f"""
CREATE TABLE meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE changes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    op TEXT NOT NULL CHECK (op IN ('put', 'delete')),
    path TEXT NOT NULL,
    version TEXT NOT NULL UNIQUE,
{_CHANGES_TAIL}
);
CREATE INDEX changes_by_path ON changes (path, id);
{_CHANGES_INDEXES}
CREATE TABLE files (
    path TEXT PRIMARY KEY,
    change_id INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE chunks (
    change_id INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    compressed INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (change_id, idx)
);
"""

Migration = Callable[[sqlite3.Connection], None]


def new_dbid() -> str:
    """
    A fresh database identity (128 random bits, hex).
    """
    return secrets.token_hex(16)


def run_script(conn: sqlite3.Connection, script: str) -> None:
    """
    Execute the C{;}-separated statements of C{script} in the current
    transaction (C{executescript} would commit it first).
    """
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement)


def _create_initial(conn: sqlite3.Connection) -> None:
    run_script(conn, _INITIAL)
    conn.execute("INSERT INTO meta (name, value) VALUES ('dbid', ?)", (new_dbid(),))


# Version 2 lets a change be a purge: S3's DeleteObject of one version
# removes that version for good, and replicas must hear of it like any
# other change.  A purge row names the version it removed, so versions
# are unique among puts and deletes only, and changes_by_path runs
# newest first per path, the order version listings read.  SQLite cannot
# change a CHECK or a UNIQUE in place: the table is rebuilt (the usual
# twelve steps), keeping the AUTOINCREMENT high-water mark, which
# DROP TABLE would forget.
_CHANGES_V2 = f"""
CREATE TABLE changes_v2 (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    op TEXT NOT NULL CHECK (op IN ('put', 'delete', 'purge')),
    path TEXT NOT NULL,
    version TEXT NOT NULL,
{_CHANGES_TAIL}
);
INSERT INTO changes_v2 SELECT id, time, op, path, version, size, etag, sha256,
    content_type, metadata, chunk_size, superseded, pruned FROM changes;
DROP TABLE changes;
ALTER TABLE changes_v2 RENAME TO changes;
CREATE UNIQUE INDEX changes_version ON changes (version) WHERE op != 'purge';
CREATE INDEX changes_by_path ON changes (path, id DESC);
{_CHANGES_INDEXES}"""


def _allow_purge(conn: sqlite3.Connection) -> None:
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'changes'").fetchone()
    run_script(conn, _CHANGES_V2)
    if row is not None:
        conn.execute("DELETE FROM sqlite_sequence WHERE name = 'changes'")
        conn.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('changes', ?)", row)


# Version 3 lets a big upload be stored while it arrives
# (owncdn/storage/staging.py): its chunks go in, a few at a time, under
# a staged content ID that no change refers to yet (a negative chunks
# key, -staged.id), and the put that completes it points its change
# there (content_id) instead of copying them.  A change without
# content_id keeps its chunks under its own ID, as before.  staged.id
# is AUTOINCREMENT so that an ID is never handed out twice: the chunks
# of completed staged content keep that key for good.
_STAGING = """
ALTER TABLE changes ADD COLUMN content_id INTEGER;
CREATE TABLE staged (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created REAL NOT NULL
);
"""


def _allow_staging(conn: sqlite3.Connection) -> None:
    run_script(conn, _STAGING)


MIGRATIONS: Sequence[Migration] = (_create_initial, _allow_purge, _allow_staging)
SCHEMA_VERSION = len(MIGRATIONS)


class SchemaTooNew(Exception):
    """
    The database was written by a newer OwnCDN than this one.
    """


def schema_version(conn: sqlite3.Connection) -> int:
    """
    The schema version of the database C{conn} is open on; 0 for a new
    database.
    """
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    ).fetchone()
    if not exists:
        return 0
    row = conn.execute("SELECT version FROM schema_version").fetchone()
    return row[0] if row else 0


def migrate(
    conn: sqlite3.Connection, migrations: Sequence[Migration] = MIGRATIONS
) -> int:
    """
    Bring the database up to C{len(migrations)}.

    C{conn} must be in autocommit mode (C{isolation_level=None}); each
    step runs in its own C{BEGIN IMMEDIATE} transaction together with
    the version bump.

    @return: the schema version the database had before.
    @raise SchemaTooNew: the database is newer than C{migrations}.
    """
    before = schema_version(conn)
    if before > len(migrations):
        raise SchemaTooNew(
            f"the database has schema version {before}; this OwnCDN "
            f"understands up to {len(migrations)}"
        )
    for number in range(before, len(migrations)):
        conn.execute("BEGIN IMMEDIATE")
        try:
            migrations[number](conn)
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"
            )
            conn.execute("DELETE FROM schema_version")
            conn.execute("INSERT INTO schema_version VALUES (?)", (number + 1,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return before


def connect(db_path: Path, read_only: bool = False) -> sqlite3.Connection:
    """
    A connection in autocommit mode (transactions are explicit) with the
    busy timeout set; C{read_only} opens an existing database only.
    """
    if read_only:
        conn = sqlite3.connect(
            f"{Path(db_path).absolute().as_uri()}?mode=ro", uri=True,
            isolation_level=None, check_same_thread=False,
        )
    else:
        conn = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    return conn


def connect_wal(db_path: Path, synchronous: str = SYNCHRONOUS) -> sqlite3.Connection:
    """
    A connection that writes: creates the database on first use with
    our page size and switches it to WAL with the given durability (a
    disk cache, which fetches again what a power failure loses, passes
    C{NORMAL}).
    """
    conn = connect(db_path)
    try:
        conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        conn.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}")
    except BaseException:
        conn.close()
        raise
    return conn


def connect_writer(db_path: Path) -> sqlite3.Connection:
    """
    The connection that writes a storage database: L{connect_wal} with
    full durability, and pending migrations applied.
    """
    conn = connect_wal(db_path)
    migrate(conn)
    return conn
