"""
The C{httpfetcher} service: files fetched from an origin web server at
C{sourceUrl + path}.

Bodies stream: the origin's response is handed on as it arrives
(L{OriginBody}), and the origin connection is paused whenever more than
L{HIGH_WATER} bytes wait for a slow reader, so memory does not grow with
the file.  A body that ends before its C{Content-Length} (or runs past
it, as far as the connection shows) fails its last read, so a cache
never keeps it and the client's response is aborted, never completed
with wrong bytes.  The origin's 404 and errors are remembered for
C{cacheNotFound} / C{cacheErrors} seconds.

A client's C{HEAD} (L{HTTPFetcher.head}) becomes a C{HEAD} to the
origin, answered with a L{HeadBody} that carries only the file's
description: the origin sends no body.  An origin that refuses C{HEAD}
(405, 501) or does not give the size is asked with C{GET} instead.

We ask for the identity coding only: treq always offers gzip and
decodes it, which would hide the body's size; see L{IdentityAgent}.
"""

import re
import secrets
from collections import deque
from http.cookiejar import CookieJar, DefaultCookiePolicy
from urllib.parse import quote, unquote, urlsplit

from treq.client import HTTPClient
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.web._newclient import HTTP11ClientProtocol
from twisted.web.client import (
    Agent,
    HTTPConnectionPool,
    PotentialDataLoss,
    ResponseDone,
    _HTTP11ClientFactory,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IAgent
from zope.interface import implementer

from owncdn.config import ConfigError
from owncdn.errors import InvalidPath, NoSuchFile, NoSuchVersion, NotSupported, SourceError
from owncdn.interfaces import FileInfo, IFileBody, IHeadable, IReadableFiles, IRevalidatable
from owncdn.services.cachepolicy import NegativeCache, fresh_error
from owncdn.web.fileresponse import parse_http_date

log = Logger()

USER_AGENT = b"OwnCDN-httpfetcher"
# Buffered bytes past which the origin connection is paused until the
# reader catches up.
HIGH_WATER = 1024 * 1024
# A body without Content-Length must be read whole before its size is
# known (the response to our client announces it); past this it fails.
UNSIZED_LIMIT = 8 * 1024 * 1024
# An error response's body is read (to keep the connection) up to this.
DRAIN_LIMIT = 64 * 1024
# RFC 3986 pchar, less "%" (always encoded, so "%2e%2e" reaches the
# origin as those five characters) and "/" (segments are encoded one by
# one).
_SEGMENT_SAFE = "!$&'()*+,;=:@-._~"
# A query is passed on as the client wrote it, escapes included.
_QUERY_SAFE = _SEGMENT_SAFE + "/?%"
_ETAG = re.compile(r'^(?:W/)?"([\x21\x23-\x7e]*)"$')
# Set on a twisted Response whose connection held bytes past its end.
_OVERLONG = "owncdn_overlong"
# What an origin that cannot answer HEAD says; we ask with GET instead.
_NO_HEAD = (405, 501)


def _segment_escapes(segment: str) -> bool:
    """
    Whether a path segment, decoded as many times as an origin might
    decode it, is or holds a C{.}/C{..} segment or a control character.
    """
    decoded = segment
    while True:
        once = unquote(decoded)
        if once == decoded:
            break
        decoded = once
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in decoded):
        return True
    return any(part in (".", "..") for part in re.split(r"[/\\]", decoded))


def origin_url(base: str, path: str, query: str = "") -> str:
    """
    The URL of C{path} under C{base} (which ends with C{/}): each path
    segment percent-encoded.

    @raise InvalidPath: a segment that would climb out of C{base} once
        the origin decodes it (C{%2e%2e}, C{..%2f}, C{..%5c}, doubly
        encoded forms).
    """
    segments = path.split("/")
    if any(_segment_escapes(segment) for segment in segments):
        raise InvalidPath("the path would leave the origin's sourceUrl")
    url = base + "/".join(quote(segment, safe=_SEGMENT_SAFE) for segment in segments)
    if query:
        url += "?" + quote(query, safe=_QUERY_SAFE)
    return url


