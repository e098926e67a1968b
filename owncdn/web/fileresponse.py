"""
Sending one file version as an HTTP response: validators, conditional
requests, a single byte range, the stored Brotli coding, and a pull
producer that streams the body one block at a time.

Standard mode, S3 mode and public bindings all answer with this.
"""

import calendar
import re
from email.utils import formatdate, parsedate
from functools import lru_cache

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from owncdn.interfaces import FileInfo
from owncdn.web.site import put_headers

BLOCK = 1024 * 1024
_DIGITS = re.compile(rb"[0-9]*")
# Request headers by the canonical names Twisted's Headers keeps them under.
_CONDITIONALS = frozenset((b"If-Match", b"If-None-Match", b"If-Modified-Since",
                           b"If-Unmodified-Since"))


def http_date(seconds: float) -> bytes:
    return _http_date(int(seconds))


# Formatting a date costs more than the rest of a small file's headers;
# the same Last-Modified values come back again and again.
@lru_cache(maxsize=4096)
def _http_date(seconds: int) -> bytes:
    return formatdate(seconds, usegmt=True).encode("ascii")


def parse_http_date(value: bytes | None) -> float | None:
    if not value:
        return None
    try:
        parsed = parsedate(value.decode("latin-1"))
    except (TypeError, ValueError):
        return None
    if parsed is None:
        return None
    return float(calendar.timegm(parsed))


def quoted_etag(info: FileInfo) -> bytes:
    return b'"' + info.etag.encode("ascii") + b'"'


def _etag_matches(header: bytes, info: FileInfo) -> bool:
    if header.strip() == b"*":
        return True
    wanted = info.etag.encode("ascii")
    for candidate in header.split(b","):
        candidate = candidate.strip()
        if candidate.startswith(b"W/"):
            candidate = candidate[2:]
        if candidate.strip(b'"') == wanted:
            return True
    return False


def precondition_status(request, info: FileInfo) -> int | None:
    """
    The status that the request's conditional headers call for, per RFC
    9110 section 13.2.2: 412 for a failed C{If-Match} /
    C{If-Unmodified-Since}, 304 for C{If-None-Match} /
    C{If-Modified-Since} on an unchanged file; else C{None}.
    """
    return _precondition_status(dict(request.requestHeaders.getAllRawHeaders()),
                                request.method, info)


def _precondition_status(headers: dict, method: bytes, info: FileInfo) -> int | None:
    """
    L{precondition_status} on the request's headers by canonical name
    (as L{Headers.getAllRawHeaders} gives them).
    """
    if _CONDITIONALS.isdisjoint(headers):
        return None
    get = headers.get
    modified = int(info.modified)
    if_match = get(b"If-Match")
    if if_match is not None:
        if not _etag_matches(if_match[0], info):
            return 412
    elif (since := get(b"If-Unmodified-Since")) is not None:
        since = parse_http_date(since[0])
        if since is not None and modified > since:
            return 412
    if_none_match = get(b"If-None-Match")
    if if_none_match is not None:
        if _etag_matches(if_none_match[0], info):
            return 304
    elif method in (b"GET", b"HEAD") and (since := get(b"If-Modified-Since")):
        since = parse_http_date(since[0])
        if since is not None and modified <= since:
            return 304
    return None


class Unsatisfiable(Exception):
    """
    The range lies wholly outside the file.
    """


def parse_range(header: bytes | None, size: int) -> tuple[int, int] | None:
    """
    The one byte range C{[start, end)} a C{Range} header asks for.

    A missing, malformed or multi-range header gives C{None}: the whole
    file is sent, as RFC 9110 allows.  Serving a single range only keeps
    a many-part header from inflating a small file into a huge response.

    @raise Unsatisfiable: the range starts past the end of the file.
    """
    if not header:
        return None
    unit, _, spec = header.partition(b"=")
    if unit.strip().lower() != b"bytes" or b"," in spec:
        return None
    first, dash, last = spec.strip().partition(b"-")
    if not dash or not _DIGITS.fullmatch(first) or not _DIGITS.fullmatch(last):
        return None
    if first == b"":
        if last == b"":
            return None
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise Unsatisfiable()
        return max(0, size - suffix), size
    start = int(first)
    end = int(last) + 1 if last else size
    if last and end <= start:
        return None
    if start >= size:
        raise Unsatisfiable()
    return start, min(end, size)


def accepts_encoding(request, coding: bytes) -> bool:
    """
    Whether C{Accept-Encoding} names C{coding} with a non-zero quality.
    """
    for header in request.requestHeaders.getRawHeaders(b"accept-encoding", []):
        for item in header.split(b","):
            name, _, params = item.strip().partition(b";")
            if name.strip().lower() == coding:
                params = params.replace(b" ", b"")
                return not (params.startswith(b"q=0") and params.strip(b"q=0.") == b"")
    return False


