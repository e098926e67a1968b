"""
The replica's HTTP client for its source (the primary): C{syncnext} and
C{getfile}, straight on twisted.web's L{Agent} over one persistent
connection pool.

STYLE's default for peers is treq, but a replica catching up downloads
thousands of small bodies a second, and treq's per-request work (a
hyperlink URL built from the query parameters, the cookie, redirect and
content-decoding agents it wraps around the pool's, its response
wrapper) was most of the replica's reactor time.  Here a C{getfile} is
one URL joined from a prefix built once per source, and one request on
the pool.  Timeouts stay explicit: an answer whose head does not come in
time fails, and so does a body that stops arriving for as long.

A body bigger than L{MEMORY_BODY} goes to a spool file that is created,
written and hashed in the client's own small thread pool, never on the
reactor thread (L{owncdn.replication.spool}).
"""

import hashlib
import io
import json
from pathlib import Path
from typing import BinaryIO, Callable
from urllib.parse import quote, urlencode

from hyperlink import EncodedURL
from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web.client import (Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool,
                                ResponseDone, URI)
from twisted.web.error import SchemeNotSupported
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IAgentEndpointFactory, IResponse
from zope.interface import implementer

from owncdn.config import ReplicationSource
from owncdn.interfaces import Change
from owncdn.replication.errors import SyncError
from owncdn.replication.spool import Spooled

# Seconds to connect and get an answer's head (beyond a long poll's
# wait), and the longest a body may pause.
CONNECT_SLACK = 15
# Bodies up to this size are downloaded into memory: creating a spool
# file costs more than the rest of a small change.
MEMORY_BODY = 64 * 1024
# Threads that create, write and hash the spool files of all downloads.
SPOOL_THREADS = 2
# The most read of a syncnext answer (1,000 changes are well under a
# megabyte) and of an error's body.
LONGEST_ANSWER = 64 * 1024 * 1024
LONGEST_ERROR = 64 * 1024


class _Body(Protocol):
    """
    Receives one response body into C{write}.  L{done} fires once the
    body is complete, and fails when C{write} raises, when the connection
    is lost, or when L{watch} sees nothing arrive for its timeout; a
    failure or a cancellation drops the connection.

    Its L{pauseProducing} and L{resumeProducing} stop and restart the
    reading of the connection (for a consumer that falls behind); a
    paused body is not a stalled one, so L{watch} does not count the
    time it is paused.
    """

    def __init__(self, write: Callable[[bytes], object]):
        self._write = write
        self.done = defer.Deferred(self._cancel)
        self._arrived = False
        self._paused = False
        self._watch = None

    def watch(self, reactor, timeout: float) -> None:
        """
        Fail once nothing arrived for a whole period of C{timeout}
        seconds (so a body that pauses fails 1-2 periods after its last
        bytes).  Only started for a body still arriving once delivery
        begins: a small one is usually complete by then.
        """
        self._arrived = False

        def check():
            if self._arrived or self._paused:
                self._arrived = False
                self._watch = reactor.callLater(timeout, check)
            else:
                self._watch = None
                self.fail(Failure(SyncError(f"the source sent nothing for {timeout:g} s")))

        self._watch = reactor.callLater(timeout, check)

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        self._arrived = True
        try:
            self._write(data)
        except Exception:
            self.fail(Failure())

    def pauseProducing(self) -> None:
        if not self._paused and not self.done.called:
            self._paused = True
            self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        if self._paused:
            self._paused = False
            # The stall timeout counts from here.
            self._arrived = True
            if not self.done.called:
                self.transport.resumeProducing()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._unwatch()
        if self.done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(None)
        else:
            self.done.errback(reason)

    def _unwatch(self) -> None:
        if self._watch is not None and self._watch.active():
            self._watch.cancel()
        self._watch = None

    def fail(self, failure: Failure) -> None:
        """
        Fail L{done} with C{failure} and drop the connection, unless the
        body is already complete or failed.
        """
        if self.done.called:
            return
        self._unwatch()
        self.done.errback(failure)
        self.transport.stopProducing()

    def _cancel(self, _) -> None:
        self._unwatch()
        self.transport.stopProducing()


