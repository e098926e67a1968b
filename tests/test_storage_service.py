"""
Tests for L{owncdn.services.storage}: the storage service around the
SQLite engine, run without threads (inline pools, a L{Clock}) except
where real threads are the point.
"""

import io
import os
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase

from owncdn.config import ServiceConfig
from owncdn.errors import NoSuchFile, NoSuchVersion, ReadOnlyReplica
from owncdn.lockfile import FileLock, LockedByOther, is_locked
from owncdn.registry import ServiceContext
from owncdn.services.storage import StorageService, build, prune_interval
from owncdn.services.writequeue import BATCH_WRITES
from owncdn.storage import SMALL_FILE_LIMIT
from owncdn.storage.chunks import CHUNK_SIZE
from owncdn.storage.engine import StorageClosed
from owncdn.testing import InlineThreadPool, ThreadlessClock
from tests.storage_contract import TEXT, FileServiceContractMixin


class Harness:
    """
    Storage services on files in a temporary folder, with inline thread
    pools that remember themselves so tests can look at them.
    """

    def setUp(self):
        self.clock = ThreadlessClock()
        self.clock.advance(1_700_000_000)
        self.folder = Path(self.mktemp())
        self.folder.mkdir()
        self.pools: list[InlineThreadPool] = []
        self.count = 0
        super().setUp()

    def make_pool(self, minthreads: int, maxthreads: int, name: str) -> InlineThreadPool:
        pool = InlineThreadPool(minthreads, maxthreads, name)
        self.pools.append(pool)
        return pool

    def new_service(self, db: str | None = None, **options) -> StorageService:
        if db is None:
            self.count += 1
            db = f"s{self.count}.db"
        return StorageService(self.folder / db, self.clock, make_pool=self.make_pool,
                              **options)

    def start(self, service: StorageService) -> StorageService:
        service.startService()
        self.addCleanup(self.stop, service)
        return service

    def stop(self, service: StorageService) -> None:
        if service.running:
            self.successResultOf(service.stopService())

    def make_files(self, case_sensitive: bool = True) -> StorageService:
        return self.start(self.new_service(case_sensitive=case_sensitive))

    def readers(self, service: StorageService) -> InlineThreadPool:
        return service._reader_pool

    def writer(self, service: StorageService) -> InlineThreadPool:
        return service._writer_pool

    @contextmanager
    def queued_writes(self):
        """
        Hold back the writer's answer to the first write: the writes
        after it queue, and go to the writer together when it ends.
        """
        writer = self.writer(self.files)
        writer.hold()
        try:
            yield
        finally:
            writer.release()


class SQLiteStorageContractTests(Harness, FileServiceContractMixin, SynchronousTestCase):
    """
    The shared contract, against the SQLite storage service.
    """


class SmallFileMemoryTests(Harness, SynchronousTestCase):
    def setUp(self):
        super().setUp()
        self.service = self.make_files()

    def put(self, path: str, data: bytes):
        return self.successResultOf(self.service.put(path, io.BytesIO(data)))

    def test_cached_get_uses_no_thread(self):
        """A small file just written is served from memory, already fired."""
        self.put("small.css", TEXT)
        readers = self.readers(self.service)
        jobs = readers.jobs
        body = self.successResultOf(self.service.get("small.css"))
        self.assertEqual(self.successResultOf(body.read(0, 1 << 20)), TEXT)
        self.assertIsNotNone(body.alternate("br"))
        self.assertEqual(readers.jobs, jobs)

    def test_write_replaces_cached_file(self):
        """A new version or a delete replaces what memory serves."""
        self.put("page.html", b"one")
        self.put("page.html", b"two")
        body = self.successResultOf(self.service.get("page.html"))
        self.assertEqual(self.successResultOf(body.read(0, 10)), b"two")
        self.successResultOf(self.service.delete("page.html"))
        self.failureResultOf(self.service.get("page.html"), NoSuchFile)

    def test_large_file_not_cached(self):
        """Files over the small-file limit are read from the database each time."""
        self.put("large.bin", os.urandom(SMALL_FILE_LIMIT + 1))
        readers = self.readers(self.service)
        jobs = readers.jobs
        self.successResultOf(self.service.get("large.bin"))
        self.assertEqual(readers.jobs, jobs + 1)

    def test_read_fills_cache(self):
        """After a restart the first read of a small file fills memory."""
        self.put("logo.svg", b"<svg/>")
        self.successResultOf(self.service.stopService())
        service = self.start(self.new_service("s1.db"))
        readers = self.readers(service)
        for _ in range(3):
            body = self.successResultOf(service.get("logo.svg"))
            self.assertEqual(self.successResultOf(body.read(0, 100)), b"<svg/>")
        self.assertEqual(readers.jobs, 1)

    def test_old_version_by_id_from_memory(self):
        """Asking for the cached version by its ID is served from memory too."""
        info = self.put("v.txt", b"v")
        readers = self.readers(self.service)
        jobs = readers.jobs
        self.successResultOf(self.service.get("v.txt", info.version))
        self.assertEqual(readers.jobs, jobs)

    def test_read_older_than_commit_not_cached(self):
        """A read that raced a commit does not put stale bytes into memory."""
        self.put("race.txt", b"old")
        self.successResultOf(self.service.stopService())
        service = self.start(self.new_service("s1.db"))
        readers = self.readers(service)
        readers.hold()
        stale = service.get("race.txt")
        self.successResultOf(service.put("race.txt", io.BytesIO(b"new")))
        readers.release()
        self.assertEqual(self.successResultOf(self.successResultOf(stale).read(0, 9)), b"old")
        body = self.successResultOf(service.get("race.txt"))
        self.assertEqual(self.successResultOf(body.read(0, 9)), b"new")


