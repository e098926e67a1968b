"""
Tests for L{owncdn.services.memorycache} and the rules it takes from
L{owncdn.services.cachepolicy}: hits, keys, single flight, memory
bounds, refresh, expiry, remembered refusals, flush and listing.

Sources are in-memory doubles that count their requests; refresh by
conditional request runs against the real HTTP fetcher over
L{treq.testing.StubTreq}.  Time is a L{Clock}.
"""

import gc
import hashlib
import io
import json
import os
import tracemalloc

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from treq.testing import StubTreq
from zope.interface import implementer
from zope.interface.verify import verifyObject

from owncdn.config import parse
from owncdn.errors import NoSuchFile, NoSuchVersion, SourceError
from owncdn.interfaces import FileInfo, ICache, IFileBody, IHeadable, IReadableFiles
from owncdn.registry import ServiceContext, ServiceRegistry
from owncdn.services import memorycache
from owncdn.services.cachepolicy import CacheRules
from owncdn.services.httpfetcher import HTTPFetcher
from owncdn.services.memorycache import MemoryCache
from owncdn.storage.bodies import BytesBody
from owncdn.testing import MemoryFiles
from tests.test_httpfetcher import Origin
from tests.util import read_all

MiB = 1024 * 1024


@implementer(IReadableFiles)
class CountingSource:
    """
    A source over L{MemoryFiles} that records every C{get}; while
    L{hold} is in effect answers wait for L{release}.
    """

    def __init__(self, files: MemoryFiles):
        self.files = files
        self.gets: list[tuple[str, str]] = []
        self._held: list | None = None

    def get(self, path, version=None, query=""):
        self.gets.append((path, query))
        d = self.files.get(path, version, query)
        if self._held is None:
            return d
        gate = Deferred()
        self._held.append((d, gate))
        return gate

    def list(self, prefix, after, limit):
        return self.files.list(prefix, after, limit)

    def hold(self):
        self._held = []

    def release(self):
        held, self._held = self._held, None
        for d, gate in held:
            d.chainDeferred(gate)


@implementer(IFileBody)
class TrickleBody:
    """
    A body whose bytes arrive when the test says so.
    """

    def __init__(self, info: FileInfo):
        self.info = info
        self.closed = False
        self._pending: Deferred | None = None

    def read(self, offset, length):
        self._pending = Deferred()
        return self._pending

    def feed(self, data: bytes):
        pending, self._pending = self._pending, None
        pending.callback(data)

    def fail(self, error: Exception):
        pending, self._pending = self._pending, None
        pending.errback(error)

    def alternate(self, encoding):
        return None

    def close(self):
        self.closed = True


@implementer(IReadableFiles)
class TrickleSource:
    """
    A source whose every get opens a new L{TrickleBody} of C{size}.
    """

    def __init__(self, size: int):
        self.size = size
        self.bodies: list[TrickleBody] = []

    def get(self, path, version=None, query=""):
        body = TrickleBody(FileInfo(path, self.size, 0.0, "e", "text/plain"))
        self.bodies.append(body)
        return succeed(body)

    def list(self, prefix, after, limit):
        return succeed(([], None))


@implementer(IReadableFiles)
class GeneratedSource:
    """
    A source that makes each file's content when asked and keeps
    nothing, so that what memory grows by is what the cache holds.
    """

    def __init__(self, size: int):
        self.size = size

    def get(self, path, version=None, query=""):
        data = os.urandom(self.size)
        info = FileInfo(path, len(data), 0.0, hashlib.md5(data).hexdigest(),
                        "application/octet-stream")
        return succeed(BytesBody(info, data))

    def list(self, prefix, after, limit):
        return succeed(([], None))


class CacheTestCase(SynchronousTestCase):
    rules = CacheRules()
    max_item_size = 10 * MiB
    max_memory = 64 * MiB

    def setUp(self):
        self.clock = Clock()
        self.files = MemoryFiles(self.clock)
        self.source = CountingSource(self.files)
        self.cache = self.make_cache(self.source)

    def make_cache(self, source, rules=None, **kwargs):
        options = dict(max_item_size=self.max_item_size, max_memory=self.max_memory,
                       clock=self.clock)
        options.update(kwargs)
        return MemoryCache(source, rules or self.rules, **options)

    def put(self, path, data, **kwargs):
        return self.successResultOf(self.files.put(path, io.BytesIO(data), **kwargs))

    def fetch(self, path, query="", cache=None):
        body = self.successResultOf((cache or self.cache).get(path, query=query))
        return read_all(self, body)


