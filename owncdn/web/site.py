"""
The HTTP site: the request factory and channel that guard the edge.

Twisted's defaults are not enough for a public server, so this module
closes the holes: a body cap checked before and while the body arrives
(413 without reading the rest), bodies over 1 MiB spooled into a file in
the data folder (never memory, never /tmp), a deadline for the request
head (slow-loris clients), and request bookkeeping so that SIGTERM lets
in-flight requests finish.
"""

import json
import tempfile
import time
from io import BytesIO
from pathlib import Path

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import http, server

from owncdn.web.reqlog import RequestLog

SPOOL_THRESHOLD = 1024 * 1024

log = Logger()


def _too_large_response(is_s3: bool, limit: int) -> bytes:
    if is_s3:
        body = (
            b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>EntityTooLarge</Code>'
            b"<Message>Your proposed upload exceeds the maximum allowed size</Message>"
            + f"<MaxSizeAllowed>{limit}</MaxSizeAllowed></Error>".encode()
        )
        content_type = b"application/xml"
    else:
        body = json.dumps({"error": {
            "code": "TooLarge",
            "message": f"the body is larger than the limit of {limit} bytes",
        }}).encode()
        content_type = b"application/json"
    return (
        b"HTTP/1.1 413 Request Entity Too Large\r\n"
        b"Content-Type: " + content_type + b"\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n"
        b"Connection: close\r\n\r\n" + body
    )


def is_s3_request(request) -> bool:
    """
    S3 mode: any request header name starts with C{x-amz-}.
    """
    return any(name.lower().startswith(b"x-amz-")
               for name, _ in request.requestHeaders.getAllRawHeaders())


class OwnCDNRequest(server.Request):
    """
    A request whose body is capped and spooled as it arrives.
    """

    refused = False
    started: float = 0.0
    body_length = 0
    # Which api/public service answered, for reqlist.
    logged_service: str | None = None

    def gotLength(self, length):
        self.started = time.monotonic()
        site = self.channel.site
        if length is not None and length > site.max_upload_size:
            self._refuse_too_large()
            return
        if length is not None and length <= SPOOL_THRESHOLD:
            self.content = BytesIO()
        else:
            self.content = tempfile.TemporaryFile(dir=site.spool_dir, prefix="upload-")

    def handleContentChunk(self, data):
        if self.refused:
            return
        self.body_length += len(data)
        if self.body_length > self.channel.site.max_upload_size:
            self._refuse_too_large()
            return
        self.content.write(data)

    def _refuse_too_large(self):
        """
        Answer 413 straight on the wire and close: the request never
        reaches a resource and the rest of the body is never read.
        """
        self.refused = True
        if self.content is not None:
            self.content.close()
        self.content = BytesIO()
        transport = self.channel.transport
        transport.write(_too_large_response(is_s3_request(self), self.channel.site.max_upload_size))
        self.channel.persistent = False
        transport.loseConnection()

    def requestReceived(self, command, path, version):
        if self.refused:
            return
        self.channel.site.in_flight.add(self)
        super().requestReceived(command, path, version)

    def finish(self):
        site = self.channel.site
        super().finish()
        site.request_done(self)

    def connectionLost(self, reason):
        site = self.channel.site if self.channel is not None else None
        super().connectionLost(reason)
        if site is not None:
            site.request_done(self)

    def processingFailed(self, reason):
        log.failure("unhandled error in {uri}", reason, uri=self.uri)
        if self.finished or self._disconnected:
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
    seconds to arrive completely, however slowly the client trickles it.
    """

    _head_deadline = None

    def connectionMade(self):
        super().connectionMade()
        self._start_head_deadline()

    def _start_head_deadline(self):
        self._cancel_head_deadline()
        self._head_deadline = self.callLater(self.site.header_timeout, self._head_too_slow)

    def _cancel_head_deadline(self):
        if self._head_deadline is not None and self._head_deadline.active():
            self._head_deadline.cancel()
        self._head_deadline = None

    def _head_too_slow(self):
        self._head_deadline = None
        log.info("closing a connection that did not send its request head in time")
        self.transport.abortConnection()

    def allHeadersReceived(self):
        self._cancel_head_deadline()
        super().allHeadersReceived()

    def requestDone(self, request):
        super().requestDone(request)
        if self.transport is not None and not self._requestsDone():
            self._start_head_deadline()

    def _requestsDone(self):
        return self.transport.disconnecting or not self.persistent

    def connectionLost(self, reason):
        self._cancel_head_deadline()
        super().connectionLost(reason)


class OwnCDNSite(server.Site):
    """
    The site of this daemon: one per process, serving every listening
    port.

    @ivar request_logs: service ID -> L{RequestLog} for C{reqlist}.
    @ivar in_flight: requests received but not yet finished.
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
        self.in_flight: set = set()
        self._drained: list[defer.Deferred] = []

    def buildProtocol(self, addr):
        channel = super().buildProtocol(addr)
        channel.site = self
        return channel

    def request_done(self, request):
        self.in_flight.discard(request)
        if not self.in_flight and self._drained:
            waiting, self._drained = self._drained, []
            for d in waiting:
                d.callback(None)

    def drained(self) -> defer.Deferred:
        """
        @return: a Deferred that fires once no request is in flight.
        """
        if not self.in_flight:
            return defer.succeed(None)
        d = defer.Deferred()
        self._drained.append(d)
        return d

    def log(self, request):
        sid = request.logged_service
        if sid is None:
            return
        request_log = self.request_logs.get(sid)
        if request_log is not None:
            request_log.record(request)
