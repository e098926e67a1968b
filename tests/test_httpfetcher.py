"""
Tests for L{owncdn.services.httpfetcher}: what is asked of the origin,
how its answers become bodies and errors, and how a misbehaving origin
(hanging, short, overlong) is contained.

The origin is a twisted.web resource behind L{treq.testing.StubTreq};
time is a L{Clock}.
"""

from twisted.internet.defer import CancelledError, fail
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseDone, ResponseFailed
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from treq.testing import StubTreq
from zope.interface.verify import verifyObject

from owncdn.config import ConfigError, parse
from owncdn.errors import InvalidPath, NoSuchFile, NoSuchVersion, NotSupported, SourceError
from owncdn.interfaces import FileInfo, IHeadable, IReadableFiles, IRevalidatable
from owncdn.registry import ServiceContext, ServiceRegistry
from owncdn.services import httpfetcher
from owncdn.services.httpfetcher import (
    HIGH_WATER,
    HeadBody,
    HTTPFetcher,
    IdentityAgent,
    OriginBody,
    origin_info,
    origin_url,
)
from tests.util import read_all

BASE = "http://origin.example/static/"


class Origin(Resource):
    """
    An origin web server: C{files} maps a request path to C{(body,
    headers)}; C{status} answers a path with a bare status; C{hang}
    paths never answer; C{partial} paths announce more than they send
    and stay open; C{no_head} paths answer C{HEAD} with 405.  Every
    request is recorded.
    """

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.files: dict[bytes, tuple[bytes, dict]] = {}
        self.status: dict[bytes, int] = {}
        self.hang: set[bytes] = set()
        self.partial: dict[bytes, tuple[int, bytes]] = {}
        self.requests: list = []
        self.open_requests: list = []
        self.no_head: set[bytes] = set()

    def render_HEAD(self, request):
        if request.path in self.no_head:
            self.requests.append(request)
            request.setResponseCode(405)
            return b""
        return self.render_GET(request)

    def render_GET(self, request):
        self.requests.append(request)
        path = request.path
        if path in self.hang:
            self.open_requests.append(request)
            return NOT_DONE_YET
        if path in self.partial:
            announced, sent = self.partial[path]
            request.setHeader(b"content-length", b"%d" % announced)
            request.write(sent)
            self.open_requests.append(request)
            return NOT_DONE_YET
        if path in self.status:
            request.setResponseCode(self.status[path])
            return b"status page"
        if path not in self.files:
            request.setResponseCode(404)
            return b"not here"
        body, headers = self.files[path]
        for name, value in headers.items():
            request.setHeader(name, value)
        etag = headers.get(b"etag")
        if etag is not None and request.getHeader(b"if-none-match") == etag:
            request.setResponseCode(304)
            return b""
        modified = headers.get(b"last-modified")
        if (etag is None and modified is not None
                and request.getHeader(b"if-modified-since") == modified):
            request.setResponseCode(304)
            return b""
        return body


class FetcherTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.origin = Origin()
        self.stub = StubTreq(self.origin)
        self.fetcher = self.make_fetcher()

    def make_fetcher(self, **kwargs):
        options = dict(reactor=self.clock, timeout=30.0, cache_not_found=60.0,
                       cache_errors=10.0, http=self.stub)
        options.update(kwargs)
        return HTTPFetcher(BASE, **options)

    def get(self, path, query=""):
        d = self.fetcher.get(path, query=query)
        self.stub.flush()
        return d

    def test_interfaces(self):
        """The fetcher is a readable, revalidatable file service that answers HEAD."""
        self.assertTrue(verifyObject(IReadableFiles, self.fetcher))
        self.assertTrue(verifyObject(IRevalidatable, self.fetcher))
        self.assertTrue(verifyObject(IHeadable, self.fetcher))

    def test_get_passes_body_and_headers(self):
        """A 200 becomes a body with the origin's bytes, type, ETag and Last-Modified."""
        self.origin.files[b"/static/css/site.css"] = (b"body{}", {
            b"content-type": b"text/css", b"etag": b'"v1"',
            b"last-modified": b"Wed, 21 Oct 2015 07:28:00 GMT"})
        body = self.successResultOf(self.get("css/site.css"))
        self.assertEqual(body.info.size, 6)
        self.assertEqual(body.info.content_type, "text/css")
        self.assertEqual(body.info.etag, "v1")
        self.assertEqual(body.info.modified, 1445412480.0)
        self.assertEqual(read_all(self, body), b"body{}")
        self.assertIsNone(body.alternate("br"))

    def test_request_headers(self):
        """The origin is asked with our User-Agent."""
        self.origin.files[b"/static/a"] = (b"x", {})
        self.successResultOf(self.get("a"))
        request = self.origin.requests[0]
        self.assertEqual(request.getHeader(b"user-agent"), httpfetcher.USER_AGENT)

    def test_query_passed(self):
        """The query goes to the origin as the client wrote it."""
        self.origin.files[b"/static/img.jpg"] = (b"x", {})
        self.successResultOf(self.get("img.jpg", query="w=10&name=a%20b"))
        self.assertEqual(self.origin.requests[0].uri, b"/static/img.jpg?w=10&name=a%20b")

    def test_segments_encoded(self):
        """Each path segment is percent-encoded, a literal % included."""
        self.origin.files[b"/static/dir/a%20b%252e.txt"] = (b"x", {})
        self.successResultOf(self.get("dir/a b%2e.txt"))
        self.assertEqual(self.origin.requests[0].uri, b"/static/dir/a%20b%252e.txt")

    def test_escaping_paths_refused(self):
        """Encoded forms of . and .. (single, double, with / or \\) are refused before any request."""
        for path in ("%2e%2e/secret", "a/%2E%2E", "..%2fsecret", "%252e%252e/x",
                     "..%5cwindows", "a/%2e", "x/%2e%2e%2f%2e%2e", "%00"):
            self.failureResultOf(self.get(path), InvalidPath)
        self.assertEqual(self.origin.requests, [])

    def test_origin_url(self):
        """The URL is the base plus the encoded path; the query keeps its escapes."""
        self.assertEqual(origin_url(BASE, "é/a?b", "q=%41 b#"),
                         BASE + "%C3%A9/a%3Fb?q=%41%20b%23")

    def test_base_without_slash(self):
        """A sourceUrl without a trailing slash is a folder, not a name prefix."""
        fetcher = HTTPFetcher("http://origin.example/static", reactor=self.clock, http=self.stub)
        self.origin.files[b"/static/a"] = (b"x", {})
        d = fetcher.get("a")
        self.stub.flush()
        self.successResultOf(d)
        self.assertEqual(self.origin.requests[0].path, b"/static/a")

    def test_not_found_remembered(self):
        """A 404 is NoSuchFile, remembered for cacheNotFound without asking again."""
        self.failureResultOf(self.get("missing"), NoSuchFile)
        self.clock.advance(59)
        self.failureResultOf(self.get("missing"), NoSuchFile)
        self.assertEqual(len(self.origin.requests), 1)
        self.clock.advance(1)
        self.failureResultOf(self.get("missing"), NoSuchFile)
        self.assertEqual(len(self.origin.requests), 2)

    def test_gone_is_not_found(self):
        """A 410 is NoSuchFile too."""
        self.origin.status[b"/static/old"] = 410
        self.failureResultOf(self.get("old"), NoSuchFile)

    def test_error_remembered(self):
        """A 5xx is SourceError (502), remembered for cacheErrors."""
        self.origin.status[b"/static/broken"] = 503
        failure = self.failureResultOf(self.get("broken"), SourceError)
        self.assertEqual(failure.value.status, 502)
        self.assertIn("503", failure.value.message)
        self.clock.advance(9)
        self.failureResultOf(self.get("broken"), SourceError)
        self.assertEqual(len(self.origin.requests), 1)
        self.clock.advance(1)
        self.failureResultOf(self.get("broken"), SourceError)
        self.assertEqual(len(self.origin.requests), 2)

    def test_zero_remembers_nothing(self):
        """With cacheNotFound and cacheErrors at 0 every request asks the origin."""
        self.fetcher = self.make_fetcher(cache_not_found=0, cache_errors=0)
        self.origin.status[b"/static/broken"] = 500
        for _ in range(2):
            self.failureResultOf(self.get("missing"), NoSuchFile)
            self.failureResultOf(self.get("broken"), SourceError)
        self.assertEqual(len(self.origin.requests), 4)

    def test_redirect_not_followed(self):
        """A redirect is an error, never followed (it could leave sourceUrl)."""
        self.origin.status[b"/static/moved"] = 301
        self.failureResultOf(self.get("moved"), SourceError)
        self.assertEqual(len(self.origin.requests), 1)

    def test_encoded_body_refused(self):
        """A body in a coding we do not decode is an error."""
        self.origin.files[b"/static/a"] = (b"x", {b"content-encoding": b"br"})
        self.failureResultOf(self.get("a"), SourceError)

    def test_unreachable(self):
        """An origin that cannot be reached is a SourceError naming the reason."""
        class Refusing:
            def request(self, *args, **kwargs):
                return fail(ConnectionRefusedError("refused"))

        fetcher = HTTPFetcher(BASE, reactor=self.clock, http=Refusing())
        failure = self.failureResultOf(fetcher.get("a"), SourceError)
        self.assertIn("refused", failure.value.message)

    def test_hanging_origin(self):
        """An origin that never answers times out, then the error is remembered for cacheErrors."""
        self.origin.hang.add(b"/static/slow")
        d = self.get("slow")
        self.assertNoResult(d)
        self.clock.advance(30)
        failure = self.failureResultOf(d, SourceError)
        self.assertIn("did not answer within 30 s", failure.value.message)
        self.failureResultOf(self.get("slow"), SourceError)
        self.assertEqual(len(self.origin.requests), 1)

    def test_silent_body(self):
        """A body that stops arriving fails the waiting read after the timeout."""
        self.origin.partial[b"/static/big"] = (100, b"x" * 10)
        body = self.successResultOf(self.get("big"))
        self.assertEqual(self.successResultOf(body.read(0, 100)), b"x" * 10)
        d = body.read(10, 100)
        self.stub.flush()
        self.assertNoResult(d)
        self.clock.advance(30)
        self.failureResultOf(d, SourceError)

    def test_closed_early(self):
        """A body that ends before its Content-Length fails, never reads as complete."""
        self.origin.partial[b"/static/big"] = (100, b"x" * 10)
        body = self.successResultOf(self.get("big"))
        self.assertEqual(self.successResultOf(body.read(0, 100)), b"x" * 10)
        d = body.read(10, 100)
        self.stub.flush()
        self.origin.open_requests[0].channel.transport.loseConnection()
        self.stub.flush()
        self.failureResultOf(d, SourceError)

    def test_caller_cancel_not_remembered(self):
        """A caller that gives up cancels the request; nothing is remembered."""
        self.origin.hang.add(b"/static/slow")
        d = self.get("slow")
        d.cancel()
        self.stub.flush()
        self.failureResultOf(d, CancelledError)
        self.origin.hang.clear()
        self.origin.files[b"/static/slow"] = (b"ok", {})
        self.assertEqual(read_all(self, self.successResultOf(self.get("slow"))), b"ok")

    def chunked_origin(self) -> list:
        """
        An origin that answers without Content-Length (C{abc}, then
        C{def}); the list it returns collects the methods it was asked
        with.
        """
        methods = []

        class Chunked(Resource):
            isLeaf = True

            def render_GET(self, request):
                methods.append(request.method)
                request.write(b"abc")
                request.write(b"def")
                request.finish()
                return NOT_DONE_YET

        self.stub = StubTreq(Chunked())
        self.fetcher = self.make_fetcher()
        return methods

    def test_chunked_body(self):
        """A body without Content-Length is read whole, then served with its size."""
        self.chunked_origin()
        body = self.successResultOf(self.get("x"))
        self.assertEqual(body.info.size, 6)
        self.assertEqual(read_all(self, body), b"abcdef")

    def test_head_without_size_falls_back_to_get(self):
        """An origin whose HEAD answer gives no Content-Length is asked with GET, which gives the size."""
        methods = self.chunked_origin()
        body = self.successResultOf(self.head("x"))
        self.assertEqual(methods, [b"HEAD", b"GET"])
        self.assertEqual((body.info.size, read_all(self, body)), (6, b"abcdef"))

    def test_chunked_body_too_big(self):
        """A body without Content-Length past the limit is an error, not a memory hog."""
        self.patch(httpfetcher, "UNSIZED_LIMIT", 10)

        class Chunked(Resource):
            isLeaf = True

            def render_GET(self, request):
                request.write(b"x" * 8)
                request.write(b"x" * 8)
                return NOT_DONE_YET

        self.stub = StubTreq(Chunked())
        self.fetcher = self.make_fetcher()
        self.failureResultOf(self.get("x"), SourceError)

    def test_version_refused(self):
        """An origin has no versions."""
        self.failureResultOf(self.fetcher.get("a", "v1"), NoSuchVersion)
        self.failureResultOf(self.fetcher.head("a", "v1"), NoSuchVersion)

    def head(self, path):
        d = self.fetcher.head(path)
        self.stub.flush()
        return d

    def test_head(self):
        """head() is a HEAD to the origin: the file's size, type and ETag, and no content."""
        self.origin.files[b"/static/big.bin"] = (b"x" * 5000, {
            b"content-type": b"application/x-big", b"etag": b'"v1"'})
        body = self.successResultOf(self.head("big.bin"))
        self.assertEqual([r.method for r in self.origin.requests], [b"HEAD"])
        self.assertIsInstance(body, HeadBody)
        self.assertEqual((body.info.size, body.info.content_type, body.info.etag),
                         (5000, "application/x-big", "v1"))
        self.failureResultOf(body.read(0, 10), IOError)
        self.assertIsNone(body.alternate("br"))

    def test_head_not_found_remembered(self):
        """The origin's 404 to a HEAD is NoSuchFile, remembered for cacheNotFound like a GET's."""
        self.failureResultOf(self.head("missing"), NoSuchFile)
        self.failureResultOf(self.get("missing"), NoSuchFile)
        self.assertEqual(len(self.origin.requests), 1)

    def test_head_refused_falls_back_to_get(self):
        """An origin that answers HEAD with 405 is asked with GET."""
        self.origin.files[b"/static/a"] = (b"abc", {})
        self.origin.no_head.add(b"/static/a")
        body = self.successResultOf(self.head("a"))
        self.assertEqual([r.method for r in self.origin.requests], [b"HEAD", b"GET"])
        self.assertEqual((body.info.size, read_all(self, body)), (3, b"abc"))

    def test_list_not_supported(self):
        """An origin web server cannot be listed."""
        self.failureResultOf(self.fetcher.list("", None, 10), NotSupported)

    def test_revalidate_not_modified(self):
        """Revalidation sends If-None-Match and reports an unchanged file as None."""
        self.origin.files[b"/static/a"] = (b"one", {b"etag": b'"v1"'})
        held = self.successResultOf(self.get("a")).info
        d = self.fetcher.revalidate("a", held)
        self.stub.flush()
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.origin.requests[1].getHeader(b"if-none-match"), b'"v1"')

    def test_revalidate_changed(self):
        """Revalidation of a changed file gives the new body."""
        self.origin.files[b"/static/a"] = (b"one", {b"etag": b'"v1"'})
        held = self.successResultOf(self.get("a")).info
        self.origin.files[b"/static/a"] = (b"two!", {b"etag": b'"v2"'})
        d = self.fetcher.revalidate("a", held)
        self.stub.flush()
        body = self.successResultOf(d)
        self.assertEqual((body.info.etag, read_all(self, body)), ("v2", b"two!"))

    def test_revalidate_last_modified(self):
        """Without an ETag, revalidation sends If-Modified-Since."""
        stamp = b"Wed, 21 Oct 2015 07:28:00 GMT"
        self.origin.files[b"/static/a"] = (b"one", {b"last-modified": stamp})
        held = self.successResultOf(self.get("a")).info
        d = self.fetcher.revalidate("a", held)
        self.stub.flush()
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.origin.requests[1].getHeader(b"if-modified-since"), stamp)
        self.assertIsNone(self.origin.requests[1].getHeader(b"if-none-match"))

    def test_revalidate_gone(self):
        """Revalidation of a file the origin no longer has is NoSuchFile."""
        self.origin.files[b"/static/a"] = (b"one", {b"etag": b'"v1"'})
        held = self.successResultOf(self.get("a")).info
        del self.origin.files[b"/static/a"]
        d = self.fetcher.revalidate("a", held)
        self.stub.flush()
        self.failureResultOf(d, NoSuchFile)