class HitTests(CacheTestCase):
    def test_interfaces(self):
        """The cache is a readable file service and a cache."""
        self.assertTrue(verifyObject(IReadableFiles, self.cache))
        self.assertTrue(verifyObject(ICache, self.cache))

    def test_hit_skips_the_source(self):
        """A second request for an item is served from memory, not the source."""
        self.put("a.css", b"body{}")
        self.assertEqual(self.fetch("a.css"), b"body{}")
        self.assertEqual(self.fetch("a.css"), b"body{}")
        self.assertEqual(self.source.gets, [("a.css", "")])
        stats = self.cache.stats()
        self.assertEqual((stats["hits"], stats["misses"], stats["sourceRequests"]), (1, 1, 1))

    def test_hit_is_already_fired(self):
        """A hit answers with an already-fired Deferred whose body is the cached item itself."""
        self.put("a", b"x" * 1024)
        self.fetch("a")
        self.source.hold()
        first = self.successResultOf(self.cache.get("a"))
        second = self.successResultOf(self.cache.get("a"))
        self.assertIs(first, second)
        self.assertIs(self.successResultOf(first.read(0, 1 << 20)), first.chunks[0])

    def test_keeps_info(self):
        """A cached item keeps the source's size, ETag, type and time."""
        info = self.put("a.css", b"body{}", content_type="text/css")
        body = self.successResultOf(self.cache.get("a.css"))
        self.assertEqual((body.info.size, body.info.etag, body.info.content_type,
                          body.info.modified),
                         (info.size, info.etag, info.content_type, info.modified))

    def test_range_reads(self):
        """A cached item reads from any offset."""
        self.put("a", b"0123456789")
        self.fetch("a")
        body = self.successResultOf(self.cache.get("a"))
        self.assertEqual(self.successResultOf(body.read(3, 4)), b"3456")
        self.assertEqual(self.successResultOf(body.read(10, 4)), b"")

    def test_query_in_key(self):
        """Different queries are different items; the same query is a hit."""
        self.put("img.jpg", b"jpeg")
        for query in ("w=10", "w=20", "w=10", ""):
            self.fetch("img.jpg", query)
        self.assertEqual(self.source.gets,
                         [("img.jpg", "w=10"), ("img.jpg", "w=20"), ("img.jpg", "")])

    def test_question_mark_in_path(self):
        """A path holding '?' does not share a key with a query."""
        self.put("a?b", b"literal")
        self.put("a", b"plain")
        self.assertEqual(self.fetch("a?b"), b"literal")
        self.assertEqual(self.fetch("a", "b"), b"plain")

    def test_case_sensitive(self):
        """A case-sensitive cache keeps A and a apart."""
        self.put("A", b"upper")
        self.put("a", b"lower")
        self.assertEqual((self.fetch("A"), self.fetch("a")), (b"upper", b"lower"))

    def test_case_insensitive(self):
        """A case-insensitive cache folds the path (asking the source folded), never the query."""
        cache = self.make_cache(self.source, rules=CacheRules(case_sensitive=False))
        self.put("img/a.jpg", b"jpeg")
        self.assertEqual(self.fetch("IMG/A.JPG", "W=1", cache), b"jpeg")
        self.assertEqual(self.fetch("img/a.jpg", "W=1", cache), b"jpeg")
        self.fetch("img/a.jpg", "w=1", cache)
        self.assertEqual(self.source.gets, [("img/a.jpg", "W=1"), ("img/a.jpg", "w=1")])

    def test_source_path(self):
        """sourcePath is put in front of the path asked of the source."""
        cache = self.make_cache(self.source, rules=CacheRules(source_path="img/v1"))
        self.put("img/v1/a.jpg", b"jpeg")
        self.assertEqual(self.fetch("a.jpg", cache=cache), b"jpeg")
        self.assertEqual(self.source.gets, [("img/v1/a.jpg", "")])

    def test_missing(self):
        """A file the source lacks is NoSuchFile."""
        self.failureResultOf(self.cache.get("nope"), NoSuchFile)

    def test_version_refused(self):
        """A cache has no versions."""
        self.failureResultOf(self.cache.get("a", "v1"), NoSuchVersion)


