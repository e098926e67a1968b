"""
Tests for the storage engine and what it is built on: chunk encoding,
the schema and its migrations, pruning, and crash consistency, all on
real SQLite files.
"""

import hashlib
import io
import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from owncdn.errors import BadDigest, NoSuchFile, NoSuchVersion
from owncdn.interfaces import Change
from owncdn.storage import guess_content_type, version_id
from owncdn.storage.chunks import (
    BLOB_WRITE_SIZE,
    CHUNK_SIZE,
    MIN_COMPRESS_SIZE,
    PROBE_MIN_SIZE,
    chunk_span,
    decode_chunk,
    encode_chunk,
    looks_compressible,
    read_blocks,
)
from owncdn.storage import engine as engine_module
from owncdn.s3.checksums import PayloadDigests, VerifiedBody
from owncdn.s3.errors import S3Error
from owncdn.storage.batch import ReadAhead, groups
from owncdn.storage.changelog import record_change, write_transaction
from owncdn.storage.content import store_content
from owncdn.storage.engine import StorageClosed, StorageEngine
from owncdn.storage.reads import prefix_upper_bound
from owncdn.storage.schema import (
    MIGRATIONS,
    PAGE_SIZE,
    SCHEMA_VERSION,
    SchemaTooNew,
    connect,
    connect_writer,
    migrate,
    schema_version,
)

TEXT = b"The quick brown fox jumps over the lazy dog. " * 2000
ROOT = Path(__file__).resolve().parent.parent


class TrickleFile(io.RawIOBase):
    """
    A file whose reads return at most C{step} bytes, like a pipe, and
    that remembers the largest read asked of it.
    """

    def __init__(self, data: bytes, step: int):
        self._data = io.BytesIO(data)
        self._step = step
        self.largest_read = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        self.largest_read = max(self.largest_read, size)
        return self._data.read(min(size, self._step))


class FailingFile(io.RawIOBase):
    """
    A file that fails after giving C{good} bytes.
    """

    def __init__(self, good: int):
        self._left = good

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self._left <= 0:
            raise OSError("the client went away")
        size = min(size, self._left)
        self._left -= size
        return os.urandom(size)


