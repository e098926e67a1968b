"""
The C{memorycache} service: the items of a source service kept in
memory, least recently used dropped first.

A hit costs a dictionary lookup and an already-fired Deferred (for a
public binding, which asks L{MemoryCache.held} first, not even that):
the cached item is its own L{IFileBody} (reads are stateless slices of
the C{bytes} pieces it arrived in), so nothing else is allocated.  A miss opens the source's
body and copies it into memory as it arrives (a L{Fill}); every client
asking for the item meanwhile reads from that fill, so concurrent
misses make one source request.  The rules (keys, refresh, expiry,
remembered refusals, single flight) are L{owncdn.services.cachepolicy}'s.

Memory is counted in real bytes held: each item's content plus
L{ENTRY_OVERHEAD} and its strings.  Room for a fill is reserved before
it starts (evicting the least recently used items), so what is held and
what is being filled never exceed C{maxMemory} together; an item that
cannot get room streams through uncached.
"""

from bisect import bisect_right
from collections import OrderedDict
from itertools import accumulate
from dataclasses import replace

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from owncdn.errors import NoSuchVersion, OwnCDNError, SourceError
from owncdn.interfaces import FileInfo, ICache, IFileBody, IHeadable, IReadableFiles
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

log = Logger()

# The bytes one cached item costs beside its content and strings: the
# CachedFile, its FileInfo, the key tuple and the LRU's link.  Measured
# with tracemalloc (tests/test_memorycache pins that the total stays
# under maxMemory).
ENTRY_OVERHEAD = 800
# How much a fill asks its source for at a time.
FILL_READ = 1024 * 1024
# How often unused items are swept out at most; they are also never
# served once expired, swept or not.
MAX_SWEEP_INTERVAL = 60.0


def item_cost(key: CacheKey, info: FileInfo) -> int:
    """
    The memory an item of C{info.size} bytes holds once cached.
    """
    strings = (key[0], key[1], info.etag, info.content_type)
    metadata = sum(len(k) + len(str(v)) for k, v in info.metadata.items())
    return info.size + ENTRY_OVERHEAD + metadata + sum(len(s.encode()) for s in strings)


def _piece(chunk: bytes, start: int, length: int) -> bytes:
    # A whole-chunk read (every read of a small item) costs no copy.
    if start == 0 and length >= len(chunk):
        return chunk
    return chunk[start:start + length]


@implementer(IFileBody)
class CachedFile:
    """
    One item held in memory, and the body every hit on it is served
    from.

    The content stays in the pieces its fill received (one for a small
    item): joining them would hold a second copy of a big item while it
    is made.  A read returns (part of) one piece, no copy when it asks
    for the whole piece.
    """

    __slots__ = ("info", "chunks", "starts", "cost", "validated_at", "last_used", "br")

    def __init__(self, info: FileInfo, chunks: list[bytes], cost: int, now: float,
                 br: bytes | None = None):
        self.info = info
        # Tuples, and no offsets for one piece: a small item must cost
        # little more than its bytes (ENTRY_OVERHEAD).
        self.chunks = tuple(chunks)
        self.starts = tuple(accumulate((len(chunk) for chunk in chunks[:-1]), initial=0)) \
            if len(chunks) > 1 else ()
        self.cost = cost
        self.validated_at = now
        self.last_used = now
        # The source's Brotli form, itself a body (made once, not per hit).
        self.br = None if br is None else CachedFile(
            replace(info, size=len(br)), [br], 0, now)

    def read(self, offset: int, length: int) -> Deferred:
        if len(self.chunks) == 1:
            data = self.chunks[0]
            return succeed(_piece(data, offset, length) if offset < len(data) else b"")
        if offset >= self.info.size:
            return succeed(b"")
        index = bisect_right(self.starts, offset) - 1
        return succeed(_piece(self.chunks[index], offset - self.starts[index], length))

    def alternate(self, encoding: str) -> "CachedFile | None":
        return self.br if encoding == "br" else None

    def close(self) -> None:
        pass


