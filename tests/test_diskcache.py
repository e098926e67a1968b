"""
Tests for L{owncdn.services.diskcache}.

The disk cache follows the memory cache's rules, so the memory cache's
behaviour tests (keys, single flight, streaming fills, refresh, expiry,
remembered refusals, flush and listing) run here again against a disk
cache, through L{DiskCacheMixin}.  The tests after them pin what only a
disk cache does: surviving restarts, chunks and Brotli on disk,
C{maxSize}, items kept for the clients still reading them.

Thread pools run jobs inline and time is a L{ThreadlessClock}, except
in L{ThreadedTests}, where real threads are the point.
"""

import hashlib
import io
import os
import sqlite3
from pathlib import Path

import brotli
from twisted.internet import defer, reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from owncdn.config import parse
from owncdn.errors import SourceError
from owncdn.interfaces import ICache, IReadableFiles
from owncdn.registry import ServiceContext, ServiceRegistry
from owncdn.services import diskcache
from owncdn.services.cachepolicy import CacheRules
from owncdn.services.diskcache import DiskCache
from owncdn.services.diskcache_db import NotACacheDatabase
from owncdn.services.storage import StorageService
from owncdn.storage import SMALL_FILE_LIMIT
from owncdn.storage.chunks import CHUNK_SIZE
from owncdn.testing import InlineThreadPool, MemoryFiles, ThreadlessClock
from tests import test_memorycache as memory
from tests.util import read_all
from tests.util import asynctest

MiB = 1024 * 1024
TEXT = b"body { color: red; margin: 0 auto; }\n" * 2000


class DiskCacheMixin:
    """
    Runs a memory cache test case against disk caches: L{make_cache}
    builds a started L{DiskCache} on a fresh database (the memory-only
    options are ignored), with inline thread pools.
    """

    def setUp(self):
        self.clock = ThreadlessClock()
        self.files = MemoryFiles(self.clock)
        self.source = memory.CountingSource(self.files)
        self.pools: list[InlineThreadPool] = []
        self.cache = self.make_cache(self.source)

    def make_pool(self, minthreads: int, maxthreads: int, name: str) -> InlineThreadPool:
        pool = InlineThreadPool(minthreads, maxthreads, name)
        self.pools.append(pool)
        return pool

    def make_cache(self, source, rules=None, db_path=None, max_size=0, **memory_only):
        cache = DiskCache(source, rules or self.rules, db_path or Path(self.mktemp()),
                          max_size=max_size, clock=self.clock, make_pool=self.make_pool)
        cache.startService()
        self.addCleanup(lambda: self.successResultOf(cache.stopService()))
        return cache

    def restart(self, cache: DiskCache, **options) -> DiskCache:
        """
        Stop C{cache} and start a new one on the same database.
        """
        self.successResultOf(cache.stopService())
        options.setdefault("rules", cache.rules)
        options.setdefault("max_size", cache.max_size)
        return self.make_cache(cache.source, db_path=cache.db_path, **options)

    def read_closing(self, d: Deferred) -> bytes:
        """
        The whole body C{d} fires with; the body is closed, as the web
        layer closes it.
        """
        body = self.successResultOf(d)
        try:
            return read_all(self, body)
        finally:
            body.close()

    def rows(self, cache: DiskCache, sql: str):
        with sqlite3.connect(cache.db_path) as conn:
            return conn.execute(sql).fetchall()


class HitTests(DiskCacheMixin, memory.HitTests):
    def test_interfaces(self):
        """The disk cache is a readable file service and a cache."""
        self.assertTrue(verifyObject(IReadableFiles, self.cache))
        self.assertTrue(verifyObject(ICache, self.cache))

    def test_hit_is_already_fired(self):
        """A hit on a small item is answered from memory at once: no thread hop."""
        self.put("a", b"x" * 1024)
        self.fetch("a")
        jobs = sum(pool.jobs for pool in self.pools)
        self.source.hold()
        body = self.successResultOf(self.cache.get("a"))
        self.assertEqual(self.successResultOf(body.read(0, 1 << 20)), b"x" * 1024)
        self.assertEqual(sum(pool.jobs for pool in self.pools), jobs)


class SingleFlightTests(DiskCacheMixin, memory.SingleFlightTests):
    def assert_one_fill(self, first, second):
        """
        Each client holds the one fill with a body of its own (the
        source's single body is checked by the test).
        """
        self.assertIsNot(first, second)


class RefreshTests(DiskCacheMixin, memory.RefreshTests):
    pass


class HeadTests(DiskCacheMixin, memory.HeadTests):
    pass