@implementer(IAgentEndpointFactory)
class _Endpoints:
    """
    Twisted's standard endpoints (TCP, and TLS for https), each made
    once per host: the agent asks for one with every request, even when
    its pool has a connection, and twisted's own factory builds it
    anew, IDNA-encoding the host name, each time.
    """

    def __init__(self, reactor):
        self._reactor = reactor
        self._tls = BrowserLikePolicyForHTTPS()
        self._made: dict[tuple, object] = {}

    def endpointForURI(self, uri: URI):
        key = (uri.scheme, uri.host, uri.port)
        endpoint = self._made.get(key)
        if endpoint is None:
            if uri.scheme not in (b"http", b"https"):
                raise SchemeNotSupported(f"unsupported scheme {uri.scheme!r}")
            endpoint = HostnameEndpoint(self._reactor, uri.host, uri.port)
            if uri.scheme == b"https":
                endpoint = wrapClientTLS(self._tls.creatorForNetloc(uri.host, uri.port), endpoint)
            self._made[key] = endpoint
        return endpoint


class SourceClient:
    """
    Talks to one replication source for one of its storage services.

    @param agent: the L{IAgent} to send requests with; by default one of
        its own, whose pool keeps C{connections} persistent connections
        (the long poll's and one per concurrent download: twisted's
        default of two per host would make most downloads open, and the
        source accept, a new TCP connection).
    @param make_pool: builds the thread pool of the spool files from
        C{(minthreads, maxthreads, name)}, on the first spooled body.
    """

    def __init__(self, source: ReplicationSource, remote_sid: str, reactor, spool_dir: Path,
                 agent: IAgent | None = None, connections: int = 2,
                 make_pool: Callable[[int, int, str], ThreadPool] = ThreadPool):
        self.remote_sid = remote_sid
        self.reactor = reactor
        self.spool_dir = Path(spool_dir)
        self._make_pool = make_pool
        self._spool_threads: ThreadPool | None = None
        self._pool: HTTPConnectionPool | None = None
        if agent is None:
            self._pool = HTTPConnectionPool(reactor, persistent=True)
            self._pool.maxPersistentPerHost = connections
            agent = Agent.usingEndpointFactory(reactor, _Endpoints(reactor), pool=self._pool)
        self.agent = agent
        self.source = source

    @property
    def source(self) -> ReplicationSource:
        return self._source

    @source.setter
    def source(self, source: ReplicationSource) -> None:
        """
        Use C{source} (a reloaded URL or key) from the next request on.
        """
        self._source = source
        url = EncodedURL.from_text(source.url.rstrip("/"))
        if ":" not in url.host:  # IDNA would refuse an IPv6 address
            url = url.to_uri()  # IDNA host, percent-encoded path
        self._base = url.to_text().encode("ascii") + b"/"
        self._getfile = self._base + b"getfile?sid=" + _quoted(self.remote_sid) + b"&path="
        # With its Host header, the agent uses these headers as they are
        # instead of copying them for each request.
        host = f"[{url.host}]" if ":" in url.host else url.host
        if url.port != {"http": 80, "https": 443}.get(url.scheme):
            host += f":{url.port}"
        self._headers = Headers({b"host": [host.encode("ascii")],
                                 b"x-owncdn-key": [source.key.encode("utf-8")]})

    def close(self) -> defer.Deferred:
        """
        Stop the spool threads once the work queued for them is done (the
        closing of the spools of downloads just cancelled: cancel every
        download first), and close the idle connections of its own
        pool.  A later spooled body starts new threads.
        """
        threads, self._spool_threads = self._spool_threads, None
        if threads is not None:
            threads.stop()
        if self._pool is None:
            return defer.succeed(None)
        return self._pool.closeCachedConnections()

    def release(self, body: BinaryIO) -> None:
        """
        Close a body L{getfile} gave: one in memory at once, a spool file
        in the spool threads (closing it frees its blocks on disk), or
        at once if they are stopped.
        """
        threads = self._spool_threads
        if threads is None or isinstance(body, io.BytesIO):
            body.close()
        else:
            threads.callInThread(body.close)

    async def syncnext(self, after: int, limit: int, wait: int) -> bytes:
        """
        One long poll: the body of a 200 answer.
        """
        query = urlencode({"sid": self.remote_sid, "after": after, "limit": limit, "wait": wait})
        response = await self._request(self._base + b"syncnext?" + query.encode("ascii"),
                                       wait + CONNECT_SLACK)
        body = await self._read(response, LONGEST_ANSWER)
        if response.code != 200:
            raise SyncError(f"syncnext answered {response.code}: {body[:200]!r}")
        return body

    def getfile(self, change: Change) -> defer.Deferred:
        """
        Download the content of a put into a spool file (a small one into
        memory), checking its size and SHA-256.

        @return: a Deferred that fires with the spool, positioned at 0
            (give it back with L{release}), or with C{None} when the
            source has pruned the version (C{NoSuchVersion}), or fails
            with L{SyncError}; cancelling it drops the download.
        """
        url = b"%s%s&version=%s" % (self._getfile, _quoted(change.path, "/"),
                                    _quoted(change.version))
        d = self._request(url, CONNECT_SLACK)
        d.addCallback(self._receive_content, change)
        return d

    def _request(self, url: bytes, timeout: float) -> defer.Deferred:
        d = self.agent.request(b"GET", url, self._headers)
        return d.addTimeout(timeout, self.reactor, onTimeoutCancel=_no_answer)

    def _receive(self, response: IResponse, body: _Body) -> defer.Deferred:
        response.deliverBody(body)
        if not body.done.called:
            body.watch(self.reactor, CONNECT_SLACK)
        return body.done

    def _read(self, response: IResponse, longest: int) -> defer.Deferred:
        data = bytearray()

        def write(chunk: bytes) -> None:
            data.extend(chunk)
            if len(data) > longest:
                raise SyncError(f"the source's answer is longer than {longest} bytes")

        return self._receive(response, _Body(write)).addCallback(lambda _: bytes(data))

    def _receive_content(self, response: IResponse, change: Change) -> defer.Deferred:
        if response.code != 200:
            d = self._read(response, LONGEST_ERROR)
            return d.addCallback(_not_downloaded, response.code, change)
        if change.size <= MEMORY_BODY:
            return self._receive_in_memory(response, change)
        return self._receive_spooled(response, change)

    def _receive_in_memory(self, response: IResponse, change: Change) -> defer.Deferred:
        spool = io.BytesIO()
        digest = hashlib.sha256()
        size = 0

        def write(data: bytes) -> None:
            nonlocal size
            size = _counted(change, size, data)
            digest.update(data)
            spool.write(data)

        def received(_) -> BinaryIO:
            _check_size(change, size)
            _check_sha256(change, digest.hexdigest())
            spool.seek(0)
            return spool

        def failed(failure: Failure) -> Failure:
            spool.close()
            return failure

        d = self._receive(response, _Body(write))
        d.addCallback(received)
        d.addErrback(failed)
        return d

    def _receive_spooled(self, response: IResponse, change: Change) -> defer.Deferred:
        size = 0

        def write(data: bytes) -> None:
            nonlocal size
            size = _counted(change, size, data)
            spooled.write(data)

        def received(_) -> defer.Deferred:
            _check_size(change, size)
            return spooled.finish()

        def finished(result: tuple[BinaryIO, str]) -> BinaryIO:
            spool, sha256 = result
            _check_sha256(change, sha256)
            return spool

        def failed(failure: Failure) -> defer.Deferred:
            return spooled.discard().addBoth(lambda _: failure)

        body = _Body(write)
        spooled = Spooled(self.spool_dir, self._spool_pool(), self.reactor, body)
        d = self._receive(response, body)
        d.addCallback(received)
        d.addCallback(finished)
        d.addErrback(failed)
        return d

    def _spool_pool(self) -> ThreadPool:
        if self._spool_threads is None:
            self._spool_threads = self._make_pool(0, SPOOL_THREADS, "replica-spool")
            self._spool_threads.start()
        return self._spool_threads