class ChunkTests(SynchronousTestCase):
    def test_text_is_compressed(self):
        """Compressible chunks are stored as a Brotli stream that decodes back."""
        stored, compressed = encode_chunk(TEXT)
        self.assertTrue(compressed)
        self.assertLess(len(stored), len(TEXT) // 10)
        self.assertEqual(decode_chunk(stored, compressed), TEXT)

    def test_random_is_kept_raw(self):
        """Incompressible chunks are stored as they are."""
        data = os.urandom(CHUNK_SIZE)
        self.assertFalse(looks_compressible(data))
        self.assertEqual(encode_chunk(data), (data, False))

    def test_small_saving_is_not_worth_it(self):
        """A chunk that would shrink by under 1/32 is kept raw."""
        data = os.urandom(10_000) + b"a" * 200
        self.assertEqual(encode_chunk(data), (data, False))

    def test_small_and_empty(self):
        """Chunks that fit in one packet anyway stay raw; from MIN_COMPRESS_SIZE on they are tried whole."""
        self.assertEqual(encode_chunk(b""), (b"", False))
        small = b"a" * (MIN_COMPRESS_SIZE - 1)
        self.assertEqual(encode_chunk(small), (small, False))
        stored, compressed = encode_chunk(small + b"a")
        self.assertTrue(compressed)
        self.assertEqual(decode_chunk(stored, True), small + b"a")

    def test_probe_on_small_chunks(self):
        """From PROBE_MIN_SIZE on, a quarter of the chunk decides: noise is refused, text tried."""
        self.assertTrue(looks_compressible(os.urandom(PROBE_MIN_SIZE - 1)))
        self.assertFalse(looks_compressible(os.urandom(PROBE_MIN_SIZE)))
        self.assertTrue(looks_compressible(TEXT[:PROBE_MIN_SIZE]))
        self.assertEqual(encode_chunk(TEXT[:PROBE_MIN_SIZE])[1], True)

    def test_samples_decide(self):
        """The pre-check says no for noise and yes for text without compressing all."""
        self.assertTrue(looks_compressible(TEXT * 10))
        self.assertFalse(looks_compressible(os.urandom(200_000)))

    def test_blocks_are_full_size(self):
        """Blocks are exactly the chunk size whatever the file's reads return."""
        data = os.urandom(2500)
        source = TrickleFile(data, 7)
        blocks = list(read_blocks(source, 1000))
        self.assertEqual([len(b) for b in blocks], [1000, 1000, 500])
        self.assertEqual(b"".join(blocks), data)
        self.assertLessEqual(source.largest_read, 1000)

    def test_chunk_span(self):
        """A read stops at the end of its chunk and of the file."""
        self.assertEqual(chunk_span(0, 10, 100, 30), (0, 0, 10))
        self.assertEqual(chunk_span(25, 10, 100, 30), (0, 25, 30))
        self.assertEqual(chunk_span(30, 100, 100, 30), (1, 0, 30))
        self.assertEqual(chunk_span(95, 100, 100, 30), (3, 5, 10))
        self.assertEqual(chunk_span(100, 10, 100, 30), (3, 10, 10))
        self.assertEqual(chunk_span(500, 10, 100, 30), (16, 20, 20))
        self.assertRaises(ValueError, chunk_span, -1, 10, 100, 30)


class OrderingTests(SynchronousTestCase):
    def test_sqlite_text_order_is_utf8_byte_order(self):
        """SQLite's BINARY collation on TEXT sorts like UTF-8 bytes."""
        words = ["\U0001F600", "\uffff", "\ue000", "\u00e9", "z", "a/b", "a-b", "a", ""]
        conn = sqlite3.connect(":memory:")
        conn.execute("CREATE TABLE t (w TEXT PRIMARY KEY)")
        conn.executemany("INSERT INTO t VALUES (?)", [(w,) for w in words])
        ordered = [row[0] for row in conn.execute("SELECT w FROM t ORDER BY w")]
        self.assertEqual(ordered, sorted(words, key=lambda w: w.encode("utf-8")))

    def test_prefix_upper_bound(self):
        """The bound is just past every string with the prefix."""
        self.assertEqual(prefix_upper_bound("a/"), "a0")
        self.assertEqual(prefix_upper_bound(""), None)
        self.assertEqual(prefix_upper_bound("a\U0010FFFF"), "b")
        self.assertEqual(prefix_upper_bound("\U0010FFFF"), None)
        self.assertEqual(prefix_upper_bound("x\ud7ff"), "x\ue000")


class EngineCase(SynchronousTestCase):
    def setUp(self):
        self.folder = Path(self.mktemp())
        self.folder.mkdir()
        self.engine = self.open("files.db")

    def open(self, name: str, **kwargs) -> StorageEngine:
        engine = StorageEngine(self.folder / name, **kwargs)
        engine.open()
        self.addCleanup(engine.close)
        return engine

    def put(self, path: str, data: bytes, now: float = 1000.0):
        return self.engine.put(path, io.BytesIO(data), "text/plain", None, None, None, now)

    def count(self, sql: str) -> int:
        conn = connect(self.engine.db_path)
        try:
            return conn.execute(sql).fetchone()[0]
        finally:
            conn.close()

    def assertIntact(self) -> None:
        conn = connect(self.engine.db_path)
        try:
            self.assertEqual(conn.execute("PRAGMA integrity_check").fetchall(), [("ok",)])
            orphans = conn.execute(
                "SELECT count(*) FROM chunks WHERE change_id NOT IN (SELECT id FROM changes)"
            ).fetchone()[0]
            self.assertEqual(orphans, 0)
        finally:
            conn.close()


class SchemaTests(EngineCase):
    def test_new_database(self):
        """A new database is at the current schema, in WAL mode, with big pages."""
        conn = connect(self.engine.db_path)
        self.addCleanup(conn.close)
        self.assertEqual(schema_version(conn), SCHEMA_VERSION)
        self.assertEqual(conn.execute("PRAGMA journal_mode").fetchone()[0], "wal")
        self.assertEqual(conn.execute("PRAGMA page_size").fetchone()[0], PAGE_SIZE)
        self.assertEqual(len(self.engine.dbid), 32)

    def test_forward_migration(self):
        """A later migration upgrades an existing database and keeps its data."""
        self.put("kept", b"data")
        self.engine.close()

        def add_column(conn):
            conn.execute("ALTER TABLE changes ADD COLUMN note TEXT")

        conn = connect(self.engine.db_path)
        self.addCleanup(conn.close)
        self.assertEqual(migrate(conn, (*MIGRATIONS, add_column)), SCHEMA_VERSION)
        self.assertEqual(schema_version(conn), SCHEMA_VERSION + 1)
        self.assertEqual(conn.execute("SELECT path, note FROM changes").fetchall(),
                         [("kept", None)])

    def test_failed_migration_rolls_back(self):
        """A migration that fails leaves the database at the version before it."""
        def broken(conn):
            conn.execute("CREATE TABLE half (x)")
            raise RuntimeError("broken migration")

        conn = connect(self.engine.db_path)
        self.addCleanup(conn.close)
        self.assertRaises(RuntimeError, migrate, conn, (*MIGRATIONS, broken))
        self.assertEqual(schema_version(conn), SCHEMA_VERSION)
        self.assertIsNone(conn.execute(
            "SELECT 1 FROM sqlite_master WHERE name = 'half'").fetchone())

    def test_purge_migration(self):
        """Version 2 rebuilds the change log for purges and keeps rows and the ID high-water mark."""
        self.engine.close()
        db = self.engine.db_path.with_name("v1.db")
        conn = connect(db)
        self.addCleanup(conn.close)
        migrate(conn, MIGRATIONS[:1])
        engine = StorageEngine(db)
        conn.execute("BEGIN")
        for n in (1, 2, 3):
            record_change(conn, Change(
                id=n, time=float(n), op="put", path="p", version=version_id(n), size=0,
                etag="", sha256=None, content_type="text/plain"), CHUNK_SIZE)
        conn.execute("DELETE FROM changes WHERE id = 3")
        conn.execute("COMMIT")
        self.assertEqual(migrate(conn, MIGRATIONS), 1)
        engine.open()
        self.addCleanup(engine.close)
        self.assertEqual([v.version for v in engine.versions("p")], [version_id(2), version_id(1)])
        change, _ = engine.put("p", io.BytesIO(b"x"), "x", None, None, None, 5.0)
        self.assertEqual(change.id, 4)
        purge, target = engine.purge("p", version_id(1), 6.0)
        self.assertEqual((purge.id, purge.op, target.version), (5, "purge", version_id(1)))
        self.assertRaises(sqlite3.IntegrityError, conn.execute,
                          "INSERT INTO changes (time, op, path, version, size, etag,"
                          " content_type, metadata, chunk_size) VALUES"
                          " (1, 'put', 'q', ?, 0, '', '', '{}', 1)", (version_id(2),))

    def test_newer_database_refused(self):
        """A database from a newer OwnCDN is refused, not guessed at."""
        conn = connect(self.engine.db_path)
        self.addCleanup(conn.close)
        conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
        self.assertRaises(SchemaTooNew, connect_writer, self.engine.db_path)

    def test_closed_engine(self):
        """A closed engine refuses work with StorageClosed."""
        self.engine.close()
        self.assertRaises(StorageClosed, self.put, "x", b"x")
        self.assertRaises(StorageClosed, self.engine.list_files, "", None, 1)


class WriteTests(EngineCase):
    def test_versions_are_change_ids(self):
        """Each write gets the next change ID, and its version ID from it."""
        first, _ = self.put("a", b"1")
        marker = self.engine.delete("a", 1001.0)
        self.assertEqual((first.id, first.version), (1, version_id(1)))
        self.assertEqual((marker.id, marker.version, marker.op), (2, version_id(2), "delete"))

    def test_chunks_stored_by_choice(self):
        """Chunks are fixed-size; text ones compressed, noise ones raw."""
        engine = self.open("small-chunks.db", chunk_size=4096)
        data = TEXT[:8192] + os.urandom(5000)
        change, _ = engine.put("mixed", io.BytesIO(data), "x", None, None, None, 1.0)
        conn = connect(engine.db_path)
        self.addCleanup(conn.close)
        rows = conn.execute(
            "SELECT idx, compressed, length(data) FROM chunks WHERE change_id = ? ORDER BY idx",
            (change.id,)).fetchall()
        self.assertEqual([(i, c) for i, c, _ in rows],
                         [(0, 1), (1, 1), (2, 0), (3, 0)])
        self.assertEqual([size for _, c, size in rows if not c], [4096, 5000 - 4096])
        content = b"".join(engine.read_chunk(change.id, i) for i in range(4))
        self.assertEqual(content, data)
        self.assertEqual(engine.read_chunk(change.id, 3, decode=False), data[12288:])

    def test_chunks_either_side_of_blob_write_round_trip(self):
        """
        Chunks written into a blob (at least BLOB_WRITE_SIZE stored) and
        bound in the INSERT (smaller) read back byte for byte, raw or
        compressed.
        """
        size = BLOB_WRITE_SIZE
        engine = self.open("blob-writes.db", chunk_size=size)
        text = (TEXT * (4 * size // len(TEXT) + 1))[:size]
        data = os.urandom(size) + text + os.urandom(size - 1)
        change, _ = engine.put("mixed", io.BytesIO(data), "x", None, None, None, 1.0)
        conn = connect(engine.db_path)
        self.addCleanup(conn.close)
        rows = conn.execute(
            "SELECT compressed, length(data) FROM chunks WHERE change_id = ? ORDER BY idx",
            (change.id,)).fetchall()
        self.assertEqual(rows[0], (0, size))
        self.assertEqual(rows[1][0], 1)
        self.assertLess(rows[1][1], size)
        self.assertEqual(rows[2], (0, size - 1))
        content = b"".join(engine.read_chunk(change.id, i) for i in range(3))
        self.assertEqual(content, data)
        self.assertEqual(hashlib.md5(content).hexdigest(), change.etag)

    def test_body_read_in_bounded_blocks(self):
        """A put never asks the body for more than one chunk at a time."""
        source = TrickleFile(os.urandom(3 * CHUNK_SIZE + 5), 65536)
        change, loaded = self.engine.put("big", source, "x", None, None, None, 1.0)
        self.assertEqual(change.size, 3 * CHUNK_SIZE + 5)
        self.assertLessEqual(source.largest_read, CHUNK_SIZE)
        self.assertIsNone(loaded.data)

    def test_failed_body_leaves_nothing(self):
        """An upload that fails mid-way leaves no version, change or chunk."""
        self.put("before", b"x")
        failing = FailingFile(2 * CHUNK_SIZE + 10)
        self.assertRaises(OSError, self.engine.put, "partial", failing, "x", None, None,
                          None, 2.0)
        self.assertRaises(NoSuchFile, self.engine.open_version, "partial")
        self.assertEqual(self.count("SELECT count(*) FROM changes"), 1)
        self.assertEqual(self.engine.changes_after(0, 10)[-1].path, "before")
        self.assertIntact()
        after, _ = self.put("after", b"y")
        self.assertEqual(after.id, 2)

    def test_bad_digest_leaves_no_chunks(self):
        """A digest mismatch rolls back the chunks already written."""
        self.assertRaises(BadDigest, self.engine.put, "bad", io.BytesIO(os.urandom(CHUNK_SIZE * 2)),
                          "x", None, b"0" * 16, None, 1.0)
        self.assertEqual(self.count("SELECT count(*) FROM chunks"), 0)
        self.assertIntact()

    def test_survives_sigkill(self):
        """A SIGKILL mid-upload keeps every acknowledged upload and nothing partial."""
        script = f"""
import io, os, sys, time
sys.path.insert(0, {str(ROOT)!r})
from owncdn.storage.engine import StorageEngine
engine = StorageEngine({str(self.folder / 'killed.db')!r})
engine.open()
engine.put("done", io.BytesIO(b"d" * 3_000_000), "x", None, None, None, 1.0)
class Stall(io.RawIOBase):
    left = 3 * 1024 * 1024
    def readable(self):
        return True
    def read(self, size=-1):
        if self.left <= 0:
            print("stalled", flush=True)
            time.sleep(60)
        size = min(size, self.left)
        self.left -= size
        return os.urandom(size)
print("acknowledged", flush=True)
engine.put("partial", Stall(), "x", None, None, None, 2.0)
"""
        child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
        self.addCleanup(child.stdout.close)
        self.assertEqual(child.stdout.readline(), b"acknowledged\n")
        self.assertEqual(child.stdout.readline(), b"stalled\n")
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        engine = self.open("killed.db")
        loaded = engine.open_version("done")
        self.assertEqual(loaded.stored.info.size, 3_000_000)
        self.assertRaises(NoSuchFile, engine.open_version, "partial")
        self.assertEqual([c.path for c in engine.changes_after(0, 10)], ["done"])
        conn = connect(engine.db_path)
        self.addCleanup(conn.close)
        self.assertEqual(conn.execute("PRAGMA integrity_check").fetchall(), [("ok",)])
        self.assertEqual(conn.execute("SELECT count(*) FROM chunks").fetchone()[0], 3)

    def test_apply_change_keeps_ids(self):
        """A replicated change keeps its ID and version and marks last_applied."""
        change = Change(id=40, time=5.0, op="put", path="r", version="v-40", size=2,
                        etag=hashlib.md5(b"ab").hexdigest(),
                        sha256=hashlib.sha256(b"ab").hexdigest(), content_type="x")
        self.assertRaises(BadDigest, self.engine.apply_change, change, io.BytesIO(b"cd"))
        self.engine.apply_change(change, io.BytesIO(b"ab"), "primary-dbid")
        self.assertEqual(self.engine.changes_after(0, 5), [change])
        self.engine.close()
        reopened = StorageEngine(self.engine.db_path)
        state = reopened.open()
        self.addCleanup(reopened.close)
        self.assertEqual((state.last_change_id, state.last_applied, state.source_dbid),
                         (40, 40, "primary-dbid"))
        own, _ = reopened.put("local", io.BytesIO(b"x"), "x", None, None, None, 6.0)
        self.assertEqual(own.id, 41)


class BatchTests(EngineCase):
    def commits(self, engine: StorageEngine) -> list[str]:
        statements: list[str] = []
        engine._writer.set_trace_callback(statements.append)
        self.addCleanup(engine._writer.set_trace_callback, None)
        return statements

    def put_write(self, path: str, body, md5: bytes | None = None, engine=None):
        engine = engine or self.engine
        return engine.put_write(path, body, "x", None, md5, None, 1.0)

    def test_small_writes_share_one_commit(self):
        """Waiting small writes commit together; a failing one is undone alone, with its own error."""
        self.put("old", b"old")
        statements = self.commits(self.engine)
        committed = []
        self.engine.write_batch([
            self.put_write("a", io.BytesIO(b"a")),
            self.put_write("bad", io.BytesIO(b"b"), md5=b"0" * 16),
            self.engine.delete_write("missing", 2.0),
            self.engine.delete_write("old", 2.0),
            self.put_write("c", io.BytesIO(b"c")),
        ], committed.append)
        self.assertEqual(statements.count("COMMIT"), 1)
        (outcomes,) = committed
        self.assertEqual([success for success, _ in outcomes], [True, False, False, True, True])
        self.assertIsInstance(outcomes[1][1], BadDigest)
        self.assertIsInstance(outcomes[2][1], NoSuchFile)
        self.assertEqual([outcomes[i][1][0].id for i in (0, 4)] + [outcomes[3][1].id],
                         [2, 4, 3])
        self.assertEqual([(c.id, c.op, c.path) for c in self.engine.changes_after(1, 10)],
                         [(2, "put", "a"), (3, "delete", "old"), (4, "put", "c")])
        self.assertEqual(self.count("SELECT count(*) FROM chunks"), 3)
        self.assertIntact()

    def test_no_savepoints_while_nothing_fails(self):
        """A batch where every write succeeds is made once, without savepoints."""
        statements = self.commits(self.engine)
        committed = []
        self.engine.write_batch([self.put_write(f"f{n}", io.BytesIO(b"%d" % n)) for n in range(5)],
                                committed.append)
        self.assertEqual([success for success, _ in committed[0]], [True] * 5)
        self.assertEqual((statements.count("COMMIT"), statements.count("ROLLBACK")), (1, 0))
        self.assertNotIn("SAVEPOINT write", statements)

    def test_big_write_commits_alone(self):
        """A body of more than one chunk gets a transaction of its own, between its neighbours'."""
        engine = self.open("chunks.db", chunk_size=1024)
        data = os.urandom(3000)
        committed = []
        engine.write_batch([
            self.put_write("s1", io.BytesIO(b"1"), engine=engine),
            self.put_write("s2", io.BytesIO(b"2" * 1024), engine=engine),
            self.put_write("big", TrickleFile(data, 100), engine=engine),
            self.put_write("s3", io.BytesIO(b"3"), engine=engine),
        ], committed.append)
        self.assertEqual([[result[0].path for _, result in outcomes] for outcomes in committed],
                         [["s1", "s2"], ["big"], ["s3"]])
        content = b"".join(engine.read_chunk(committed[1][0][1][0].id, i) for i in range(3))
        self.assertEqual(content, data)

    def test_group_bytes_bounded(self):
        """Small writes past the byte budget of a transaction go in the next one."""
        engine = self.open("chunks.db", chunk_size=1024)
        committed = []
        writes = [self.put_write(f"f{n}", io.BytesIO(b"x" * 1000), engine=engine)
                  for n in range(5)]
        for group in groups(writes, 1024, group_bytes=2500):
            committed.append(len(group))
        self.assertEqual(committed, [2, 2, 1])

    def test_unreadable_body_fails_alone(self):
        """A body that fails while read ahead fails its write only."""
        committed = []
        self.engine.write_batch([
            self.put_write("a", io.BytesIO(b"a")),
            self.put_write("broken", FailingFile(10)),
            self.put_write("b", io.BytesIO(b"b")),
        ], committed.append)
        (outcomes,) = committed
        self.assertEqual([success for success, _ in outcomes], [True, False, True])
        self.assertIsInstance(outcomes[1][1], OSError)
        self.assertEqual([c.path for c in self.engine.changes_after(0, 10)], ["a", "b"])

    def test_failed_commit_fails_the_whole_group(self):
        """When the commit fails, every write of its transaction fails and nothing is stored."""
        @contextmanager
        def commit_fails(conn):
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            finally:
                conn.execute("ROLLBACK")
            raise sqlite3.OperationalError("disk I/O error")

        self.patch(engine_module, "write_transaction", commit_fails)
        committed = []
        self.engine.write_batch([
            self.put_write("a", io.BytesIO(b"a")),
            self.engine.delete_write("missing", 2.0),
            self.put_write("b", io.BytesIO(b"b")),
        ], committed.append)
        (outcomes,) = committed
        self.assertEqual([(success, str(error)) for success, error in outcomes],
                         [(False, "disk I/O error")] * 3)
        self.assertEqual(self.engine.changes_after(0, 10), [])
        self.assertIntact()

    def test_applied_changes_follow_each_other(self):
        """A change that must follow one that failed is refused, so nothing is skipped."""
        changes = [Change(id=n, time=5.0, op="put", path=f"r{n}", version=f"v{n}", size=1,
                          etag=hashlib.md5(b"%d" % n).hexdigest(), sha256=None,
                          content_type="x") for n in (3, 7, 9)]
        committed = []
        self.engine.write_batch([
            self.engine.apply_write(changes[0], io.BytesIO(b"3"), "db", after=0),
            self.engine.apply_write(changes[1], io.BytesIO(b"bad"), "db", after=3),
            self.engine.apply_write(changes[2], io.BytesIO(b"9"), "db", after=7),
        ], committed.append)
        (outcomes,) = committed
        self.assertEqual([success for success, _ in outcomes], [True, False, False])
        self.assertIsInstance(outcomes[1][1], BadDigest)
        self.assertIsInstance(outcomes[2][1], ValueError)
        self.assertEqual([c.id for c in self.engine.changes_after(0, 10)], [3])
        self.engine.apply_change(changes[1], io.BytesIO(b"7"), "db", after=3)
        self.engine.apply_change(changes[2], io.BytesIO(b"9"), "db", after=7)
        self.assertEqual([c.id for c in self.engine.changes_after(0, 10)], [3, 7, 9])


class PruneTests(EngineCase):
    def test_prune_by_superseded_time(self):
        """Versions go once replaced longer ago than the cutoff; current ones stay."""
        first, _ = self.put("f", os.urandom(CHUNK_SIZE + 1), now=100.0)
        second, _ = self.put("f", b"2", now=200.0)
        self.assertEqual(self.engine.prune(199.0), 0)
        self.assertEqual(self.engine.prune(200.0), 1)
        self.assertEqual([v.version for v in self.engine.versions("f")], [second.version])
        self.assertRaises(NoSuchVersion, self.engine.open_version, "f", first.version)
        self.assertRaises(NoSuchVersion, self.engine.read_chunk, first.id, 0)
        self.assertEqual(self.engine.changes_after(0, 5), [first, second])
        self.assertEqual(self.count("SELECT count(*) FROM chunks"), 1)
        self.assertEqual(self.engine.prune(10_000.0), 0)
        self.assertIntact()

    def test_prune_delete_markers(self):
        """A delete marker goes with the versions it hid, once older than the cutoff."""
        self.put("d", b"1", now=100.0)
        self.engine.delete("d", 300.0)
        self.assertEqual(self.engine.prune(299.0), 0)
        self.assertEqual(self.engine.prune(300.0), 2)
        self.assertRaises(NoSuchFile, self.engine.versions, "d")
        again, _ = self.put("d", b"2", now=400.0)
        self.assertEqual([v.version for v in self.engine.versions("d")], [again.version])


class ChangeIdTests(EngineCase):
    def test_ids_follow_on_across_commits(self):
        """Each change gets the ID after the last one recorded, whatever failed in between."""
        committed = []
        self.engine.write_batch([
            self.engine.put_write("a", io.BytesIO(b"a"), "x", None, None, None, 1.0),
            self.engine.put_write("bad", io.BytesIO(b"b"), "x", None, b"0" * 16, None, 1.0),
        ], committed.extend)
        # A commit that fails as a whole records nothing either.
        original = engine_module.write_transaction

        @contextmanager
        def commit_fails(conn):
            with original(conn):
                yield conn
                raise sqlite3.OperationalError("disk I/O error")

        patched = self.patch(engine_module, "write_transaction", commit_fails)
        self.assertRaises(sqlite3.OperationalError, self.put, "lost", b"l")
        patched.restore()
        marker = self.engine.delete("a", 2.0)
        purge, _ = self.engine.purge("a", version_id(1), 3.0)
        again, _ = self.put("b", b"b")
        self.assertEqual([committed[0][1][0].id, marker.id, purge.id, again.id], [1, 2, 3, 4])
        self.assertEqual([c.id for c in self.engine.changes_after(0, 10)], [1, 2, 3, 4])


class SmallBodyTests(EngineCase):
    """
    A body of at most one chunk is read ahead whole (L{ReadAhead}) and
    stored without the block-by-block machinery: the same chunk, digests
    and version as that machinery makes.
    """

    def test_same_as_read_block_by_block(self):
        """Tiny, incompressible, compressible and exactly-one-chunk bodies store the same either way."""
        engine = self.open("small.db", chunk_size=4096)
        bodies = [b"x", os.urandom(1024), b"some text " * 300, os.urandom(4096)]
        conn = engine._writer
        with write_transaction(conn):
            for index, data in enumerate(bodies):
                general = store_content(conn, 2 * index + 1, io.BytesIO(data), 4096, None)
                fast = store_content(conn, 2 * index + 2, ReadAhead(data, None), 4096, None)
                self.assertEqual(fast, general)
                self.assertEqual((fast.md5, fast.sha256, fast.size, fast.chunk_count),
                                 (hashlib.md5(data).digest(), hashlib.sha256(data).digest(), len(data), 1))
        rows = conn.execute("SELECT change_id, idx, compressed, data FROM chunks ORDER BY change_id").fetchall()
        self.assertEqual([row[1:] for row in rows[0::2]], [row[1:] for row in rows[1::2]])
        self.assertTrue(rows[4][2])

    def test_offered_digests_reused(self):
        """The digests the original body kept of its bytes are taken, not computed again."""
        offered = {"md5": hashlib.md5(b"as offered"), "sha256": hashlib.sha256(b"as offered")}

        class Source:
            def running_digest(self, algorithm):
                return offered.get(algorithm)

        conn = self.engine._writer
        with write_transaction(conn):
            content = store_content(conn, 1, ReadAhead(b"data", Source()), CHUNK_SIZE, None)
        self.assertEqual((content.md5, content.sha256),
                         (offered["md5"].digest(), offered["sha256"].digest()))

    def test_checked_payload(self):
        """An S3 payload is stored with its own digests, and one that fails its check is not stored."""
        data = os.urandom(1024)
        good = VerifiedBody(io.BytesIO(data), PayloadDigests.from_headers({}, hashlib.sha256(data).hexdigest()))
        change, loaded = self.engine.put("good", good, "x", None, None, None, 1.0)
        self.assertEqual((change.etag, change.sha256, loaded.data),
                         (hashlib.md5(data).hexdigest(), hashlib.sha256(data).hexdigest(), data))
        bad = VerifiedBody(io.BytesIO(data), PayloadDigests.from_headers({}, "0" * 64))
        error = self.assertRaises(S3Error, self.engine.put, "bad", bad, "x", None, None, None, 2.0)
        self.assertEqual(error.code, "XAmzContentSHA256Mismatch")
        self.assertEqual([c.path for c in self.engine.changes_after(0, 10)], ["good"])
        self.assertEqual(self.count("SELECT count(*) FROM chunks"), 1)
        again, _ = self.put("next", b"n")
        self.assertEqual(again.id, change.id + 1)


class ListingTests(EngineCase):
    def test_large_listing_is_fast(self):
        """A page of 1000 out of 100,000 files takes well under 50 ms."""
        conn = self.engine._writer
        conn.execute("BEGIN")
        for n in range(100_000):
            record_change(conn, Change(
                id=n + 1, time=1.0, op="put", path=f"dir{n % 10}/file{n:06d}.txt",
                version=version_id(n + 1), size=0, etag="", sha256=None,
                content_type="text/plain"), CHUNK_SIZE)
        conn.execute("COMMIT")
        for prefix, after in (("", None), ("", "dir5/file050000.txt"), ("dir7/", None)):
            self.engine.list_files(prefix, after, 1000)
            started = time.perf_counter()
            infos, following = self.engine.list_files(prefix, after, 1000)
            elapsed = time.perf_counter() - started
            self.assertEqual(len(infos), 1000)
            self.assertEqual(following, infos[-1].path)
            self.assertLess(elapsed, 0.05)


class ContentTypeTests(SynchronousTestCase):
    """
    The content type a file gets when its uploader gave none: from its
    extensions only, whatever the rest of its name.
    """

    def test_guessed(self):
        cases = {
            "a.txt": "text/plain", "photos/A.JPG": "image/jpeg", "app.js": "text/javascript",
            "x.tar.gz": "application/gzip", "x.tgz": "application/gzip", "y.json.br": "application/x-brotli",
            "x.tar.bz2": "application/x-bzip2", ".hidden.txt": "text/plain", "..a.css": "text/css",
            "a..txt": "text/plain", "dir/v1.2.3.tar.gz": "application/gzip",
            "p/photo.2026-11-27.jpg": "image/jpeg", "q?x=1.png": "application/octet-stream",
        }
        for name, expected in cases.items():
            self.assertEqual(guess_content_type(name), expected, name)

    def test_default(self):
        for name in ["noext", ".bashrc", "a.", "", "weird.unknownext", "dir.d/file"]:
            self.assertEqual(guess_content_type(name), "application/octet-stream", name)

    def test_same_extension_other_stem(self):
        """Names that share their extensions share one answer, whatever the stem."""
        self.assertEqual({guess_content_type(f"{stem}.webp") for stem in ["a", "b.c", "dir/x", ".d"]},
                         {"image/webp"})
