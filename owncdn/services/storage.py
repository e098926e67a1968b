"""
The C{storage} service: a versioned object store in one SQLite database.

The service owns the database's threads: one writer thread (SQLite
allows one writer at a time, and a single thread makes the order of
commits the order of requests) and a few reader threads.  The reactor
thread only dispatches to them and routes results; it never touches
SQLite, Brotli or the upload's file.  Writes wait in a queue of the
service (L{owncdn.services.writequeue}); whenever the writer thread is
free it takes every write waiting and commits them together, see
L{owncdn.storage.batch}.  Two things stay in memory because the service
sees every write: the newest change ID, and the newest version of small
files, so that most small GETs finish without a thread hop.
"""

import os
from collections.abc import Callable, Mapping
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import BinaryIO

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from owncdn.digests import Digest
from owncdn.errors import ReadOnlyReplica
from owncdn.interfaces import (
    Change,
    FileInfo,
    IChangeLog,
    IReadableFiles,
    IVersionedFiles,
    IWritableFiles,
)
from owncdn.lockfile import FileLock, LockedByOther, lock_note
from owncdn.paths import fold_case
from owncdn.storage import guess_content_type
from owncdn.storage.batch import Outcome, Write
from owncdn.storage.bodies import BytesBody, StoredBody
from owncdn.storage.changelog import info_from_change
from owncdn.storage.engine import StorageClosed, StorageEngine
from owncdn.storage.reads import LoadedVersion
from owncdn.services.staging import StagedBody, UploadStaging
from owncdn.services.writequeue import WriteQueue
from owncdn.storage.smallfiles import SmallFileCache
from owncdn.storage.staging import staged_of
from owncdn.threads import wait_in_pool

log = Logger()

# SQLite reads release the GIL; a few threads overlap page-cache misses
# and decompression without crowding two cores.
READER_THREADS = 4
# Pruning runs this often, and at start.  Shorter keepVersions get more
# frequent passes so that a version outlives its keep time by at most a
# tenth of it (at least a minute apart; each pass costs what it prunes).
PRUNE_INTERVAL = 3600.0
MIN_PRUNE_INTERVAL = 60.0

# Threads hashing big bodies beside the thread that stores them: one
# per digest of an upload, a few uploads side by side (and writing the
# WAL out behind staged uploads, see owncdn.services.staging).
DIGEST_THREADS = 4

ChangeListener = Callable[[Change], object]


def prune_interval(keep_versions: bool | float) -> float | None:
    """
    Seconds between pruning passes; C{None} when versions are kept
    forever.
    """
    if keep_versions is True:
        return None
    keep = 0.0 if keep_versions is False else float(keep_versions)
    return min(PRUNE_INTERVAL, max(MIN_PRUNE_INTERVAL, keep / 10))


