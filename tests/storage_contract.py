"""
The behaviour every versioned file store shows its callers, as a mixin
run against each implementation (the SQLite storage service and
L{owncdn.testing.MemoryFiles}).

A test case mixing this in is a C{SynchronousTestCase} and provides
C{make_files(case_sensitive=True)}, returning a ready store whose
Deferreds fire at once, and C{clock}, the L{Clock} it takes times from.
It may override C{queued_writes()}, a context manager during which
writes pile up as they would behind a busy writer, to be made together
when it ends.
"""

import hashlib
import io
import os
from contextlib import contextmanager

import brotli
from zope.interface.verify import verifyObject

from owncdn.errors import BadDigest, NoSuchFile, NoSuchVersion
from owncdn.interfaces import IChangeLog, IReadableFiles, IVersionedFiles, IWritableFiles
from owncdn.storage import DeleteMarkerVersion, change_id_of
from owncdn.storage.chunks import CHUNK_SIZE
from tests.util import read_all

TEXT = b"body { color: #333; margin: 0 auto; }\n" * 400
# Listing order is UTF-8 byte order: U+FFFF sorts before U+1F600 here,
# though not in UTF-16, and "a-b" < "a/b" < "ab".
PATHS = ["ab", "a/b", "a-b", "a", "\U0001F600", "\uffff", "\u00e9", "Z", "a/b/c"]