class ExpiryTests(DiskCacheMixin, memory.ExpiryTests):
    def test_sweep_frees_memory(self):
        """The running service sweeps unused items out of the database without being asked."""
        self.put("a", b"one")
        self.put("b", b"two")
        self.read_closing(self.cache.get("a"))
        self.clock.advance(1800)
        self.read_closing(self.cache.get("b"))
        self.clock.advance(1860)
        self.assertEqual(self.cache.stats()["items"], 1)
        self.clock.advance(1800)
        stats = self.cache.stats()
        self.assertEqual((stats["items"], stats["bytes"]), (0, 0))
        self.assertEqual(self.rows(self.cache, "SELECT count(*) FROM items"), [(0,)])


class FlushAndListTests(DiskCacheMixin, memory.FlushAndListTests):
    def test_stats(self):
        """stats() is a JSON-ready dict of the counters and sizes servicelist shows."""
        self.put("a", b"data")
        self.fetch("a")
        stats = self.cache.stats()
        for name in ("hits", "misses", "sourceRequests", "notModified", "refreshed",
                     "negativeHits", "staleServed", "passedThrough", "evictions", "expired",
                     "items", "bytes", "filling", "fillingBytes", "maxSize", "hotItems",
                     "hotBytes"):
            self.assertIn(name, stats)
        self.assertEqual((stats["items"], stats["bytes"], stats["maxSize"]), (1, 4, 0))

    def test_flush_empties_the_database(self):
        """flush removes every item from the database too: a restart brings none back."""
        for name in ("a", "b"):
            self.put(name, name.encode())
            self.fetch(name)
        self.assertEqual(self.successResultOf(self.cache.flush()), 2)
        cache = self.restart(self.cache)
        self.assertEqual(cache.stats()["items"], 0)
        self.assertEqual(self.rows(cache, "SELECT count(*) FROM chunks"), [(0,)])


