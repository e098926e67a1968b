"""
The storage engine: versioned files, their chunks and the change log in
one SQLite database.

Everything here blocks, so only worker threads call it: writes from one
writer thread on the single writer connection, reads from any number of
reader threads, each on a connection of its own (their queries are in
L{owncdn.storage.reads}).  In WAL mode readers see the last committed
state and never wait for the writer, and the writer never waits for
them.  Every write (the version row, its chunks stored by
L{owncdn.storage.content}, the change-log row) is made inside one
transaction, which the writes waiting together share
(L{owncdn.storage.batch}), so a crash at any point leaves either the
whole version or nothing.
"""

import os
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from owncdn.errors import NoSuchFile
from owncdn.interfaces import Change, FileInfo
from owncdn.storage import (
    SMALL_FILE_LIMIT,
    check_digests,
    purge_change,
    version_id,
)
from owncdn.storage import batch, reads, staging
from owncdn.storage.batch import Outcome, Write
from owncdn.storage.changelog import (
    info_from_change,
    last_change_id,
    next_change_id,
    prune_versions,
    read_meta,
    record_change,
    record_purge,
    write_meta,
    write_transaction,
)
from owncdn.storage.chunks import CHUNK_SIZE
from owncdn.storage.connection import ReaderConnections
from owncdn.storage.content import StoredContent, store_content, written_version
from owncdn.storage.reads import LoadedVersion
from owncdn.storage.schema import SYNCHRONOUS, connect_writer

# SQLite checkpoints the WAL into the database file in the committing
# thread once the WAL holds this many pages (its default).  After a
# write of more than BIG_WRITE bytes that would copy the whole body a
# second time, and fsync it, before the upload is acknowledged; so such
# a write turns automatic checkpoints off for its commit, and
# StorageEngine.checkpoint (which the service queues in the writer
# thread right behind it, or else the next write runs first) does the
# copy.  The commit still fsyncs the WAL: durability is the same.
AUTOCHECKPOINT_PAGES = 1000
BIG_WRITE = 16 * CHUNK_SIZE


class StorageClosed(Exception):
    """
    The engine is not open (never opened, failed to open, or closed).
    """


@dataclass(frozen=True)
class DatabaseState:
    """
    What the service keeps in memory about the database once open.

    @ivar last_applied: the newest change applied from the primary
        (replicas; 0 otherwise).
    @ivar source_dbid: the C{dbid} of the primary those changes came
        from, C{None} before the first.
    """

    dbid: str
    last_change_id: int
    last_applied: int
    source_dbid: str | None
    next_staged_id: int = 1
    staged_discarded: int = 0