class FileServiceContractMixin:
    chunk_size = CHUNK_SIZE

    def setUp(self):
        super().setUp()
        self.files = self.make_files()

    @contextmanager
    def queued_writes(self):
        yield

    def put(self, path: str, data: bytes, **kwargs):
        return self.successResultOf(self.files.put(path, io.BytesIO(data), **kwargs))

    def fetch(self, path: str, version: str | None = None) -> bytes:
        return read_all(self, self.successResultOf(self.files.get(path, version)))

    def test_interfaces(self):
        """The store provides every interface of a versioned file service."""
        for interface in (IReadableFiles, IWritableFiles, IVersionedFiles, IChangeLog):
            self.assertTrue(verifyObject(interface, self.files))

    def test_round_trip(self):
        """Stored bytes come back exactly, with size, digests and content type."""
        info = self.put("css/site.css", TEXT, content_type="text/css; charset=utf-8")
        self.assertEqual(info.size, len(TEXT))
        self.assertEqual(info.etag, hashlib.md5(TEXT).hexdigest())
        self.assertEqual(info.sha256, hashlib.sha256(TEXT).hexdigest())
        self.assertEqual(info.content_type, "text/css; charset=utf-8")
        self.assertTrue(info.current)
        self.assertFalse(info.deleted)
        self.assertEqual(info.modified, self.clock.seconds())
        body = self.successResultOf(self.files.get("css/site.css"))
        self.assertEqual(body.info, info)
        self.assertEqual(read_all(self, body), TEXT)

    def test_empty_file(self):
        """An empty file round-trips as zero bytes and reads as b''."""
        info = self.put("empty", b"")
        self.assertEqual((info.size, info.etag), (0, hashlib.md5(b"").hexdigest()))
        body = self.successResultOf(self.files.get("empty"))
        self.assertEqual(self.successResultOf(body.read(0, 100)), b"")
        self.assertIsNone(body.alternate("br"))

    def test_multi_chunk_file(self):
        """A file of several chunks round-trips, each read ending at a chunk end."""
        data = os.urandom(self.chunk_size * 2 + 12345)
        self.put("big.bin", data)
        body = self.successResultOf(self.files.get("big.bin"))
        sizes = []
        offset = 0
        while piece := self.successResultOf(body.read(offset, 1 << 40)):
            sizes.append(len(piece))
            self.assertEqual(piece, data[offset:offset + len(piece)])
            offset += len(piece)
        self.assertEqual(sizes, [self.chunk_size, self.chunk_size, 12345])

    def test_read_across_chunk_boundary(self):
        """A range crossing a chunk boundary is read in two reads, exactly."""
        data = os.urandom(self.chunk_size + 100)
        self.put("range.bin", data)
        body = self.successResultOf(self.files.get("range.bin"))
        start = self.chunk_size - 10
        first = self.successResultOf(body.read(start, 30))
        self.assertEqual(first, data[start:self.chunk_size])
        second = self.successResultOf(body.read(self.chunk_size, 20))
        self.assertEqual(first + second, data[start:start + 30])
        self.assertEqual(self.successResultOf(body.read(len(data), 10)), b"")
        self.assertEqual(self.successResultOf(body.read(5, 3)), data[5:8])

    def test_versions_newest_first(self):
        """Every put is a new version; versions() lists them newest first."""
        first = self.put("doc.txt", b"one")
        self.clock.advance(1)
        second = self.put("doc.txt", b"two")
        self.assertNotEqual(first.version, second.version)
        listed = self.successResultOf(self.files.versions("doc.txt"))
        self.assertEqual([v.version for v in listed], [second.version, first.version])
        self.assertEqual([v.current for v in listed], [True, False])
        self.assertEqual([v.size for v in listed], [3, 3])
        self.assertEqual(self.fetch("doc.txt"), b"two")
        self.assertEqual(self.fetch("doc.txt", first.version), b"one")
        old = self.successResultOf(self.files.get("doc.txt", first.version))
        self.assertFalse(old.info.current)

    def test_delete_marker(self):
        """Delete adds a marker: the file is gone, its old versions are not."""
        kept = self.put("gone.txt", b"bytes")
        marker = self.successResultOf(self.files.delete("gone.txt"))
        self.assertTrue(marker.deleted)
        self.assertTrue(marker.current)
        self.failureResultOf(self.files.get("gone.txt"), NoSuchFile)
        listed = self.successResultOf(self.files.versions("gone.txt"))
        self.assertEqual([(v.version, v.deleted, v.current) for v in listed],
                         [(marker.version, True, True), (kept.version, False, False)])
        self.assertEqual(self.fetch("gone.txt", kept.version), b"bytes")
        failure = self.failureResultOf(self.files.get("gone.txt", marker.version),
                                       NoSuchVersion)
        self.assertIsInstance(failure.value, DeleteMarkerVersion)

    def test_delete_needs_a_live_file(self):
        """Deleting a missing or already deleted path is NoSuchFile."""
        self.failureResultOf(self.files.delete("never"), NoSuchFile)
        self.put("once", b"x")
        self.successResultOf(self.files.delete("once"))
        self.failureResultOf(self.files.delete("once"), NoSuchFile)

    def test_put_after_delete(self):
        """A put after a delete makes the path live and listed again."""
        self.put("back", b"1")
        self.successResultOf(self.files.delete("back"))
        self.put("back", b"2")
        self.assertEqual(self.fetch("back"), b"2")
        infos, _ = self.successResultOf(self.files.list("", None, 10))
        self.assertEqual([i.path for i in infos], ["back"])

    def test_missing(self):
        """Unknown paths and versions are NoSuchFile and NoSuchVersion."""
        self.failureResultOf(self.files.get("nothing"), NoSuchFile)
        self.failureResultOf(self.files.versions("nothing"), NoSuchFile)
        info = self.put("other", b"x")
        self.put("one", b"y")
        self.failureResultOf(self.files.get("one", "999999"), NoSuchVersion)
        self.failureResultOf(self.files.get("one", info.version), NoSuchVersion)
        self.failureResultOf(self.files.get("nothing", info.version), NoSuchVersion)

    def test_listing_order(self):
        """Listing is in UTF-8 byte order and shows current live files only."""
        for path in PATHS:
            self.put(path, path.encode())
        self.put("deleted", b"x")
        self.successResultOf(self.files.delete("deleted"))
        infos, following = self.successResultOf(self.files.list("", None, 100))
        self.assertEqual([i.path for i in infos],
                         sorted(PATHS, key=lambda p: p.encode("utf-8")))
        self.assertIsNone(following)
        self.assertEqual(infos[0].size, len(infos[0].path.encode()))

    def test_listing_pages(self):
        """Paging with after/limit visits every file once; next is None at the end."""
        paths = [f"p/{n:03d}" for n in range(7)]
        for path in paths:
            self.put(path, b"x")
        seen, after = [], None
        pages = 0
        while True:
            infos, after = self.successResultOf(self.files.list("p/", after, 3))
            pages += 1
            seen += [i.path for i in infos]
            if after is None:
                break
            self.assertEqual(after, infos[-1].path)
        self.assertEqual((seen, pages), (paths, 3))
        infos, following = self.successResultOf(self.files.list("p/", "p/003", 3))
        self.assertEqual(([i.path for i in infos], following), (paths[4:], None))

    def test_listing_prefix(self):
        """A prefix selects exactly the paths that start with it."""
        for path in PATHS:
            self.put(path, b"x")
        infos, _ = self.successResultOf(self.files.list("a/", None, 100))
        self.assertEqual([i.path for i in infos], ["a/b", "a/b/c"])
        infos, _ = self.successResultOf(self.files.list("a", "a/b", 100))
        self.assertEqual([i.path for i in infos], ["a/b/c", "ab"])
        infos, _ = self.successResultOf(self.files.list("\uffff", None, 100))
        self.assertEqual([i.path for i in infos], ["\uffff"])
        infos, _ = self.successResultOf(self.files.list("zz", None, 100))
        self.assertEqual(infos, [])

    def test_bad_digest_stores_nothing(self):
        """A body that does not match its announced digest leaves no trace."""
        before = self.files.last_change_id()
        self.failureResultOf(self.files.put(
            "bad", io.BytesIO(b"data"), expected_md5=hashlib.md5(b"other").digest()),
            BadDigest)
        self.failureResultOf(self.files.put(
            "bad", io.BytesIO(b"data"), expected_sha256=hashlib.sha256(b"x").digest()),
            BadDigest)
        self.failureResultOf(self.files.get("bad"), NoSuchFile)
        self.failureResultOf(self.files.versions("bad"), NoSuchFile)
        self.assertEqual(self.files.last_change_id(), before)
        self.assertEqual(self.successResultOf(self.files.changes_after(before, 10)), [])
        self.put("bad", b"data", expected_md5=hashlib.md5(b"data").digest(),
                 expected_sha256=hashlib.sha256(b"data").digest())

    def test_content_type_guess(self):
        """Without a content type the extension decides, else octet-stream."""
        self.assertEqual(self.put("a/site.css", b"x").content_type, "text/css")
        self.assertEqual(self.put("app.js", b"x").content_type, "text/javascript")
        self.assertEqual(self.put("README", b"x").content_type, "application/octet-stream")
        self.assertEqual(self.put("x.tar.gz", b"x").content_type, "application/gzip")

    def test_metadata_kept(self):
        """Metadata given with a put comes back with the file."""
        self.put("meta", b"x", metadata={"cache-control": "max-age=60"})
        body = self.successResultOf(self.files.get("meta"))
        self.assertEqual(body.info.metadata, {"cache-control": "max-age=60"})

    def test_case_sensitive(self):
        """A case-sensitive store keeps paths differing in case apart."""
        self.put("Readme.TXT", b"upper")
        self.put("readme.txt", b"lower")
        self.assertEqual(self.fetch("Readme.TXT"), b"upper")
        self.failureResultOf(self.files.get("README.txt"), NoSuchFile)

    def test_case_insensitive(self):
        """A case-insensitive store folds paths (not queries) on store and lookup."""
        files = self.make_files(case_sensitive=False)
        info = self.successResultOf(files.put("Dir/Photo.JPG", io.BytesIO(b"one")))
        self.assertEqual((info.path, info.content_type), ("dir/photo.jpg", "image/jpeg"))
        self.successResultOf(files.put("DIR/photo.jpg", io.BytesIO(b"two")))
        body = self.successResultOf(files.get("dir/PHOTO.jpg"))
        self.assertEqual(read_all(self, body), b"two")
        listed = self.successResultOf(files.versions("Dir/Photo.jpg"))
        self.assertEqual(len(listed), 2)
        infos, _ = self.successResultOf(files.list("DIR/", None, 10))
        self.assertEqual([i.path for i in infos], ["dir/photo.jpg"])
        self.successResultOf(files.put("Q?Size=Big", io.BytesIO(b"q")))
        self.assertEqual(read_all(self, self.successResultOf(files.get("q?Size=Big"))), b"q")
        self.failureResultOf(files.get("q?size=big"), NoSuchFile)
        self.successResultOf(files.delete("DIR/PHOTO.JPG"))
        self.failureResultOf(files.get("dir/photo.jpg"), NoSuchFile)

    def test_change_log(self):
        """Puts and deletes are numbered changes, in order, after any ID."""
        first = self.put("log/a", b"a")
        self.clock.advance(5)
        marker = self.successResultOf(self.files.delete("log/a"))
        changes = self.successResultOf(self.files.changes_after(0, 10))
        self.assertEqual([(c.op, c.path, c.version) for c in changes],
                         [("put", "log/a", first.version), ("delete", "log/a", marker.version)])
        self.assertLess(changes[0].id, changes[1].id)
        self.assertEqual(changes[0].etag, first.etag)
        self.assertEqual(changes[1].time - changes[0].time, 5)
        self.assertEqual(self.files.last_change_id(), changes[1].id)
        self.assertEqual(self.successResultOf(self.files.changes_after(0, 1)), changes[:1])
        self.assertEqual(self.successResultOf(self.files.changes_after(changes[1].id, 5)), [])

    def test_change_listeners(self):
        """Listeners hear of every committed change."""
        heard = []
        self.files.change_listeners.append(heard.append)
        self.put("heard", b"x")
        self.successResultOf(self.files.delete("heard"))
        self.assertEqual([c.op for c in heard], ["put", "delete"])
        self.assertEqual(heard[-1].id, self.files.last_change_id())

    def test_writes_made_together(self):
        """Writes issued together each get their own answer; change IDs follow the calls' order."""
        self.put("together/old", b"old")
        with self.queued_writes():
            first = [self.files.put(f"together/{n}", io.BytesIO(b"%d" % n)) for n in range(3)]
            bad = self.files.put("together/bad", io.BytesIO(b"x"),
                                 expected_md5=hashlib.md5(b"y").digest())
            missing = self.files.delete("together/none")
            deleted = self.files.delete("together/old")
            last = self.files.put("together/3", io.BytesIO(b"3"))
        infos = [self.successResultOf(d) for d in first + [deleted, last]]
        self.failureResultOf(bad, BadDigest)
        self.failureResultOf(missing, NoSuchFile)
        ids = [change_id_of(info.version) for info in infos]
        self.assertEqual(ids, list(range(ids[0], ids[0] + 5)))
        changes = self.successResultOf(self.files.changes_after(ids[0] - 1, 10))
        self.assertEqual([(c.op, c.path) for c in changes],
                         [("put", "together/0"), ("put", "together/1"), ("put", "together/2"),
                          ("delete", "together/old"), ("put", "together/3")])
        listed, _ = self.successResultOf(self.files.list("together/", None, 10))
        self.assertEqual([i.path for i in listed], [f"together/{n}" for n in range(4)])
        self.assertEqual([self.fetch(f"together/{n}") for n in range(4)],
                         [b"0", b"1", b"2", b"3"])

    def test_brotli_alternate(self):
        """A compressible one-chunk file offers its stored bytes as br."""
        self.put("style.css", TEXT)
        body = self.successResultOf(self.files.get("style.css"))
        self.assertIsNone(body.alternate("gzip"))
        encoded = body.alternate("br")
        stream = read_all(self, encoded)
        self.assertEqual(encoded.info.size, len(stream))
        self.assertLess(len(stream), len(TEXT))
        self.assertEqual(brotli.decompress(stream), TEXT)
        self.assertIsNone(encoded.alternate("br"))

    def test_no_brotli_alternate(self):
        """Incompressible and multi-chunk files have no br alternate."""
        self.put("noise", os.urandom(5000))
        self.assertIsNone(self.successResultOf(self.files.get("noise")).alternate("br"))
        self.put("long.txt", TEXT * (self.chunk_size // len(TEXT) + 1))
        self.assertIsNone(self.successResultOf(self.files.get("long.txt")).alternate("br"))

    def test_apply_change(self):
        """A replicated change is stored under the primary's ID and version."""
        source = self.make_files()
        source.put("r/x", io.BytesIO(b"abc"))
        source.delete("r/x")
        source.put("r/y", io.BytesIO(b"yy"))
        for change in self.successResultOf(source.changes_after(0, 10)):
            data = read_all(self, self.successResultOf(
                source.get(change.path, change.version))) if change.op == "put" else None
            self.successResultOf(self.files.apply_change(
                change, None if data is None else io.BytesIO(data), source.dbid))
        self.assertEqual(self.successResultOf(self.files.changes_after(0, 10)),
                         self.successResultOf(source.changes_after(0, 10)))
        self.assertEqual(self.files.last_applied_id(), source.last_change_id())
        self.assertEqual(self.files.source_dbid(), source.dbid)
        self.assertEqual(self.fetch("r/y"), b"yy")
        self.failureResultOf(self.files.get("r/x"), NoSuchFile)

    def test_apply_change_checks(self):
        """A replicated change out of order or with wrong bytes is refused."""
        source = self.make_files()
        source.put("r/z", io.BytesIO(b"right"))
        change = self.successResultOf(source.changes_after(0, 1))[0]
        self.failureResultOf(self.files.apply_change(change, io.BytesIO(b"wrong")), BadDigest)
        self.failureResultOf(self.files.get("r/z"), NoSuchFile)
        self.successResultOf(self.files.apply_change(change, io.BytesIO(b"right")))
        self.failureResultOf(self.files.apply_change(change, io.BytesIO(b"right")), ValueError)

    def test_list_versions_order(self):
        """Version listings go path by path in byte order, newest version first, markers included."""
        old = self.put("v/b", b"1")
        self.clock.advance(1)
        new = self.put("v/b", b"22")
        marker = self.successResultOf(self.files.delete("v/b"))
        only = self.put("v/a", b"a")
        self.put("w", b"outside")
        infos, following = self.successResultOf(self.files.list_versions("v/", None, 10))
        self.assertEqual([(i.path, i.version, i.deleted, i.current) for i in infos], [
            ("v/a", only.version, False, True),
            ("v/b", marker.version, True, True),
            ("v/b", new.version, False, False),
            ("v/b", old.version, False, False),
        ])
        self.assertEqual([i.size for i in infos], [1, 0, 2, 1])
        self.assertIsNone(following)

    def test_list_versions_pages(self):
        """Paging by (path, version) resumes inside a path's versions and after a path."""
        versions = [self.put("p", bytes([n])).version for n in range(3)]
        self.put("q", b"q")
        infos, following = self.successResultOf(self.files.list_versions("", None, 2))
        self.assertEqual([i.version for i in infos], versions[:0:-1])
        self.assertEqual(following, ("p", versions[1]))
        infos, following = self.successResultOf(self.files.list_versions("", following, 2))
        self.assertEqual([(i.path, i.version) for i in infos],
                         [("p", versions[0]), ("q", infos[1].version)])
        self.assertIsNone(following)
        infos, _ = self.successResultOf(self.files.list_versions("", ("p", None), 10))
        self.assertEqual([i.path for i in infos], ["q"])

    def test_purge_old_version(self):
        """Purging an old version removes it for good and leaves the current one."""
        old = self.put("doc", b"old")
        new = self.put("doc", b"new")
        purged = self.successResultOf(self.files.purge("doc", old.version))
        self.assertEqual((purged.version, purged.deleted), (old.version, False))
        self.failureResultOf(self.files.get("doc", old.version), NoSuchVersion)
        self.assertEqual(self.fetch("doc"), b"new")
        listed = self.successResultOf(self.files.versions("doc"))
        self.assertEqual([v.version for v in listed], [new.version])

    def test_purge_current_version(self):
        """Purging the newest version makes the one before it current again."""
        old = self.put("doc", b"old")
        new = self.put("doc", b"new")
        self.successResultOf(self.files.purge("doc", new.version))
        self.assertEqual(self.fetch("doc"), b"old")
        listed = self.successResultOf(self.files.versions("doc"))
        self.assertEqual([(v.version, v.current) for v in listed], [(old.version, True)])
        infos, _ = self.successResultOf(self.files.list("", None, 10))
        self.assertEqual([i.path for i in infos], ["doc"])

    def test_purge_delete_marker(self):
        """Purging the delete marker on top brings the file back."""
        kept = self.put("undo", b"back")
        marker = self.successResultOf(self.files.delete("undo"))
        purged = self.successResultOf(self.files.purge("undo", marker.version))
        self.assertTrue(purged.deleted)
        self.assertEqual(self.fetch("undo"), b"back")
        infos, _ = self.successResultOf(self.files.list("", None, 10))
        self.assertEqual([i.path for i in infos], ["undo"])
        self.successResultOf(self.files.purge("undo", kept.version))
        self.failureResultOf(self.files.get("undo"), NoSuchFile)
        self.failureResultOf(self.files.versions("undo"), NoSuchFile)
        self.assertEqual(self.successResultOf(self.files.list("", None, 10)), ([], None))

    def test_purge_under_a_delete_marker(self):
        """Purging the last file under a delete marker leaves the marker current."""
        old = self.put("gone", b"x")
        marker = self.successResultOf(self.files.delete("gone"))
        new = self.put("gone", b"y")
        self.successResultOf(self.files.purge("gone", new.version))
        self.failureResultOf(self.files.get("gone"), NoSuchFile)
        listed = self.successResultOf(self.files.versions("gone"))
        self.assertEqual([(v.version, v.deleted, v.current) for v in listed],
                         [(marker.version, True, True), (old.version, False, False)])

    def test_purge_unknown_version(self):
        """Purging a version the path does not have changes nothing."""
        info = self.put("doc", b"x")
        before = self.files.last_change_id()
        self.assertIsNone(self.successResultOf(self.files.purge("doc", "999999999999")))
        self.assertIsNone(self.successResultOf(self.files.purge("other", info.version)))
        self.assertEqual(self.files.last_change_id(), before)

    def test_purge_is_a_change(self):
        """A purge is a numbered change that names the version removed, and replicates."""
        heard = []
        self.files.change_listeners.append(heard.append)
        first = self.put("r", b"1")
        second = self.put("r", b"2")
        self.successResultOf(self.files.purge("r", first.version))
        changes = self.successResultOf(self.files.changes_after(0, 10))
        self.assertEqual([(c.op, c.version) for c in changes][2], ("purge", first.version))
        self.assertEqual(heard[-1], changes[2])
        replica = self.make_files()
        bodies = {first.version: b"1", second.version: b"2"}
        for change in changes:
            body = io.BytesIO(bodies[change.version]) if change.op == "put" else None
            self.successResultOf(replica.apply_change(change, body, self.files.dbid))
        self.assertEqual(self.successResultOf(replica.changes_after(0, 10)), changes)
        self.assertEqual([v.version for v in self.successResultOf(replica.versions("r"))],
                         [changes[1].version])
        self.failureResultOf(replica.get("r", first.version), NoSuchVersion)
