"""
The HTTP site: the request factory and channel that guard the edge.

Twisted's defaults are not enough for a public server, so this module
closes the holes: a body cap checked before and while the body arrives
(413 without reading the rest), bodies over 1 MiB spooled into a file in
the data folder (never memory, never /tmp), a deadline for the request
head (slow-loris clients), a clean 414/431 for an oversized head,
connection bookkeeping so that SIGTERM lets requests in progress finish,
and a look at the head of each request with a sizeable body by a root
resource that can refuse it from the head alone (L{IEarlyRefusal}: a
badly signed 5 GB S3 upload is refused before its first byte is read).
"""

import json
import re
import secrets
import tempfile
import time
from io import BytesIO
from pathlib import Path
from urllib.parse import unquote_to_bytes

from twisted.internet import defer, tcp
from twisted.protocols import basic
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, resource, server
# Names taken from twisted.web.http once: the module is wrapped in a
# deprecation proxy that makes each attribute lookup cost a microsecond.
from twisted.web.http import _parseRequestLine
from twisted.web.http_headers import Headers, InvalidHeaderName, _nameEncoder
from twisted.web.iweb import INonQueuedRequestFactory
from zope.interface import Interface

from owncdn.web.reqlog import RequestLog

SPOOL_THRESHOLD = 1024 * 1024
# How long a stopping daemon waits for requests in progress before it
# cuts them off.
DRAIN_TIMEOUT = 30.0
# How long an idle connection closed by the drain may take to go: a TLS
# client that never answers the close_notify would otherwise hold it.
IDLE_CLOSE_GRACE = 2.0
# A request line twisted.web.http._parseRequestLine accepts: a token,
# a target of bytes 33 to 176 (its bounds), HTTP/1.0 or 1.1, one space
# between each.
_REQUEST_LINE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+) ([\x21-\xb0]+) (HTTP/1\.[01])")
# Writes up to this size go straight to the socket when the transport
# has nothing queued; bigger ones (streamed bodies) through its buffer.
DIRECT_SEND_LIMIT = 64 * 1024

log = Logger()


def _too_large_response(is_s3: bool, limit: int) -> bytes:
    extra = b""
    if is_s3:
        request_id = secrets.token_hex(8).upper().encode()
        body = (
            b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>EntityTooLarge</Code>'
            b"<Message>Your proposed upload exceeds the maximum allowed size</Message>"
            + f"<MaxSizeAllowed>{limit}</MaxSizeAllowed>".encode()
            + b"<RequestId>" + request_id + b"</RequestId></Error>"
        )
        content_type = b"application/xml"
        # Every S3 response carries a request ID, this one included.
        extra = b"x-amz-request-id: " + request_id + b"\r\n"
    else:
        body = json.dumps({"error": {
            "code": "TooLarge",
            "message": f"the body is larger than the limit of {limit} bytes",
        }}).encode()
        content_type = b"application/json"
    return (
        b"HTTP/1.1 413 Request Entity Too Large\r\n"
        b"Content-Type: " + content_type + b"\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n" + extra +
        b"Connection: close\r\n\r\n" + body
    )


_date = [0, b""]


def http_date_now() -> bytes:
    """
    The C{Date} header value for now, formatted once a second.
    """
    now = int(time.time())
    if now != _date[0]:
        _date[:] = now, http.datetimeToString(now)
    return _date[1]


def parse_query(query: bytes) -> dict[bytes, list[bytes]]:
    """
    C{twisted.web.http.parse_qs(query, 1)}: the same dictionary, without
    unquoting the (usual) items that need none.
    """
    args: dict[bytes, list[bytes]] = {}
    for part in query.split(b"&"):
        for item in part.split(b";") if b";" in part else (part,):
            name, equals, value = item.partition(b"=")
            if not equals:
                continue
            if b"%" in item or b"+" in item:
                name = unquote_to_bytes(name.replace(b"+", b" "))
                value = unquote_to_bytes(value.replace(b"+", b" "))
            if name in args:
                args[name].append(value)
            else:
                args[name] = [value]
    return args


def is_s3_request(request) -> bool:
    """
    S3 mode: any request header name starts with C{x-amz-}.
    """
    # Twisted keeps every name in its canonical form, X-Amz-Date.
    return any(name.startswith(b"X-Amz-")
               for name, _ in request.requestHeaders.getAllRawHeaders())


