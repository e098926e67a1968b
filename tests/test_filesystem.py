"""
Tests for L{owncdn.services.filesystem}: files in a directory, stored
atomically, listed in UTF-8 order, and never reachable outside the
directory.

The thread pool runs jobs inline (L{owncdn.testing.InlineThreadPool}),
so every Deferred has fired when a call returns; the file system is a
real temporary directory.
"""

import hashlib
import io
import json
import os
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from owncdn.config import parse
from owncdn.errors import BadDigest, InvalidPath, NoSuchFile, NoSuchVersion
from owncdn.interfaces import IReadableFiles, IWritableFiles
from owncdn.registry import ServiceContext, ServiceRegistry
from owncdn.services import filesystem
from owncdn.services.filesystem import TEMP_PREFIX, XATTR, FileSystem
from owncdn.storage import SMALL_FILE_LIMIT
from owncdn.testing import InlineThreadPool, ThreadlessClock
from tests.storage_contract import PATHS, TEXT
from tests.util import read_all


class Exploding(io.RawIOBase):
    """
    An upload body that fails after its first block.
    """

    def __init__(self):
        self.reads = 0

    def read(self, size=-1):
        self.reads += 1
        if self.reads > 1:
            raise OSError("the client went away")
        return b"x" * 100


class FileSystemTestCase(SynchronousTestCase):
    def setUp(self):
        base = Path(self.mktemp()).absolute()
        self.root = base / "files"
        self.outside = base / "outside"
        self.outside.mkdir(parents=True)
        (self.outside / "secret.txt").write_bytes(b"secret")
        self.pools = []
        self.files = FileSystem(self.root, ThreadlessClock(), make_pool=self.make_pool)
        self.pool = self.pools[0]

    def make_pool(self, minthreads, maxthreads, name):
        pool = InlineThreadPool(minthreads, maxthreads, name)
        self.pools.append(pool)
        return pool

    def put(self, path, data, **kwargs):
        return self.successResultOf(self.files.put(path, io.BytesIO(data), **kwargs))

    def fetch(self, path):
        return read_all(self, self.successResultOf(self.files.get(path)))

    def leftovers(self):
        return [p for p in self.root.rglob("*") if p.name.startswith(TEMP_PREFIX)]


