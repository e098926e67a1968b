"""
The C{diskcache} service: the items of a source service kept in a
SQLite database (C{<data_dir>/<sid>.db}), so they survive restarts.

It follows the memory cache's rules (L{owncdn.services.cachepolicy}:
keys, refresh, expiry, remembered refusals, single flight, counters);
what differs is where the bytes live:

* content is stored as the storage engine stores it (1 MiB chunks,
  Brotli when that saves enough; L{owncdn.services.diskcache_db}), by
  one writer thread, and read by a few reader threads.  The reactor
  thread never touches SQLite or Brotli.
* every complete item has a small entry in memory, kept in LRU order
  (L{owncdn.services.diskcache_index}): lookups, refresh and expiry
  decisions and C{maxSize} eviction need no database read, and small
  items recently served are held whole, so their hits leave no thread
  hop and come with their stored Brotli form.
* a miss streams: the source's body is written chunk by chunk while the
  clients of that item read it (L{DiskFill}), with at most two chunks
  of it in memory.  A body that fails, ends early or runs long is
  thrown away.
* an item that stops being served (replaced, evicted, expired,
  flushed) while clients still read it keeps its chunks until the last
  of them is done (L{ItemReaders}), so no download is cut short.
"""

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from owncdn.errors import NoSuchVersion, OwnCDNError, SourceError
from owncdn.interfaces import ICache, IHeadable, IReadableFiles
from owncdn.paths import fold_case
from owncdn.services.cachepolicy import (
    CacheKey,
    CacheRules,
    CacheStats,
    SourceRequests,
    NegativeCache,
    PassThrough,
    SingleFlight,
    display_path,
    revalidate,
)
from owncdn.services.diskcache_bodies import DiskFill, ItemReaders
from owncdn.services.diskcache_db import CacheDatabase, ItemGone
from owncdn.services.diskcache_index import CacheIndex, IndexEntry
from owncdn.storage.bodies import BytesBody, StoredBody
from owncdn.storage.reads import LoadedVersion, StoredVersion
from owncdn.threads import wait_in_pool

log = Logger()

READER_THREADS = 4
# When items were last used is written back this often (and at stop):
# a hit costs no write, and a crash forgets at most this much of the
# LRU order.
TOUCH_INTERVAL = 30.0
# How often unused items are swept out at most; they are never served
# once expired, swept or not.
MAX_SWEEP_INTERVAL = 60.0
# Memory for whole small items, served without a thread hop.
HOT_MEMORY = 32 * 1024 * 1024


class CacheClosed(Exception):
    """
    The service is not running.
    """