def put_headers(request, headers) -> None:
    """
    Set response headers that this daemon made itself, each
    C{(name, value)} with the name in Twisted's canonical form
    (C{Content-Length}, C{ETag}) and a value without line breaks, as
    C{request.setHeader} would, without its per-call cost (encoding the
    name, scanning the value): a small file's response sets several.
    """
    raw = request.responseHeaders._rawHeaders
    for name, value in headers:
        raw[name] = [value]


class IEarlyRefusal(Interface):
    """
    A root resource that can refuse a request from its head alone.
    L{OwnCDNRequest} asks it once the head of a request with a body worth
    not reading has arrived (see L{OwnCDNRequest.gotLength}); the
    resource still checks the request in full if it is let through.
    """

    def refuse_early(request, method, target):
        """
        Look at a request whose body has not been read.

        @param request: the request, with its headers and channel; its
            C{method}, C{uri} and C{content} are not set yet.
        @param method: the request method as sent (C{bytes}).
        @param target: the request target as sent (C{bytes}).
        @return: a whole HTTP response (C{bytes}) to send before closing
            the connection without reading the body, or C{None} to read
            the body and go on as usual.
        """


class OwnCDNRequest(server.Request):
    """
    A request whose body is capped as it arrives and lands where
    L{OwnCDNSite.getContentFile} puts it.
    """

    refused = False
    # When the request head was complete (time.monotonic), for reqlist.
    started: float = 0.0
    body_length = 0
    # Which api/public service answered, for reqlist.
    logged_service: str | None = None

    def gotLength(self, length):
        self.started = time.monotonic()
        if length is not None and length > self.channel.site.max_upload_size:
            self._refuse_too_large()
            return
        if self._worth_refusing_early(length):
            response = self._early_refusal()
            if response is not None:
                self._refuse(response)
                return
        super().gotLength(length)

    def _worth_refusing_early(self, length: int | None) -> bool:
        """
        Whether to ask the root resource about the head: when the client
        waits for C{100 Continue} (the refusal then costs it nothing), or
        the body is chunked or too large to keep in memory.  A small body
        is cheaper to read than to cut off: closing while it is still
        arriving can reset the connection before the client reads why.
        """
        if length == 0:
            return False
        expect = self.requestHeaders.getRawHeaders(b"expect", [b""])[0]
        return length is None or length > SPOOL_THRESHOLD or expect.lower() == b"100-continue"

    def _early_refusal(self) -> bytes | None:
        root = self.channel.site.resource
        if not IEarlyRefusal.providedBy(root):
            return None
        # Twisted sets the request's method and uri only once the body is
        # in; until then the request line is the channel's.
        channel = self.channel
        try:
            return root.refuse_early(self, channel._command, channel._path)
        except Exception:
            # A refusal is an optimisation: on a bug, read the body and
            # let the resource answer.
            log.failure("refusing {uri!r} from its head failed", uri=channel._path)
            return None

    def handleContentChunk(self, data):
        if self.refused:
            return
        self.body_length += len(data)
        site = self.channel.site
        if self.body_length > site.max_upload_size:
            self._refuse_too_large()
            return
        if self.body_length > SPOOL_THRESHOLD and isinstance(self.content, BytesIO):
            # A chunked body that has outgrown memory.
            self.content = site.spool(self.content)
        self.content.write(data)

    def _refuse_too_large(self):
        self._refuse(_too_large_response(is_s3_request(self), self.channel.site.max_upload_size))

    def _refuse(self, response: bytes):
        """
        Answer straight on the wire and close: the request never
        reaches a resource and the rest of the body is never read.
        """
        self.refused = True
        if self.content is not None:
            self.content.close()
        self.content = BytesIO()
        # HTTPChannel would answer "100 Continue" right after the refusal.
        self.requestHeaders.removeHeader(b"expect")
        channel = self.channel
        channel.transport.write(response)
        channel.persistent = False
        channel.loseConnection()

    def requestReceived(self, command, path, version):
        # Twisted's Request.requestReceived for a site that never parses
        # form bodies, with a quicker query parser.
        if self.refused:
            return
        self.content.seek(0, 0)
        self.method, self.uri, self.clientproto = command, path, version
        self.path, question, query = path.partition(b"?")
        self.args = parse_query(query) if question else {}
        self.process()

    def process(self):
        # Twisted's Request.process, with the Date header formatted once
        # a second rather than on every request.
        self.site = self.channel.site
        put_headers(self, ((b"Server", server.version), (b"Date", http_date_now())))
        self.prepath = []
        segments = self.path[1:].split(b"/")
        self.postpath = list(map(server.unquote, segments)) if b"%" in self.path else segments
        if self.path == b"*":
            self._handleStar()
            return
        try:
            found = self.site.getResourceFor(self)
            if resource._IEncodingResource.providedBy(found):
                encoder = found.getEncoder(self)
                if encoder is not None:
                    self._encoder = encoder
            self.render(found)
        except BaseException:
            self.processingFailed(Failure())

    def write(self, data):
        super().write(data)
        # A head without body bytes (HEAD, 304, an empty write) still
        # goes out now: the channel holds a head back only to send it
        # with the body.
        channel = self.channel
        if channel._pending_head is not None:
            channel._flush_head()

    def processingFailed(self, reason):
        log.failure("unhandled error in {uri}", reason, uri=self.uri)
        if self.finished or self._disconnected:
            return
        if self.startedWriting:
            # Half a response is out: only a cut connection tells the
            # client it is incomplete.
            self.channel.transport.abortConnection()
            return
        body = json.dumps({"error": {"code": "InternalError",
                                     "message": "internal error"}}).encode()
        self.setResponseCode(500)
        self.setHeader(b"content-type", b"application/json")
        self.setHeader(b"content-length", str(len(body)).encode())
        self.write(body)
        self.finish()