class HeldTests(CacheTestCase):
    """
    L{MemoryCache.held}, the public binding's hit without a Deferred: what
    it gives is exactly what C{get} would answer at once.
    """

    def test_held(self):
        """held gives a held item at once, counted as a get's hit; nothing for an item not held."""
        self.assertIsNone(self.cache.held("a"))
        self.put("a", b"x" * 1024)
        self.fetch("a")
        item = self.cache.held("a")
        self.assertIs(item, self.successResultOf(self.cache.get("a")))
        stats = self.cache.stats()
        self.assertEqual((stats["hits"], stats["misses"], stats["sourceRequests"]), (2, 1, 1))
        self.assertIsNone(self.cache.held("a", query="v=2"))
        self.assertEqual(self.cache.stats()["hits"], 2)

    def test_held_keeps_lru_order(self):
        """An item served by held is the most recently used: evictions spare it."""
        cache = self.make_cache(self.source, max_memory=2 * 1024 + 2 * 1000)
        for name in ("a", "b"):
            self.put(name, b"x" * 1024)
            self.fetch(name, cache=cache)
        self.assertIsNotNone(cache.held("a"))
        self.put("c", b"x" * 1024)
        self.fetch("c", cache=cache)
        self.assertIsNotNone(cache.held("a"))
        self.assertIsNone(cache.held("b"))

    def test_stale_item_not_held(self):
        """Past the refresh time held gives nothing (a get revalidates), and changes nothing."""
        cache = self.make_cache(self.source, rules=CacheRules(refresh=300.0))
        self.put("a", b"one")
        self.fetch("a", cache=cache)
        self.clock.advance(299)
        self.assertIsNotNone(cache.held("a"))
        self.clock.advance(1)
        self.assertIsNone(cache.held("a"))
        self.assertEqual(cache.stats()["hits"], 1)
        self.assertEqual(self.fetch("a", cache=cache), b"one")
        self.assertEqual(len(self.source.gets), 2)

    def test_unused_item_not_held(self):
        """An item unused for expireUnused is not given by held, and get fetches it again."""
        cache = self.make_cache(self.source, rules=CacheRules(expire_unused=3600.0))
        self.put("a", b"one")
        self.fetch("a", cache=cache)
        self.clock.advance(3600)
        self.assertIsNone(cache.held("a"))
        self.assertEqual(self.fetch("a", cache=cache), b"one")
        self.assertEqual(len(self.source.gets), 2)
        self.assertEqual(cache.stats()["expired"], 1)