class StorageEngine:
    """
    One storage database.  L{open} and every write method run in the
    writer thread; the read methods in any thread.
    """

    def __init__(self, db_path: Path, chunk_size: int = CHUNK_SIZE,
                 small_file_limit: int = SMALL_FILE_LIMIT):
        self.db_path = Path(db_path)
        self.chunk_size = chunk_size
        self.small_file_limit = small_file_limit
        self.dbid: str | None = None
        self._writer: sqlite3.Connection | None = None
        self._readers = ReaderConnections(self.db_path)
        # A big write committed without checkpointing (see BIG_WRITE).
        self.checkpoint_due = False
        # The thread pool that hashes big bodies beside the writer (the
        # service's; without one, BodyDigests starts threads).
        self.digest_pool = None
        # Uploads stored as they arrive (owncdn.storage.staging).
        self.staged = staging.StagedUploads(self._defer_checkpoint)
        # The ID the next change of the open transaction gets, once
        # known (see _change_id).
        self._next_id: int | None = None

    def open(self) -> DatabaseState:
        """
        Create or upgrade the database and open the writer connection.
        """
        conn = connect_writer(self.db_path)
        try:
            # No upload is in progress yet: staged content is a crash's.
            with write_transaction(conn):
                discarded = staging.discard_all(conn)
        except BaseException:
            conn.close()
            raise
        self.dbid = read_meta(conn, "dbid")
        self._writer = conn
        return DatabaseState(
            dbid=self.dbid,
            last_change_id=last_change_id(conn),
            last_applied=int(read_meta(conn, "last_applied") or 0),
            source_dbid=read_meta(conn, "source_dbid"),
            next_staged_id=staging.next_staged_id(conn),
            staged_discarded=discarded,
        )

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
            raise StorageClosed(f"{self.db_path} is not open")
        self.checkpoint()
        self._next_id = None
        return write_transaction(self._writer)

    def _change_id(self, conn: sqlite3.Connection) -> int:
        """
        L{next_change_id}, asked of SQLite once per transaction: each
        change a write records there sets the next one (L{_recorded}).
        A write that fails records nothing, so the write after it gets
        the same ID, as it would from SQLite (its savepoint, or the
        whole transaction, is rolled back; a new transaction asks again).
        """
        if self._next_id is None:
            self._next_id = next_change_id(conn)
        return self._next_id

    def _recorded(self, change_id: int) -> None:
        # The last step of a write that recorded change change_id.
        self._next_id = change_id + 1

    def checkpoint(self) -> None:
        """
        Copy the WAL into the database file after a big write, and turn
        automatic checkpoints back on; nothing to do otherwise.  Writer
        thread only.
        """
        if not self.checkpoint_due or self._writer is None:
            return
        if self.staged.hold_checkpoint():
            return
        self.checkpoint_due = False
        self.staged.checkpointed()
        self._writer.execute(f"PRAGMA wal_autocheckpoint = {AUTOCHECKPOINT_PAGES}")
        self._writer.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def flush_wal(self) -> None:
        """
        Have the WAL's data written to the disk now (C{fdatasync}), from
        any thread: the writes committed without an fsync (staged
        chunks) then cost the next commit's fsync little.  Durability
        does not depend on it.
        """
        try:
            fd = os.open(f"{self.db_path}-wal", os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)

    def _reader(self) -> sqlite3.Connection:
        if self._writer is None:
            raise StorageClosed(f"{self.db_path} is not open")
        return self._readers.get()

    # Writes: writer thread only.  Each write method builds a Write for
    # write_batch; put, delete, purge and apply_change make one at once.

    def write_batch(self, writes: Sequence[Write],
                    committed: Callable[[list[Outcome]], object]) -> None:
        """
        Make C{writes} in order, in as few transactions as
        L{owncdn.storage.batch} allows; a write that fails is undone
        alone.

        @param committed: called (in this thread) after each commit with
            the outcomes of the writes that transaction held, in order.
            When a commit fails, each of its writes fails with that
            error.
        """
        batch.write_batch(self._writing, writes, self.chunk_size, committed, self._fsync_commits)

    def _fsync_commits(self, fsync: bool) -> None:
        if self._writer is not None:
            self._writer.execute(f"PRAGMA synchronous = {SYNCHRONOUS if fsync else 'NORMAL'}")

    def write(self, write: Write):
        """
        Make one write in a transaction of its own.

        @return: its result.
        @raise Exception: what the write raised.
        """
        outcomes: list[Outcome] = []
        self.write_batch([write], outcomes.extend)
        (success, result), = outcomes
        if not success:
            raise result
        return result

    def put_write(self, path: str, body: BinaryIO, content_type: str,
                  metadata: dict | None, expected_md5: bytes | None,
                  expected_sha256: bytes | None, now: float) -> Write:
        """
        Store C{body} as the new current version of C{path}.  Its result
        is the C{(Change, LoadedVersion)} written.  The write is C{big}
        exactly when C{body} was staged in this database (it then takes
        the staged content).

        @raise BadDigest: an expected digest did not match; nothing was
            stored.
        """
        # A staged body is big: make gets it as it is, not read ahead.
        staged = self._staged_here(body)

        def make(conn: sqlite3.Connection, body: BinaryIO) -> tuple[Change, LoadedVersion]:
            change_id = self._change_id(conn)
            if staged is None:
                content_id = None
                content = self._store_content(conn, change_id, body)
            else:
                content_id = staging.content_key(staged.staged_id)
                digests = self.staged.take(conn, staged, body)
                content = StoredContent(staged.size, digests["md5"].digest(),
                                   digests["sha256"].digest(), staged.chunk_count,
                                   None, None, False)
            check_digests(content.md5, content.sha256, expected_md5, expected_sha256)
            change = Change(
                id=change_id, time=now, op="put", path=path,
                version=version_id(change_id), size=content.size,
                etag=content.md5.hex(), sha256=content.sha256.hex(),
                content_type=content_type, metadata=dict(metadata or {}),
            )
            record_change(conn, change, self.chunk_size, content_id=content_id)
            written = self._written(change, content)
            self._recorded(change_id)
            return change, written

        return Write(make, body, big=staged is not None)

    def _staged_here(self, body: object) -> staging.StagedContent | None:
        """
        The staged content behind C{body} if it was staged in this
        database; a body staged in another is read like any other.
        """
        staged = staging.staged_of(body)
        return staged if staged is not None and staged.owner is self else None

    def put(self, path: str, body: BinaryIO, content_type: str,
            metadata: dict | None, expected_md5: bytes | None,
            expected_sha256: bytes | None, now: float) -> tuple[Change, LoadedVersion]:
        """
        L{put_write}, made at once.
        """
        return self.write(self.put_write(path, body, content_type, metadata,
                                         expected_md5, expected_sha256, now))

    def delete_write(self, path: str, now: float) -> Write:
        """
        Add a delete marker on top of C{path}.  Its result is the
        marker's L{Change}.

        @raise NoSuchFile: C{path} has no live current version.
        """
        def make(conn: sqlite3.Connection, _: None) -> Change:
            if not conn.execute("SELECT 1 FROM files WHERE path = ?", (path,)).fetchone():
                raise NoSuchFile(f"no file {path!r}")
            change_id = self._change_id(conn)
            change = Change(
                id=change_id, time=now, op="delete", path=path,
                version=version_id(change_id), size=0, etag="", sha256=None,
                content_type="", metadata={},
            )
            record_change(conn, change, self.chunk_size)
            self._recorded(change_id)
            return change

        return Write(make)

    def delete(self, path: str, now: float) -> Change:
        """
        L{delete_write}, made at once.
        """
        return self.write(self.delete_write(path, now))

    def purge_write(self, path: str, version: str, now: float) -> Write:
        """
        Remove one version of C{path} for good (a put or a delete
        marker); when it was the newest, the one before becomes current.
        See L{owncdn.storage.changelog.record_purge}.  Its result is the
        purge change and the L{FileInfo} the version had, or C{None}
        (and no change) when C{path} has no such version.
        """
        def make(conn: sqlite3.Connection, _: None) -> tuple[Change, FileInfo] | None:
            found = conn.execute(
                "SELECT 1 FROM changes WHERE path = ? AND version = ? AND op != 'purge'"
                " AND pruned = 0", (path, version),
            ).fetchone()
            if found is None:
                return None
            change = purge_change(self._change_id(conn), now, path, version)
            target = record_purge(conn, change, self.chunk_size)
            self._recorded(change.id)
            return change, info_from_change(target, False)

        return Write(make)

    def purge(self, path: str, version: str, now: float) -> tuple[Change, FileInfo] | None:
        """
        L{purge_write}, made at once.
        """
        return self.write(self.purge_write(path, version, now))

    def apply_write(self, change: Change, body: BinaryIO | None,
                    source_dbid: str | None = None, after: int | None = None) -> Write:
        """
        Write a change made on the primary, under its change ID and
        version, together with the C{last_applied} mark and the
        primary's C{dbid}.  Its result is the loaded version of a put
        with content, else C{None}.

        @param body: the content of a put; C{None} when the primary no
            longer has it (pruned), which records the change without
            content.
        @param after: the change applied just before this one must be
            C{after}, so that changes applied back to back, each in its
            own savepoint, stop at the first that fails.
        @raise BadDigest: C{body} is not what the change describes.
        @raise ValueError: C{change} is not newer than the log, or does
            not follow C{after}.
        """
        def make(conn: sqlite3.Connection, body: BinaryIO | None) -> LoadedVersion | None:
            newest = last_change_id(conn)
            if change.id <= newest:
                raise ValueError(f"change {change.id} is not after change {newest}")
            if after is not None:
                applied = int(read_meta(conn, "last_applied") or 0)
                if applied != after:
                    raise ValueError(f"change {change.id} follows change {after}, "
                                     f"but the last applied is change {applied}")
            content = None
            if change.op == "put" and body is not None:
                content = self._store_content(conn, change.id, body)
                check_digests(
                    content.md5, content.sha256, bytes.fromhex(change.etag),
                    bytes.fromhex(change.sha256) if change.sha256 else None,
                )
            if change.op == "purge":
                record_purge(conn, change, self.chunk_size)
            else:
                record_change(conn, change, self.chunk_size,
                              pruned=change.op == "put" and content is None)
            write_meta(conn, "last_applied", str(change.id))
            if source_dbid is not None:
                write_meta(conn, "source_dbid", source_dbid)
            # The primary's ID: SQLite's counter may stand higher (a
            # rewound replica), so the next write asks it again.
            self._next_id = None
            return None if content is None else self._written(change, content)

        return Write(make, body)

    def apply_change(self, change: Change, body: BinaryIO | None,
                     source_dbid: str | None = None,
                     after: int | None = None) -> LoadedVersion | None:
        """
        L{apply_write}, made at once.
        """
        return self.write(self.apply_write(change, body, source_dbid, after))

    def _store_content(self, conn: sqlite3.Connection, change_id: int,
                       body: BinaryIO) -> StoredContent:
        content = store_content(conn, change_id, body, self.chunk_size, self.digest_pool)
        if content.size > BIG_WRITE:
            self._defer_checkpoint(conn)
        return content

    def _defer_checkpoint(self, conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        self.checkpoint_due = True

    def _written(self, change: Change, content: StoredContent) -> LoadedVersion:
        return written_version(change, content, self.chunk_size, self.small_file_limit)

    def prune(self, cutoff: float) -> int:
        """
        L{prune_versions} up to C{cutoff}, in a transaction of its own.

        @return: how many versions were pruned.
        """
        with self._writing() as conn:
            return prune_versions(conn, cutoff)

    # Reads: any thread, each on its own connection (owncdn.storage.reads).

    def open_version(self, path: str, version: str | None = None) -> LoadedVersion:
        """
        L{reads.open_version}, small files with their content.
        """
        return reads.open_version(self._reader(), path, version, self.small_file_limit)

    def read_chunk(self, change_id: int, index: int, decode: bool = True) -> bytes:
        """
        L{reads.read_chunk}.
        """
        return reads.read_chunk(self._reader(), change_id, index, decode)

    def list_files(self, prefix: str, after: str | None,
                   limit: int) -> tuple[list[FileInfo], str | None]:
        """
        L{reads.list_files}.
        """
        return reads.list_files(self._reader(), prefix, after, limit)

    def versions(self, path: str) -> list[FileInfo]:
        """
        L{reads.versions}.
        """
        return reads.versions(self._reader(), path)

    def list_versions(self, prefix: str, after: tuple[str, str | None] | None,
                      limit: int) -> tuple[list[FileInfo], tuple[str, str] | None]:
        """
        L{reads.list_versions}.
        """
        return reads.list_versions(self._reader(), prefix, after, limit)

    def changes_after(self, after: int, limit: int) -> list[Change]:
        """
        L{reads.changes_after}.
        """
        return reads.changes_after(self._reader(), after, limit)