def _describe(error: BaseException) -> str:
    reasons = getattr(error, "reasons", None)
    if reasons:
        return "; ".join(reason.getErrorMessage() for reason in reasons)
    return str(error) or type(error).__name__


def _timed_out(result, timeout):
    raise defer.TimeoutError()


def _cancelled(error: BaseException) -> bool:
    """
    Whether a request failed because its caller went away: the agent
    wraps the cancellation in the reasons of its own error.
    """
    if isinstance(error, defer.CancelledError):
        return True
    return any(reason.check(defer.CancelledError) for reason in getattr(error, "reasons", ()))


def origin_info(path: str, size: int, headers: Headers, now: float) -> FileInfo:
    """
    The L{FileInfo} of an origin response.

    The ETag is the origin's opaque tag (a weak one served as strong:
    we hold and serve exactly the bytes it came with).  Without one,
    like nginx, it is made from Last-Modified and size; without either
    it is unique to this fetch, so a client never gets a wrong 304.
    The raw validators go in C{metadata} for L{HTTPFetcher.revalidate}.
    """
    def header(name: bytes) -> str | None:
        value = headers.getRawHeaders(name, [None])[0]
        return value.decode("latin-1") if value is not None else None

    metadata = {}
    last_modified = header(b"last-modified")
    modified = parse_http_date(last_modified.encode("latin-1")) if last_modified else None
    if modified is not None:
        metadata["last-modified"] = last_modified
    raw_etag = header(b"etag")
    match = _ETAG.match(raw_etag.strip()) if raw_etag else None
    if match:
        metadata["etag"] = raw_etag.strip()
        etag = match.group(1)
    elif modified is not None:
        etag = f"{int(modified):x}-{size:x}"
    else:
        etag = f"{int(now):x}-{size:x}-{secrets.token_hex(4)}"
    return FileInfo(
        path=path,
        size=size,
        modified=modified if modified is not None else now,
        etag=etag,
        content_type=header(b"content-type") or "application/octet-stream",
        metadata=metadata,
    )


@implementer(IAgent)
class IdentityAgent:
    """
    Sends C{Accept-Encoding: identity} whatever the layers above added:
    a gzip-decoded body has no known size, and our clients get Ranges
    and a Content-Length only for bodies whose size we know.
    """

    def __init__(self, agent: IAgent):
        self._agent = agent

    def request(self, method, uri, headers=None, bodyProducer=None):
        headers = headers.copy() if headers is not None else Headers()
        headers.setRawHeaders(b"accept-encoding", [b"identity"])
        return self._agent.request(method, uri, headers, bodyProducer)


class _StrictClientProtocol(HTTP11ClientProtocol):
    """
    Twisted's HTTP/1.1 client, told about bytes that arrive after a
    response's end: such a response is not trusted (see L{OriginBody})
    and its connection is not reused.

    Relies on Twisted's private C{_finishResponse_WAITING} hook; extra
    bytes that arrive in a later read than the body's end are dropped
    by Twisted with the connection, unseen.
    """

    def _finishResponse_WAITING(self, rest):
        if rest and self._parser is not None and getattr(self._parser, "response", None):
            setattr(self._parser.response, _OVERLONG, True)
            self._currentRequest.persistent = False
        super()._finishResponse_WAITING(rest)

    _finishResponse_TRANSMITTING = _finishResponse_WAITING


class _StrictClientFactory(_HTTP11ClientFactory):
    def buildProtocol(self, addr):
        return _StrictClientProtocol(self._quiescentCallback)


def origin_client(reactor, pool: HTTPConnectionPool, timeout: float) -> HTTPClient:
    """
    The treq client the fetcher uses in production: identity coding,
    and a cookie jar that keeps nothing (an origin's cookies are not
    ours to send back on other clients' behalf).
    """
    pool._factory = _StrictClientFactory
    agent = Agent(reactor, pool=pool, connectTimeout=timeout)
    return HTTPClient(IdentityAgent(agent),
                      cookiejar=CookieJar(DefaultCookiePolicy(allowed_domains=[])))