class SingleFlightTests(CacheTestCase):
    def test_concurrent_misses(self):
        """A hundred concurrent misses for one item make one source request and all get it."""
        data = b"x" * 5000
        self.put("a", data)
        self.source.hold()
        waiting = [self.cache.get("a") for _ in range(100)]
        self.assertEqual(len(self.source.gets), 1)
        self.source.release()
        for d in waiting:
            self.assertEqual(read_all(self, self.successResultOf(d)), data)
        self.assertEqual(len(self.source.gets), 1)
        self.assertEqual(self.cache.stats()["misses"], 100)

    def test_concurrent_misses_fail_together(self):
        """Concurrent misses for a missing file all fail, from one source request."""
        self.source.hold()
        waiting = [self.cache.get("nope") for _ in range(3)]
        self.source.release()
        for d in waiting:
            self.failureResultOf(d, NoSuchFile)
        self.assertEqual(len(self.source.gets), 1)

    def test_cancelled_waiter(self):
        """A client that goes away while waiting leaves the fetch to the others."""
        self.put("a", b"data")
        self.source.hold()
        first, second = self.cache.get("a"), self.cache.get("a")
        first.cancel()
        self.failureResultOf(first, CancelledError)
        self.source.release()
        self.assertEqual(read_all(self, self.successResultOf(second)), b"data")
        self.assertEqual(self.fetch("a"), b"data")
        self.assertEqual(len(self.source.gets), 1)

    def trickle(self, size: int):
        """
        A cache over a L{TrickleSource}, and the body of a miss on it.
        """
        source = TrickleSource(size)
        cache = self.make_cache(source)
        return source, cache, self.successResultOf(cache.get("a"))

    def assert_one_fill(self, first, second):
        """
        Two clients of one miss read one fill: in memory, the fill is
        itself their body.
        """
        self.assertIs(first, second)

    def test_readers_stream_while_filling(self):
        """Clients read an item's first bytes before the source has sent the rest."""
        source = TrickleSource(6)
        cache = self.make_cache(source)
        first = self.successResultOf(cache.get("a"))
        second = self.successResultOf(cache.get("a"))
        self.assert_one_fill(first, second)
        read = first.read(0, 100)
        source.bodies[0].feed(b"abc")
        self.assertEqual(self.successResultOf(read), b"abc")
        self.assertEqual(self.successResultOf(second.read(0, 100)), b"abc")
        read = first.read(3, 100)
        self.assertNoResult(read)
        source.bodies[0].feed(b"def")
        self.assertEqual(self.successResultOf(read), b"def")
        self.assertEqual(len(source.bodies), 1)
        self.assertTrue(source.bodies[0].closed)
        self.assertEqual(read_all(self, self.successResultOf(cache.get("a"))), b"abcdef")
        self.assertEqual(cache.stats()["items"], 1)

    def test_failed_body_not_cached(self):
        """A source body that fails mid-way fails every reader and is not cached."""
        source, cache, body = self.trickle(6)
        source.bodies[0].feed(b"abc")
        waiting = body.read(3, 100)
        source.bodies[0].fail(SourceError("the origin closed the connection"))
        self.failureResultOf(waiting, SourceError)
        self.failureResultOf(body.read(0, 100), SourceError)
        self.assertEqual(cache.stats()["items"], 0)
        self.successResultOf(cache.get("a"))
        self.assertEqual(len(source.bodies), 2)

    def test_short_body_not_cached(self):
        """A source body that ends before its size is an error and is not cached."""
        source, cache, body = self.trickle(6)
        source.bodies[0].feed(b"abc")
        source.bodies[0].feed(b"")
        self.failureResultOf(body.read(3, 100), SourceError)
        self.assertEqual(cache.stats()["items"], 0)

    def test_long_body_not_cached(self):
        """A source body that gives more than its size is an error and is not cached."""
        source, cache, body = self.trickle(6)
        source.bodies[0].feed(b"abcdefgh")
        self.failureResultOf(body.read(0, 100), SourceError)
        self.assertEqual(cache.stats()["items"], 0)