@implementer(IFileBody)
class Fill:
    """
    A source body being copied into memory, readable by any number of
    clients while it arrives; reads past what has arrived wait for it.

    If the source's body fails or ends early, every reader's read fails
    (the web layer aborts those responses) and nothing is cached.
    """

    def __init__(self, info: FileInfo, cost: int, generation: int):
        self.info = info
        self.cost = cost
        self.generation = generation
        self.received = 0
        self._chunks: list[bytes] = []
        self._starts: list[int] = []
        self._waiting: list[tuple[int, int, Deferred]] = []
        self._failure: Failure | None = None
        self._done = False

    def add(self, data: bytes) -> None:
        self._starts.append(self.received)
        self._chunks.append(data)
        self.received += len(data)
        self._wake()

    def finish(self) -> list[bytes]:
        """
        @return: the whole content, in the pieces it arrived in (at
            least one).
        """
        if not self._chunks:
            self._chunks, self._starts = [b""], [0]
        self._done = True
        self._wake()
        return self._chunks

    def fail(self, failure: Failure) -> None:
        self._failure = failure
        self._chunks, self._starts = [], []
        self._wake()

    def read(self, offset: int, length: int) -> Deferred:
        if self._failure is not None:
            return fail(self._failure)
        if offset < self.received:
            return succeed(self._slice(offset, length))
        if self._done:
            return succeed(b"")
        d: Deferred = Deferred(lambda d: self._forget(d))
        self._waiting.append((offset, length, d))
        return d

    def _slice(self, offset: int, length: int) -> bytes:
        index = bisect_right(self._starts, offset) - 1
        return _piece(self._chunks[index], offset - self._starts[index], length)

    def _forget(self, d: Deferred) -> None:
        self._waiting = [w for w in self._waiting if w[2] is not d]

    def _wake(self) -> None:
        waiting, self._waiting = self._waiting, []
        for offset, length, d in waiting:
            if self._failure is not None:
                d.errback(self._failure)
            elif offset < self.received:
                d.callback(self._slice(offset, length))
            elif self._done:
                d.callback(b"")
            else:
                self._waiting.append((offset, length, d))

    def alternate(self, encoding: str) -> None:
        return None

    def close(self) -> None:
        pass


