"""
The rules every cache service follows, whatever holds its bytes.

The memory cache (and the disk cache, with SQLite underneath) decide
the same things the same way: which key a request has, when a held item
must be revalidated with the source, when an unused item is dropped,
how long a source's 404 or error is remembered, and that concurrent
misses for one key make one source request.  Those decisions live here;
the services only keep and find bytes.
"""

from collections.abc import Callable, Hashable
from dataclasses import dataclass, fields

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.python.failure import Failure

from owncdn.errors import NoSuchFile, OwnCDNError
from owncdn.interfaces import FileInfo, IHeadable, IRevalidatable
from owncdn.paths import fold_case

# A cache key: the path as the cache stores it, and the query.  A tuple
# and not "path?query": a path may itself hold a "?" (a client can send
# %3F), and "a%3Fb" must not share a key with "a?b".
CacheKey = tuple[str, str]

# Remembered refusals past this many are forgotten oldest first, so a
# client asking for endless missing paths cannot grow memory.
NEGATIVE_LIMIT = 10_000


def fresh_error(error: OwnCDNError) -> OwnCDNError:
    """
    A new instance of C{error}, for a second caller: one exception
    raised in two coroutines would share (and grow) one traceback.
    """
    return type(error)(error.message)


@dataclass(frozen=True)
class CacheRules:
    """
    The options of one cache service, and what they mean.

    Times are seconds; 0 turns the rule off (never refresh, never drop
    unused items, do not remember refusals).
    """

    source_path: str = ""
    case_sensitive: bool = True
    refresh: float = 0.0
    expire_unused: float = 0.0
    expire_not_found: float = 0.0
    expire_errors: float = 0.0

    @classmethod
    def from_options(cls, options: dict) -> "CacheRules":
        return cls(
            source_path=options["sourcePath"],
            case_sensitive=options["caseSensitive"],
            refresh=options["refresh"],
            expire_unused=options["expireUnused"],
            expire_not_found=options["expireNotFound"],
            expire_errors=options["expireErrors"],
        )

    def key(self, path: str, query: str) -> CacheKey:
        """
        The key of a request: a case-insensitive cache folds the path
        (SPEC section 2); the query always keeps its case.
        """
        return (path if self.case_sensitive else fold_case(path), query)

    def source_path_of(self, key: CacheKey) -> str:
        """
        The path asked of the source: the key's (folded) path, so that
        what is stored under a key never depends on which spelling
        came first, behind C{sourcePath}.
        """
        return f"{self.source_path}/{key[0]}" if self.source_path else key[0]

    def is_stale(self, validated_at: float, now: float) -> bool:
        """
        Whether an item must be revalidated before it is served again.
        """
        return 0 < self.refresh <= now - validated_at

    def is_unused(self, last_used: float, now: float) -> bool:
        """
        Whether an item was not asked for long enough to be dropped.
        """
        return 0 < self.expire_unused <= now - last_used

    def remember_for(self, error: BaseException) -> float:
        """
        How long to remember a source's refusal: C{expireNotFound} for
        a missing file, C{expireErrors} for a failing source (a 5xx
        error); anything else (a refused path, a bug) is not remembered.
        """
        if isinstance(error, NoSuchFile):
            return self.expire_not_found
        if isinstance(error, OwnCDNError) and error.status >= 500:
            return self.expire_errors
        return 0.0


def display_path(key: CacheKey) -> str:
    """
    How a cached item is named in listings: C{path?query}.
    """
    path, query = key
    return f"{path}?{query}" if query else path