class _Drain(Protocol):
    """
    Reads an error response's body away (keeping the connection for
    reuse), or drops the connection if the body is big.
    """

    def __init__(self):
        self._left = DRAIN_LIMIT

    def dataReceived(self, data: bytes) -> None:
        self._left -= len(data)
        if self._left < 0:
            self.transport.stopProducing()


@implementer(IFileBody)
class OriginBody(Protocol):
    """
    An origin response's body, read in order as it arrives.

    The last bytes are held back until Twisted reports the response
    complete (it does so as it parses them, so nothing waits): a body
    that ends early or overruns fails that read instead.  While reads
    wait for data, an origin silent for C{idle_timeout} seconds fails
    them too.

    @param size: the announced size, or C{None} for a body that must be
        read whole first (L{complete}).
    """

    info: FileInfo

    def __init__(self, response, size: int | None, clock, idle_timeout: float):
        self._response = response
        self._size = size
        self._clock = clock
        self._idle_timeout = idle_timeout
        self._limit = HIGH_WATER if size is not None else UNSIZED_LIMIT
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._received = 0
        self._position = 0
        self._paused = False
        self._ended = False
        self._closed = False
        self._error: SourceError | None = None
        self._reader: tuple[Deferred, int] | None = None
        self._completion: Deferred | None = None
        self._timer = None

    # Protocol

    def connectionMade(self) -> None:
        self._arm()

    def dataReceived(self, data: bytes) -> None:
        if self._closed or self._error is not None:
            return
        self._received += len(data)
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered >= self._limit:
            if self._size is None:
                self._abort(SourceError(
                    f"the origin sent more than {UNSIZED_LIMIT} bytes without a Content-Length"))
                return
            if self._received < self._size:
                self.transport.pauseProducing()
                self._paused = True
        self._arm()
        self._wake()

    def connectionLost(self, reason) -> None:
        self._disarm()
        if self._error is None and not self._closed:
            if getattr(self._response, _OVERLONG, False):
                self._error = SourceError("the origin sent more than its Content-Length")
            elif reason.check(ResponseDone) or (self._size is None
                                                and reason.check(PotentialDataLoss)):
                self._ended = True
            else:
                self._error = SourceError(
                    "the origin closed the connection before the end of the body")
        self._wake()

    # Reading

    def complete(self) -> Deferred:
        """
        Read the whole body into memory (bounded by L{UNSIZED_LIMIT}).

        @return: a Deferred that fires with the size, or fails with
            L{SourceError}.
        """
        d = self._completion = Deferred(lambda d: self.close())
        self._wake()
        return d

    def read(self, offset: int, length: int) -> Deferred:
        if offset != self._position or self._closed:
            return fail(IOError("an origin body is read once, in order"))
        data = self._take(length)
        if data:
            return succeed(data)
        if self._error is not None:
            return fail(fresh_error(self._error))
        if self._ended:
            return succeed(b"")
        d: Deferred = Deferred(lambda d: self._forget(d))
        self._reader = (d, length)
        return d

    def alternate(self, encoding: str) -> None:
        return None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._disarm()
        self._chunks.clear()
        if not self._ended and self._error is None and self.transport is not None:
            self.transport.stopProducing()

    def _take(self, length: int) -> bytes:
        """
        Up to C{length} buffered bytes; none at all once the whole body
        is buffered, until Twisted confirms that it ended there.
        """
        if not self._ended and self._size is not None and self._received >= self._size:
            return b""
        if not self._ended and self._size is None:
            return b""
        parts, taken = [], 0
        while self._chunks and taken < length:
            chunk = self._chunks[0]
            if taken + len(chunk) <= length:
                parts.append(self._chunks.popleft())
                taken += len(chunk)
            else:
                cut = length - taken
                parts.append(chunk[:cut])
                self._chunks[0] = chunk[cut:]
                taken = length
        self._buffered -= taken
        self._position += taken
        if self._paused and self._buffered < self._limit:
            self._paused = False
            self.transport.resumeProducing()
            self._arm()
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _wake(self) -> None:
        if self._completion is not None and (self._ended or self._error is not None):
            completion, self._completion = self._completion, None
            if self._error is not None:
                completion.errback(fresh_error(self._error))
            else:
                self._size = self._buffered
                completion.callback(self._size)
        if self._reader is None:
            return
        d, length = self._reader
        data = self._take(length)
        if data:
            self._reader = None
            d.callback(data)
        elif self._error is not None:
            self._reader = None
            d.errback(fresh_error(self._error))
        elif self._ended:
            self._reader = None
            d.callback(b"")

    def _forget(self, d: Deferred) -> None:
        if self._reader is not None and self._reader[0] is d:
            self._reader = None

    def _abort(self, error: SourceError) -> None:
        self._error = error
        self._disarm()
        self._chunks.clear()
        self.transport.stopProducing()
        self._wake()

    # The idle timer runs while we want data: not paused, not finished.

    def _arm(self) -> None:
        if self._paused or self._ended or self._error is not None or self._closed:
            self._disarm()
        elif self._timer is not None:
            self._timer.reset(self._idle_timeout)
        else:
            self._timer = self._clock.callLater(self._idle_timeout, self._idle)

    def _disarm(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None

    def _idle(self) -> None:
        self._timer = None
        self._abort(SourceError(f"the origin sent nothing for {self._idle_timeout:g} s"))


@implementer(IFileBody)
class HeadBody:
    """
    What the origin's answer to a C{HEAD} tells: the file's L{FileInfo},
    without content.
    """

    def __init__(self, info: FileInfo):
        self.info = info

    def read(self, offset: int, length: int) -> Deferred:
        return fail(IOError("the answer to a HEAD has no content"))

    def alternate(self, encoding: str) -> None:
        return None

    def close(self) -> None:
        pass


def _announced_length(headers: Headers) -> int | None:
    values = headers.getRawHeaders(b"content-length", [])
    if len(values) != 1 or not values[0].strip().isdigit():
        return None
    return int(values[0])


@implementer(IReadableFiles, IRevalidatable, IHeadable)
class HTTPFetcher(Service):
    """
    @param source_url: the origin's base URL, ending with C{/}.
    @param timeout: seconds allowed for the origin's response head, and
        for each silence while its body is read.
    @param http: a treq-like client (C{request(method, url, **kwargs)});
        by default L{origin_client} over a pool this service owns.
    """

    def __init__(self, source_url: str, *, reactor, timeout: float = 30.0,
                 cache_not_found: float = 0.0, cache_errors: float = 0.0, http=None):
        self.source_url = source_url if source_url.endswith("/") else source_url + "/"
        self.timeout = timeout
        self.cache_not_found = cache_not_found
        self.cache_errors = cache_errors
        self._reactor = reactor
        self._pool = None
        if http is None:
            self._pool = HTTPConnectionPool(reactor, persistent=True)
            http = origin_client(reactor, self._pool, timeout)
        self._http = http
        self._negative = NegativeCache()

    def stopService(self):
        super().stopService()
        if self._pool is not None:
            return self._pool.closeCachedConnections()
        return None

    # IReadableFiles

    def get(self, path: str, version: str | None = None, query: str = "") -> Deferred:
        if version is not None:
            return fail(NoSuchVersion("an HTTP origin keeps no versions"))
        return self._ask(path, query, {})

    def list(self, prefix: str, after: str | None, limit: int) -> Deferred:
        return fail(NotSupported("an HTTP origin cannot be listed"))

    # IHeadable

    def head(self, path: str, version: str | None = None, query: str = "") -> Deferred:
        """
        A C{HEAD} to the origin: a Deferred that fires with a
        L{HeadBody}, or with an L{OriginBody} when the origin had to be
        asked with C{GET}.
        """
        if version is not None:
            return fail(NoSuchVersion("an HTTP origin keeps no versions"))
        return self._ask(path, query, {}, "HEAD")

    # IRevalidatable

    def revalidate(self, path: str, held: FileInfo, query: str = "") -> Deferred:
        """
        A conditional GET with the validators the origin gave for
        C{held}; without any it is a plain GET (and the answer is always
        new content).
        """
        conditions = {}
        if "etag" in held.metadata:
            conditions[b"if-none-match"] = [held.metadata["etag"].encode("latin-1")]
        if "last-modified" in held.metadata:
            conditions[b"if-modified-since"] = [held.metadata["last-modified"].encode("latin-1")]
        return self._ask(path, query, conditions)

    # Fetching

    def _ask(self, path: str, query: str, conditions: dict, method: str = "GET") -> Deferred:
        try:
            url = origin_url(self.source_url, path, query)
        except InvalidPath:
            return fail()
        key = (path, query)
        error = self._negative.recall(key, self._reactor.seconds())
        if error is not None:
            return fail(error)
        return Deferred.fromCoroutine(self._fetch(key, url, conditions, method))

    async def _fetch(self, key: tuple[str, str], url: str, conditions: dict, method: str):
        try:
            return await self._request(key[0], url, conditions, method)
        except NoSuchFile as error:
            self._negative.remember(key, error, self.cache_not_found, self._reactor.seconds())
            raise
        except SourceError as error:
            log.info("origin error for {url}: {error}", url=url, error=error.message)
            self._negative.remember(key, error, self.cache_errors, self._reactor.seconds())
            raise

    async def _request(self, path: str, url: str, conditions: dict, method: str = "GET"):
        headers = {b"user-agent": [USER_AGENT], **conditions}
        d = self._http.request(method, url, headers=headers, allow_redirects=False,
                               unbuffered=True, reactor=self._reactor)
        d.addTimeout(self.timeout, self._reactor, onTimeoutCancel=_timed_out)
        try:
            response = await d
        except defer.TimeoutError:
            raise SourceError(f"the origin did not answer within {self.timeout:g} s") from None
        except Exception as error:
            if _cancelled(error):
                raise defer.CancelledError() from None
            raise SourceError(f"the origin could not be reached: {_describe(error)}") from None
        code = response.code
        if method == "HEAD" and code in _NO_HEAD:
            response.deliverBody(_Drain())
            return await self._request(path, url, conditions)
        if code != 200 and code != 203:
            response.deliverBody(_Drain())
            if code == 304 and conditions:
                return None
            if code in (404, 410):
                raise NoSuchFile(f"the origin has no {path} (HTTP {code})")
            raise SourceError(f"the origin answered HTTP {code}")
        # treq's gzip layer leaves an empty Content-Encoding behind.
        coding = b",".join(response.headers.getRawHeaders(b"content-encoding", [])).strip()
        if coding and coding.lower() != b"identity":
            response.deliverBody(_Drain())
            raise SourceError(f"the origin sent a {coding.decode('latin-1')}-coded body")
        if method == "HEAD":
            response.deliverBody(_Drain())
            size = _announced_length(response.headers)
            if size is None:
                return await self._request(path, url, conditions)
            return HeadBody(origin_info(path, size, response.headers, self._reactor.seconds()))
        size = None if response.length is UNKNOWN_LENGTH else response.length
        body = OriginBody(getattr(response, "original", response), size, self._reactor,
                          self.timeout)
        response.deliverBody(body)
        if size is None:
            try:
                size = await body.complete()
            except BaseException:
                body.close()
                raise
        body.info = origin_info(path, size, response.headers, self._reactor.seconds())
        return body


def build(service_config, context) -> HTTPFetcher:
    options = service_config.options
    where = f"services ({service_config.id})"
    parts = urlsplit(options["sourceUrl"])
    if parts.query or parts.fragment:
        raise ConfigError(f"{where}.sourceUrl: {options['sourceUrl']!r} must not have a "
                          "query or fragment (the path and query are appended to it)")
    if options["timeout"] <= 0:
        raise ConfigError(f"{where}.timeout: must be more than 0 seconds")
    return HTTPFetcher(
        options["sourceUrl"],
        reactor=context.reactor,
        timeout=options["timeout"],
        cache_not_found=options["cacheNotFound"],
        cache_errors=options["cacheErrors"],
    )