@implementer(IReadableFiles, IWritableFiles, IVersionedFiles, IChangeLog)
class StorageService(Service):
    """
    A storage service over the database at C{db_path}.

    While running it holds C{<db_path>.lock}, which is how C{owncdn log}
    and C{owncdn rewind} know to keep their hands off.

    @ivar change_listeners: callables invoked on the reactor thread with
        each L{Change} once it is committed (the replication feed).
    @param make_pool: builds a thread pool from C{(minthreads,
        maxthreads, name)}; tests pass pools that run jobs inline.
    """

    def __init__(self, db_path: Path, reactor, *, case_sensitive: bool = True,
                 keep_versions: bool | float = True, replica: dict | None = None,
                 make_pool: Callable[[int, int, str], ThreadPool] = ThreadPool):
        self.db_path = Path(db_path)
        self.case_sensitive = case_sensitive
        self.keep_versions = keep_versions
        self.replica = replica
        self.change_listeners: list[ChangeListener] = []
        self.dbid: str | None = None
        self._reactor = reactor
        self._make_pool = make_pool
        self._engine = StorageEngine(self.db_path)
        self._lock = FileLock(Path(f"{self.db_path}.lock"))
        self._writer_pool: ThreadPool | None = None
        self._reader_pool: ThreadPool | None = None
        self._digest_pool: ThreadPool | None = None
        self._staging = UploadStaging(
            self._engine, reactor, self._write,
            lambda: self._writer_pool is not None and not self._closing)
        self._pruning: LoopingCall | None = None
        self._small_files = SmallFileCache()
        self._last_change_id = 0
        self._last_applied = 0
        self._source_dbid: str | None = None
        # Bumped after every commit; a read that started before a commit
        # must not put what it read into the small-file cache.
        self._commits = 0
        self._writes = WriteQueue(reactor, self._write_batch)
        self._closing = False

    # Service

    def startService(self) -> None:
        """
        Take the database lock, open the database in the writer thread
        and start the reader threads.

        Start-up waits for the open (it happens before the daemon serves
        anything), so that a database that is locked, corrupt or too new
        stops the daemon with its error, and so that the change IDs kept
        in memory are right before any other service asks for them.

        @raise LockedByOther: another process holds the database.
        """
        try:
            self._lock.acquire(f"{os.getpid()}\n")
        except LockedByOther:
            raise LockedByOther(
                f"{self.db_path} is in use by another process "
                f"(pid {lock_note(self._lock.path).strip() or 'unknown'})"
            ) from None
        name = self.db_path.stem
        self._writer_pool = self._make_pool(1, 1, f"storage-{name}-writer")
        self._writer_pool.start()
        try:
            state = wait_in_pool(self._writer_pool, self._engine.open)
        except BaseException:
            self._writer_pool.stop()
            self._writer_pool = None
            self._lock.release()
            raise
        super().startService()
        self.dbid = state.dbid
        self._last_change_id = state.last_change_id
        self._last_applied = state.last_applied
        self._source_dbid = state.source_dbid
        self._staging.next_id = state.next_staged_id
        if state.staged_discarded:
            log.info("storage {db}: deleted {count} uploads left unfinished",
                     db=str(self.db_path), count=state.staged_discarded)
        self._reader_pool = self._make_pool(0, READER_THREADS, f"storage-{name}-readers")
        self._reader_pool.start()
        self._digest_pool = self._make_pool(0, DIGEST_THREADS, f"storage-{name}-digests")
        self._digest_pool.start()
        self._engine.digest_pool = self._digest_pool
        log.info("storage {db} open at change {last}", db=str(self.db_path),
                 last=state.last_change_id)
        interval = prune_interval(self.keep_versions)
        if interval is not None:
            self._pruning = LoopingCall(self._prune_quietly)
            self._pruning.clock = self._reactor
            self._pruning.start(interval, now=True)

    def stopService(self) -> Deferred:
        """
        Stop pruning, let running reads and queued writes finish, close
        the database in the writer thread, then release the lock.  Safe
        after a failed start and when called twice.
        """
        super().stopService()
        if self._pruning is not None and self._pruning.running:
            self._pruning.stop()
        readers, self._reader_pool = self._reader_pool, None
        if readers is not None:
            readers.stop()
        writer = self._writer_pool
        if writer is None or self._closing:
            if writer is None:
                self._stop_digests()
                self._lock.release()
            return succeed(None)
        self._closing = True
        d = self._writes.drained()
        d.addCallback(lambda _: deferToThreadPool(self._reactor, writer, self._engine.close))

        def finish(result):
            self._writer_pool = None
            self._closing = False
            writer.stop()
            self._stop_digests()
            self._lock.release()
            return result

        return d.addBoth(finish)

    # Threads

    def _stop_digests(self) -> None:
        # After the queued writes: a staged upload's put waits for its
        # digests.
        digests, self._digest_pool = self._digest_pool, None
        self._engine.digest_pool = None
        if digests is not None:
            digests.stop()

    def _in_writer(self, work: Callable, *args) -> Deferred:
        if self._writer_pool is None or self._closing:
            return fail(StorageClosed(f"{self.db_path} is not running"))
        return deferToThreadPool(self._reactor, self._writer_pool, work, *args)

    def _write(self, write: Write, done: Callable[[object], object],
               failed: Callable[[], object] | None = None) -> Deferred:
        """
        L{WriteQueue.add}, or fail with L{StorageClosed} (having called
        C{failed}) once the service is stopping.
        """
        if self._writer_pool is None or self._closing:
            if failed is not None:
                failed()
            return fail(StorageClosed(f"{self.db_path} is not running"))
        return self._writes.add(write, done, failed)

    def _write_batch(self, writes: list[Write],
                     committed: Callable[[list[Outcome]], object]) -> Deferred:
        return deferToThreadPool(self._reactor, self._writer_pool, self._engine.write_batch,
                                 writes, committed)

    def _in_reader(self, work: Callable, *args) -> Deferred:
        if self._reader_pool is None:
            return fail(StorageClosed(f"{self.db_path} is not running"))
        return deferToThreadPool(self._reactor, self._reader_pool, work, *args)

    def _read_chunk(self, change_id: int, index: int, decode: bool) -> Deferred:
        return self._in_reader(self._engine.read_chunk, change_id, index, decode)

    def _key(self, path: str) -> str:
        return path if self.case_sensitive else fold_case(path)

    def _committed(self, change: Change, loaded: LoadedVersion | None) -> None:
        """
        Bring what the service keeps in memory up to date with a commit,
        then tell the listeners.
        """
        self._commits += 1
        self._last_change_id = max(self._last_change_id, change.id)
        if self._engine.checkpoint_due and self._writer_pool is not None:
            # Off the request path: the write is already durable.  (Queued
            # even while closing: it runs before the close.)
            deferToThreadPool(self._reactor, self._writer_pool,
                              self._engine.checkpoint).addErrback(
                lambda failure: log.failure("storage {db}: checkpoint failed", failure,
                                            db=str(self.db_path)))
        if loaded is not None and loaded.data is not None:
            self._small_files.add(change.path, loaded)
        else:
            self._small_files.discard(change.path)
        for listener in list(self.change_listeners):
            try:
                listener(change)
            except Exception:
                log.failure("change listener {listener!r} failed on change {id}",
                            listener=listener, id=change.id)

    # IReadableFiles

    def get(self, path: str, version: str | None = None, query: str = "") -> Deferred:
        key = self._key(path)
        cached = self._small_files.get(key)
        if cached is not None and version in (None, cached.stored.info.version):
            return succeed(self._memory_body(cached))
        commits = self._commits
        d = self._in_reader(self._engine.open_version, key, version)
        return d.addCallback(self._body, key, commits)

    def _memory_body(self, loaded: LoadedVersion) -> BytesBody:
        return BytesBody(loaded.stored.info, loaded.data, loaded.stored.chunk_size,
                         loaded.br)

    def _body(self, loaded: LoadedVersion, key: str, commits: int):
        if loaded.data is None:
            return StoredBody(loaded.stored, self._read_chunk)
        if loaded.stored.info.current and commits == self._commits:
            self._small_files.add(key, loaded)
        return self._memory_body(loaded)

    def list(self, prefix: str, after: str | None, limit: int) -> Deferred:
        after = None if after is None else self._key(after)
        return self._in_reader(self._engine.list_files, self._key(prefix), after, limit)

    # IWritableFiles

    def put(self, path: str, body: BinaryIO, content_type: str | None = None,
            metadata: dict | None = None, expected_md5: bytes | None = None,
            expected_sha256: bytes | None = None) -> Deferred:
        if self.replica is not None:
            return fail(self._read_only())
        key = self._key(path)
        write = self._engine.put_write(
            key, body, content_type or guess_content_type(key),
            metadata, expected_md5, expected_sha256, self._reactor.seconds(),
        )

        def stored(result: tuple[Change, LoadedVersion]) -> FileInfo:
            change, loaded = result
            self._committed(change, loaded)
            return loaded.stored.info

        failed = None
        if write.big:
            # The body was staged in this database (see put_write): the
            # put takes the staged content, or deletes it if it fails.
            staged = staged_of(body)
            staged.claimed = True
            failed = partial(self._staging.discard, staged.staged_id)
        return self._write(write, stored, failed)

    def stage_body(self, length: int, producer,
                   digests: Mapping[str, Callable[[], Digest]] | None = None) -> StagedBody | None:
        """
        A body to write an upload of C{length} bytes into as it arrives,
        for a L{put} of this service to take (L{owncdn.storage.staging});
        C{None} when it is not worth it (one chunk or less) or the
        service takes no writes.

        @param producer: the connection it arrives on, paused while
            storing and hashing lag behind.
        @param digests: running digests to compute besides MD5 and
            SHA-256, by algorithm (those the body reader will check).
        """
        if (self.replica is not None or self._writer_pool is None or self._closing
                or length <= self._engine.chunk_size):
            return None
        return self._staging.body(length, producer, self._digest_pool, digests)

    def delete(self, path: str) -> Deferred:
        if self.replica is not None:
            return fail(self._read_only())
        write = self._engine.delete_write(self._key(path), self._reactor.seconds())

        def deleted(change: Change) -> FileInfo:
            self._committed(change, None)
            return info_from_change(change, current=True)

        return self._write(write, deleted)

    def _read_only(self) -> ReadOnlyReplica:
        return ReadOnlyReplica(
            f"this storage service is a replica of {self.replica['sid']!r} "
            f"on {self.replica['source']!r}; write to the primary"
        )

    # IVersionedFiles

    def versions(self, path: str) -> Deferred:
        return self._in_reader(self._engine.versions, self._key(path))

    def list_versions(self, prefix: str, after: tuple[str, str | None] | None,
                      limit: int) -> Deferred:
        if after is not None:
            after = (self._key(after[0]), after[1])
        return self._in_reader(self._engine.list_versions, self._key(prefix), after, limit)

    def purge(self, path: str, version: str) -> Deferred:
        if self.replica is not None:
            return fail(self._read_only())
        write = self._engine.purge_write(self._key(path), version, self._reactor.seconds())

        def purged(result: tuple[Change, FileInfo] | None) -> FileInfo | None:
            if result is None:
                return None
            change, target = result
            self._committed(change, None)
            return target

        return self._write(write, purged)

    # IChangeLog

    def last_change_id(self) -> int:
        return self._last_change_id

    def changes_after(self, after: int, limit: int) -> Deferred:
        return self._in_reader(self._engine.changes_after, after, limit)

    # Replication and housekeeping

    def apply_change(self, change: Change, body: BinaryIO | None,
                     source_dbid: str | None = None, after: int | None = None) -> Deferred:
        """
        Apply a change read from the primary's log, under its ID and
        version, in one transaction with the C{last_applied} mark and
        the primary's C{dbid}: the replica's own write path.  Changes
        may be queued back to back without waiting for each other (they
        commit together): give each the ID of the one before as
        C{after}, and once one fails the ones queued behind it fail too
        instead of leaving a gap.

        @param body: the content of a put, C{None} for a delete or for a
            put whose content the primary has pruned (NoSuchVersion).
        @param after: when given, the change must directly follow the
            last applied change C{after}.
        @return: a Deferred that fires with C{None} once committed, or
            fails with L{owncdn.errors.BadDigest} or C{ValueError}
            (change out of order).
        """
        if not self.case_sensitive:
            change = replace(change, path=fold_case(change.path))
        write = self._engine.apply_write(change, body, source_dbid, after)

        def applied(loaded: LoadedVersion | None) -> None:
            self._last_applied = change.id
            if source_dbid is not None:
                self._source_dbid = source_dbid
            self._committed(change, loaded)

        return self._write(write, applied)

    def last_applied_id(self) -> int:
        """
        The newest change applied from the primary (0 if none).
        """
        return self._last_applied

    def source_dbid(self) -> str | None:
        """
        The C{dbid} of the primary the applied changes came from.
        """
        return self._source_dbid

    def prune_versions(self) -> Deferred:
        """
        Drop the old versions that C{keepVersions} no longer keeps.

        @return: a Deferred that fires with how many were dropped.
        """
        if self.keep_versions is True:
            return succeed(0)
        keep = 0.0 if self.keep_versions is False else float(self.keep_versions)
        return self._in_writer(self._engine.prune, self._reactor.seconds() - keep)

    def _prune_quietly(self) -> Deferred:
        # A failed pass is logged and the next one tries again; letting
        # the failure through would stop the LoopingCall for good.
        d = self.prune_versions()
        d.addCallback(lambda count: count and log.info(
            "storage {db}: pruned {count} old versions", db=str(self.db_path),
            count=count))
        d.addErrback(lambda failure: log.failure(
            "storage {db}: pruning failed", failure, db=str(self.db_path)))
        return d


def build(service_config, context) -> StorageService:
    """
    The storage service of one C{services} entry: its database is
    C{<data_dir>/<sid>.db}.
    """
    options = service_config.options
    return StorageService(
        Path(context.data_dir) / f"{service_config.id}.db",
        context.reactor,
        case_sensitive=options["caseSensitive"],
        keep_versions=options["keepVersions"],
        replica=options["replica"],
    )