class GroupCommitTests(Harness, SynchronousTestCase):
    def setUp(self):
        super().setUp()
        self.files = self.make_files()

    def test_waiting_writes_share_one_transaction(self):
        """Writes that queue behind a busy writer go to it in one job and one commit."""
        writer = self.writer(self.files)
        jobs = writer.jobs
        with self.queued_writes():
            puts = [self.files.put(f"q/{n}", io.BytesIO(b"%d" % n)) for n in range(10)]
        self.assertEqual(writer.jobs, jobs + 2)
        for d in puts:
            self.successResultOf(d)
        self.successResultOf(self.files.stopService())
        again = self.start(self.new_service("s1.db"))
        listed, _ = self.successResultOf(again.list("q/", None, 20))
        self.assertEqual(len(listed), 10)

    def test_listeners_hear_in_order_before_answers(self):
        """Each committed write is announced in order, before any caller of its batch hears back."""
        heard = []
        answered = []
        self.files.change_listeners.append(lambda change: heard.append(change.path))
        with self.queued_writes():
            for path in ("a", "b", "c"):
                self.files.put(path, io.BytesIO(b"x")).addCallback(
                    lambda info: answered.append((info.path, list(heard))))
        self.assertEqual(heard, ["a", "b", "c"])
        self.assertEqual(answered, [("a", ["a"]), ("b", ["a", "b", "c"]),
                                    ("c", ["a", "b", "c"])])

    def test_batches_are_bounded(self):
        """No more than BATCH_WRITES writes go to the writer thread at a time."""
        writer = self.writer(self.files)
        jobs = writer.jobs
        with self.queued_writes():
            puts = [self.files.put(f"b/{n}", io.BytesIO(b"x")) for n in range(BATCH_WRITES + 2)]
        self.assertEqual(writer.jobs, jobs + 3)
        self.assertEqual(len([self.successResultOf(d) for d in puts]), BATCH_WRITES + 2)

    def test_stop_finishes_queued_writes(self):
        """Stopping answers every write already queued (committed), then refuses new ones."""
        with self.queued_writes():
            puts = [self.files.put(f"s/{n}", io.BytesIO(b"x")) for n in range(3)]
            stopped = self.files.stopService()
            self.assertNoResult(stopped)
            self.failureResultOf(self.files.put("late", io.BytesIO(b"x")), StorageClosed)
        self.successResultOf(stopped)
        self.assertEqual(len([self.successResultOf(d) for d in puts]), 3)
        again = self.start(self.new_service("s1.db"))
        self.assertEqual(again.last_change_id(), 3)