class OriginInfoTests(SynchronousTestCase):
    def info(self, **headers) -> FileInfo:
        raw = Headers({name.replace("_", "-").encode(): [value.encode()]
                       for name, value in headers.items()})
        return origin_info("a", 10, raw, now=1000.0)

    def test_weak_etag(self):
        """A weak ETag keeps its opaque part; the raw header is kept for revalidation."""
        info = self.info(etag='W/"abc"')
        self.assertEqual(info.etag, "abc")
        self.assertEqual(info.metadata["etag"], 'W/"abc"')

    def test_etag_from_last_modified(self):
        """Without an ETag it is made from Last-Modified and size, like nginx."""
        info = self.info(last_modified="Wed, 21 Oct 2015 07:28:00 GMT")
        self.assertEqual(info.etag, f"{1445412480:x}-a")
        self.assertNotIn("etag", info.metadata)

    def test_etag_unique_without_validators(self):
        """Without any validator, each fetch gets its own ETag (no false 304)."""
        self.assertNotEqual(self.info().etag, self.info().etag)
        self.assertEqual(self.info().modified, 1000.0)

    def test_malformed_etag_ignored(self):
        """An unquoted or non-ASCII ETag is not trusted."""
        for value in ("abc", '"caf\u00e9"'):
            self.assertNotIn("etag", self.info(etag=value).metadata)

    def test_default_content_type(self):
        """No Content-Type means application/octet-stream."""
        self.assertEqual(self.info().content_type, "application/octet-stream")