class OwnCDNChannel(http.HTTPChannel):
    """
    An HTTP channel that gives each request head C{header_timeout}
    seconds to arrive completely, however slowly the client trickles it,
    refuses an oversized head with 414 or 431, and tells its site when
    it is busy with a request so that a stopping daemon can drain.

    It is also where the cost of each request on a kept-alive
    connection is kept down: one timer per connection instead of two
    started and cancelled per request, the connection's addresses looked
    up once, and a response head sent together with the first bytes of
    its body, straight to the socket when nothing else is queued.

    @ivar busy: a request head has arrived and its response is not
        finished yet.
    """

    busy = False
    _deadline = None
    # When the head now awaited began (site clock), or None when no head
    # is awaited (a request is in progress, or the connection closes).
    _head_since: float | None = None
    # When the body of the request in progress last received bytes.
    _last_data = 0.0
    _host = None
    _peer = None
    # The head of a response, kept until the first body bytes or the
    # end of the Request.write that produced it.
    _pending_head: bytes | None = None

    def connectionMade(self):
        super().connectionMade()
        self.site.channels.add(self)
        self._head_since = self.site.reactor.seconds()
        self._deadline = self.callLater(self.site.header_timeout, self._check_deadline)

    # One timer per connection.  Twisted's TimeoutMixin would restart a
    # timer on every read and cancel and start one on every request;
    # this channel keeps its timeOut attribute (Twisted swaps it to None
    # while a request is processed) but only L{_check_deadline} acts on
    # it, while a request body arrives.

    def dataReceived(self, data):
        """
        Parse each request head that arrives whole (the usual case: a
        small head in one packet) in one go, with Twisted's own request
        line and header checks, instead of Twisted's line-by-line
        machinery; anything else (a head in pieces, a body, a head
        near the size limit, folded header lines) takes that machinery.
        """
        while (self.line_mode and not self._buffer and not self._busyReceiving
               and not self.paused and self.persistent
               and self._HTTPChannel__first_line == 1 and not self._HTTPChannel__header):
            end = data.find(b"\r\n\r\n")
            # Within the limit every line is too, and the head is
            # refused by the same rules either way.
            if end <= 0 or end > self.totalHeadersSize:
                break
            lines = data[:end].split(b"\r\n")
            if not lines[0] or any(line[0] in b" \t" for line in lines[1:]):
                break
            self._busyReceiving = True
            try:
                if not self._whole_head(lines, end):
                    return
            finally:
                self._busyReceiving = False
            data = data[end + 4:]
            if self.transport.disconnecting:
                return
            if not data:
                if not self._buffer:
                    return
                # What a request finished meanwhile handed back.
                data, self._buffer = self._buffer, b""
        basic.LineReceiver.dataReceived(self, data)

    def _whole_head(self, lines: list[bytes], size: int) -> bool:
        """
        What Twisted's lineReceived does for each line of a head, for a
        head whose lines are all here.

        @return: whether the request went on (else it was refused).
        """
        self._receivedHeaderSize = size - 2 * (len(lines) - 1)
        if INonQueuedRequestFactory.providedBy(self.requestFactory):
            request = self.requestFactory(self)
        else:
            request = self.requestFactory(self, len(self.requests))
        self.requests.append(request)
        self._HTTPChannel__first_line = 0
        parsed = _REQUEST_LINE.fullmatch(lines[0])
        try:
            # Twisted's parser checks the target one byte at a time in
            # Python; it only has to say why a line is refused.
            self._command, self._path, self._version = (
                parsed.groups() if parsed is not None else _parseRequestLine(lines[0]))
        except ValueError:
            self._respondToBadRequestAndDisconnect()
            return False
        if not self._whole_headers(request, lines):
            return False
        self.allHeadersReceived()
        if self.length == 0:
            self.allContentReceived()
        else:
            self.setRawMode()
        return True

    def _whole_headers(self, request, lines: list[bytes]) -> bool:
        """
        Twisted's headerReceived for each header line after the first
        line, in one loop: the same checks (a colon, a token name, no
        NUL, CR or LF in the value, the length headers, at most
        maxHeaders), the value stored as addRawHeader stores it (it has
        no line break to fold).

        @return: whether all were accepted (else the request was refused).
        """
        raw = request.requestHeaders._rawHeaders
        count = self._receivedHeaderCount
        for index in range(1, len(lines)):
            name, colon, value = lines[index].partition(b":")
            if not colon:
                self._respondToBadRequestAndDisconnect()
                return False
            try:
                name = _nameEncoder.encode(name)
            except InvalidHeaderName:
                self._respondToBadRequestAndDisconnect()
                return False
            value = value.strip(b" \t")
            if b"\x00" in value or b"\r" in value or b"\n" in value:
                self._respondToBadRequestAndDisconnect()
                return False
            if ((name == b"Content-Length" or name == b"Transfer-Encoding")
                    and not self._maybeChooseTransferDecoder(name, value)):
                return False
            values = raw.get(name)
            if values is None:
                raw[name] = [value]
            else:
                values.append(value)
            count += 1
            if count > self.maxHeaders:
                self._receivedHeaderCount = count
                self._respondToBadRequestAndDisconnect()
                return False
        self._receivedHeaderCount = count
        return True

    def setTimeout(self, period):
        previous, self.timeOut = self.timeOut, period
        return previous

    def resetTimeout(self):
        pass

    def _check_deadline(self):
        """
        The connection's only timer: cut a head that is late or a body
        that stopped arriving, else look again when the next deadline
        can be due.  Requests only note times, so a kept-alive
        connection sets no timer per request.
        """
        self._deadline = None
        now = self.site.reactor.seconds()
        if self._head_since is not None:
            due = self._head_since + self.site.header_timeout
            if now >= due:
                self._head_too_slow()
                return
        elif self.busy and not self._handlingRequest and self.timeOut is not None:
            due = self._last_data + self.timeOut
            if now >= due:
                self.timeoutConnection()
                return
        else:
            due = now + self.site.header_timeout
        self._deadline = self.callLater(due - now, self._check_deadline)

    def _cancel_deadline(self):
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _head_too_slow(self):
        log.info("closing a connection that did not send its request head "
                 "within {timeout} seconds", timeout=self.site.header_timeout)
        self.transport.abortConnection()

    def rawDataReceived(self, data):
        if self.busy and not self._handlingRequest:
            self._last_data = self.site.reactor.seconds()
        super().rawDataReceived(data)

    # Head size limits.  Twisted counts the head against totalHeadersSize
    # line by line and answers 400 when it is exceeded; the 414/431 the
    # client deserves is given where it makes that call, so no wrapper
    # runs for every header line.

    def _respondToBadRequestAndDisconnect(self):
        if self._receivedHeaderSize > self.totalHeadersSize:
            # Twisted counts the request line before parsing it.
            self._refuse_head(request_line=bool(self._HTTPChannel__first_line))
            return
        super()._respondToBadRequestAndDisconnect()

    def lineLengthExceeded(self, line):
        # Nothing of this request has been counted yet: the request line
        # itself is too long.
        self._refuse_head(request_line=self._receivedHeaderSize == 0)

    def _refuse_head(self, request_line: bool):
        if request_line:
            status = b"414 URI Too Long"
        else:
            status = b"431 Request Header Fields Too Large"
        self._cancel_deadline()
        self._head_since = None
        self.transport.write(b"HTTP/1.1 " + status + b"\r\n"
                             b"Content-Length: 0\r\nConnection: close\r\n\r\n")
        self.persistent = False
        # Drop whatever else the client sends before the close.
        self.dataReceived = lambda data: None
        self.loseConnection()

    def allHeadersReceived(self):
        self._head_since = None
        self._last_data = self.site.reactor.seconds()
        self.busy = True
        # Twisted's allHeadersReceived, looking up Cookie and Expect in
        # the headers' dictionary instead of through a Headers call each.
        request = self.requests[-1]
        raw = request.requestHeaders._rawHeaders
        if b"Cookie" in raw:
            request.parseCookies()
        self.persistent = self.checkPersistence(request, self._version)
        request.gotLength(self.length)
        # Read after gotLength: a request refused there drops its Expect.
        expect = raw.get(b"Expect")
        if expect and expect[0].lower() == b"100-continue" and self._version == b"HTTP/1.1":
            self._send100Continue()

    def requestDone(self, request):
        self.busy = False
        if self._pending_head is not None:
            self._flush_head()
        if self.site.draining:
            self.persistent = False
        elif self.persistent:
            # Before the super call: it may parse a pipelined head that
            # is already buffered, which no longer waits for its head.
            self._head_since = self.site.reactor.seconds()
        super().requestDone(request)

    def connectionLost(self, reason):
        self._cancel_deadline()
        self._head_since = None
        super().connectionLost(reason)
        self.site.channel_closed(self)

    # The connection's addresses do not change: Twisted's Request asks
    # for both on every request, the host with a getsockname call.

    def getHost(self):
        host = self._host
        if host is None:
            host = self._host = self.transport.getHost()
        return host

    def getPeer(self):
        peer = self._peer
        if peer is None:
            peer = self._peer = self.transport.getPeer()
        return peer

    # Writing.  Twisted's Request writes its head and its first body bytes
    # as two writes, and its TCP transport only queues them: the socket is
    # then registered for writability and unregistered once it drained,
    # two epoll_ctl calls and a reactor round per response.  Here the
    # head waits for the body (see OwnCDNRequest.write) and a small
    # write is sent at once when the transport has nothing queued and
    # no producer streams the body.

    def writeHeaders(self, version, code, reason, headers):
        if self._pending_head is not None:
            self._flush_head()
        if not isinstance(headers, Headers):
            super().writeHeaders(version, code, reason, headers)
            return
        parts = [version, b" ", code, b" ", reason, b"\r\n"]
        for name, values in headers.getAllRawHeaders():
            for value in values:
                parts += (name, b": ", value, b"\r\n")
        parts.append(b"\r\n")
        self._pending_head = b"".join(parts)

    def _flush_head(self):
        head, self._pending_head = self._pending_head, None
        self._send(head)

    def write(self, data):
        if self._pending_head is not None:
            if len(data) <= DIRECT_SEND_LIMIT:
                data = self._pending_head + data
                self._pending_head = None
            else:
                self._flush_head()
        self._send(data)

    def writeSequence(self, iovec):
        if self._pending_head is not None:
            iovec = [self._pending_head, *iovec]
            self._pending_head = None
        if sum(map(len, iovec)) <= DIRECT_SEND_LIMIT:
            self._send(b"".join(iovec))
        else:
            self.transport.writeSequence(iovec)

    def _send(self, data: bytes) -> None:
        transport = self.transport
        # A body streamed by a producer keeps to the transport's buffer,
        # whose filling is what pauses the producer.
        if (len(data) <= DIRECT_SEND_LIMIT and self._requestProducer is None
                and type(transport) is tcp.Server
                and transport.connected and not transport.disconnecting
                and not transport._aborting and not transport._writeDisconnected
                and not transport._tempDataLen
                and transport.offset == len(transport.dataBuffer)):
            try:
                sent = transport.socket.send(data)
            except OSError:
                # EAGAIN, or a broken connection: the transport finds out
                # which when it writes.
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
        transport.write(data)