class LifecycleTests(Harness, SynchronousTestCase):
    def test_lock_held_while_running(self):
        """The database lock is held while running and released on stop."""
        service = self.start(self.new_service("life.db"))
        lock = self.folder / "life.db.lock"
        self.assertTrue(is_locked(lock))
        self.successResultOf(service.stopService())
        self.assertFalse(is_locked(lock))
        self.successResultOf(service.stopService())

    def test_refuses_database_in_use(self):
        """Start-up fails with LockedByOther when another holder has the lock."""
        other = FileLock(self.folder / "busy.db.lock")
        other.acquire("4242\n")
        self.addCleanup(other.release)
        service = self.new_service("busy.db")
        error = self.assertRaises(LockedByOther, service.startService)
        self.assertIn("4242", str(error))
        self.assertFalse(service.running)
        self.successResultOf(service.stopService())

    def test_unreadable_database_stops_start(self):
        """A corrupt database file stops start-up and leaves nothing held."""
        (self.folder / "bad.db").write_bytes(b"this is not a database" * 1000)
        service = self.new_service("bad.db")
        self.assertRaises(sqlite3.DatabaseError, service.startService)
        self.assertFalse(is_locked(self.folder / "bad.db.lock"))
        self.successResultOf(service.stopService())

    def test_state_survives_restart(self):
        """The change ID and dbid known in memory are reloaded at start."""
        service = self.start(self.new_service("keep.db"))
        self.successResultOf(service.put("a", io.BytesIO(b"a")))
        self.successResultOf(service.put("b", io.BytesIO(b"b")))
        dbid = service.dbid
        self.successResultOf(service.stopService())
        again = self.start(self.new_service("keep.db"))
        self.assertEqual((again.last_change_id(), again.dbid), (2, dbid))

    def test_stopped_service_refuses_work(self):
        """Calls after stop fail instead of hanging."""
        service = self.start(self.new_service())
        self.successResultOf(service.stopService())
        self.failureResultOf(service.list("", None, 10))
        self.failureResultOf(service.put("x", io.BytesIO(b"x")))

    def test_build_from_configuration(self):
        """build() makes <data_dir>/<sid>.db with the configured options."""
        options = {"caseSensitive": False, "keepVersions": 60.0, "replica": None}
        context = ServiceContext(self.folder, self.clock, None, None)
        service = build(ServiceConfig("media", "storage", "Media", {}, options), context)
        self.assertEqual(service.db_path, self.folder / "media.db")
        self.assertEqual((service.case_sensitive, service.keep_versions), (False, 60.0))
        self.assertIsNone(service.replica)


class ReplicaTests(Harness, SynchronousTestCase):
    def test_replica_refuses_client_writes(self):
        """A replica refuses put, delete and purge with ReadOnlyReplica."""
        service = self.start(self.new_service(replica={"source": "hq", "sid": "media"}))
        self.failureResultOf(service.put("x", io.BytesIO(b"x")), ReadOnlyReplica)
        self.failureResultOf(service.delete("x"), ReadOnlyReplica)
        self.failureResultOf(service.purge("x", "000000000001"), ReadOnlyReplica)

    def test_replica_applies_and_remembers(self):
        """Applied changes and the source dbid survive a restart of the replica."""
        primary = self.start(self.new_service())
        info = self.successResultOf(primary.put("p", io.BytesIO(b"payload")))
        change = self.successResultOf(primary.changes_after(0, 1))[0]
        replica = self.start(self.new_service(
            "replica.db", replica={"source": "hq", "sid": "media"}))
        heard = []
        replica.change_listeners.append(heard.append)
        self.successResultOf(replica.apply_change(change, io.BytesIO(b"payload"), primary.dbid))
        self.assertEqual(heard, [change])
        body = self.successResultOf(replica.get("p", info.version))
        self.assertEqual(body.info, info)
        self.successResultOf(replica.stopService())
        again = self.start(self.new_service(
            "replica.db", replica={"source": "hq", "sid": "media"}))
        self.assertEqual((again.last_applied_id(), again.source_dbid()),
                         (change.id, primary.dbid))
        self.assertEqual(again.last_change_id(), change.id)

    def test_pruned_put_recorded_without_content(self):
        """A put whose bytes the primary pruned is logged but serves nothing."""
        primary = self.start(self.new_service())
        self.successResultOf(primary.put("gone", io.BytesIO(b"1")))
        change = self.successResultOf(primary.changes_after(0, 1))[0]
        replica = self.start(self.new_service(replica={"source": "hq", "sid": "m"}))
        self.successResultOf(replica.apply_change(change, None, primary.dbid))
        self.failureResultOf(replica.get("gone"), NoSuchFile)
        self.failureResultOf(replica.get("gone", change.version), NoSuchVersion)
        self.assertEqual(replica.last_applied_id(), change.id)