class ReadWriteTests(FileSystemTestCase):
    def test_interfaces(self):
        """The service reads and writes files."""
        self.assertTrue(verifyObject(IReadableFiles, self.files))
        self.assertTrue(verifyObject(IWritableFiles, self.files))

    def test_round_trip(self):
        """A put file reads back exactly, with the MD5 ETag, SHA-256 and type put returned."""
        info = self.put("css/site.css", TEXT, content_type="text/css")
        self.assertEqual(info.etag, hashlib.md5(TEXT).hexdigest())
        self.assertEqual(info.sha256, hashlib.sha256(TEXT).hexdigest())
        self.assertEqual((info.size, info.content_type), (len(TEXT), "text/css"))
        self.assertEqual((self.root / "css" / "site.css").read_bytes(), TEXT)
        body = self.successResultOf(self.files.get("css/site.css"))
        self.assertEqual(body.info, info)
        self.assertEqual(read_all(self, body), TEXT)

    def test_metadata_kept(self):
        """Metadata given at put comes back with the file."""
        self.put("a", b"x", metadata={"cache-control": "no-cache"})
        body = self.successResultOf(self.files.get("a"))
        self.assertEqual(body.info.metadata, {"cache-control": "no-cache"})

    def test_content_type_guessed(self):
        """Without a content type, it is guessed from the extension."""
        self.assertEqual(self.put("a.js", b"1;").content_type, "text/javascript")

    def test_empty_file(self):
        """An empty file reads as b''."""
        self.put("empty", b"")
        body = self.successResultOf(self.files.get("empty"))
        self.assertEqual((body.info.size, self.successResultOf(body.read(0, 10))), (0, b""))

    def test_small_file_one_thread_hop(self):
        """A small file is read whole when opened: its reads need no thread."""
        self.put("small", b"x" * SMALL_FILE_LIMIT)
        jobs = self.pool.jobs
        body = self.successResultOf(self.files.get("small"))
        self.assertEqual(len(read_all(self, body)), SMALL_FILE_LIMIT)
        body.close()
        self.assertEqual(self.pool.jobs, jobs + 1)

    def test_descriptors_closed(self):
        """Opening, reading and closing files, small and big, and deleting them leave no descriptor open."""
        self.put("small", b"x" * 100)
        self.put("big", b"y" * (SMALL_FILE_LIMIT + 1))
        self.put("gone", b"z")
        before = len(os.listdir("/proc/self/fd"))
        for _ in range(20):
            for path in ("small", "big"):
                body = self.successResultOf(self.files.get(path))
                read_all(self, body)
                body.close()
        self.successResultOf(self.files.delete("gone"))
        self.assertEqual(len(os.listdir("/proc/self/fd")), before)

    def test_large_file_streams(self):
        """A large file is read block by block in the pool, from the descriptor opened at get."""
        data = os.urandom(filesystem.BLOCK * 2 + 10)
        self.put("big", data)
        body = self.successResultOf(self.files.get("big"))
        (self.root / "big").unlink()
        jobs = self.pool.jobs
        self.assertEqual(self.successResultOf(body.read(5, 10)), data[5:15])
        self.assertEqual(len(self.successResultOf(body.read(0, 10 * filesystem.BLOCK))),
                         filesystem.BLOCK)
        self.assertEqual(read_all(self, body), data)
        body.close()
        body.close()
        self.assertGreater(self.pool.jobs, jobs + 3)
        self.failureResultOf(body.read(0, 10), IOError)

    def test_put_replaces(self):
        """A second put replaces the content."""
        self.put("a", b"one")
        self.put("a", b"two")
        self.assertEqual(self.fetch("a"), b"two")

    def test_foreign_file(self):
        """A file written by something else gets an ETag from mtime and size, and a guessed type."""
        (self.root / "notes.txt").write_bytes(b"hello")
        info = self.successResultOf(self.files.get("notes.txt")).info
        st = os.stat(self.root / "notes.txt")
        self.assertEqual(info.etag, f"{st.st_mtime_ns // 10**9:x}-5")
        self.assertEqual(info.content_type, "text/plain")
        self.assertIsNone(info.sha256)

    def test_edited_after_put(self):
        """A file changed by something else after its put no longer claims the old MD5."""
        self.put("a.txt", b"one")
        with open(self.root / "a.txt", "ab") as f:
            f.write(b" more")
        info = self.successResultOf(self.files.get("a.txt")).info
        self.assertNotEqual(info.etag, hashlib.md5(b"one").hexdigest())
        self.assertEqual(info.size, 8)

    def test_record_is_an_xattr(self):
        """The upload record lives in the file's user.owncdn attribute."""
        self.put("a", b"one", content_type="text/plain")
        record = json.loads(os.getxattr(self.root / "a", XATTR))
        self.assertEqual((record["md5"], record["type"]),
                         (hashlib.md5(b"one").hexdigest(), "text/plain"))

    def test_bad_digest_stores_nothing(self):
        """A body whose MD5 or SHA-256 differs from the announced one is refused; nothing changes."""
        self.put("a", b"old")
        self.failureResultOf(self.files.put("a", io.BytesIO(b"new"),
                                            expected_md5=hashlib.md5(b"other").digest()),
                             BadDigest)
        self.failureResultOf(self.files.put("b", io.BytesIO(b"new"),
                                            expected_sha256=hashlib.sha256(b"x").digest()),
                             BadDigest)
        self.assertEqual(self.fetch("a"), b"old")
        self.failureResultOf(self.files.get("b"), NoSuchFile)
        self.assertEqual(self.leftovers(), [])

    def test_good_digest(self):
        """A body matching its announced digests is stored."""
        self.put("a", b"new", expected_md5=hashlib.md5(b"new").digest(),
                 expected_sha256=hashlib.sha256(b"new").digest())
        self.assertEqual(self.fetch("a"), b"new")

    def test_failed_upload_leaves_nothing(self):
        """An upload whose body fails mid-way leaves the old file and no temporary file."""
        self.put("a", b"old")
        self.failureResultOf(self.files.put("a", Exploding()), OSError)
        self.assertEqual(self.fetch("a"), b"old")
        self.assertEqual(self.leftovers(), [])

    def test_upload_goes_through_a_temporary_file(self):
        """While an upload is written, the target is untouched and the bytes are in a hidden file beside it."""
        self.put("dir/a", b"old")
        seen = []

        class Watching(io.BytesIO):
            def read(inner, size=-1):
                seen.append((self.fetch("dir/a"), sorted(p.name for p in (self.root / "dir").iterdir())))
                return super().read(size)

        self.successResultOf(self.files.put("dir/a", Watching(b"new")))
        self.assertEqual(seen[0][0], b"old")
        self.assertTrue(seen[0][1][0].startswith(TEMP_PREFIX))
        self.assertEqual(self.fetch("dir/a"), b"new")

    def test_put_into_a_file(self):
        """A path under an existing file is refused."""
        self.put("a", b"file")
        self.failureResultOf(self.files.put("a/b", io.BytesIO(b"x")), InvalidPath)

    def test_put_onto_a_folder(self):
        """A path that is a folder is refused."""
        self.put("dir/a", b"x")
        self.failureResultOf(self.files.put("dir", io.BytesIO(b"x")), InvalidPath)

    def test_delete(self):
        """delete removes the file and answers its info; a second delete is NoSuchFile."""
        self.put("a", b"x")
        info = self.successResultOf(self.files.delete("a"))
        self.assertEqual((info.path, info.size), ("a", 1))
        self.failureResultOf(self.files.get("a"), NoSuchFile)
        self.failureResultOf(self.files.delete("a"), NoSuchFile)

    def test_delete_folder(self):
        """A folder is not a file: delete says NoSuchFile."""
        self.put("dir/a", b"x")
        self.failureResultOf(self.files.delete("dir"), NoSuchFile)
        self.failureResultOf(self.files.delete("dir/a/b"), NoSuchFile)

    def test_missing(self):
        """Missing files and folders are NoSuchFile."""
        self.put("dir/a", b"x")
        for path in ("nope", "dir", "dir/a/b", "no/such/dir"):
            self.failureResultOf(self.files.get(path), NoSuchFile)

    def test_fifo(self):
        """A FIFO is not a file, and opening it does not hang."""
        os.mkfifo(self.root / "pipe")
        self.failureResultOf(self.files.get("pipe"), NoSuchFile)
        self.assertEqual(self.successResultOf(self.files.list("", None, 10)), ([], None))

    def test_version_refused(self):
        """A file system has no versions."""
        self.failureResultOf(self.files.get("a", "v1"), NoSuchVersion)

    def test_threads_started_and_stopped(self):
        """The service starts its pool with it and stops it with it."""
        self.files.startService()
        self.assertTrue(self.pool.started)
        self.files.stopService()
        self.assertFalse(self.pool.started)