@implementer(IReadableFiles, IHeadable, ICache)
class DiskCache(SourceRequests, Service):
    """
    @param source: the service items come from (any L{IReadableFiles};
        L{owncdn.interfaces.IRevalidatable} sources are revalidated by
        conditional request).
    @param max_size: the bytes the stored chunks may take; 0 for no
        bound.
    @param clock: the reactor (C{seconds}, C{callLater},
        C{callFromThread}).
    @param make_pool: builds a thread pool from C{(minthreads,
        maxthreads, name)}; tests pass pools that run jobs inline.
    """

    def __init__(self, source, rules: CacheRules, db_path: Path, *, max_size: int = 0,
                 clock, make_pool: Callable[[int, int, str], ThreadPool] = ThreadPool,
                 hot_memory: int = HOT_MEMORY):
        self.source = source
        self.rules = rules
        self.db_path = Path(db_path)
        self.max_size = max_size
        self.counters = CacheStats()
        self._clock = clock
        self._make_pool = make_pool
        self._db = CacheDatabase(self.db_path)
        self._writer_pool: ThreadPool | None = None
        self._reader_pool: ThreadPool | None = None
        self._index = CacheIndex(max_size, hot_memory)
        self._filling: dict[CacheKey, DiskFill] = {}
        self._negative = NegativeCache()
        self._flights = SingleFlight(
            lambda result: result.release() if isinstance(result, PassThrough) else None)
        self._next_id = 1
        self._readers = ItemReaders(
            lambda item_ids: self._in_background("discarding items", self._db.discard, item_ids),
            lambda item_ids: self._in_background("orphaning items", self._db.orphan, item_ids))
        # Bumped by flush: a fill that started before must not be kept.
        self._generation = 0
        self._loops: list[LoopingCall] = []

    # Service

    def startService(self) -> None:
        """
        Open the database in the writer thread and load the index of
        its items; start-up waits for it, so that a corrupt or foreign
        database stops the daemon with its error.
        """
        name = self.db_path.stem
        writer = self._make_pool(1, 1, f"diskcache-{name}-writer")
        writer.start()
        try:
            rows, highest = wait_in_pool(writer, self._db.open)
        except BaseException:
            writer.stop()
            raise
        super().startService()
        self._writer_pool = writer
        self._reader_pool = self._make_pool(0, READER_THREADS, f"diskcache-{name}-readers")
        self._reader_pool.start()
        self._next_id = highest + 1
        for row in rows:
            self._index.add(row.key, IndexEntry(row.item_id, row.stored,
                                                row.validated_at, row.last_used))
        # maxSize may have been lowered since the last run.
        self._reserve(0)
        log.info("disk cache {db} open with {items} items ({size} bytes)",
                 db=str(self.db_path), items=len(self._index), size=self._index.held)
        self._every(TOUCH_INTERVAL, self._write_touches)
        if self.rules.expire_unused > 0:
            self._every(min(self.rules.expire_unused, MAX_SWEEP_INTERVAL), self._sweep)

    def _every(self, interval: float, work: Callable) -> None:
        loop = LoopingCall(work)
        loop.clock = self._clock
        loop.start(interval, now=False)
        self._loops.append(loop)

    def stopService(self) -> Deferred:
        """
        Write back when items were last used and close the database in
        the writer thread.  Safe after a failed start.
        """
        super().stopService()
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops = []
        writer, readers = self._writer_pool, self._reader_pool
        self._writer_pool = self._reader_pool = None
        if readers is not None:
            readers.stop()
        if writer is None:
            return succeed(None)
        touches = self._index.take_touches()

        def close() -> None:
            try:
                self._db.touch(touches)
            finally:
                self._db.close()

        d = deferToThreadPool(self._clock, writer, close)

        def stopped(result):
            writer.stop()
            return result

        return d.addBoth(stopped)

    # Threads

    def _in_writer(self, work: Callable, *args) -> Deferred:
        if self._writer_pool is None:
            return fail(CacheClosed(f"{self.db_path} is not running"))
        return deferToThreadPool(self._clock, self._writer_pool, work, *args)

    def _in_reader(self, work: Callable, *args) -> Deferred:
        if self._reader_pool is None:
            return fail(CacheClosed(f"{self.db_path} is not running"))
        return deferToThreadPool(self._clock, self._reader_pool, work, *args)

    def _read_chunk(self, item_id: int, index: int, decode: bool) -> Deferred:
        return self._in_reader(self._db.read_chunk, item_id, index, decode)

    def _in_background(self, what: str, work: Callable, *args) -> None:
        """
        A write nobody waits for; a failure is logged.  After stop it is
        skipped: what it would have removed is incomplete, and the next
        start removes what is incomplete.
        """
        if self._writer_pool is None:
            return
        self._in_writer(work, *args).addErrback(
            lambda failure: log.failure("disk cache {db}: {what} failed", failure,
                                        db=str(self.db_path), what=what))

    # IReadableFiles

    def get(self, path: str, version: str | None = None, query: str = "") -> Deferred:
        if version is not None:
            return fail(NoSuchVersion("a cache keeps no versions"))
        return self._lookup(self.rules.key(path, query))

    def _lookup(self, key: CacheKey) -> Deferred:
        now = self._clock.seconds()
        entry = self._index.get(key)
        if entry is not None:
            if self.rules.is_unused(entry.last_used, now):
                self._drop(key)
                self.counters.expired += 1
                entry = None
            else:
                self._index.use(key, entry, now)
                if not self.rules.is_stale(entry.validated_at, now):
                    self.counters.hits += 1
                    return self._open(key, entry)
        fill = self._filling.get(key)
        if fill is not None:
            self.counters.hits += 1
            return succeed(self._readers.hold(fill.item_id, fill))
        error = self._negative.recall(key, now)
        if entry is not None:
            if error is not None:
                # The source failed lately: the stale copy beats an error.
                self.counters.stale_served += 1
                return self._open(key, entry)
            return self._flights.run(
                key, lambda: Deferred.fromCoroutine(self._revalidate(key, entry))
            ).addCallback(self._claim, key)
        if error is not None:
            self.counters.negative_hits += 1
            return fail(error)
        self.counters.misses += 1
        return self._flights.run(key, lambda: self._fetch(key)).addCallback(self._claim, key)

    def _open(self, key: CacheKey, entry: IndexEntry) -> Deferred:
        hot = self._index.hot.get(key)
        if hot is not None and hot.stored.change_id == entry.item_id:
            return succeed(self._memory_body(hot))
        d = self._in_reader(self._db.open_item, entry.item_id)
        return d.addCallbacks(self._body, self._gone, callbackArgs=(key,), errbackArgs=(key,))

    def _gone(self, failure: Failure, key: CacheKey) -> Deferred:
        failure.trap(ItemGone)
        # Dropped between the lookup and the read: ask again.
        return self._lookup(key)

    def _body(self, loaded: LoadedVersion, key: CacheKey):
        """
        A client's body of an item read from the database: from memory
        when small, else held while the client reads its chunks.
        """
        item_id = loaded.stored.change_id
        entry = self._index.get(key)
        served = entry is not None and entry.item_id == item_id
        if loaded.data is not None:
            if served:
                self._index.hot.add(key, loaded)
            return self._memory_body(loaded)
        if not served:
            # Dropped while it was being opened: its chunks may be gone.
            return self._lookup(key)
        return self._readers.hold(item_id, StoredBody(loaded.stored, self._read_chunk))

    @staticmethod
    def _memory_body(loaded: LoadedVersion) -> BytesBody:
        return BytesBody(loaded.stored.info, loaded.data, loaded.stored.chunk_size, loaded.br)

    def _knows(self, key: CacheKey) -> bool:
        return (self._index.get(key) is not None or key in self._filling or key in self._flights
                or self._negative.recall(key, self._clock.seconds()) is not None)

    def list(self, prefix: str, after: str | None, limit: int) -> Deferred:
        """
        The items held now, named C{path?query}, in UTF-8 byte order.
        """
        if not self.rules.case_sensitive:
            prefix = fold_case(prefix)
            after = fold_case(after) if after is not None else None
        return self._in_reader(self._db.list_items, prefix, after, limit)

    # ICache

    def flush(self) -> Deferred:
        held = self._readers.discard_when_read(self._index.clear())
        self._filling.clear()
        self._negative.clear()
        self._generation += 1
        return self._in_writer(self._db.flush, held)

    def stats(self) -> dict:
        return dict(
            self.counters.as_dict(),
            items=len(self._index),
            bytes=self._index.held,
            filling=len(self._filling),
            fillingBytes=self._index.reserved,
            maxSize=self.max_size,
            hotItems=len(self._index.hot),
            hotBytes=self._index.hot.used_bytes,
        )

    # Misses and refreshes

    async def _revalidate(self, key: CacheKey, entry: IndexEntry):
        """
        @return: what L{_claim} turns into each waiter's body: the held
            item (a L{LoadedVersion}), a L{DiskFill} of new content, or
            a L{PassThrough}.
        """
        try:
            loaded = await self._in_reader(self._db.open_item, entry.item_id)
        except ItemGone:
            return await self._fetch(key)
        self.counters.source_requests += 1
        try:
            body = await revalidate(self.source, self.rules.source_path_of(key), key[1],
                                    loaded.stored.info)
        except Exception as error:
            self._refused(Failure(), key)
            if isinstance(error, OwnCDNError) and error.status >= 500:
                self.counters.stale_served += 1
                return loaded
            self._drop(key)
            raise
        if body is not None:
            self.counters.refreshed += 1
            return self._start_fill(body, key)
        self.counters.not_modified += 1
        entry.validated_at = self._clock.seconds()
        self._in_background("recording a revalidation", self._db.revalidated, entry.item_id,
                            entry.validated_at)
        return loaded

    def _claim(self, result, key: CacheKey):
        """
        One waiter's body from what its flight brought.
        """
        if isinstance(result, DiskFill):
            return self._readers.hold(result.item_id, result)
        if isinstance(result, LoadedVersion):
            return self._body(result, key)
        body = result.claim()
        if body is not None:
            return body
        return self._get_from_source(key)

    def _start_fill(self, body, key: CacheKey):
        info = replace(body.info, path=key[0])
        if not self._reserve(info.size):
            self.counters.passed_through += 1
            self._drop(key)
            return PassThrough(body)
        fill = DiskFill(info, self._next_id, self._generation, self._db.chunk_size,
                        self._read_chunk)
        self._next_id += 1
        self._filling[key] = fill
        Deferred.fromCoroutine(self._copy(key, fill, body))
        return fill

    async def _copy(self, key: CacheKey, fill: DiskFill, body) -> None:
        """
        Write the source's body into the database one chunk per
        transaction, as fast as the source gives it and the writer
        takes it, whether or not anyone is reading.
        """
        size, chunk_size = fill.info.size, self._db.chunk_size
        started = False
        try:
            while True:
                block_end = min(size, (fill.block_index + 1) * chunk_size)
                while fill.received < block_end:
                    data = await body.read(fill.received, block_end - fill.received)
                    if not data:
                        raise SourceError("the source's body ended before its announced size")
                    if fill.received + len(data) > block_end:
                        raise SourceError("the source's body is longer than announced")
                    fill.add(data)
                index, block = fill.seal()
                last = fill.received >= size
                # After a flush the item is written to be thrown away.
                keep = last and fill.generation == self._generation
                now = self._clock.seconds()
                started = True
                written = await self._in_writer(self._db.write_chunk, fill.item_id, key,
                                                fill.info, now, index, block, keep)
                fill.written(index)
                if last:
                    break
        except Exception:
            failure = Failure()
            log.warn("not caching {path}: {error}", path=display_path(key),
                     error=failure.getErrorMessage())
            fill.fail(failure)
            self._fill_ended(key, fill)
            if started:
                self._readers.discard([fill.item_id])
            return
        finally:
            body.close()
        fill.finish()
        self._fill_ended(key, fill)
        self._readers.discard(written.replaced)
        # A flush since the last chunk was sent drops the item.
        if not keep or fill.generation != self._generation:
            self._readers.discard([fill.item_id])
            return
        self._index.forget(key)
        self._index.add(key, IndexEntry(fill.item_id, written.stored, now, now))
        if size <= self._db.small_limit:
            stored = StoredVersion(change_id=fill.item_id, info=fill.info,
                                   chunk_size=chunk_size,
                                   br_size=len(written.br) if written.br else None)
            self._index.hot.add(key, LoadedVersion(stored, block, written.br))

    def _fill_ended(self, key: CacheKey, fill: DiskFill) -> None:
        if self._filling.get(key) is fill:
            del self._filling[key]
        self._index.release(fill.info.size)

    # Room and housekeeping

    def _reserve(self, size: int) -> bool:
        """
        Make room for an item of C{size} bytes (an upper bound of what
        its chunks take), evicting the least recently used items;
        C{False} when even that is not enough.
        """
        evicted = self._index.reserve(size)
        if evicted is None:
            return False
        self.counters.evictions += len(evicted)
        self._readers.discard(evicted)
        return True

    def _drop(self, key: CacheKey) -> None:
        entry = self._index.forget(key)
        if entry is not None:
            self._readers.discard([entry.item_id])

    def _write_touches(self) -> None:
        touches = self._index.take_touches()
        if touches:
            self._in_background("recording use", self._db.touch, touches)

    def _sweep(self) -> None:
        """
        Drop the items unused for C{expireUnused}.
        """
        expired = self._index.forget_unused(self.rules.is_unused, self._clock.seconds())
        self.counters.expired += len(expired)
        self._readers.discard(expired)


def build(service_config, context) -> DiskCache:
    """
    The disk cache of one C{services} entry: its database is
    C{<data_dir>/<sid>.db}.
    """
    options = service_config.options
    return DiskCache(
        context.registry.get(options["source"]),
        CacheRules.from_options(options),
        Path(context.data_dir) / f"{service_config.id}.db",
        max_size=options["maxSize"],
        clock=context.reactor,
    )