class NegativeCache:
    """
    Refusals from a source (404s and errors), remembered for a while so
    that a missing or failing file does not cost a source request each
    time it is asked for.
    """

    def __init__(self, limit: int = NEGATIVE_LIMIT):
        self._limit = limit
        self._entries: dict[Hashable, tuple[float, type, str]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def remember(self, key: Hashable, error: OwnCDNError, seconds: float, now: float) -> None:
        if seconds <= 0:
            return
        self._entries.pop(key, None)
        self._entries[key] = (now + seconds, type(error), error.message)
        if len(self._entries) > self._limit:
            del self._entries[next(iter(self._entries))]

    def recall(self, key: Hashable, now: float) -> OwnCDNError | None:
        """
        @return: a new instance of the remembered error, or C{None}
            when there is none or its time is up.
        """
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, kind, message = entry
        if now >= expires:
            del self._entries[key]
            return None
        return kind(message)

    def forget(self, key: Hashable) -> None:
        self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()


class SingleFlight:
    """
    Concurrent calls for one key share one run of the work: a hundred
    clients missing the same item make one source request.

    Each caller gets its own Deferred; a caller that goes away (its
    Deferred is cancelled) leaves the work running for the others.

    @param unclaimed: called with a result that every caller abandoned
        before it arrived, so that it can be released.
    """

    def __init__(self, unclaimed: Callable[[object], None] = lambda result: None):
        self._unclaimed = unclaimed
        self._waiting: dict[Hashable, list[Deferred]] = {}

    def __contains__(self, key: Hashable) -> bool:
        return key in self._waiting

    def run(self, key: Hashable, work: Callable[[], Deferred]) -> Deferred:
        waiters = self._waiting.get(key)
        d: Deferred = Deferred(lambda d: self._abandon(key, d))
        if waiters is not None:
            waiters.append(d)
            return d
        self._waiting[key] = [d]
        maybeDeferred(work).addBoth(self._finish, key)
        return d

    def _abandon(self, key: Hashable, d: Deferred) -> None:
        waiters = self._waiting.get(key)
        if waiters is not None and d in waiters:
            waiters.remove(d)

    def _finish(self, result, key: Hashable) -> None:
        waiters = self._waiting.pop(key)
        if not isinstance(result, Failure):
            if not waiters:
                self._unclaimed(result)
            for d in waiters:
                d.callback(result)
            return
        for d in waiters:
            if isinstance(result.value, OwnCDNError):
                d.errback(Failure(fresh_error(result.value)))
            else:
                d.errback(result)


class PassThrough:
    """
    A source body a cache streams without keeping it (too big, or no
    room): the first waiter of its flight gets it, the others open
    their own.
    """

    def __init__(self, body):
        self.body = body

    def claim(self):
        body, self.body = self.body, None
        return body

    def release(self) -> None:
        if self.body is not None:
            self.claim().close()


def revalidate(source, path: str, query: str, held: FileInfo) -> Deferred:
    """
    Ask C{source} whether C{held} is still current: by its own
    conditional request when it is L{IRevalidatable}, else by opening
    the file again and comparing ETag and size (cheap for stores, which
    open a body without reading it).

    @return: a Deferred that fires with C{None} when C{held} is current,
        else with an L{IFileBody} of the new content.
    """
    if IRevalidatable.providedBy(source):
        return source.revalidate(path, held, query)

    def compare(body):
        if body.info.etag == held.etag and body.info.size == held.size:
            body.close()
            return None
        return body

    return source.get(path, query=query).addCallback(compare)


class SourceRequests:
    """
    How a cache service asks its source: for a miss (L{_fetch}, whose
    body goes to the cache's C{_start_fill}), remembering what the
    source refused (L{_refused}), and for a C{HEAD} (L{head}).

    The cache provides C{source}, C{rules}, C{counters}, C{get},
    C{_clock}, C{_negative}, C{_start_fill(body, key)} and
    C{_knows(key)} (whether it holds, fills, remembers a refusal of, or
    is already fetching C{key}).
    """

    def _get_from_source(self, key: CacheKey) -> Deferred:
        self.counters.source_requests += 1
        return self.source.get(self.rules.source_path_of(key), query=key[1])

    def _fetch(self, key: CacheKey) -> Deferred:
        return self._get_from_source(key).addCallbacks(
            self._start_fill, self._refused, callbackArgs=(key,), errbackArgs=(key,))

    def _refused(self, failure: Failure, key: CacheKey) -> Failure:
        seconds = self.rules.remember_for(failure.value)
        if seconds:
            self._negative.remember(key, failure.value, seconds, self._clock.seconds())
        return failure

    def head(self, path: str, version: str | None = None, query: str = "") -> Deferred:
        """
        L{IHeadable.head}: an item the cache knows (L{_knows}) is
        answered as C{get} answers it.  Otherwise, when the source is
        L{IHeadable}, the source's own C{head} answers and the cache
        keeps nothing of it: a C{HEAD} never downloads an item into the
        cache.  A source that cannot describe a file without sending it
        is asked as for C{get} (and the item cached).
        """
        key = self.rules.key(path, query)
        if version is not None or not IHeadable.providedBy(self.source) or self._knows(key):
            return self.get(path, version, query)
        self.counters.misses += 1
        self.counters.source_requests += 1
        d = self.source.head(self.rules.source_path_of(key), query=key[1])
        return d.addErrback(self._refused, key)


@dataclass
class CacheStats:
    """
    What a cache counts, shown by C{servicelist} and C{owncdn status}.

    @ivar hits: requests answered from what the cache holds (an item
        being filled counts: it costs no source request).
    @ivar misses: requests the cache held nothing for.
    @ivar source_requests: calls made to the source (misses that joined
        another's fetch make none).
    @ivar not_modified: revalidations that found the held copy current.
    @ivar refreshed: revalidations that brought new content.
    @ivar negative_hits: requests answered with a remembered refusal.
    @ivar stale_served: held copies served because the source failed.
    @ivar passed_through: items streamed without being kept (too big,
        or no room beside the fills in progress).
    @ivar evictions: items dropped to make room.
    @ivar expired: items dropped after C{expireUnused}.
    """

    hits: int = 0
    misses: int = 0
    source_requests: int = 0
    not_modified: int = 0
    refreshed: int = 0
    negative_hits: int = 0
    stale_served: int = 0
    passed_through: int = 0
    evictions: int = 0
    expired: int = 0

    def as_dict(self) -> dict:
        def camel(name: str) -> str:
            first, *rest = name.split("_")
            return first + "".join(word.title() for word in rest)

        return {camel(f.name): getattr(self, f.name) for f in fields(self)}