@implementer(IPushProducer)
class BodyProducer:
    """
    Streams C{[start, end)} of a body into a request one block at a time,
    so memory stays at a few blocks whatever the size.

    A push producer, because a read finishes later (a stored body reads
    each chunk in a thread): a pull producer would have Twisted call
    C{resumeProducing} in a busy loop while the read is in its thread.
    One block is read ahead while the transport sends the last one, so
    the connection does not sit idle for every read; the transport pauses
    the producer when its buffer is full, and a block read meanwhile waits
    for it to resume.

    @ivar done: fires when the last byte was written, or fails when the
        body ended early or the body read failed.
    """

    def __init__(self, request, body, start: int, end: int):
        self._request = request
        self._body = body
        self._read_position = start
        self._written = start
        self._end = end
        self._reading = False
        self._ready: bytes | None = None
        self._paused = False
        self._stopped = False
        self.done = defer.Deferred(lambda _: self.stopProducing())

    def start(self) -> defer.Deferred:
        self._request.registerProducer(self, True)
        self._read_next()
        return self.done

    def _read_next(self):
        if (self._reading or self._ready is not None or self._stopped
                or self._read_position >= self._end):
            return
        self._reading = True
        length = min(BLOCK, self._end - self._read_position)
        self._body.read(self._read_position, length).addCallbacks(self._got, self._failed)

    def pauseProducing(self):
        self._paused = True

    def resumeProducing(self):
        self._paused = False
        if self._ready is not None:
            self._send_ready()
        else:
            self._read_next()

    def _got(self, data: bytes):
        self._reading = False
        if self._stopped:
            return
        if not data:
            self._failed(IOError("the body ended before its announced size"))
            return
        self._read_position += len(data)
        self._ready = data
        self._send_ready()

    def _send_ready(self):
        if self._paused or self._ready is None:
            return
        data, self._ready = self._ready, None
        self._written += len(data)
        self._request.write(data)
        if self._written >= self._end:
            self._stopped = True
            self._request.unregisterProducer()
            self.done.callback(None)
            return
        self._read_next()

    def _failed(self, reason):
        self._reading = False
        if self._stopped:
            return
        self._stopped = True
        self._request.unregisterProducer()
        self.done.errback(reason)

    def stopProducing(self):
        self._stopped = True
        self._ready = None


async def send_file(request, body, extra_headers: dict[bytes, bytes] | None = None,
                    *, allow_br: bool = True) -> None:
    """
    Answer C{request} with C{body}, honouring conditional headers, a
    single C{Range} and C{Accept-Encoding: br}, then finish the request.

    The body is closed when done.  A body that fails mid-way aborts the
    connection (the client sees a short response, never a wrong one).
    """
    info: FileInfo = body.info
    try:
        if extra_headers:
            for name, value in extra_headers.items():
                request.setHeader(name, value)
        put_headers(request, ((b"ETag", quoted_etag(info)),
                              (b"Last-Modified", http_date(info.modified)),
                              (b"Accept-Ranges", b"bytes")))
        # Read only: the channel stores names in their canonical form.
        asked = request.requestHeaders._rawHeaders
        status = _precondition_status(asked, request.method, info)
        if status is not None:
            request.setResponseCode(status)
            if status == 412:
                request.setHeader(b"content-type", b"text/plain")
                request.setHeader(b"content-length", b"0")
            request.finish()
            return
        request.setHeader(b"content-type", info.content_type.encode("latin-1", "replace"))
        range_header = asked.get(b"Range")
        if range_header is not None:
            range_header = range_header[-1]
        alternate = body.alternate("br") if allow_br else None
        if alternate is not None:
            request.responseHeaders.addRawHeader(b"vary", b"Accept-Encoding")
        if alternate is not None and range_header is None and accepts_encoding(request, b"br"):
            body.close()
            body = alternate
            request.setHeader(b"content-encoding", b"br")
        elif alternate is not None:
            alternate.close()
        size = body.info.size
        try:
            byte_range = parse_range(range_header, size)
        except Unsatisfiable:
            request.setResponseCode(416)
            request.setHeader(b"content-range", b"bytes */%d" % size)
            request.setHeader(b"content-length", b"0")
            request.finish()
            return
        start, end = byte_range or (0, size)
        if byte_range is not None:
            request.setResponseCode(206)
            request.setHeader(b"content-range", b"bytes %d-%d/%d" % (start, end - 1, size))
        put_headers(request, ((b"Content-Length", b"%d" % (end - start)),))
        if request.method == b"HEAD" or start == end:
            request.finish()
            return
        if end - start <= BLOCK:
            # Usually one read that has fired already.
            data = await body.read(start, end - start)
            if len(data) < end - start:
                data = b"".join([data, *await _read_rest(body, start + len(data), end)])
            request.write(data)
        else:
            await BodyProducer(request, body, start, end).start()
        request.finish()
    except defer.CancelledError:
        raise
    except BaseException:
        if request.startedWriting:
            request.channel.transport.abortConnection()
            return
        raise
    finally:
        body.close()


async def _read_rest(body, start: int, end: int) -> list[bytes]:
    """
    The parts of C{[start, end)} of a small body, read until all are in.
    """
    parts = []
    position = start
    while position < end:
        data = await body.read(position, end - position)
        if not data:
            raise IOError("the body ended before its announced size")
        parts.append(data)
        position += len(data)
    return parts
