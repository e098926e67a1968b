"""
Tests for L{owncdn.storage.restore}: reading the change log and
rewinding a storage database to an earlier change.
"""

import io
from datetime import datetime, timezone
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from owncdn.errors import NoSuchFile
from owncdn.lockfile import FileLock, is_locked
from owncdn.storage.engine import StorageEngine
from owncdn.storage.restore import DatabaseInUse, RestoreError, read_log, rewind
from owncdn.storage.schema import connect


class RestoreCase(SynchronousTestCase):
    def setUp(self):
        folder = Path(self.mktemp())
        folder.mkdir()
        self.db = folder / "media.db"
        self.engine = StorageEngine(self.db)
        self.engine.open()
        self.addCleanup(self.engine.close)

    def put(self, path: str, data: bytes, now: float):
        change, _ = self.engine.put(path, io.BytesIO(data), "text/plain", None, None, None, now)
        return change

    def reopen(self) -> StorageEngine:
        self.engine.close()
        self.engine = StorageEngine(self.db)
        self.engine.open()
        return self.engine

    def snapshot(self, paths) -> dict:
        """
        Everything a client can see of C{paths}: the listing, each path's
        versions, and the bytes of every kept version.
        """
        seen = {"list": self.engine.list_files("", None, 1000)}
        for path in paths:
            try:
                versions = self.engine.versions(path)
            except NoSuchFile:
                seen[path] = None
                continue
            seen[path] = [
                (v, None if v.deleted else self.read(path, v.version)) for v in versions
            ]
        return seen

    def read(self, path: str, version: str) -> bytes:
        loaded = self.engine.open_version(path, version)
        if loaded.data is not None:
            return loaded.data
        size, chunk = loaded.stored.info.size, loaded.stored.chunk_size
        return b"".join(self.engine.read_chunk(loaded.stored.change_id, i)
                        for i in range((size + chunk - 1) // chunk))

    def history(self) -> int:
        """
        Some changes, then more; returns the change ID in between.
        """
        self.put("a", b"a1", 100.0)
        self.put("b", b"b1" * 600_000, 110.0)
        self.put("a", b"a2", 120.0)
        self.engine.delete("b", 130.0)
        return self.engine.changes_after(0, 100)[-1].id


class RewindTests(RestoreCase):
    PATHS = ("a", "b", "c")

    def test_rewind_restores_point(self):
        """Files, versions and bytes are exactly as they were at the change ID."""
        point = self.history()
        before = self.snapshot(self.PATHS)
        dbid = self.engine.dbid
        self.put("a", b"a3", 200.0)
        self.put("b", b"b2", 210.0)
        self.put("c", b"c1", 220.0)
        self.engine.delete("a", 230.0)
        self.engine.close()
        result = rewind(self.db, to_id=point)
        self.assertEqual((result.point, result.removed), (point, 4))
        engine = self.reopen()
        self.assertEqual(self.snapshot(self.PATHS), before)
        self.assertEqual(engine.changes_after(point, 10), [])
        self.assertNotEqual(engine.dbid, dbid)
        self.assertEqual(engine.dbid, result.dbid)
        self.assertIntact()

    def test_ids_not_reused(self):
        """After a rewind new changes get IDs past every ID ever handed out."""
        point = self.history()
        self.put("a", b"later", 200.0)
        self.engine.close()
        rewind(self.db, to_id=point)
        engine = self.reopen()
        change, _ = engine.put("a", io.BytesIO(b"new"), "x", None, None, None, 300.0)
        self.assertEqual(change.id, point + 2)
        self.assertEqual([c.id for c in engine.changes_after(0, 10)][-2:], [point, point + 2])

    def test_rewind_by_time(self):
        """A time rewinds to the last change made at or before it."""
        self.history()
        self.put("c", b"c", 200.0)
        self.engine.close()
        when = datetime.fromtimestamp(115.0, timezone.utc)
        result = rewind(self.db, to_time=when)
        self.assertEqual(result.point, 2)
        engine = self.reopen()
        self.assertEqual(engine.open_version("a").data, b"a1")
        self.assertEqual(self.read("b", engine.open_version("b").stored.info.version),
                         b"b1" * 600_000)
        self.assertRaises(NoSuchFile, engine.versions, "c")

    def test_rewind_to_nothing(self):
        """Rewinding to change 0 empties the store."""
        self.history()
        self.engine.close()
        self.assertEqual(rewind(self.db, to_id=0).removed, 4)
        engine = self.reopen()
        self.assertEqual(engine.list_files("", None, 10), ([], None))
        self.assertIntact()

    def test_rewind_to_the_end(self):
        """Rewinding to the newest change changes nothing, not even the dbid."""
        point = self.history()
        dbid = self.engine.dbid
        self.engine.close()
        result = rewind(self.db, to_id=point)
        self.assertEqual((result.removed, result.dbid), (0, dbid))

    def test_bad_points(self):
        """A point past the log, negative, missing or doubled is refused."""
        point = self.history()
        self.engine.close()
        self.assertRaises(RestoreError, rewind, self.db, to_id=point + 1)
        self.assertRaises(RestoreError, rewind, self.db, to_id=-1)
        self.assertRaises(RestoreError, rewind, self.db)
        self.assertRaises(RestoreError, rewind, self.db, to_id=1, to_time=5.0)
        self.assertRaises(RestoreError, rewind, self.db.with_name("missing.db"), to_id=0)

    def test_pruned_point_refused(self):
        """A point whose current version was pruned since cannot be restored."""
        self.put("a", b"a1", 100.0)
        self.put("a", b"a2", 200.0)
        self.engine.prune(1000.0)
        self.engine.close()
        error = self.assertRaises(RestoreError, rewind, self.db, to_id=1)
        self.assertIn("pruned", str(error))
        engine = self.reopen()
        self.assertEqual(engine.open_version("a").data, b"a2")

    def test_rewind_past_a_purge(self):
        """Undoing a purge of a newest delete marker brings the marker back as current."""
        self.put("a", b"a1", 100.0)
        marker = self.engine.delete("a", 110.0)
        self.engine.purge("a", marker.version, 120.0)
        self.assertEqual(self.engine.open_version("a").data, b"a1")
        self.engine.close()
        rewind(self.db, to_id=marker.id)
        engine = self.reopen()
        self.assertRaises(NoSuchFile, engine.open_version, "a")
        self.assertEqual([(v.version, v.current) for v in engine.versions("a")],
                         [("000000000001", False)])
        self.assertIntact()

    def test_rewind_keeps_a_purge(self):
        """A point after a purge keeps the purged version gone and the one before current."""
        self.put("a", b"a1", 100.0)
        second = self.put("a", b"a2", 110.0)
        self.engine.purge("a", second.version, 120.0)
        point = self.engine.changes_after(0, 10)[-1].id
        self.put("a", b"a3", 130.0)
        self.engine.close()
        rewind(self.db, to_id=point)
        engine = self.reopen()
        self.assertEqual(engine.open_version("a").data, b"a1")
        self.assertEqual([v.version for v in engine.versions("a")], ["000000000001"])

    def test_purged_point_refused(self):
        """A point whose current version was purged since cannot be restored."""
        self.put("a", b"a1", 100.0)
        second = self.put("a", b"a2", 110.0)
        self.engine.purge("a", second.version, 120.0)
        self.engine.close()
        self.assertRaises(RestoreError, rewind, self.db, to_id=second.id)

    def test_replica_last_applied_follows(self):
        """On a replica the last applied ID does not stay past the point."""
        self.history()
        conn = connect(self.db)
        conn.execute("INSERT INTO meta VALUES ('last_applied', '4')")
        conn.close()
        self.engine.close()
        rewind(self.db, to_id=2)
        engine = StorageEngine(self.db)
        self.addCleanup(engine.close)
        self.assertEqual(engine.open().last_applied, 2)

    def test_refused_while_locked(self):
        """Rewind and log refuse a database a daemon holds, and leave the lock alone."""
        self.history()
        lock = FileLock(Path(f"{self.db}.lock"))
        lock.acquire("123\n")
        self.addCleanup(lock.release)
        self.assertRaises(DatabaseInUse, rewind, self.db, to_id=1)
        self.assertRaises(DatabaseInUse, read_log, self.db)
        self.assertEqual(len(self.engine.changes_after(0, 10)), 4)
        lock.release()
        self.assertFalse(is_locked(Path(f"{self.db}.lock")))

    def assertIntact(self) -> None:
        conn = connect(self.db)
        try:
            self.assertEqual(conn.execute("PRAGMA integrity_check").fetchall(), [("ok",)])
            self.assertEqual(conn.execute(
                "SELECT count(*) FROM chunks WHERE change_id NOT IN (SELECT id FROM changes)"
            ).fetchone()[0], 0)
        finally:
            conn.close()


class ReadLogTests(RestoreCase):
    def setUp(self):
        super().setUp()
        self.history()
        self.engine.close()

    def test_newest_first(self):
        """By default the log is listed newest first."""
        self.assertEqual([c.id for c in read_log(self.db)], [4, 3, 2, 1])

    def test_forward_from_id(self):
        """Forward lists oldest first, from an ID, up to a count."""
        changes = read_log(self.db, from_id=2, count=2, forward=True)
        self.assertEqual([(c.id, c.op, c.path) for c in changes],
                         [(2, "put", "b"), (3, "put", "a")])

    def test_backward_from_time(self):
        """From a time backwards lists the changes made at or before it."""
        when = datetime.fromtimestamp(120.0, timezone.utc)
        self.assertEqual([c.id for c in read_log(self.db, from_time=when)], [3, 2, 1])
        self.assertEqual([c.id for c in read_log(self.db, from_time=120.0, forward=True)],
                         [3, 4])

    def test_missing_database(self):
        """A database file that does not exist is a RestoreError."""
        self.assertRaises(RestoreError, read_log, self.db.with_name("none.db"))