class ContainmentTests(FileSystemTestCase):
    def link(self, name, target):
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.symlink_to(target)

    def test_dot_dot(self):
        """A path climbing out with .. is refused, for reads and writes."""
        for path in ("../outside/secret.txt", "a/../../outside/secret.txt"):
            self.failureResultOf(self.files.get(path), InvalidPath)
            self.failureResultOf(self.files.put(path, io.BytesIO(b"x")), InvalidPath)
            self.failureResultOf(self.files.delete(path), InvalidPath)
        self.assertEqual((self.outside / "secret.txt").read_bytes(), b"secret")

    def test_absolute(self):
        """An absolute path is refused, not taken from /."""
        path = str(self.outside / "secret.txt")
        self.failureResultOf(self.files.get(path), InvalidPath)
        self.failureResultOf(self.files.put(path, io.BytesIO(b"x")), InvalidPath)
        self.failureResultOf(self.files.delete(path), InvalidPath)
        self.assertEqual((self.outside / "secret.txt").read_bytes(), b"secret")

    def test_encoded_dots_are_names(self):
        """Percent-encoded dots are not decoded: %2e%2e is a file name inside the directory."""
        self.failureResultOf(self.files.get("%2e%2e/outside/secret.txt"), NoSuchFile)
        self.put("%2e%2e/x", b"inside")
        self.assertEqual((self.root / "%2e%2e" / "x").read_bytes(), b"inside")

    def test_link_to_file_outside(self):
        """A link to a file outside the directory is refused, and not listed."""
        self.link("leak.txt", self.outside / "secret.txt")
        self.failureResultOf(self.files.get("leak.txt"), InvalidPath)
        self.assertEqual(self.successResultOf(self.files.list("", None, 10)), ([], None))

    def test_link_to_folder_outside(self):
        """A link to a folder outside is refused for reads and writes; nothing is written outside."""
        self.link("out", self.outside)
        self.failureResultOf(self.files.get("out/secret.txt"), InvalidPath)
        self.failureResultOf(self.files.put("out/new.txt", io.BytesIO(b"x")), InvalidPath)
        self.failureResultOf(self.files.delete("out/secret.txt"), InvalidPath)
        self.assertEqual(sorted(p.name for p in self.outside.iterdir()), ["secret.txt"])
        self.assertEqual(self.successResultOf(self.files.list("", None, 10)), ([], None))

    def test_delete_link_outside(self):
        """Deleting a link that points outside is refused and its target kept."""
        self.link("leak.txt", self.outside / "secret.txt")
        self.failureResultOf(self.files.delete("leak.txt"), InvalidPath)
        self.assertTrue((self.root / "leak.txt").is_symlink())
        self.assertEqual((self.outside / "secret.txt").read_bytes(), b"secret")

    def test_put_over_link_outside(self):
        """A put onto a link that points outside replaces the link, not its target."""
        self.link("leak.txt", self.outside / "secret.txt")
        self.put("leak.txt", b"mine")
        self.assertFalse((self.root / "leak.txt").is_symlink())
        self.assertEqual((self.outside / "secret.txt").read_bytes(), b"secret")

    def test_link_inside(self):
        """A link to a file inside the directory is served and listed."""
        self.put("real.txt", b"data")
        self.link("alias.txt", self.root / "real.txt")
        self.assertEqual(self.fetch("alias.txt"), b"data")
        infos, _ = self.successResultOf(self.files.list("", None, 10))
        self.assertEqual([i.path for i in infos], ["alias.txt", "real.txt"])

    def test_dangling_link(self):
        """A link to nothing is NoSuchFile for reads and deletes."""
        self.link("gone", self.root / "missing")
        self.failureResultOf(self.files.get("gone"), NoSuchFile)
        self.failureResultOf(self.files.delete("gone"), NoSuchFile)

    def test_link_loop(self):
        """A link loop is NoSuchFile, not a hang or a crash."""
        self.link("loop", self.root / "loop")
        self.failureResultOf(self.files.get("loop"), NoSuchFile, InvalidPath)

    def swap_after(self, method: str):
        """
        Make the service's C{method} (a containment check) swap the
        folder C{sub} for a link to the outside folder right after it
        checked a path: the race a check before an open cannot close.
        """
        checked = getattr(self.files, method)

        def check_then_swap(path):
            result = checked(path)
            (self.root / "sub").rename(self.root / "sub-moved")
            (self.root / "sub").symlink_to(self.outside)
            return result

        self.patch(self.files, method, check_then_swap)

    def test_read_swapped_folder(self):
        """A folder swapped for a link to outside after the path was checked: the read is refused, nothing leaks."""
        self.put("sub/secret.txt", b"public")
        self.swap_after("_resolve")
        self.failureResultOf(self.files.get("sub/secret.txt"), InvalidPath)

    def test_put_swapped_folder(self):
        """A put whose folder is swapped for a link to outside after the check writes nothing outside."""
        self.put("sub/a", b"x")
        self.swap_after("_entry")
        self.failureResultOf(self.files.put("sub/new.txt", io.BytesIO(b"x")), InvalidPath)
        self.assertEqual(sorted(p.name for p in self.outside.iterdir()), ["secret.txt"])

    def test_delete_swapped_folder(self):
        """A delete whose folder is swapped for a link to outside after the check removes nothing outside."""
        self.put("sub/secret.txt", b"x")
        self.swap_after("_entry")
        self.failureResultOf(self.files.delete("sub/secret.txt"), InvalidPath)
        self.assertEqual((self.outside / "secret.txt").read_bytes(), b"secret")

    def test_upload_names_reserved(self):
        """Names of uploads in progress are neither served nor writable."""
        (self.root / f"{TEMP_PREFIX}abc").write_bytes(b"partial")
        self.failureResultOf(self.files.get(f"{TEMP_PREFIX}abc"), NoSuchFile)
        self.failureResultOf(self.files.put(f"{TEMP_PREFIX}abc", io.BytesIO(b"x")),
                             InvalidPath)
        self.assertEqual(self.successResultOf(self.files.list("", None, 10)), ([], None))