class PruningTests(Harness, SynchronousTestCase):
    def versions(self, service, path):
        return [v.version for v in self.successResultOf(service.versions(path))]

    def test_interval(self):
        """Passes run hourly at most, a tenth of keepVersions, a minute at least."""
        self.assertIsNone(prune_interval(True))
        self.assertEqual(prune_interval(False), 60.0)
        self.assertEqual(prune_interval(600.0), 60.0)
        self.assertEqual(prune_interval(7200.0), 720.0)
        self.assertEqual(prune_interval(30 * 86400.0), 3600.0)

    def test_old_versions_pruned_on_schedule(self):
        """A version superseded longer ago than keepVersions disappears."""
        service = self.start(self.new_service(keep_versions=7200.0))
        first = self.successResultOf(service.put("f", io.BytesIO(b"1")))
        self.clock.advance(100)
        second = self.successResultOf(service.put("f", io.BytesIO(b"2")))
        self.clock.advance(7200 - 1)
        self.assertEqual(self.versions(service, "f"), [second.version, first.version])
        self.clock.advance(720)
        self.assertEqual(self.versions(service, "f"), [second.version])
        self.failureResultOf(service.get("f", first.version), NoSuchVersion)
        changes = self.successResultOf(service.changes_after(0, 10))
        self.assertEqual([c.version for c in changes], [first.version, second.version])

    def test_keep_none(self):
        """keepVersions false leaves only current versions after the next pass."""
        service = self.start(self.new_service(keep_versions=False))
        self.successResultOf(service.put("f", io.BytesIO(b"1")))
        current = self.successResultOf(service.put("f", io.BytesIO(b"2")))
        self.successResultOf(service.put("d", io.BytesIO(b"3")))
        self.successResultOf(service.delete("d"))
        self.clock.advance(60)
        self.assertEqual(self.versions(service, "f"), [current.version])
        self.failureResultOf(service.versions("d"), NoSuchFile)
        self.assertEqual(service.last_change_id(), 4)

    def test_keep_forever(self):
        """keepVersions true never prunes."""
        service = self.start(self.new_service(keep_versions=True))
        self.successResultOf(service.put("f", io.BytesIO(b"1")))
        self.successResultOf(service.put("f", io.BytesIO(b"2")))
        self.clock.advance(10 * 365 * 86400)
        self.assertEqual(len(self.versions(service, "f")), 2)
        self.assertEqual(self.successResultOf(service.prune_versions()), 0)

    def test_pruning_at_start(self):
        """Start-up runs a pass at once, for versions that expired while stopped."""
        service = self.start(self.new_service("p.db", keep_versions=False))
        self.successResultOf(service.put("f", io.BytesIO(b"1")))
        self.successResultOf(service.put("f", io.BytesIO(b"2")))
        self.successResultOf(service.stopService())
        again = self.start(self.new_service("p.db", keep_versions=False))
        self.assertEqual(len(self.versions(again, "f")), 1)


class ThreadedServiceTests(TestCase):
    """
    The service with real thread pools on the real reactor.
    """

    @inlineCallbacks
    def test_round_trip_in_threads(self):
        """Writes, reads, listing and stop work in threads, none on the reactor's."""
        folder = Path(self.mktemp())
        folder.mkdir()
        service = StorageService(folder / "threads.db", reactor)
        engine_threads = set()
        for name in ("open", "write_batch", "open_version", "read_chunk", "list_files", "close"):
            self.patch(service._engine, name, self.recorded(
                getattr(service._engine, name), engine_threads))
        service.startService()
        data = os.urandom(CHUNK_SIZE * 2 + 7)
        info = yield service.put("big", io.BytesIO(data))
        small = yield service.put("small.txt", io.BytesIO(b"hello"))
        body = yield service.get("big")
        pieces, offset = [], 0
        while True:
            piece = yield body.read(offset, 1 << 30)
            if not piece:
                break
            pieces.append(piece)
            offset += len(piece)
        self.assertEqual(b"".join(pieces), data)
        infos, _ = yield service.list("", None, 10)
        self.assertEqual(infos, [info, small])
        yield service.stopService()
        self.assertFalse(is_locked(folder / "threads.db.lock"))
        self.assertNotIn(threading.main_thread(), engine_threads)
        self.assertGreater(len(engine_threads), 1)

    @inlineCallbacks
    def test_concurrent_writes_in_threads(self):
        """Puts issued all at once are each stored, with change IDs in the order of the calls."""
        folder = Path(self.mktemp())
        folder.mkdir()
        service = StorageService(folder / "burst.db", reactor)
        service.startService()
        self.addCleanup(service.stopService)
        bodies = [os.urandom(n * 997 % 5000) for n in range(200)]
        infos = yield gatherResults([service.put(f"burst/{n:03d}", io.BytesIO(body))
                                     for n, body in enumerate(bodies)])
        self.assertEqual([int(info.version) for info in infos], list(range(1, 201)))
        for n in (0, 57, 199):
            body = yield service.get(f"burst/{n:03d}")
            data = yield body.read(0, 1 << 20)
            self.assertEqual(data, bodies[n])

    @staticmethod
    def recorded(method, threads: set):
        def run(*args):
            threads.add(threading.current_thread())
            return method(*args)
        return run
