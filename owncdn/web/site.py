"""
The HTTP site: the request factory and channel that guard the edge
(the channel itself is L{owncdn.web.channel}).

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

import errno
import json
import tempfile
import time
from collections.abc import Iterable
from io import BytesIO
from pathlib import Path
from urllib.parse import unquote_to_bytes

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web import http, resource, server
from zope.interface import Interface

from owncdn.config import DEFAULT_BODY_TIMEOUT
from owncdn.s3.errors import new_request_id
from owncdn.spool import SpoolDiscarded, Spooled
from owncdn.web.channel import OwnCDNChannel
from owncdn.web.reqlog import RequestLog

SPOOL_THRESHOLD = 1024 * 1024
# '%' as a byte value, for "PERCENT in raw": "b'%' in raw" first tries
# its operand as an integer, and on CPython 3.11 raising and clearing
# that TypeError costs ten times the search itself.
PERCENT = ord("%")
# While a body bound for the spool file arrives, the connection reads
# the socket this much at a time rather than Twisted's 64 KiB: half the
# reactor's time per GiB received.  The reactor handles one read at a
# time, so this is at most one such buffer in memory.
SPOOL_READ_SIZE = 1024 * 1024
# Threads that create and write the spool files of request bodies (the
# site's own pool, started with the first spooled body).
SPOOL_THREADS = 2
# How long a stopping daemon waits for requests in progress before it
# cuts them off.
DRAIN_TIMEOUT = 30.0
# How long an idle connection closed by the drain may take to go: a TLS
# client that never answers the close_notify would otherwise hold it.
IDLE_CLOSE_GRACE = 2.0

log = Logger()


def closing_response(status: bytes, content_type: bytes, body: bytes,
                     headers: Iterable[tuple[bytes, bytes]] = ()) -> bytes:
    """
    A whole HTTP/1.1 response after which the connection closes, for
    answering straight on the wire (C{status}: the code and its reason).
    """
    head = b"".join(name + b": " + value + b"\r\n" for name, value in headers)
    return (b"HTTP/1.1 " + status + b"\r\nContent-Type: " + content_type
            + b"\r\nContent-Length: %d\r\n" % len(body) + head + b"Connection: close\r\n\r\n" + body)


def _error_response(status: bytes, is_s3: bool, s3_error: tuple[str, str, bytes],
                    api_error: tuple[str, str]) -> bytes:
    """
    A refusal made by the site itself, in the request's mode: an S3
    error document (code, message, extra elements) with its request ID,
    or the standard mode's JSON error (code, message).
    """
    if is_s3:
        code, message, details = s3_error
        # Every S3 response carries a request ID, this one included.
        request_id = new_request_id().encode()
        body = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>' + code.encode()
                + b"</Code><Message>" + message.encode() + b"</Message>" + details
                + b"<RequestId>" + request_id + b"</RequestId></Error>")
        return closing_response(status, b"application/xml", body, [(b"x-amz-request-id", request_id)])
    code, message = api_error
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    return closing_response(status, b"application/json", body)


def _too_large_response(is_s3: bool, limit: int) -> bytes:
    return _error_response(
        b"413 Request Entity Too Large", is_s3,
        ("EntityTooLarge", "Your proposed upload exceeds the maximum allowed size",
         f"<MaxSizeAllowed>{limit}</MaxSizeAllowed>".encode()),
        ("TooLarge", f"the body is larger than the limit of {limit} bytes"))


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
    for name in request.requestHeaders._rawHeaders:
        if name.startswith(b"X-Amz-"):
            return True
    return False


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


def spool_file(folder: Path):
    """
    A new file in C{folder} for a request body, removed when closed.  It
    has a name (C{.name}) so that the S3 layer can hard-link a spooled
    multipart part into place instead of copying it; the spool folder is
    emptied at every start, so a crash leaves nothing behind for long.
    """
    return tempfile.NamedTemporaryFile(dir=folder, prefix="upload-")


def _spool_failed_response(is_s3: bool, error: BaseException) -> bytes:
    """
    The answer to a request whose body could not be written to the spool
    folder: 507 when the disk (or the quota) is full, else 500.
    """
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        status, code = b"507 Insufficient Storage", "InsufficientStorage"
        message = "there is no room left on the server's disk for the body"
    else:
        status, code = b"500 Internal Server Error", "InternalError"
        message = "the body could not be written to the server's disk"
    return _error_response(status, is_s3, (code, message, b""), (code, message))


class RequestSpool(Spooled):
    """
    A request body on its way into a spool file (L{spool_file}): the
    request's C{content} while the body arrives.  The file is created
    and written in the site's spool threads, never on the reactor, and
    the connection is paused while the threads are behind
    (L{owncdn.spool}); the request is processed once L{finish} has
    written every byte, with the file as its C{content}.  Closing it (a
    refused request, a client gone) discards the file.
    """

    def __init__(self, site: "OwnCDNSite", request: "OwnCDNRequest"):
        folder = site.spool_dir
        super().__init__(lambda: spool_file(folder), site.spool_threads(), site.reactor,
                         request.channel.transport, request.spool_failed)

    def close(self) -> None:
        self.discard()


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


def loggable(target: bytes) -> bytes:
    """
    A request target as it may be logged: its path, never its query (the
    query of a presigned URL carries its signature, usable by whoever
    reads it until it expires).
    """
    return target.partition(b"?")[0]


class IUploadStaging(Interface):
    """
    A root resource that can have a big upload stored while it arrives
    (L{owncdn.storage.staging}) instead of spooled to a file first.
    L{OwnCDNRequest} asks it once the head of a request whose body is
    over L{SPOOL_THRESHOLD} is in and was not refused.
    """

    def stage_body(request, method, target, length):
        """
        Where the body of an upload goes as it arrives.

        @param request: the request, with its headers and channel (as
            for L{IEarlyRefusal.refuse_early}).
        @param method: the request method as sent (C{bytes}).
        @param target: the request target as sent (C{bytes}).
        @param length: the body's length.
        @return: the object the body is written to, which becomes the
            request's C{content} (a staged body of the storage service
            the upload is for), or C{None} to spool the body as usual.
        """


class OwnCDNRequest(server.Request):
    """
    A request whose body is capped as it arrives and lands where
    L{OwnCDNSite.getContentFile} puts it.
    """

    refused = False
    # Whether gotLength raised the connection's read size for a big body.
    _read_size_raised = False
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
        if length is not None and length > SPOOL_THRESHOLD:
            self._read_size_raised = True
            self._set_read_size(SPOOL_READ_SIZE)
            staged = self._staged_body(length)
            if staged is not None:
                self.content = staged
                return
        self.content = self.channel.site.getContentFile(length, self)

    def _staged_body(self, length: int):
        root = self.channel.site.resource
        if not IUploadStaging.providedBy(root):
            return None
        channel = self.channel
        try:
            return root.stage_body(self, channel._command, channel._path, length)
        except Exception:
            # Staging is an optimisation: on a bug, spool the body.
            log.failure("staging the body of {path!r} failed", path=loggable(channel._path))
            return None

    def _set_read_size(self, size: int | None) -> None:
        """
        How much the connection reads at a time (C{None}: the default
        of its transport); only TCP transports have the setting.
        """
        transport = self.channel.transport
        if hasattr(transport, "bufferSize"):
            if size is None:
                transport.__dict__.pop("bufferSize", None)
            else:
                transport.bufferSize = size

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
        # The channel stores names in their canonical form.
        expect = self.requestHeaders._rawHeaders.get(b"Expect", (b"",))[0]
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
            log.failure("refusing {path!r} from its head failed", path=loggable(channel._path))
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
            self.content = site.spool(self.content, self)
        self.content.write(data)

    def spool_failed(self, reason: Failure) -> None:
        """
        Writing the body to its spool file failed (the disk is full):
        answer at once and close the connection without reading the
        rest; the spool file is discarded.
        """
        if self.refused or self._disconnected:
            return
        log.failure("spooling a request body to {folder} failed", reason,
                    folder=str(self.channel.site.spool_dir))
        self._refuse(_spool_failed_response(is_s3_request(self), reason.value))

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
        if self._read_size_raised:
            self._set_read_size(None)
        content = self.content
        if isinstance(content, RequestSpool):
            # Processed once every byte is in the file (positioned at 0).
            d = content.finish()
            d.addCallbacks(self._spooled, self._spool_not_finished,
                           callbackArgs=(command, path, version))
            return
        content.seek(0, 0)
        self._received(command, path, version)

    def _spooled(self, spooled, command, path, version) -> None:
        if self.refused or self._disconnected:
            # Its spool was closed meanwhile, which closes this file.
            return
        self.content = spooled
        self._received(command, path, version)

    def _spool_not_finished(self, reason: Failure) -> None:
        # A discarded spool (the request refused, the client gone) needs
        # nothing more.
        if not reason.check(SpoolDiscarded):
            self.spool_failed(reason)

    def _received(self, command, path, version) -> None:
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
        self.postpath = list(map(server.unquote, segments)) if PERCENT in self.path else segments
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

    def finish_bodiless(self) -> None:
        """
        L{finish} a response that has no body and whose head says so
        (C{Content-Length: 0}, or a 204): its head is sent as Twisted's
        first write would send it, without the header lookups that write
        makes to choose a Content-Type and chunked coding, which such a
        response never gets.  Anything else is finished as usual.
        """
        if not (self.startedWriting or self.finished or self._disconnected
                or self._encoder is not None or self._inFakeHead
                or self.lastModified is not None or self.etag is not None or self.cookies
                or (self.code != 204
                    and self.responseHeaders._rawHeaders.get(b"Content-Length") != [b"0"])):
            self.startedWriting = 1
            channel = self.channel
            channel.writeHeaders(self.clientproto, b"%d" % self.code, self.code_message,
                                 self.responseHeaders)
            channel._flush_head()
        self.finish()

    def processingFailed(self, reason):
        log.failure("unhandled error in {path!r}", reason, path=loggable(self.uri))
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
                 header_timeout: float, body_timeout: float = DEFAULT_BODY_TIMEOUT, reactor=None,
                 spool_threads: ThreadPool | None = None):
        # Bodies are never form-decoded: uploads are files.  Twisted's
        # idle timeout is what the channel cuts a stalled body with
        # (OwnCDNChannel._check_deadline); its own default is 12 hours.
        super().__init__(resource, parsePOSTFormSubmission=False, timeout=body_timeout,
                         reactor=reactor)
        self.spool_dir = Path(spool_dir)
        self.max_upload_size = max_upload_size
        self.header_timeout = header_timeout
        self.request_logs: dict[str, RequestLog] = {}
        self.channels: set[OwnCDNChannel] = set()
        self.draining = False
        self._drained: list[defer.Deferred] = []
        self._spool_threads = spool_threads

    def getResourceFor(self, request):
        # Twisted's Site.getResourceFor, without copy.copy of a list
        # that is always empty here.
        request.site = self
        request.sitepath = request.prepath[:]
        return resource.getChildForRequest(self.resource, request)

    def getContentFile(self, length: int | None, request: OwnCDNRequest):
        """
        Where the body of C{request} goes: memory up to
        L{SPOOL_THRESHOLD}, else a file in the spool folder of the data
        volume, written in the spool threads (L{RequestSpool}).  A
        chunked body (length C{None}) starts in memory and moves to such
        a file once it grows past the threshold.
        """
        if length is None or length <= SPOOL_THRESHOLD:
            return BytesIO()
        return RequestSpool(self, request)

    def spool(self, memory: BytesIO, request: OwnCDNRequest) -> RequestSpool:
        """
        Move what C{memory} holds into the spool of C{request}; the rest
        of the body follows it.
        """
        spooled = RequestSpool(self, request)
        spooled.write(memory.getvalue())
        memory.close()
        return spooled

    def spool_threads(self) -> ThreadPool:
        """
        The threads that write the spool files: the pool given to the
        site, else its own, started now if it is not running.
        """
        if self._spool_threads is None:
            self._spool_threads = ThreadPool(0, SPOOL_THREADS, "owncdn-spool")
        if not self._spool_threads.started:
            self._spool_threads.start()
        return self._spool_threads

    def stop_spooling(self) -> None:
        """
        Stop the spool threads once the work queued for them is done (the
        discarding of the spools of requests just cut off): call it
        after L{drain}.
        """
        if self._spool_threads is not None:
            self._spool_threads.stop()

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