def _counted(change: Change, size: int, data: bytes) -> int:
    size += len(data)
    if size > change.size:
        # Stop reading now: a body must not grow past what the change
        # announced.
        raise SyncError(f"{change.path} version {change.version} has more than "
                        f"{change.size} bytes")
    return size


def _check_size(change: Change, size: int) -> None:
    if size != change.size:
        raise SyncError(f"{change.path} version {change.version} has {size} bytes, "
                        f"not {change.size}")


def _check_sha256(change: Change, sha256: str) -> None:
    if change.sha256 is not None and sha256 != change.sha256:
        raise SyncError(f"the bytes of {change.path} version {change.version} "
                        f"do not match their SHA-256")


def _quoted(text: str, safe: str = "") -> bytes:
    return quote(text, safe=safe).encode("ascii")


def _no_answer(result, timeout: float) -> Failure:
    return Failure(SyncError(f"the source did not answer in {timeout:g} s"))


def _not_downloaded(body: bytes, code: int, change: Change) -> None:
    """
    A 404 that says the source no longer keeps this version
    (C{keepVersions} pruned it) means the change is applied without
    content, as the source itself records it; any other answer fails.
    """
    if code == 404:
        try:
            if json.loads(body)["error"]["code"] == "NoSuchVersion":
                return None
        except (ValueError, KeyError, TypeError):
            pass
    raise SyncError(f"getfile of {change.path} version {change.version} answered {code}")