class MemoryTests(CacheTestCase):
    def test_big_items_pass_through(self):
        """An item over maxItemSize streams from the source each time, uncached."""
        cache = self.make_cache(self.source, max_item_size=100)
        self.put("big", b"x" * 101)
        self.put("small", b"x" * 100)
        for _ in range(2):
            self.fetch("big", cache=cache)
            self.fetch("small", cache=cache)
        self.assertEqual(self.source.gets, [("big", ""), ("small", ""), ("big", "")])
        self.assertEqual(cache.stats()["passedThrough"], 2)

    def test_big_item_keeps_brotli(self):
        """A passed-through item is the source's own body, so its Brotli form stays offered."""
        cache = self.make_cache(self.source, max_item_size=100)
        self.put("big.css", b"body { color: red }\n" * 80)
        body = self.successResultOf(cache.get("big.css"))
        self.assertIsNotNone(body.alternate("br"))

    def test_cached_item_keeps_brotli(self):
        """A cached item keeps the source's Brotli form, counted in its memory cost."""
        import brotli
        cache = self.make_cache(self.source)
        text = b"body { color: red }\n" * 200
        self.put("site.css", text)
        self.fetch("site.css", cache=cache)
        body = self.successResultOf(cache.get("site.css"))
        self.assertEqual(len(self.source.gets), 1)
        alternate = body.alternate("br")
        self.assertIsNotNone(alternate)
        self.assertEqual(brotli.decompress(self.successResultOf(
            alternate.read(0, alternate.info.size))), text)
        self.assertGreater(cache.stats()["bytes"], len(text) + alternate.info.size)

    def test_concurrent_big_items(self):
        """Concurrent misses for a big item each get a body of their own."""
        cache = self.make_cache(self.source, max_item_size=10)
        self.put("big", b"y" * 50)
        self.source.hold()
        waiting = [cache.get("big") for _ in range(3)]
        self.source.release()
        bodies = [self.successResultOf(d) for d in waiting]
        self.assertEqual(len({id(b) for b in bodies}), 3)
        for body in bodies:
            self.assertEqual(read_all(self, body), b"y" * 50)

    def test_lru_eviction(self):
        """Over maxMemory the least recently used items go first."""
        size = 1000
        # Incompressible, so the source offers no Brotli form to hold too.
        cost = memorycache.item_cost(("f0", ""), self.put("f0", os.urandom(size)))
        cache = self.make_cache(self.source, max_memory=3 * cost)
        for name in ("f1", "f2", "f3"):
            self.put(name, os.urandom(size))
        for name in ("f0", "f1", "f2"):
            self.fetch(name, cache=cache)
        self.fetch("f0", cache=cache)
        self.fetch("f3", cache=cache)
        self.source.gets.clear()
        for name in ("f0", "f2", "f3"):
            self.fetch(name, cache=cache)
        self.assertEqual(self.source.gets, [])
        self.fetch("f1", cache=cache)
        self.assertEqual(self.source.gets, [("f1", "")])
        self.assertGreaterEqual(cache.stats()["evictions"], 1)

    def test_bytes_counted(self):
        """The held bytes are the items' sizes plus their bookkeeping, and never exceed maxMemory."""
        cache = self.make_cache(self.source, max_memory=20_000)
        for index in range(50):
            self.put(f"f{index}", os.urandom(700))
            self.fetch(f"f{index}", cache=cache)
            stats = cache.stats()
            self.assertLessEqual(stats["bytes"] + stats["fillingBytes"], 20_000)
        stats = cache.stats()
        self.assertEqual(stats["bytes"], stats["items"] * memorycache.item_cost(
            ("f10", ""), self.successResultOf(self.files.get("f10")).info))
        self.assertGreater(stats["items"] * 700, 20_000 * 0.4)

    def test_real_memory_under_max(self):
        """Measured with tracemalloc, what a full cache holds stays under maxMemory."""
        max_memory = MiB
        for size in (200, 5000):
            cache = self.make_cache(GeneratedSource(size), max_memory=max_memory)
            gc.collect()
            tracemalloc.start()
            try:
                before = tracemalloc.get_traced_memory()[0]
                for index in range(2 * max_memory // size):
                    cache.get(f"files/{index:06d}.bin")
                gc.collect()
                held = tracemalloc.get_traced_memory()[0] - before
            finally:
                tracemalloc.stop()
            stats = cache.stats()
            self.assertLessEqual(held, max_memory, f"{size}-byte items")
            self.assertLessEqual(stats["bytes"], max_memory)
            # The count is not wildly cautious either.
            self.assertGreater(held, stats["bytes"] * 0.6, f"{size}-byte items")

    def test_no_room_beside_fills(self):
        """An item that cannot get room beside the fills in progress passes through."""
        source = TrickleSource(600)
        cache = self.make_cache(source, max_memory=2 * memorycache.item_cost(
            ("a", ""), FileInfo("a", 600, 0.0, "e", "text/plain")) + 100)
        self.successResultOf(cache.get("a"))
        self.successResultOf(cache.get("b"))
        self.successResultOf(cache.get("c"))
        self.assertEqual(cache.stats()["passedThrough"], 1)
        self.assertLessEqual(cache.stats()["fillingBytes"], cache.max_memory)


class RefreshTests(CacheTestCase):
    rules = CacheRules(refresh=300.0)

    def make_origin(self, **rules):
        self.origin = Origin()
        self.stub = StubTreq(self.origin)
        fetcher = HTTPFetcher("http://origin.example/", reactor=self.clock, http=self.stub)
        return self.make_cache(fetcher, rules=CacheRules(**rules))

    def origin_fetch(self, cache, path):
        d = cache.get(path)
        self.stub.flush()
        return read_all(self, self.successResultOf(d))

    def test_fresh_item_not_revalidated(self):
        """Before the refresh time a hit asks the source nothing."""
        self.put("a", b"one")
        self.fetch("a")
        self.clock.advance(299)
        self.fetch("a")
        self.assertEqual(len(self.source.gets), 1)

    def test_conditional_refresh(self):
        """Past the refresh time the origin is asked with If-None-Match; a 304 keeps the item."""
        cache = self.make_origin(refresh=300.0)
        self.origin.files[b"/a"] = (b"one", {b"etag": b'"v1"'})
        self.assertEqual(self.origin_fetch(cache, "a"), b"one")
        self.clock.advance(300)
        self.assertEqual(self.origin_fetch(cache, "a"), b"one")
        self.assertEqual(len(self.origin.requests), 2)
        self.assertEqual(self.origin.requests[1].getHeader(b"if-none-match"), b'"v1"')
        self.assertEqual(self.origin.requests[1].code, 304)
        self.assertEqual(cache.stats()["notModified"], 1)
        self.clock.advance(299)
        self.origin_fetch(cache, "a")
        self.assertEqual(len(self.origin.requests), 2)

    def test_conditional_refresh_changed(self):
        """A changed origin file replaces the item at refresh."""
        cache = self.make_origin(refresh=300.0)
        self.origin.files[b"/a"] = (b"one", {b"etag": b'"v1"'})
        self.origin_fetch(cache, "a")
        self.origin.files[b"/a"] = (b"two", {b"etag": b'"v2"'})
        self.assertEqual(self.origin_fetch(cache, "a"), b"one")
        self.clock.advance(300)
        self.assertEqual(self.origin_fetch(cache, "a"), b"two")
        self.assertEqual(self.origin_fetch(cache, "a"), b"two")
        self.assertEqual(len(self.origin.requests), 2)
        self.assertEqual(cache.stats()["refreshed"], 1)

    def test_refresh_by_etag(self):
        """A source without conditional requests is revalidated by comparing ETags."""
        self.put("a", b"one")
        self.fetch("a")
        self.clock.advance(300)
        self.assertEqual(self.fetch("a"), b"one")
        self.assertEqual(self.cache.stats()["notModified"], 1)
        self.put("a", b"two")
        self.clock.advance(300)
        self.assertEqual(self.fetch("a"), b"two")
        self.assertEqual(self.cache.stats()["refreshed"], 1)

    def test_refresh_single_flight(self):
        """Concurrent requests for a stale item share one revalidation."""
        self.put("a", b"one")
        self.fetch("a")
        self.clock.advance(300)
        self.source.hold()
        waiting = [self.cache.get("a") for _ in range(10)]
        self.source.release()
        for d in waiting:
            self.assertEqual(read_all(self, self.successResultOf(d)), b"one")
        self.assertEqual(len(self.source.gets), 2)

    def test_refresh_finds_it_gone(self):
        """An item deleted at the source is dropped at refresh: NoSuchFile."""
        self.put("a", b"one")
        self.fetch("a")
        self.successResultOf(self.files.delete("a"))
        self.clock.advance(300)
        self.failureResultOf(self.cache.get("a"), NoSuchFile)
        self.assertEqual(self.cache.stats()["items"], 0)

    def test_refresh_error_serves_stale(self):
        """A failing origin at refresh gets the stale item served, and is not asked again for expireErrors."""
        cache = self.make_origin(refresh=300.0, expire_errors=60.0)
        self.origin.files[b"/a"] = (b"one", {b"etag": b'"v1"'})
        self.origin_fetch(cache, "a")
        self.origin.status[b"/a"] = 503
        self.clock.advance(300)
        self.assertEqual(self.origin_fetch(cache, "a"), b"one")
        self.clock.advance(59)
        self.assertEqual(self.origin_fetch(cache, "a"), b"one")
        self.assertEqual(len(self.origin.requests), 2)
        self.assertEqual(cache.stats()["staleServed"], 2)
        del self.origin.status[b"/a"]
        self.clock.advance(1)
        self.assertEqual(self.origin_fetch(cache, "a"), b"one")
        self.assertEqual(len(self.origin.requests), 3)


class HeadTests(CacheTestCase):
    def make_origin(self):
        self.origin = Origin()
        self.stub = StubTreq(self.origin)
        fetcher = HTTPFetcher("http://origin.example/", reactor=self.clock, http=self.stub)
        return self.make_cache(fetcher)

    def flushed(self, d):
        self.stub.flush()
        return self.successResultOf(d)

    def test_interfaces(self):
        """The cache answers HEAD."""
        self.assertTrue(verifyObject(IHeadable, self.cache))

    def test_miss_asks_the_source_head(self):
        """A HEAD on an item the cache lacks is the origin's HEAD and caches nothing; once a GET filled it, a HEAD is a hit."""
        cache = self.make_origin()
        self.origin.files[b"/big"] = (b"x" * 3000, {b"etag": b'"v1"'})
        body = self.flushed(cache.head("big"))
        body.close()
        self.assertEqual((body.info.size, body.info.etag), (3000, "v1"))
        self.assertEqual([r.method for r in self.origin.requests], [b"HEAD"])
        stats = cache.stats()
        self.assertEqual((stats["items"], stats["misses"], stats["sourceRequests"]), (0, 1, 1))
        self.assertEqual(read_all(self, self.flushed(cache.get("big"))), b"x" * 3000)
        body = self.successResultOf(cache.head("big"))
        body.close()
        self.assertEqual(body.info.size, 3000)
        self.assertEqual([r.method for r in self.origin.requests], [b"HEAD", b"GET"])
        self.assertEqual(cache.stats()["items"], 1)

    def test_source_without_head(self):
        """Over a source that cannot describe a file without sending it, a HEAD fills the cache as a GET does."""
        self.put("a", b"abc")
        body = self.successResultOf(self.cache.head("a"))
        self.assertEqual(read_all(self, body), b"abc")
        body.close()
        self.assertEqual(self.source.gets, [("a", "")])
        self.assertEqual(self.cache.stats()["items"], 1)


class ExpiryTests(CacheTestCase):
    rules = CacheRules(expire_unused=3600.0, expire_not_found=60.0, expire_errors=10.0)

    def test_unused_item_dropped(self):
        """An item not asked for during expireUnused is fetched again."""
        self.put("a", b"one")
        self.fetch("a")
        self.clock.advance(3600)
        self.fetch("a")
        self.assertEqual(len(self.source.gets), 2)
        self.assertEqual(self.cache.stats()["expired"], 1)

    def test_used_item_kept(self):
        """An item asked for within expireUnused each time stays."""
        self.put("a", b"one")
        for _ in range(5):
            self.fetch("a")
            self.clock.advance(3000)
        self.assertEqual(len(self.source.gets), 1)

    def test_sweep_frees_memory(self):
        """The running service sweeps unused items out without being asked for them."""
        self.cache.startService()
        self.addCleanup(self.cache.stopService)
        self.put("a", b"one")
        self.put("b", b"two")
        self.fetch("a")
        self.clock.advance(1800)
        self.fetch("b")
        self.clock.advance(1800)
        self.clock.advance(60)
        self.assertEqual(self.cache.stats()["items"], 1)
        self.clock.advance(1800)
        stats = self.cache.stats()
        self.assertEqual((stats["items"], stats["bytes"]), (0, 0))

    def test_not_found_remembered(self):
        """A 404 is remembered for expireNotFound, then the source is asked again."""
        self.failureResultOf(self.cache.get("a"), NoSuchFile)
        self.put("a", b"now here")
        self.clock.advance(59)
        self.failureResultOf(self.cache.get("a"), NoSuchFile)
        self.assertEqual(len(self.source.gets), 1)
        self.assertEqual(self.cache.stats()["negativeHits"], 1)
        self.clock.advance(1)
        self.assertEqual(self.fetch("a"), b"now here")

    def test_error_remembered(self):
        """A source error is remembered for expireErrors."""
        @implementer(IReadableFiles)
        class Failing:
            gets = 0

            def get(self, path, version=None, query=""):
                self.gets += 1
                return fail(SourceError("origin down"))

            def list(self, prefix, after, limit):
                return succeed(([], None))

        source = Failing()
        cache = self.make_cache(source)
        self.failureResultOf(cache.get("a"), SourceError)
        self.clock.advance(9)
        self.failureResultOf(cache.get("a"), SourceError)
        self.assertEqual(source.gets, 1)
        self.clock.advance(1)
        self.failureResultOf(cache.get("a"), SourceError)
        self.assertEqual(source.gets, 2)

    def test_nothing_remembered_by_default(self):
        """With expireNotFound at 0 every miss asks the source."""
        cache = self.make_cache(self.source, rules=CacheRules())
        for _ in range(3):
            self.failureResultOf(cache.get("a"), NoSuchFile)
        self.assertEqual(len(self.source.gets), 3)


class FlushAndListTests(CacheTestCase):
    def test_flush(self):
        """flush drops every item and answers how many; the next request asks the source."""
        for name in ("a", "b", "c"):
            self.put(name, name.encode())
            self.fetch(name)
        self.assertEqual(self.successResultOf(self.cache.flush()), 3)
        self.assertEqual(self.cache.stats()["bytes"], 0)
        self.fetch("a")
        self.assertEqual(len(self.source.gets), 4)
        self.assertEqual(self.successResultOf(self.cache.flush()), 1)

    def test_flush_forgets_refusals(self):
        """flush also forgets remembered 404s."""
        cache = self.make_cache(self.source, rules=CacheRules(expire_not_found=60.0))
        self.failureResultOf(cache.get("a"), NoSuchFile)
        self.put("a", b"here")
        self.successResultOf(cache.flush())
        self.assertEqual(self.fetch("a", cache=cache), b"here")

    def test_flush_during_fill(self):
        """An item still arriving at flush is not kept when it completes."""
        source = TrickleSource(3)
        cache = self.make_cache(source)
        body = self.successResultOf(cache.get("a"))
        self.assertEqual(self.successResultOf(cache.flush()), 0)
        source.bodies[0].feed(b"abc")
        self.assertEqual(self.successResultOf(body.read(0, 10)), b"abc")
        self.assertEqual(cache.stats()["items"], 0)
        self.assertEqual(cache.stats()["fillingBytes"], 0)

    def test_list(self):
        """filelist shows the items held, as path?query, in UTF-8 order with paging."""
        for name in ("b", "a/x", "a-b", "\u00e9"):
            self.put(name, b"data")
        for name, query in (("b", ""), ("a/x", "w=1"), ("a-b", ""), ("\u00e9", ""),
                            ("a/x", "")):
            self.fetch(name, query)
        infos, after = self.successResultOf(self.cache.list("", None, 3))
        self.assertEqual([i.path for i in infos], ["a-b", "a/x", "a/x?w=1"])
        self.assertEqual(after, "a/x?w=1")
        infos, after = self.successResultOf(self.cache.list("", after, 3))
        self.assertEqual([i.path for i in infos], ["b", "\u00e9"])
        self.assertIsNone(after)
        infos, _ = self.successResultOf(self.cache.list("a/", None, 10))
        self.assertEqual([(i.path, i.size) for i in infos], [("a/x", 4), ("a/x?w=1", 4)])

    def test_list_same_names(self):
        """A path holding '?' and a path with that query are both listed, under the same name."""
        self.put("a?b", b"literal")
        self.put("a", b"plain")
        self.fetch("a?b")
        self.fetch("a", "b")
        infos, _ = self.successResultOf(self.cache.list("", None, 10))
        self.assertEqual(sorted(i.size for i in infos if i.path == "a?b"), [5, 7])

    def test_stats(self):
        """stats() is a JSON-ready dict of the counters and sizes servicelist and status show."""
        self.put("a", b"data")
        self.fetch("a")
        stats = self.cache.stats()
        for name in ("hits", "misses", "sourceRequests", "notModified", "refreshed",
                     "negativeHits", "staleServed", "passedThrough", "evictions", "expired",
                     "items", "bytes", "maxMemory"):
            self.assertIn(name, stats)
        self.assertEqual((stats["items"], stats["maxMemory"]), (1, self.max_memory))
        self.assertEqual(json.loads(json.dumps(stats)), stats)


class BuildTests(SynchronousTestCase):
    def test_build(self):
        """build() takes the source from the registry and the options from the configuration."""
        config = parse({"services": [
            {"id": "api", "type": "api"},
            {"id": "origin", "type": "httpfetcher", "sourceUrl": "http://o.example/"},
            {"id": "hot", "type": "memorycache", "source": "origin", "refresh": "5m",
             "expireUnused": "1h", "maxItemSize": "1MB", "maxMemory": "8MB",
             "caseSensitive": False, "sourcePath": "img"},
        ]})
        registry = ServiceRegistry()
        source = MemoryFiles()
        registry.add("origin", source)
        context = ServiceContext("/nonexistent", Clock(), config, registry)
        cache = memorycache.build(config.service("hot"), context)
        self.assertIs(cache.source, source)
        self.assertEqual((cache.max_item_size, cache.max_memory), (MiB, 8 * MiB))
        self.assertEqual(cache.rules, CacheRules(source_path="img", case_sensitive=False,
                                                 refresh=300.0, expire_unused=3600.0))