@implementer(IReadableFiles, IHeadable, ICache)
class MemoryCache(SourceRequests, Service):
    """
    @param source: the service items come from (any L{IReadableFiles};
        L{owncdn.interfaces.IRevalidatable} sources are revalidated by
        conditional request).
    @param clock: the time source (C{seconds}, C{callLater}).
    """

    def __init__(self, source, rules: CacheRules, *, max_item_size: int, max_memory: int,
                 clock):
        self.source = source
        self.rules = rules
        self.max_item_size = max_item_size
        self.max_memory = max_memory
        self.counters = CacheStats()
        self._clock = clock
        self._entries: OrderedDict[CacheKey, CachedFile] = OrderedDict()
        self._filling: dict[CacheKey, Fill] = {}
        self._negative = NegativeCache()
        self._flights = SingleFlight(
            lambda result: result.release() if isinstance(result, PassThrough) else None)
        self._held = 0
        self._reserved = 0
        # Bumped by flush: a fill that started before must not store.
        self._generation = 0
        self._sweeping: LoopingCall | None = None

    # Service

    def startService(self) -> None:
        super().startService()
        if self.rules.expire_unused > 0:
            self._sweeping = LoopingCall(self._sweep)
            self._sweeping.clock = self._clock
            self._sweeping.start(min(self.rules.expire_unused, MAX_SWEEP_INTERVAL), now=False)

    def stopService(self):
        if self._sweeping is not None and self._sweeping.running:
            self._sweeping.stop()
        return super().stopService()

    # IReadableFiles

    def held(self, path: str, query: str = "") -> CachedFile | None:
        """
        The item C{get} would answer at once from memory (held, fresh,
        not unused too long), counted and marked used as C{get} does,
        without a Deferred: the public binding's hit.  C{None} when
        C{get} has more to do; nothing changes then.
        """
        key = self.rules.key(path, query)
        entry = self._entries.get(key)
        if entry is None:
            return None
        now = self._clock.seconds()
        rules = self.rules
        # Without either time (the default), no call asks.
        if ((rules.expire_unused or rules.refresh)
                and (rules.is_unused(entry.last_used, now)
                     or rules.is_stale(entry.validated_at, now))):
            return None
        entry.last_used = now
        self._entries.move_to_end(key)
        self.counters.hits += 1
        return entry

    def get(self, path: str, version: str | None = None, query: str = "") -> Deferred:
        if version is not None:
            return fail(NoSuchVersion("a cache keeps no versions"))
        entry = self.held(path, query)
        if entry is not None:
            return succeed(entry)
        key = self.rules.key(path, query)
        now = self._clock.seconds()
        entry = self._entries.get(key)
        if entry is not None:
            if self.rules.is_unused(entry.last_used, now):
                self._drop(key)
                self.counters.expired += 1
                entry = None
            else:
                # Stale: revalidated below.
                entry.last_used = now
                self._entries.move_to_end(key)
        fill = self._filling.get(key)
        if fill is not None:
            self.counters.hits += 1
            return succeed(fill)
        error = self._negative.recall(key, now)
        if entry is not None:
            if error is not None:
                # The source failed lately: the stale copy beats an error.
                self.counters.stale_served += 1
                return succeed(entry)
            return self._flights.run(key, lambda: self._revalidate(key, entry)).addCallback(
                self._claim, key)
        if error is not None:
            self.counters.negative_hits += 1
            return fail(error)
        self.counters.misses += 1
        return self._flights.run(key, lambda: self._fetch(key)).addCallback(self._claim, key)

    def _knows(self, key: CacheKey) -> bool:
        return (key in self._entries or key in self._filling or key in self._flights
                or self._negative.recall(key, self._clock.seconds()) is not None)

    def list(self, prefix: str, after: str | None, limit: int) -> Deferred:
        """
        The items held now, named C{path?query}, in UTF-8 byte order
        (which is code point order, Python's order for C{str}).
        """
        if not self.rules.case_sensitive:
            prefix = fold_case(prefix)
            after = fold_case(after) if after is not None else None
        names = sorted(
            ((name, entry) for key, entry in self._entries.items()
             if (name := display_path(key)).startswith(prefix)
             and (after is None or name > after)),
            key=lambda item: item[0],
        )
        page = [replace(entry.info, path=name) for name, entry in names[:limit]]
        return succeed((page, page[-1].path if len(names) > limit else None))

    # ICache

    def flush(self) -> Deferred:
        flushed = len(self._entries)
        self._entries.clear()
        self._held = 0
        self._filling.clear()
        self._negative.clear()
        self._generation += 1
        return succeed(flushed)

    def stats(self) -> dict:
        return dict(
            self.counters.as_dict(),
            items=len(self._entries),
            bytes=self._held,
            filling=len(self._filling),
            fillingBytes=self._reserved,
            maxMemory=self.max_memory,
        )

    # Misses and refreshes

    def _revalidate(self, key: CacheKey, entry: CachedFile) -> Deferred:
        self.counters.source_requests += 1
        d = revalidate(self.source, self.rules.source_path_of(key), key[1], entry.info)

        def checked(body):
            if body is None:
                entry.validated_at = self._clock.seconds()
                self.counters.not_modified += 1
                return entry
            self.counters.refreshed += 1
            return self._start_fill(body, key)

        def failed(failure: Failure):
            self._refused(failure, key)
            if failure.check(OwnCDNError) and failure.value.status >= 500:
                self.counters.stale_served += 1
                return entry
            self._drop(key)
            return failure

        return d.addCallbacks(checked, failed)

    def _start_fill(self, body, key: CacheKey):
        info = replace(body.info, path=key[0])
        cost = item_cost(key, info)
        if info.size > self.max_item_size or not self._reserve(cost):
            self.counters.passed_through += 1
            self._drop(key)
            return PassThrough(body)
        fill = Fill(info, cost, self._generation)
        self._filling[key] = fill
        Deferred.fromCoroutine(self._copy(key, fill, body))
        return fill

    def _claim(self, result, key: CacheKey):
        if not isinstance(result, PassThrough):
            return result
        body = result.claim()
        if body is not None:
            return body
        return self._get_from_source(key)

    async def _copy(self, key: CacheKey, fill: Fill, body) -> None:
        """
        Read the source's body into C{fill} as fast as the source gives
        it, whether or not anyone is reading: the item is cacheable, so
        bounded by C{maxItemSize}.
        """
        size = fill.info.size
        try:
            while fill.received < size:
                data = await body.read(fill.received, min(FILL_READ, size - fill.received))
                if not data:
                    raise SourceError("the source's body ended before its announced size")
                if fill.received + len(data) > size:
                    raise SourceError("the source's body is longer than announced")
                fill.add(data)
            br = await self._read_brotli(body, size)
        except Exception:
            failure = Failure()
            log.warn("not caching {path}: {error}", path=display_path(key),
                     error=failure.getErrorMessage())
            fill.fail(failure)
            self._fill_ended(key, fill, None)
            return
        finally:
            body.close()
        self._fill_ended(key, fill, fill.finish(), br)

    async def _read_brotli(self, body, size: int) -> bytes | None:
        """
        The source's Brotli form of the item, when it offers one smaller
        than the item itself, so that hits pass C{Content-Encoding: br}
        through as the source would.
        """
        alternate = body.alternate("br")
        if alternate is None:
            return None
        try:
            if alternate.info.size >= size:
                return None
            parts, received = [], 0
            while received < alternate.info.size:
                data = await alternate.read(received, alternate.info.size - received)
                if not data:
                    raise SourceError("the source's Brotli body ended early")
                parts.append(data)
                received += len(data)
            return b"".join(parts)
        finally:
            alternate.close()

    def _fill_ended(self, key: CacheKey, fill: Fill, chunks: "list[bytes] | None",
                    br: bytes | None = None) -> None:
        if self._filling.get(key) is fill:
            del self._filling[key]
        self._reserved -= fill.cost
        if chunks is None or fill.generation != self._generation:
            return
        self._drop(key)
        cost = fill.cost
        if br is not None:
            if self._reserve(len(br)):
                self._reserved -= len(br)
                cost += len(br)
            else:
                br = None
        self._entries[key] = CachedFile(fill.info, chunks, cost, self._clock.seconds(), br)
        self._held += cost

    # Memory

    def _reserve(self, cost: int) -> bool:
        """
        Make room for an item of C{cost} bytes, evicting the least
        recently used items; C{False} when even that is not enough.
        """
        if self._reserved + cost > self.max_memory:
            return False
        while self._held + self._reserved + cost > self.max_memory:
            _, entry = self._entries.popitem(last=False)
            self._held -= entry.cost
            self.counters.evictions += 1
        self._reserved += cost
        return True

    def _drop(self, key: CacheKey) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._held -= entry.cost

    def _sweep(self) -> None:
        """
        Drop the items unused for C{expireUnused}: the LRU order is the
        order of last use, so they are all at the front.
        """
        now = self._clock.seconds()
        while self._entries:
            key, entry = next(iter(self._entries.items()))
            if not self.rules.is_unused(entry.last_used, now):
                break
            self._drop(key)
            self.counters.expired += 1


def build(service_config, context) -> MemoryCache:
    options = service_config.options
    return MemoryCache(
        context.registry.get(options["source"]),
        CacheRules.from_options(options),
        max_item_size=options["maxItemSize"],
        max_memory=options["maxMemory"],
        clock=context.reactor,
    )