class ListTests(FileSystemTestCase):
    def test_order(self):
        """Files are listed in UTF-8 byte order of their paths, folders among files."""
        # A path cannot be a file and a folder here: leave out the folders.
        paths = [p for p in PATHS if not any(q.startswith(p + "/") for q in PATHS)]
        paths += ["a-b/c", "a-c"]
        paths.remove("a-b")
        for path in paths:
            self.put(path, b"x")
        infos, after = self.successResultOf(self.files.list("", None, 100))
        expected = sorted(paths, key=lambda p: p.encode())
        self.assertEqual([i.path for i in infos], expected)
        self.assertIsNone(after)

    def test_pages(self):
        """limit and after page through the listing; next is the last path of a full page."""
        names = [f"d{i // 3}/f{i}" for i in range(10)]
        for name in names:
            self.put(name, b"x")
        seen, after = [], None
        while True:
            infos, after = self.successResultOf(self.files.list("", after, 4))
            seen += [i.path for i in infos]
            if after is None:
                break
            self.assertEqual(after, infos[-1].path)
        self.assertEqual(seen, sorted(names))

    def test_prefix(self):
        """Only paths starting with the prefix are listed, folder or not."""
        for name in ("img/a.jpg", "img/b.jpg", "img2/c.jpg", "imgx", "other"):
            self.put(name, b"x")
        infos, _ = self.successResultOf(self.files.list("img", None, 10))
        self.assertEqual([i.path for i in infos], ["img/a.jpg", "img/b.jpg", "img2/c.jpg", "imgx"])
        infos, _ = self.successResultOf(self.files.list("img/", "img/a.jpg", 10))
        self.assertEqual([i.path for i in infos], ["img/b.jpg"])

    def test_infos(self):
        """Listed files carry size, ETag and content type."""
        info = self.put("a.txt", b"hello")
        infos, _ = self.successResultOf(self.files.list("", None, 10))
        self.assertEqual(infos, [info])


class BuildTests(SynchronousTestCase):
    def test_relative_directory(self):
        """A relative directory is taken from the data folder, and created."""
        data_dir = Path(self.mktemp())
        config = parse({"services": [{"id": "api", "type": "api"},
                                     {"id": "disk", "type": "filesystem", "directory": "www"}]})
        context = ServiceContext(data_dir, ThreadlessClock(), config, ServiceRegistry())
        service = filesystem.build(config.service("disk"), context)
        self.assertEqual(service.root, os.path.realpath(data_dir / "www"))
        self.assertTrue((data_dir / "www").is_dir())