class PersistenceTests(DiskCacheMixin, SynchronousTestCase):
    rules = CacheRules()

    def put(self, path, data, **kwargs):
        return self.successResultOf(self.files.put(path, io.BytesIO(data), **kwargs))

    def fetch(self, path, query="", cache=None):
        return read_all(self, self.successResultOf((cache or self.cache).get(path, query=query)))

    def test_survives_restart(self):
        """Items stored before a restart are served after it without asking the source, info intact."""
        info = self.put("css/site.css", TEXT, content_type="text/css",
                        metadata={"cache-control": "no-transform"})
        self.put("big.bin", os.urandom(2 * CHUNK_SIZE + 5))
        self.fetch("css/site.css", "v=1")
        big = self.fetch("big.bin")
        cache = self.restart(self.cache)
        self.source.hold()
        body = self.successResultOf(cache.get("css/site.css", query="v=1"))
        self.assertEqual(read_all(self, body), TEXT)
        self.assertEqual((body.info.etag, body.info.content_type, body.info.modified,
                          body.info.size, body.info.metadata),
                         (info.etag, "text/css", info.modified, len(TEXT),
                          {"cache-control": "no-transform"}))
        self.assertEqual(self.fetch("big.bin", cache=cache), big)
        self.assertEqual(len(self.source.gets), 2)
        stats = cache.stats()
        self.assertEqual((stats["hits"], stats["misses"], stats["items"]), (2, 0, 2))

    def test_chunks_on_disk(self):
        """Content is stored in 1 MiB chunks, Brotli-compressed when that pays, and reads across chunks."""
        data = os.urandom(CHUNK_SIZE) + TEXT * 10
        self.put("mixed", data)
        self.fetch("mixed")
        chunks = self.rows(self.cache, "SELECT idx, compressed, length(data) FROM chunks"
                                       " ORDER BY idx")
        self.assertEqual([(idx, compressed) for idx, compressed, _ in chunks], [(0, 0), (1, 1)])
        self.assertLess(chunks[1][2], len(TEXT) * 10 // 4)
        body = self.successResultOf(self.restart(self.cache).get("mixed"))
        self.assertEqual(self.successResultOf(body.read(CHUNK_SIZE - 3, 10)),
                         data[CHUNK_SIZE - 3:CHUNK_SIZE])
        self.assertEqual(self.successResultOf(body.read(CHUNK_SIZE, 5)),
                         data[CHUNK_SIZE:CHUNK_SIZE + 5])

    def test_brotli_alternate(self):
        """An item held as one compressed chunk offers its stored Brotli bytes, small or not, after a restart too."""
        small, large = TEXT[:20_000], TEXT + TEXT[:10_000]
        self.assertGreater(len(large), SMALL_FILE_LIMIT)
        self.put("small.css", small)
        self.put("large.css", large)
        self.put("noise", os.urandom(5000))
        for cache in (self.cache, None):
            cache = cache or self.restart(self.cache)
            for path, data in (("small.css", small), ("large.css", large)):
                self.fetch(path, cache=cache)
                body = self.successResultOf(cache.get(path))
                encoded = body.alternate("br")
                self.assertIsNotNone(encoded, path)
                self.assertEqual(brotli.decompress(read_all(self, encoded)), data)
                self.assertLess(encoded.info.size, len(data) // 4)
                encoded.close()
                body.close()
            self.fetch("noise", cache=cache)
            self.assertIsNone(self.successResultOf(cache.get("noise")).alternate("br"))

    def test_refresh_time_persisted(self):
        """When an item was last validated survives a restart: refresh counts from then."""
        cache = self.make_cache(self.source, rules=CacheRules(refresh=300.0))
        self.put("a", b"one")
        self.fetch("a", cache=cache)
        self.clock.advance(200)
        cache = self.restart(cache)
        self.fetch("a", cache=cache)
        self.assertEqual(len(self.source.gets), 1)
        self.clock.advance(100)
        self.fetch("a", cache=cache)
        self.assertEqual((len(self.source.gets), cache.stats()["notModified"]), (2, 1))
        self.clock.advance(200)
        self.fetch("a", cache=self.restart(cache))
        self.assertEqual(len(self.source.gets), 2)

    def test_last_use_persisted(self):
        """When items were last used is written back in batches and at stop, so expireUnused holds across restarts."""
        cache = self.make_cache(self.source, rules=CacheRules(expire_unused=3600.0))
        self.put("a", b"one")
        self.put("b", b"two")
        self.fetch("a", cache=cache)
        self.fetch("b", cache=cache)
        self.clock.advance(3000)
        self.fetch("a", cache=cache)
        self.assertEqual(self.rows(cache, "SELECT path, last_used FROM items ORDER BY path"),
                         [("a", 0.0), ("b", 0.0)])
        self.clock.advance(diskcache.TOUCH_INTERVAL)
        self.assertEqual(self.rows(cache, "SELECT last_used FROM items WHERE path = 'a'"),
                         [(3000.0,)])
        self.clock.advance(1000)
        self.fetch("a", cache=cache)
        cache = self.restart(cache)
        self.assertEqual(self.rows(cache, "SELECT last_used FROM items WHERE path = 'a'"),
                         [(4000.0 + diskcache.TOUCH_INTERVAL,)])
        self.fetch("a", cache=cache)
        self.fetch("b", cache=cache)
        self.assertEqual(self.source.gets, [("a", ""), ("b", ""), ("b", "")])

    def test_unfinished_fill_removed_at_start(self):
        """An item still arriving when the service stopped is not served, nor left on disk, after the restart."""
        source = memory.TrickleSource(3 * CHUNK_SIZE)
        cache = self.make_cache(source)
        body = self.successResultOf(cache.get("video"))
        source.bodies[0].feed(b"v" * CHUNK_SIZE)
        self.assertEqual(self.successResultOf(body.read(0, 10)), b"v" * 10)
        self.assertEqual(self.rows(cache, "SELECT count(*) FROM chunks"), [(1,)])
        cache = self.restart(cache)
        self.assertEqual(self.rows(cache, "SELECT count(*) FROM items"), [(0,)])
        self.assertEqual(self.rows(cache, "SELECT count(*) FROM chunks"), [(0,)])
        self.successResultOf(cache.get("video"))
        self.assertEqual(len(source.bodies), 2)

    def test_foreign_database_refused(self):
        """A file holding another kind of database (a storage service's) stops the start with a clear error."""
        path = Path(self.mktemp())
        storage = StorageService(path, self.clock, make_pool=self.make_pool)
        storage.startService()
        self.successResultOf(storage.stopService())
        cache = DiskCache(self.source, CacheRules(), path, clock=self.clock,
                          make_pool=self.make_pool)
        self.assertRaises(NotACacheDatabase, cache.startService)
        self.assertFalse(cache.running)


class FillTests(DiskCacheMixin, SynchronousTestCase):
    rules = CacheRules()

    def test_big_fill_streams_through_disk(self):
        """A big miss is read by its clients while it arrives, with at most two chunks in memory."""
        source = memory.TrickleSource(3 * CHUNK_SIZE)
        cache = self.make_cache(source)
        first = self.successResultOf(cache.get("big"))
        parts = [bytes([n]) * (CHUNK_SIZE // 2) for n in range(6)]
        source.bodies[0].feed(parts[0])
        self.assertEqual(self.successResultOf(first.read(0, CHUNK_SIZE)), parts[0])
        source.bodies[0].feed(parts[1])
        source.bodies[0].feed(parts[2])
        fill = cache._filling[("big", "")]
        self.assertLessEqual(sum(len(b) for b in fill._sealed.values()) + len(fill._block),
                             2 * CHUNK_SIZE)
        readers_before = cache._reader_pool.jobs
        self.assertEqual(self.successResultOf(first.read(CHUNK_SIZE // 2, CHUNK_SIZE)),
                         parts[1])
        self.assertEqual(cache._reader_pool.jobs, readers_before + 1)
        late = self.successResultOf(cache.get("big"))
        self.assertEqual(self.successResultOf(late.read(CHUNK_SIZE, 10)), parts[2][:10])
        waiting = late.read(2 * CHUNK_SIZE, CHUNK_SIZE)
        self.assertNoResult(waiting)
        for part in parts[3:]:
            source.bodies[0].feed(part)
        self.assertEqual(self.successResultOf(waiting), parts[4])
        self.assertEqual(read_all(self, first), b"".join(parts))
        self.assertEqual(len(source.bodies), 1)
        self.assertEqual(cache.stats()["items"], 1)

    def test_failed_fill_leaves_nothing(self):
        """A source body that fails after some chunks leaves no item and no chunk behind."""
        source = memory.TrickleSource(3 * CHUNK_SIZE)
        cache = self.make_cache(source)
        body = self.successResultOf(cache.get("big"))
        source.bodies[0].feed(b"x" * CHUNK_SIZE)
        source.bodies[0].fail(SourceError("the origin closed the connection"))
        self.failureResultOf(body.read(0, 10), SourceError)
        body.close()
        self.assertEqual(self.rows(cache, "SELECT count(*) FROM chunks"), [(0,)])
        self.assertEqual(self.rows(cache, "SELECT count(*) FROM items"), [(0,)])
        stats = cache.stats()
        self.assertEqual((stats["items"], stats["filling"], stats["fillingBytes"]), (0, 0, 0))

    def test_replaced_item_kept_for_its_readers(self):
        """A client reading an item that a refresh replaces reads it to the end; its chunks go when it closes."""
        cache = self.make_cache(self.source, rules=CacheRules(refresh=60.0))
        old = os.urandom(2 * CHUNK_SIZE)
        self.successResultOf(self.files.put("v", io.BytesIO(old)))
        self.read_closing(cache.get("v"))
        reading = self.successResultOf(cache.get("v"))
        self.assertEqual(self.successResultOf(reading.read(0, 10)), old[:10])
        new = os.urandom(2 * CHUNK_SIZE)
        self.successResultOf(self.files.put("v", io.BytesIO(new)))
        self.clock.advance(60)
        self.assertEqual(self.read_closing(cache.get("v")), new)
        self.assertEqual(self.rows(cache, "SELECT count(*) FROM items"), [(2,)])
        self.assertEqual(read_all(self, reading), old)
        reading.close()
        self.assertEqual(self.rows(cache, "SELECT count(*) FROM items"), [(1,)])
        self.assertEqual(self.rows(cache, "SELECT count(*) FROM chunks"), [(2,)])

    def test_flushed_item_kept_for_its_readers(self):
        """flush counts an item being read but keeps its chunks until the reader is done; a restart removes such orphans."""
        data = os.urandom(CHUNK_SIZE + 1)
        self.successResultOf(self.files.put("v", io.BytesIO(data)))
        read_all(self, self.successResultOf(self.cache.get("v")))
        reading = self.successResultOf(self.cache.get("v"))
        self.assertEqual(self.successResultOf(self.cache.flush()), 1)
        self.assertEqual(read_all(self, reading), data)
        cache = self.restart(self.cache)
        self.assertEqual(self.rows(cache, "SELECT count(*) FROM items"), [(0,)])


class SizeTests(DiskCacheMixin, SynchronousTestCase):
    rules = CacheRules()

    def fill(self, cache, name: str, data: bytes) -> None:
        self.successResultOf(self.files.put(name, io.BytesIO(data)))
        self.assertEqual(self.read_closing(cache.get(name)), data)

    def test_lru_eviction_by_stored_bytes(self):
        """Past maxSize the least recently used items are evicted, from disk too, and the stored bytes stay under it."""
        cache = self.make_cache(self.source, max_size=100_000)
        for name in ("f0", "f1", "f2"):
            self.fill(cache, name, os.urandom(30_000))
        self.read_closing(cache.get("f0"))
        self.fill(cache, "f3", os.urandom(30_000))
        stats = cache.stats()
        self.assertEqual((stats["items"], stats["evictions"]), (3, 1))
        self.assertLessEqual(stats["bytes"], 100_000)
        self.assertEqual(self.rows(cache, "SELECT sum(length(data)) FROM chunks"),
                         [(stats["bytes"],)])
        self.assertEqual(self.rows(cache, "SELECT path FROM items ORDER BY path"),
                         [("f0",), ("f2",), ("f3",)])
        for index in range(4, 20):
            self.fill(cache, f"f{index}", os.urandom(30_000))
            self.assertLessEqual(cache.stats()["bytes"], 100_000)

    def test_compressed_items_count_what_they_take(self):
        """maxSize counts the bytes stored after Brotli, so compressible items fit many times over."""
        cache = self.make_cache(self.source, max_size=2 * len(TEXT))
        for index in range(5):
            self.fill(cache, f"t{index}.css", TEXT + str(index).encode())
        stats = cache.stats()
        self.assertEqual((stats["items"], stats["evictions"]), (5, 0))
        self.assertLess(stats["bytes"], len(TEXT) // 2)

    def test_item_over_max_size_passes_through(self):
        """An item bigger than maxSize streams from the source each time and is never stored."""
        cache = self.make_cache(self.source, max_size=1000)
        for _ in range(2):
            self.fill(cache, "big", os.urandom(1001))
        self.assertEqual(cache.stats()["passedThrough"], 2)
        self.assertEqual(self.rows(cache, "SELECT count(*) FROM items"), [(0,)])

    def test_lower_max_size_at_restart(self):
        """A maxSize lowered between runs evicts the least recently used items at start."""
        cache = self.make_cache(self.source)
        for index in range(4):
            self.fill(cache, f"f{index}", os.urandom(10_000))
            self.clock.advance(1)
        cache = self.restart(cache, max_size=25_000)
        self.assertEqual(cache.stats()["items"], 2)
        self.assertEqual(self.rows(cache, "SELECT path FROM items ORDER BY path"),
                         [("f2",), ("f3",)])


class ThreadedTests(TestCase):
    """
    The disk cache with its real thread pools on the real reactor.
    """

    timeout = 30

    @asynctest
    async def test_concurrent_misses_real_threads(self):
        """A hundred concurrent misses for a 3 MiB item make one source request and all read it whole, through real threads."""
        files = MemoryFiles()
        data = os.urandom(3 * CHUNK_SIZE + 7)
        files.put("video", io.BytesIO(data))
        source = memory.CountingSource(files)
        cache = DiskCache(source, CacheRules(), Path(self.mktemp()), clock=reactor)
        cache.startService()
        self.addCleanup(cache.stopService)
        source.hold()
        waiting = [cache.get("video") for _ in range(100)]
        source.release()
        bodies = await defer.gatherResults(waiting)
        contents = await defer.gatherResults(
            [Deferred.fromCoroutine(collect(body)) for body in bodies])
        self.assertEqual({hashlib.md5(c).hexdigest() for c in contents},
                         {hashlib.md5(data).hexdigest()})
        self.assertEqual(len(source.gets), 1)
        self.assertEqual(await collect(await cache.get("video")), data)
        self.assertEqual(cache.stats()["hits"], 1)


async def collect(body) -> bytes:
    """
    Read a body whole, as the web layer does, then close it.
    """
    parts, offset = [], 0
    try:
        while offset < body.info.size:
            part = await body.read(offset, CHUNK_SIZE)
            if not part:
                raise AssertionError("the body ended early")
            parts.append(part)
            offset += len(part)
    finally:
        body.close()
    return b"".join(parts)


class BuildTests(SynchronousTestCase):
    def test_build(self):
        """build() puts the database at <data_dir>/<sid>.db and takes the options from the configuration."""
        config = parse({"services": [
            {"id": "api", "type": "api"},
            {"id": "files", "type": "storage"},
            {"id": "disk", "type": "diskcache", "source": "files", "refresh": "5m",
             "expireUnused": "1d", "expireNotFound": 30, "maxSize": "2GB",
             "caseSensitive": False, "sourcePath": "img"},
        ]})
        registry = ServiceRegistry()
        source = MemoryFiles()
        registry.add("files", source)
        context = ServiceContext(Path("/data"), ThreadlessClock(), config, registry)
        cache = diskcache.build(config.service("disk"), context)
        self.assertIs(cache.source, source)
        self.assertEqual((cache.db_path, cache.max_size), (Path("/data/disk.db"), 2 * 1024**3))
        self.assertEqual(cache.rules, CacheRules(source_path="img", case_sensitive=False,
                                                 refresh=300.0, expire_unused=86400.0,
                                                 expire_not_found=30.0))
