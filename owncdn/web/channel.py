"""
The HTTP channel of the site (L{owncdn.web.site}): one connection, its
request heads, its timer and its writes.

The head deadline (slow-loris clients), the 414/431 refusals of an
oversized head and the drain bookkeeping live here, and so does what
keeps the cost of each request on a kept-alive connection down: one
timer per connection, the addresses looked up once, a head that arrives
whole parsed in one go by Twisted's rules, and a small response sent
with its head in one C{send()}.
"""

import re

from twisted.internet import tcp
from twisted.logger import Logger
from twisted.protocols import basic
from twisted.web import http
# Names taken from twisted.web.http once: the module is wrapped in a
# deprecation proxy that makes each attribute lookup cost a microsecond.
from twisted.web.http import _parseRequestLine
from twisted.web.http_headers import Headers, InvalidHeaderName, _nameEncoder
from twisted.web.iweb import INonQueuedRequestFactory

log = Logger()

# A request line twisted.web.http._parseRequestLine accepts: a token,
# a target of bytes 33 to 176 (its bounds), HTTP/1.0 or 1.1, one space
# between each.
_REQUEST_LINE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+) ([\x21-\xb0]+) (HTTP/1\.[01])")
# Writes up to this size go straight to the socket when the transport
# has nothing queued; bigger ones (streamed bodies) through its buffer.
DIRECT_SEND_LIMIT = 64 * 1024


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
            head = data[:end]
            # An empty request line, or a line that starts with a blank
            # (folded onto the one before): Twisted's machinery's.
            if head.startswith(b"\r\n") or b"\r\n " in head or b"\r\n\t" in head:
                break
            lines = head.split(b"\r\n")
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
        # The names Twisted has canonicalised before, without a call each.
        canonical = _nameEncoder._canonicalHeaderCache
        for index in range(1, len(lines)):
            name, colon, value = lines[index].partition(b":")
            if not colon:
                self._respondToBadRequestAndDisconnect()
                return False
            known = canonical.get(name)
            if known is not None:
                name = known
            else:
                try:
                    name = _nameEncoder.encode(name)
                except InvalidHeaderName:
                    self._respondToBadRequestAndDisconnect()
                    return False
            value = value.strip(b" \t")
            # Byte values, not b"\r": on CPython 3.11 a bytes-in-bytes test
            # first raises and clears a TypeError (about 1,900 instructions).
            if 0 in value or 13 in value or 10 in value:
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

    # One timer per connection.  Twisted's TimeoutMixin would restart a
    # timer on every read and cancel and start one on every request;
    # this channel keeps its timeOut attribute (Twisted swaps it to None
    # while a request is processed) but only L{_check_deadline} acts on
    # it, while a request body arrives.

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

    def checkPersistence(self, request, version):
        # Twisted's answer, without its header lookup and token list for
        # the usual HTTP/1.1 request that names no Connection option.
        if version == b"HTTP/1.1" and not request.requestHeaders._rawHeaders.get(b"Connection"):
            return True
        return super().checkPersistence(request, version)

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