class OwnCDNSite(server.Site):
    """
    The site of this daemon: one per process, serving every listening
    port.

    @ivar request_logs: service ID -> L{RequestLog} for C{reqlist}.
    @ivar channels: the open connections.
    @ivar draining: L{drain} has been called: connections close once
        their current response is out.
    """

    requestFactory = OwnCDNRequest
    protocol = OwnCDNChannel

    def __init__(self, resource, *, spool_dir: Path, max_upload_size: int,
                 header_timeout: float, reactor=None):
        # Bodies are never form-decoded: uploads are files.
        super().__init__(resource, parsePOSTFormSubmission=False, reactor=reactor)
        self.spool_dir = Path(spool_dir)
        self.max_upload_size = max_upload_size
        self.header_timeout = header_timeout
        self.request_logs: dict[str, RequestLog] = {}
        self.channels: set[OwnCDNChannel] = set()
        self.draining = False
        self._drained: list[defer.Deferred] = []

    def getResourceFor(self, request):
        # Twisted's Site.getResourceFor, without copy.copy of a list
        # that is always empty here.
        request.site = self
        request.sitepath = request.prepath[:]
        return resource.getChildForRequest(self.resource, request)

    def getContentFile(self, length: int | None):
        """
        Where a request body goes: memory up to L{SPOOL_THRESHOLD}, else
        an anonymous file in the spool folder of the data volume.  A
        chunked body (length C{None}) starts in memory and moves to such
        a file once it grows past the threshold.
        """
        if length is None or length <= SPOOL_THRESHOLD:
            return BytesIO()
        return tempfile.TemporaryFile(dir=self.spool_dir, prefix="upload-")

    def spool(self, memory: BytesIO):
        """
        Move what C{memory} holds into a spool file, open at its end.
        """
        spooled = tempfile.TemporaryFile(dir=self.spool_dir, prefix="upload-")
        with memory.getbuffer() as held:
            spooled.write(held)
        memory.close()
        return spooled

    def channel_closed(self, channel: OwnCDNChannel) -> None:
        self.channels.discard(channel)
        if not self.channels and self._drained:
            waiting, self._drained = self._drained, []
            for d in waiting:
                d.callback(None)

    def drain(self) -> defer.Deferred:
        """
        Close idle connections now and every other one once its current
        response is out; after L{DRAIN_TIMEOUT} seconds cut what is left.
        Call it after the listening ports have closed.

        @return: a Deferred that fires once every connection is closed.
        """
        self.draining = True
        idle = [channel for channel in self.channels if not channel.busy]
        for channel in idle:
            channel.loseConnection()
        if not self.channels:
            return defer.succeed(None)
        cut_idle = self.reactor.callLater(IDLE_CLOSE_GRACE, self._cut_idle, idle)
        log.info("waiting for {count} connections to finish", count=len(self.channels))
        d = defer.Deferred()
        self._drained.append(d)
        deadline = self.reactor.callLater(DRAIN_TIMEOUT, self._cut_connections)

        def stop_deadline(result):
            for call in (deadline, cut_idle):
                if call.active():
                    call.cancel()
            return result

        return d.addBoth(stop_deadline)

    def _cut_idle(self, idle: list) -> None:
        for channel in idle:
            if channel in self.channels and not channel.busy:
                channel.transport.abortConnection()

    def _cut_connections(self):
        log.warn("cutting {count} connections still open after {timeout} seconds",
                 count=len(self.channels), timeout=DRAIN_TIMEOUT)
        for channel in list(self.channels):
            channel.transport.abortConnection()

    def log(self, request):
        sid = request.logged_service
        if sid is None:
            return
        request_log = self.request_logs.get(sid)
        if request_log is not None:
            request_log.record(request)