class OriginBodyTests(SynchronousTestCase):
    """
    L{OriginBody} fed by hand, as Twisted's HTTP client feeds it.
    """

    def setUp(self):
        self.clock = Clock()
        self.transport = StringTransport()

    def body(self, size, response=None):
        body = OriginBody(response, size, self.clock, 30.0)
        body.makeConnection(self.transport)
        return body

    def test_backpressure(self):
        """Past HIGH_WATER buffered bytes the origin is paused; reading resumes it."""
        body = self.body(4 * HIGH_WATER)
        body.dataReceived(b"x" * (HIGH_WATER // 2))
        self.assertEqual(self.transport.producerState, "producing")
        body.dataReceived(b"x" * (HIGH_WATER // 2))
        self.assertEqual(self.transport.producerState, "paused")
        self.assertEqual(len(self.successResultOf(body.read(0, 4096))), 4096)
        self.assertEqual(self.transport.producerState, "producing")

    def test_no_timeout_while_paused(self):
        """A paused origin is not timed out: the slowness is the reader's."""
        body = self.body(4 * HIGH_WATER)
        body.dataReceived(b"x" * HIGH_WATER)
        self.clock.advance(3600)
        self.assertEqual(len(self.successResultOf(body.read(0, HIGH_WATER))), HIGH_WATER)

    def test_last_bytes_wait_for_the_end(self):
        """The final bytes are handed out only once the response is reported complete."""
        body = self.body(5)
        d = body.read(0, 100)
        body.dataReceived(b"hello")
        self.assertNoResult(d)
        body.connectionLost(Failure(ResponseDone()))
        self.assertEqual(self.successResultOf(d), b"hello")
        self.assertEqual(self.successResultOf(body.read(5, 100)), b"")

    def test_overlong(self):
        """A response whose connection held bytes past its end fails its last read."""
        class Response:
            owncdn_overlong = True

        body = self.body(5, Response())
        d = body.read(0, 100)
        body.dataReceived(b"hello")
        body.connectionLost(Failure(ResponseDone()))
        self.failureResultOf(d, SourceError)

    def test_data_loss(self):
        """A connection lost mid-body fails the read."""
        body = self.body(50)
        body.dataReceived(b"hello")
        self.assertEqual(self.successResultOf(body.read(0, 100)), b"hello")
        body.connectionLost(Failure(ResponseFailed([Failure(ConnectionError())])))
        self.failureResultOf(body.read(5, 100), SourceError)

    def test_reads_in_order_only(self):
        """A body read out of order is refused (it is a stream)."""
        body = self.body(50)
        self.failureResultOf(body.read(10, 10), IOError)

    def test_close_stops_the_origin(self):
        """Closing a body before its end drops the origin connection."""
        body = self.body(50)
        body.dataReceived(b"hello")
        body.close()
        self.assertEqual(self.transport.producerState, "stopped")
        self.failureResultOf(body.read(0, 10), IOError)


class IdentityAgentTests(SynchronousTestCase):
    def test_identity_only(self):
        """The agent replaces any Accept-Encoding with identity."""
        seen = []

        class Recorder:
            def request(self, method, uri, headers=None, bodyProducer=None):
                seen.append(headers)
                return fail(RuntimeError())

        headers = Headers({b"accept-encoding": [b"gzip"]})
        self.failureResultOf(IdentityAgent(Recorder()).request(b"GET", b"http://x/", headers))
        self.assertEqual(seen[0].getRawHeaders(b"accept-encoding"), [b"identity"])
        self.assertEqual(headers.getRawHeaders(b"accept-encoding"), [b"gzip"])


class BuildTests(SynchronousTestCase):
    def config(self, **fields):
        service = {"id": "origin", "type": "httpfetcher", "sourceUrl": "http://o.example/"}
        service.update(fields)
        return parse({"services": [{"id": "api", "type": "api"}, service]})

    def build(self, **fields):
        config = self.config(**fields)
        context = ServiceContext("/nonexistent", Clock(), config, ServiceRegistry())
        return httpfetcher.build(config.service("origin"), context)

    def test_options(self):
        """The configured options reach the fetcher."""
        fetcher = self.build(timeout="5s", cacheNotFound="1m", cacheErrors=10)
        self.assertEqual((fetcher.timeout, fetcher.cache_not_found, fetcher.cache_errors),
                         (5.0, 60.0, 10.0))

    def test_query_in_source_url(self):
        """A sourceUrl with a query is refused at start, naming the field."""
        error = self.assertRaises(ConfigError, self.build, sourceUrl="http://o.example/?a=1")
        self.assertIn("services (origin).sourceUrl", str(error))

    def test_zero_timeout(self):
        """A timeout of 0 is refused: an origin must not hang a request forever."""
        error = self.assertRaises(ConfigError, self.build, timeout=0)
        self.assertIn("services (origin).timeout", str(error))
