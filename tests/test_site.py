"""
The edge of the HTTP server (owncdn.web.site): body cap, spooling,
head deadline, oversized and malformed requests, and draining, driven
byte by byte through the real channel with a StringTransport and a
task.Clock.
"""

import json
import os
from io import BytesIO
from pathlib import Path

from twisted.internet import defer, endpoints, protocol, reactor, task
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from owncdn.web import channel as channelmod
from owncdn.web import site as sitemod
from owncdn.web.site import SPOOL_READ_SIZE, SPOOL_THRESHOLD, IEarlyRefusal, OwnCDNSite
from owncdn.testing import ThreadlessClock
from tests.util import QueuedPool, logged_text

LIMIT = 3 * 1024 * 1024
TIMEOUT = 30


class Recorder(Resource):
    """
    A leaf that records each request with its body and answers "ok",
    or holds the response open when C{hold} is set.
    """

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.requests = []
        self.bodies = []
        self.locations = []
        self.hold = False

    def render(self, request):
        self.requests.append(request)
        content = request.content
        content.seek(0)
        self.bodies.append((content, content.read()))
        if not isinstance(content, BytesIO):
            self.locations.append(os.readlink(f"/proc/self/fd/{content.fileno()}"))
        if self.hold:
            return NOT_DONE_YET
        return b"ok"


class Broken(Resource):
    isLeaf = True

    def render(self, request):
        raise RuntimeError("a bug")


def head(method=b"GET", path=b"/", headers=()) -> bytes:
    lines = [method + b" " + path + b" HTTP/1.1", b"Host: example"]
    lines += list(headers)
    return b"\r\n".join(lines) + b"\r\n\r\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n" % len(data) + data + b"\r\n"


def status_of(transport: StringTransport) -> bytes:
    return transport.value().split(b"\r\n", 1)[0]


def body_of(transport: StringTransport) -> bytes:
    return transport.value().split(b"\r\n\r\n", 1)[1]


class TCPLikeTransport(StringTransport):
    """
    A transport with TCP's setting of how much to read at a time.
    """

    bufferSize = 65536


class SiteTestMixin:
    def make_site(self, resource=None, max_upload_size=LIMIT, header_timeout=TIMEOUT):
        self.clock = ThreadlessClock()
        # The spool threads: their jobs run when a test says so.
        self.pool = QueuedPool()
        self.spool = Path(self.mktemp()).absolute()
        self.spool.mkdir(parents=True)
        self.resource = resource if resource is not None else Recorder()
        self.site = OwnCDNSite(self.resource, spool_dir=self.spool,
                               max_upload_size=max_upload_size,
                               header_timeout=header_timeout, reactor=self.clock,
                               spool_threads=self.pool)
        return self.site

    def connect(self):
        channel = self.site.buildProtocol(None)
        transport = StringTransport()
        channel.makeConnection(transport)
        return channel, transport


class BodyTests(SiteTestMixin, SynchronousTestCase):
    def setUp(self):
        self.make_site()

    def test_small_body_in_memory(self):
        """A body of at most 1 MiB with a Content-Length stays in memory."""
        channel, transport = self.connect()
        body = b"x" * SPOOL_THRESHOLD
        channel.dataReceived(head(b"PUT", headers=[b"Content-Length: %d" % len(body)]) + body)
        content, received = self.resource.bodies[0]
        self.assertIsInstance(content, BytesIO)
        self.assertEqual(received, body)
        self.assertEqual(status_of(transport), b"HTTP/1.1 200 OK")

    def test_large_body_spooled_in_data_folder(self):
        """A declared body over 1 MiB goes into a file in the spool folder, not memory or /tmp."""
        if not os.path.isdir("/proc/self/fd"):
            self.skipTest("needs /proc to see where a file lives")
        channel, transport = self.connect()
        body = os.urandom(SPOOL_THRESHOLD + 1)
        channel.dataReceived(head(b"PUT", headers=[b"Content-Length: %d" % len(body)]))
        for offset in range(0, len(body), 65536):
            channel.dataReceived(body[offset:offset + 65536])
        self.pool.run()
        content, received = self.resource.bodies[0]
        self.assertNotIsInstance(content, BytesIO)
        location = self.resource.locations[0]
        self.assertTrue(location.startswith(str(self.spool) + "/"), location)
        self.assertEqual(received, body)

    def test_spool_file_named_and_removed(self):
        """A spooled body has a name in the spool folder (so a part can be linked), gone once the request is done."""
        channel, transport = self.connect()
        body = os.urandom(SPOOL_THRESHOLD + 1)
        channel.dataReceived(head(b"PUT", headers=[b"Content-Length: %d" % len(body)]) + body)
        self.pool.run()
        content, received = self.resource.bodies[0]
        self.assertEqual(received, body)
        self.assertEqual(Path(content.name).parent, self.spool)
        self.assertEqual(status_of(transport), b"HTTP/1.1 200 OK")
        self.assertEqual(os.listdir(self.spool), [])

    def test_big_body_read_in_big_pieces(self):
        """While a body bound for the spool arrives the socket is read 1 MiB at a time, then 64 KiB again."""
        channel = self.site.buildProtocol(None)
        transport = TCPLikeTransport()
        channel.makeConnection(transport)
        body = os.urandom(SPOOL_THRESHOLD + 1)
        channel.dataReceived(head(b"PUT", headers=[b"Content-Length: %d" % len(body)]) + body[:1000])
        self.assertEqual(transport.bufferSize, SPOOL_READ_SIZE)
        channel.dataReceived(body[1000:])
        self.pool.run()
        self.assertEqual(self.resource.bodies[0][1], body)
        self.assertEqual(transport.bufferSize, 65536)
        channel.dataReceived(head(b"PUT", headers=[b"Content-Length: 5"]) + b"small")
        self.assertEqual(transport.bufferSize, 65536)

    def test_chunked_body_moves_to_spool_when_it_grows(self):
        """A chunked body starts in memory and moves to the spool folder past 1 MiB, intact."""
        if not os.path.isdir("/proc/self/fd"):
            self.skipTest("needs /proc to see where a file lives")
        channel, transport = self.connect()
        body = os.urandom(SPOOL_THRESHOLD + 100)
        channel.dataReceived(head(b"PUT", headers=[b"Transfer-Encoding: chunked"]))
        for offset in range(0, len(body), 100000):
            channel.dataReceived(chunk(body[offset:offset + 100000]))
        channel.dataReceived(b"0\r\n\r\n")
        self.pool.run()
        content, received = self.resource.bodies[0]
        location = self.resource.locations[0]
        self.assertTrue(location.startswith(str(self.spool) + "/"), location)
        self.assertEqual(received, body)

    def test_small_chunked_body_in_memory(self):
        """A small chunked body never touches the disk."""
        channel, transport = self.connect()
        channel.dataReceived(head(b"PUT", headers=[b"Transfer-Encoding: chunked"])
                             + chunk(b"hello ") + chunk(b"world") + b"0\r\n\r\n")
        content, received = self.resource.bodies[0]
        self.assertIsInstance(content, BytesIO)
        self.assertEqual(received, b"hello world")

    def test_form_bodies_not_parsed(self):
        """A form-encoded POST body is left alone: its fields do not become request.args."""
        channel, transport = self.connect()
        body = b"sid=evil&path=x"
        channel.dataReceived(head(b"POST", b"/?a=1", headers=[
            b"Content-Type: application/x-www-form-urlencoded",
            b"Content-Length: %d" % len(body)]) + body)
        request = self.resource.requests[0]
        self.assertEqual(request.args, {b"a": [b"1"]})
        self.assertEqual(self.resource.bodies[0][1], body)

    def test_started_set_when_head_arrives(self):
        """The request records when its head arrived, for reqlist's timing."""
        channel, transport = self.connect()
        channel.dataReceived(head())
        self.assertGreater(self.resource.requests[0].started, 0)


class BodyCapTests(SiteTestMixin, SynchronousTestCase):
    def setUp(self):
        self.make_site(max_upload_size=1000)

    def assert_too_large(self, transport):
        self.assertEqual(status_of(transport), b"HTTP/1.1 413 Request Entity Too Large")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.resource.requests, [])

    def test_declared_length_over_cap(self):
        """A Content-Length over maxUploadSize gets 413 TooLarge before any body byte is read."""
        channel, transport = self.connect()
        channel.dataReceived(head(b"PUT", headers=[b"Content-Length: 1001"]))
        self.assert_too_large(transport)
        self.assertEqual(json.loads(body_of(transport))["error"]["code"], "TooLarge")

    def test_declared_length_at_cap(self):
        """A body of exactly maxUploadSize is accepted."""
        channel, transport = self.connect()
        channel.dataReceived(head(b"PUT", headers=[b"Content-Length: 1000"]) + b"x" * 1000)
        self.assertEqual(self.resource.bodies[0][1], b"x" * 1000)

    def test_no_100_continue_after_413(self):
        """A client that asked for 100-continue gets only the 413, never a 100 after it."""
        channel, transport = self.connect()
        channel.dataReceived(head(b"PUT", headers=[b"Content-Length: 5000",
                                                   b"Expect: 100-continue"]))
        self.assert_too_large(transport)
        self.assertNotIn(b"100 Continue", transport.value())

    def test_s3_request_gets_xml(self):
        """An S3-mode request over the cap gets the S3 EntityTooLarge error with a request ID."""
        channel, transport = self.connect()
        channel.dataReceived(head(b"PUT", b"/bucket/key", headers=[
            b"Content-Length: 5000", b"x-amz-content-sha256: UNSIGNED-PAYLOAD"]))
        self.assert_too_large(transport)
        self.assertIn(b"<Code>EntityTooLarge</Code>", body_of(transport))
        self.assertRegex(transport.value(), rb"\r\nx-amz-request-id: [0-9A-F]{16}\r\n")

    def test_absurd_content_length(self):
        """A Content-Length of 99999999999999999999999 gets 413, not a 500 or a crash."""
        channel, transport = self.connect()
        channel.dataReceived(head(b"PUT", headers=[b"Content-Length: 99999999999999999999999"]))
        self.assert_too_large(transport)

    def test_chunked_body_growing_past_cap(self):
        """A chunked body is refused with 413 as soon as it grows past the cap; the rest is ignored."""
        channel, transport = self.connect()
        channel.dataReceived(head(b"PUT", headers=[b"Transfer-Encoding: chunked"]))
        channel.dataReceived(chunk(b"x" * 600))
        self.assertEqual(transport.value(), b"")
        channel.dataReceived(chunk(b"x" * 600))
        self.assert_too_large(transport)
        answered = transport.value()
        channel.dataReceived(chunk(b"x" * 600) + b"0\r\n\r\n")
        self.assertEqual(transport.value(), answered)
        self.assertEqual(self.resource.requests, [])

    def test_invalid_content_length(self):
        """A Content-Length that is not a number gets 400."""
        for value in (b"abc", b"-1", b"1e3", b"12 34"):
            channel, transport = self.connect()
            channel.dataReceived(head(b"PUT", headers=[b"Content-Length: " + value]))
            self.assertEqual(status_of(transport), b"HTTP/1.1 400 Bad Request", value)
            self.assertTrue(transport.disconnecting)
        self.assertEqual(self.resource.requests, [])

    def test_malformed_chunked_body(self):
        """A chunked body with a bad chunk size line gets 400 and a close."""
        channel, transport = self.connect()
        channel.dataReceived(head(b"PUT", headers=[b"Transfer-Encoding: chunked"])
                             + b"zz\r\nhello\r\n0\r\n\r\n")
        self.assertEqual(status_of(transport), b"HTTP/1.1 400 Bad Request")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.resource.requests, [])

    def test_chunk_longer_than_declared(self):
        """A chunk with more data than its size line says gets 400."""
        channel, transport = self.connect()
        channel.dataReceived(head(b"PUT", headers=[b"Transfer-Encoding: chunked"])
                             + b"2\r\nhello\r\n0\r\n\r\n")
        self.assertEqual(status_of(transport), b"HTTP/1.1 400 Bad Request")
        self.assertEqual(self.resource.requests, [])


REFUSAL = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


@implementer(IEarlyRefusal)
class Refusing(Recorder):
    """
    A root that refuses from the head every request whose target holds
    C{refuse}, records what it was asked, and raises for C{bug}.
    """

    def __init__(self):
        super().__init__()
        self.asked = []

    def refuse_early(self, request, method, target):
        self.asked.append((method, target, request.getHeader(b"x-test")))
        if b"bug" in target:
            raise RuntimeError("a bug")
        return REFUSAL if b"refuse" in target else None


class EarlyRefusalTests(SiteTestMixin, SynchronousTestCase):
    def setUp(self):
        self.make_site(Refusing())

    def test_large_body_refused_from_head(self):
        """A root refusing a large body's head answers at once, closes, and no body byte is read."""
        channel, transport = self.connect()
        channel.dataReceived(head(b"PUT", b"/refuse?x=1", headers=[
            b"X-Test: seen", b"Content-Length: %d" % (LIMIT - 1)]))
        self.assertEqual(transport.value(), REFUSAL)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.resource.asked, [(b"PUT", b"/refuse?x=1", b"seen")])
        channel.dataReceived(b"x" * 65536)
        self.assertEqual((transport.value(), self.resource.requests), (REFUSAL, []))

    def test_expect_continue_refused_without_interim(self):
        """A small body whose client waits for 100 Continue is refused from the head, with no 100."""
        channel, transport = self.connect()
        channel.dataReceived(head(b"PUT", b"/refuse", headers=[b"Content-Length: 10",
                                                              b"Expect: 100-continue"]))
        self.assertEqual(transport.value(), REFUSAL)

    def test_chunked_body_refused_from_head(self):
        """A chunked body, of unknown size, is refused from the head."""
        channel, transport = self.connect()
        channel.dataReceived(head(b"PUT", b"/refuse", headers=[b"Transfer-Encoding: chunked"]))
        self.assertEqual(transport.value(), REFUSAL)

    def test_accepted_head_reads_body(self):
        """A head the root accepts goes on as usual: the whole body reaches the resource."""
        channel, transport = self.connect()
        body = os.urandom(SPOOL_THRESHOLD + 1)
        channel.dataReceived(head(b"PUT", b"/fine", headers=[b"Content-Length: %d" % len(body)]) + body)
        self.pool.run()
        self.assertEqual(self.resource.asked, [(b"PUT", b"/fine", None)])
        self.assertEqual(self.resource.bodies[0][1], body)
        self.assertEqual(status_of(transport), b"HTTP/1.1 200 OK")

    def test_small_and_empty_bodies_not_asked(self):
        """No body, or a small one sent without waiting for 100 Continue, is read and answered as usual."""
        channel, transport = self.connect()
        channel.dataReceived(head(b"GET", b"/refuse") + head(b"PUT", b"/refuse", headers=[
            b"Content-Length: %d" % SPOOL_THRESHOLD]) + b"x" * SPOOL_THRESHOLD)
        self.assertEqual(self.resource.asked, [])
        self.assertEqual(len(self.resource.requests), 2)

    def test_refusal_bug_reads_body(self):
        """A root whose refusal raises is logged and the request goes on as usual."""
        channel, transport = self.connect()
        channel.dataReceived(head(b"PUT", b"/bug", headers=[b"Transfer-Encoding: chunked"])
                             + chunk(b"data") + b"0\r\n\r\n")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(self.resource.bodies[0][1], b"data")


class MalformedHeadTests(SiteTestMixin, SynchronousTestCase):
    def setUp(self):
        self.make_site()

    def assert_refused(self, data: bytes, status: bytes):
        channel, transport = self.connect()
        channel.dataReceived(data)
        self.assertEqual(status_of(transport), status)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.resource.requests, [])
        return channel, transport

    def test_garbage_request_line(self):
        """A request line that is not METHOD TARGET HTTP/x.y gets 400."""
        for line in (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
                     b"GET",
                     b"GET / HTTP/1.1 extra",
                     b"G\xffT / HTTP/1.1",
                     b"GET / HTTP/9.9",
                     b"GET / SPDY/3"):
            self.assert_refused(line + b"\r\nHost: x\r\n\r\n", b"HTTP/1.1 400 Bad Request")

    def test_raw_nul_in_path(self):
        """A NUL byte in the request target gets 400, never reaching a resource."""
        self.assert_refused(head(path=b"/a\x00b"), b"HTTP/1.1 400 Bad Request")

    def test_raw_non_utf8_in_path(self):
        """A raw non-ASCII byte in the request target gets 400."""
        self.assert_refused(head(path=b"/caf\xe9"), b"HTTP/1.1 400 Bad Request")

    def test_nul_in_header_value(self):
        """A NUL in a header value gets 400."""
        self.assert_refused(head(headers=[b"X-Thing: a\x00b"]), b"HTTP/1.1 400 Bad Request")

    def test_huge_header(self):
        """A single header line over 16 KiB gets 431 and a close, without buffering more."""
        channel, transport = self.assert_refused(
            head(headers=[b"X-Big: " + b"a" * 20000]),
            b"HTTP/1.1 431 Request Header Fields Too Large")
        answered = transport.value()
        channel.dataReceived(b"GET / HTTP/1.1\r\n\r\n")
        self.assertEqual(transport.value(), answered)

    def test_huge_header_without_newline(self):
        """A header that keeps growing without a line end is refused once it passes 16 KiB."""
        channel, transport = self.connect()
        channel.dataReceived(b"GET / HTTP/1.1\r\nX-Big: ")
        for _ in range(20):
            channel.dataReceived(b"a" * 1024)
        self.assertEqual(status_of(transport), b"HTTP/1.1 431 Request Header Fields Too Large")
        self.assertTrue(transport.disconnecting)

    def test_many_headers_over_total(self):
        """Headers that are each small but together exceed 16 KiB get 431."""
        headers = [b"X-H%d: %s" % (i, b"v" * 100) for i in range(200)]
        self.assert_refused(head(headers=headers), b"HTTP/1.1 431 Request Header Fields Too Large")

    def test_long_request_line(self):
        """A request line over 16 KiB gets 414."""
        self.assert_refused(head(path=b"/" + b"a" * 20000), b"HTTP/1.1 414 URI Too Long")

    def test_unhandled_error_is_json_500(self):
        """A bug in a resource gives a JSON 500, no traceback page, and is logged."""
        self.make_site(resource=Broken())
        channel, transport = self.connect()
        channel.dataReceived(head())
        self.assertEqual(status_of(transport), b"HTTP/1.1 500 Internal Server Error")
        self.assertEqual(json.loads(body_of(transport))["error"]["code"], "InternalError")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_logged_error_leaves_out_the_query(self):
        """The log of a failed request names its path, never its query (a presigned signature)."""
        self.make_site(resource=Broken())
        logged = logged_text(self)
        channel, transport = self.connect()
        channel.dataReceived(head(path=b"/bucket/key?X-Amz-Signature=c0ffee"))
        self.assertEqual(status_of(transport), b"HTTP/1.1 500 Internal Server Error")
        self.flushLoggedErrors(RuntimeError)
        text = logged()
        self.assertIn("/bucket/key", text)
        self.assertNotIn("c0ffee", text)


class HeadDeadlineTests(SiteTestMixin, SynchronousTestCase):
    def setUp(self):
        self.make_site()

    def test_trickled_head_cut_at_deadline(self):
        """A client sending its head one byte a second is disconnected after headerTimeout."""
        channel, transport = self.connect()
        data = head(headers=[b"X-Pad: " + b"p" * 100])
        for second in range(TIMEOUT - 1):
            channel.dataReceived(data[second:second + 1])
            self.clock.advance(1)
        self.assertFalse(transport.disconnecting)
        channel.dataReceived(data[TIMEOUT - 1:TIMEOUT])
        self.clock.advance(1)
        self.assertTrue(transport.disconnected)
        self.assertEqual(self.resource.requests, [])

    def test_silent_client_cut(self):
        """A client that connects and sends nothing is disconnected after headerTimeout."""
        channel, transport = self.connect()
        self.clock.advance(TIMEOUT)
        self.assertTrue(transport.disconnected)

    def test_slow_response_not_cut(self):
        """Once the head is in, a response that takes longer than headerTimeout is not cut."""
        self.resource.hold = True
        channel, transport = self.connect()
        channel.dataReceived(head())
        self.clock.advance(TIMEOUT * 10)
        self.assertFalse(transport.disconnecting)
        self.resource.requests[0].finish()
        self.assertIn(b"200 OK", transport.value())

    def test_keepalive_connection_gets_new_deadline(self):
        """After a response on a kept-alive connection, the next head has headerTimeout to arrive."""
        channel, transport = self.connect()
        channel.dataReceived(head())
        self.assertEqual(len(self.resource.requests), 1)
        self.clock.advance(TIMEOUT - 1)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(transport.disconnected)

    def test_pipelined_request_not_cut(self):
        """A pipelined request whose head arrived early is not cut by the next head's deadline."""
        self.resource.hold = True
        channel, transport = self.connect()
        channel.dataReceived(head(path=b"/one") + head(path=b"/two"))
        self.resource.requests[0].finish()
        self.assertEqual(len(self.resource.requests), 2)
        self.clock.advance(TIMEOUT * 10)
        self.assertFalse(transport.disconnecting)
        self.resource.requests[1].finish()
        self.assertEqual(transport.value().count(b"200 OK"), 2)

    def test_slow_body_ends_with_idle_timeout(self):
        """A body that stops arriving is cut after bodyTimeout (60 s by default), not held for hours."""
        channel, transport = self.connect()
        self.assertEqual(channel.timeOut, 60)
        channel.dataReceived(head(b"PUT", headers=[b"Content-Length: 100"]) + b"x" * 10)
        self.clock.advance(59)
        channel.dataReceived(b"x" * 10)
        self.clock.advance(59)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1.5)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.resource.requests, [])


class DrainTests(SiteTestMixin, SynchronousTestCase):
    def setUp(self):
        self.make_site()

    def lose(self, channel, transport):
        """
        What the reactor does once a closing transport has flushed.
        """
        self.assertTrue(transport.disconnecting)
        channel.connectionLost(Exception("closed"))

    def test_no_connections(self):
        """Draining a site without connections is done at once."""
        self.successResultOf(self.site.drain())

    def test_idle_connections_closed(self):
        """Idle and half-sent connections are closed gracefully when the drain starts."""
        idle, idle_transport = self.connect()
        partial, partial_transport = self.connect()
        partial.dataReceived(b"GET / HT")
        d = self.site.drain()
        self.assertTrue(idle_transport.disconnecting)
        self.assertTrue(partial_transport.disconnecting)
        self.assertNoResult(d)
        self.lose(idle, idle_transport)
        self.lose(partial, partial_transport)
        self.successResultOf(d)

    def test_idle_connection_that_does_not_close_is_cut(self):
        """An idle connection still open shortly after the drain (a silent TLS peer) is cut."""
        idle, idle_transport = self.connect()
        self.resource.hold = True
        busy, busy_transport = self.connect()
        busy.dataReceived(head())
        d = self.site.drain()
        self.assertTrue(idle_transport.disconnecting)
        self.clock.advance(sitemod.IDLE_CLOSE_GRACE)
        self.assertTrue(idle_transport.disconnected)
        self.assertFalse(busy_transport.disconnecting)
        idle.connectionLost(Exception("aborted"))
        self.resource.requests[0].finish()
        self.lose(busy, busy_transport)
        self.successResultOf(d)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_request_in_progress_finishes(self):
        """A request in progress finishes and its connection closes after the response."""
        self.resource.hold = True
        channel, transport = self.connect()
        channel.dataReceived(head())
        d = self.site.drain()
        self.assertFalse(transport.disconnecting)
        self.resource.requests[0].write(b"done")
        self.resource.requests[0].finish()
        self.assertIn(b"done", transport.value())
        self.assertNoResult(d)
        self.lose(channel, transport)
        self.successResultOf(d)

    def test_body_still_arriving_completes(self):
        """A request still receiving its body when the drain starts is read and answered."""
        channel, transport = self.connect()
        channel.dataReceived(head(b"PUT", headers=[b"Content-Length: 10"]) + b"12345")
        d = self.site.drain()
        self.assertFalse(transport.disconnecting)
        channel.dataReceived(b"67890")
        self.assertEqual(self.resource.bodies[0][1], b"1234567890")
        self.assertIn(b"200 OK", transport.value())
        self.lose(channel, transport)
        self.successResultOf(d)

    def test_stuck_requests_cut_after_timeout(self):
        """Connections still busy after the drain timeout are cut, so the daemon does stop."""
        self.resource.hold = True
        channel, transport = self.connect()
        channel.dataReceived(head())
        d = self.site.drain()
        self.clock.advance(sitemod.DRAIN_TIMEOUT - 1)
        self.assertFalse(transport.disconnected)
        self.clock.advance(1)
        self.assertTrue(transport.disconnected)
        channel.connectionLost(Exception("aborted"))
        self.successResultOf(d)
        self.assertEqual(self.clock.getDelayedCalls(), [])


def head_of_size(size: int) -> bytes:
    """
    A request head whose lines (without their CRLFs, as Twisted counts
    them) add up to exactly C{size} bytes.
    """
    first = b"GET / HTTP/1.1"
    host = b"Host: example"
    pad = size - len(first) - len(host) - len(b"X-Pad: ")
    lines = [first, host]
    while pad > 8000:
        # Each header line stays under the 16 KiB line limit.
        lines.append(b"X-Pad: " + b"p" * 7000)
        pad -= 7000 + len(b"X-Pad: ")
    lines.append(b"X-Pad: " + b"p" * pad)
    return b"\r\n".join(lines) + b"\r\n\r\n"


class HeadLimitDeliveryTests(SiteTestMixin, SynchronousTestCase):
    """
    The head limits give the same answer however the head is cut into
    packets: all at once, one byte at a time, or in pieces of any size.
    """

    def setUp(self):
        self.make_site()

    def send(self, data: bytes, piece: int):
        channel, transport = self.connect()
        for offset in range(0, len(data), piece):
            channel.dataReceived(data[offset:offset + piece])
            if transport.disconnecting:
                break
        return channel, transport

    def test_head_at_the_limit_accepted(self):
        """A head of exactly 16 KiB is served, in any packet size."""
        limit = self.site.protocol.totalHeadersSize
        for piece in (1, 7, 1000, 100000):
            channel, transport = self.send(head_of_size(limit), piece)
            self.assertEqual(status_of(transport), b"HTTP/1.1 200 OK", piece)
            self.assertFalse(transport.disconnecting)

    def test_head_over_the_limit_refused(self):
        """One byte more gets 431 and a close, in any packet size."""
        limit = self.site.protocol.totalHeadersSize
        for piece in (1, 7, 1000, 100000):
            channel, transport = self.send(head_of_size(limit + 1), piece)
            self.assertEqual(status_of(transport),
                             b"HTTP/1.1 431 Request Header Fields Too Large", piece)
            self.assertTrue(transport.disconnecting)
        self.assertEqual(self.resource.requests, [])

    def test_long_request_line_refused_in_pieces(self):
        """A request line over 16 KiB gets 414 whether it arrives at once or trickles."""
        data = head(path=b"/" + b"a" * 20000)
        for piece in (1, 100, 4096, len(data)):
            channel, transport = self.send(data, piece)
            self.assertEqual(status_of(transport), b"HTTP/1.1 414 URI Too Long", piece)
            self.assertTrue(transport.disconnecting)
        self.assertEqual(self.resource.requests, [])

    def test_request_line_over_total_refused_with_414(self):
        """A request line under the line limit but over the head total still gets 414."""
        self.site.protocol = type("Small", (self.site.protocol,), {"totalHeadersSize": 100})
        channel, transport = self.send(head(path=b"/" + b"a" * 200), 1000)
        self.assertEqual(status_of(transport), b"HTTP/1.1 414 URI Too Long")

    def test_other_bad_heads_still_400(self):
        """A malformed head within the limits still gets Twisted's plain 400."""
        channel, transport = self.send(head(headers=[b"No colon here"]), 3)
        self.assertEqual(status_of(transport), b"HTTP/1.1 400 Bad Request")
        self.assertTrue(transport.disconnecting)


class KeepAliveTests(SiteTestMixin, SynchronousTestCase):
    """
    Many requests on one connection: answers in order, the head deadline
    counted from the end of the last response, and one timer for the
    whole connection.
    """

    def setUp(self):
        self.make_site()

    def test_pipelined_requests_answered_in_order(self):
        """Requests sent together are answered one after the other, in order."""
        class Echo(Resource):
            isLeaf = True

            def render(self, request):
                request.setHeader(b"content-length", b"%d" % len(request.path))
                return request.path

        self.make_site(resource=Echo())
        channel, transport = self.connect()
        paths = [b"/r%d" % n for n in range(20)]
        channel.dataReceived(b"".join(head(path=p) for p in paths))
        bodies = [part.split(b"\r\n\r\n", 1)[1][:len(p)]
                  for part, p in zip(transport.value().split(b"HTTP/1.1 200 OK")[1:], paths)]
        self.assertEqual(bodies, paths)

    def test_deadline_counts_from_last_response(self):
        """After many requests, the next head still gets exactly headerTimeout."""
        channel, transport = self.connect()
        for _ in range(50):
            self.clock.advance(TIMEOUT - 1)
            channel.dataReceived(head())
        self.assertEqual(len(self.resource.requests), 50)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        channel.dataReceived(b"GET / HT")
        self.clock.advance(TIMEOUT - 1)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(transport.disconnected)
        self.assertEqual(len(self.resource.requests), 50)

    def test_timer_gone_with_connection(self):
        """A closed connection leaves no timer behind."""
        channel, transport = self.connect()
        channel.dataReceived(head())
        channel.connectionLost(Exception("closed"))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_head_response_sent_without_body(self):
        """A HEAD response goes out at once, head only."""
        channel, transport = self.connect()
        channel.dataReceived(head(b"HEAD"))
        self.assertEqual(status_of(transport), b"HTTP/1.1 200 OK")
        self.assertTrue(transport.value().endswith(b"\r\n\r\n"))

    def test_head_written_before_a_slow_body(self):
        """A response whose body comes later has its head on the wire as soon as it is written."""
        self.resource.hold = True
        channel, transport = self.connect()
        channel.dataReceived(head())
        request = self.resource.requests[0]
        request.setHeader(b"content-length", b"4")
        request.write(b"")
        self.assertEqual(status_of(transport), b"HTTP/1.1 200 OK")
        request.write(b"done")
        request.finish()
        self.assertTrue(transport.value().endswith(b"\r\n\r\ndone"))

    def test_date_header(self):
        """Every response has a current Date header."""
        channel, transport = self.connect()
        channel.dataReceived(head())
        request = self.resource.requests[0]
        self.assertEqual(request.responseHeaders.getRawHeaders(b"date"),
                         [sitemod.http.datetimeToString()])


class Sized(Resource):
    """
    Answers C{/<n>} with n bytes of a pattern and a Content-Length.
    """

    isLeaf = True

    def render(self, request):
        size = int(request.path[1:])
        body = (b"0123456789abcdef" * (size // 16 + 1))[:size]
        request.setHeader(b"content-length", b"%d" % size)
        return body


class Collector(protocol.Protocol):
    def __init__(self):
        self.received = []
        self.closed = defer.Deferred()

    def connectionLost(self, reason):
        self.closed.callback(b"".join(self.received))

    def dataReceived(self, data):
        self.received.append(data)


def split_responses(data: bytes) -> list[tuple[bytes, bytes]]:
    """
    (status line, body) of each response in C{data}, by Content-Length.
    """
    responses = []
    while data:
        head_bytes, data = data.split(b"\r\n\r\n", 1)
        lines = head_bytes.split(b"\r\n")
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        responses.append((lines[0], data[:length]))
        data = data[length:]
    return responses


class RealSocketTests(SiteTestMixin, TestCase):
    """
    Responses written straight to a real TCP socket: whole, and in
    order, whatever their sizes and however many are pipelined.
    """

    def setUp(self):
        self.site = OwnCDNSite(Sized(), spool_dir=Path(self.mktemp()), max_upload_size=LIMIT,
                               header_timeout=TIMEOUT)
        self.port = reactor.listenTCP(0, self.site, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)

    @defer.inlineCallbacks
    def send(self, requests: bytes):
        """Send C{requests} on a new connection; everything received until it closes."""
        client = Collector()
        yield endpoints.connectProtocol(
            endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", self.port.getHost().port),
            client)
        client.transport.write(requests)
        return (yield client.closed)

    @defer.inlineCallbacks
    def exchange(self, requests: bytes):
        return split_responses((yield self.send(requests)))

    @defer.inlineCallbacks
    def test_pipelined_small_and_large_in_order(self):
        """Small and multi-megabyte answers to pipelined requests arrive whole and in order."""
        sizes = [10, 3 * 1024 * 1024, 1, 70000, 0, 2 * 1024 * 1024, 5]
        requests = b"".join(head(path=b"/%d" % size) for size in sizes)
        requests += head(path=b"/7", headers=[b"Connection: close"])
        responses = yield self.exchange(requests)
        sizes.append(7)
        self.assertEqual([status for status, _ in responses], [b"HTTP/1.1 200 OK"] * len(sizes))
        self.assertEqual([len(body) for _, body in responses], sizes)
        for (_, body), size in zip(responses, sizes):
            self.assertEqual(body, (b"0123456789abcdef" * (size // 16 + 1))[:size])

    @defer.inlineCallbacks
    def test_nothing_sent_after_abort(self):
        """Once a response is cut off, nothing written after the cut reaches the client."""
        class CutOff(Resource):
            isLeaf = True

            def render(self, request):
                request.setHeader(b"content-length", b"100")
                request.write(b"first")
                request.channel.transport.abortConnection()
                request.write(b"second")
                return NOT_DONE_YET

        self.site.resource = CutOff()
        data = yield self.send(head())
        self.assertNotIn(b"second", data)

    @defer.inlineCallbacks
    def test_head_requests(self):
        """HEAD answers carry no body, and the next answer follows them intact."""
        requests = head(b"HEAD", b"/100") + head(path=b"/3", headers=[b"Connection: close"])
        data = yield self.send(requests)
        first, second = data.split(b"\r\n\r\n", 1)
        self.assertIn(b"Content-Length: 100", first)
        self.assertTrue(second.startswith(b"HTTP/1.1 200 OK"))
        self.assertTrue(second.endswith(b"\r\n\r\n012"))


class WholeHeadTests(SiteTestMixin, SynchronousTestCase):
    """
    Heads that arrive whole are held to the same rules as heads that
    arrive in pieces.
    """

    def setUp(self):
        self.make_site()

    def both_ways(self, data: bytes):
        """
        The transports of C{data} sent all at once and byte by byte.
        """
        whole, whole_transport = self.connect()
        whole.dataReceived(data)
        trickled, trickled_transport = self.connect()
        for offset in range(len(data)):
            if trickled_transport.disconnecting:
                break
            trickled.dataReceived(data[offset:offset + 1])
        return whole_transport, trickled_transport

    def assert_same(self, data: bytes, status: bytes):
        whole, trickled = self.both_ways(data)
        self.assertEqual(status_of(whole), status)
        self.assertEqual(whole.value(), trickled.value())
        self.assertEqual(whole.disconnecting, trickled.disconnecting)

    def test_folded_header(self):
        """A folded (obsolete continuation) header line is joined as Twisted joins it."""
        self.assert_same(head(headers=[b"X-Folded: one", b" two"]), b"HTTP/1.1 200 OK")
        first, second = self.resource.requests
        self.assertEqual(first.requestHeaders.getRawHeaders(b"x-folded"), [b"one two"])
        self.assertEqual(second.requestHeaders.getRawHeaders(b"x-folded"), [b"one two"])

    def test_blank_line_before_request(self):
        """One stray CRLF before a request line is skipped."""
        self.assert_same(b"\r\n" + head(), b"HTTP/1.1 200 OK")

    def test_bad_headers(self):
        """Headers without a colon, with a bad name or a NUL get 400 either way."""
        for bad in (b"No colon", b"Bad Name: x", b"X-Nul: a\x00b", b"Content-Length: x"):
            self.assert_same(head(headers=[bad]), b"HTTP/1.1 400 Bad Request")
        self.assertEqual(self.resource.requests, [])

    def test_two_lengths(self):
        """A request with both Content-Length and chunked coding gets 400 either way."""
        self.assert_same(head(b"PUT", headers=[b"Content-Length: 3",
                                               b"Transfer-Encoding: chunked"]) + b"abc",
                         b"HTTP/1.1 400 Bad Request")

    def test_too_many_headers(self):
        """More than Twisted's 500 headers gets 400 either way."""
        self.assert_same(head(headers=[b"X-%d: v" % n for n in range(501)]),
                         b"HTTP/1.1 400 Bad Request")

    def test_http_10_closes(self):
        """An HTTP/1.0 request is answered, then the connection closes."""
        self.assert_same(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n", b"HTTP/1.0 200 OK")

    def test_pipelined_with_bodies(self):
        """Heads and bodies sent together reach the resource in order, each body its own."""
        data = (head(b"PUT", b"/a", [b"Content-Length: 3"]) + b"one"
                + head(b"GET", b"/b")
                + head(b"PUT", b"/c", [b"Transfer-Encoding: chunked"]) + chunk(b"three")
                + b"0\r\n\r\n" + head(b"GET", b"/d"))
        self.assert_same(data, b"HTTP/1.1 200 OK")
        paths = [request.path for request in self.resource.requests]
        self.assertEqual(paths, [b"/a", b"/b", b"/c", b"/d"] * 2)
        bodies = [body for _, body in self.resource.bodies]
        self.assertEqual(bodies, [b"one", b"", b"three", b""] * 2)

    def test_pipelined_behind_slow_response(self):
        """Requests that arrive while one is in progress wait for it and are then answered."""
        self.resource.hold = True
        channel, transport = self.connect()
        channel.dataReceived(head(path=b"/1"))
        channel.dataReceived(head(path=b"/2") + head(path=b"/3"))
        self.assertEqual(len(self.resource.requests), 1)
        self.resource.hold = False
        self.resource.requests[0].finish()
        self.assertEqual([r.path for r in self.resource.requests], [b"/1", b"/2", b"/3"])
        self.assertEqual(transport.value().count(b"200 OK"), 3)


class Bodiless(Resource):
    """
    Answers without a body: C{code}, the headers C{headers}, finished by
    L{OwnCDNRequest.finish_bodiless} when C{bodiless} is set, else by
    Twisted's C{finish}.
    """

    isLeaf = True

    def __init__(self, code: int, headers: list[tuple[bytes, bytes]], bodiless: bool):
        super().__init__()
        self.code, self.headers, self.bodiless = code, headers, bodiless

    def render(self, request):
        request.setResponseCode(self.code)
        for name, value in self.headers:
            request.setHeader(name, value)
        if self.bodiless:
            request.finish_bodiless()
        else:
            request.finish()
        return NOT_DONE_YET


class BodilessFinishTests(SiteTestMixin, SynchronousTestCase):
    def answer(self, method: bytes, code: int, headers: list[tuple[bytes, bytes]], bodiless: bool) -> bytes:
        self.make_site(Bodiless(code, headers, bodiless))
        channel, transport = self.connect()
        channel.dataReceived(head(method) + head(b"GET", b"/next"))
        return transport.value()

    def test_same_as_finish(self):
        """What goes out, and that the connection goes on, is what Twisted's finish makes of it."""
        self.patch(sitemod, "http_date_now", lambda: b"Sat, 28 Nov 2026 03:00:00 GMT")
        cases = [(b"PUT", 200, [(b"etag", b'"x"'), (b"content-length", b"0")]),
                 (b"DELETE", 204, [(b"x-amz-version-id", b"1")]),
                 (b"HEAD", 200, [(b"content-length", b"0")]),
                 # Not bodiless by its head: Twisted's own way (chunked, a
                 # Content-Type), and the same with a cookie to set.
                 (b"GET", 200, []),
                 (b"PUT", 200, [(b"content-length", b"0"), (b"set-cookie", b"a=b")])]
        for method, code, headers in cases:
            fast = self.answer(method, code, headers, bodiless=True)
            self.assertEqual(fast, self.answer(method, code, headers, bodiless=False))
            self.assertEqual(fast.count(b"HTTP/1.1 %d " % code), 2)


class PutHeadersTests(SynchronousTestCase):
    def test_same_as_set_header(self):
        """Headers put directly are the ones setHeader would set, and setting one again replaces it."""
        from twisted.web.test.requesthelper import DummyRequest
        put, set_ = DummyRequest([b""]), DummyRequest([b""])
        pairs = [(b"ETag", b'"abc"'), (b"Last-Modified", b"Thu, 01 Jan 1970 00:00:00 GMT"),
                 (b"Accept-Ranges", b"bytes"), (b"Content-Length", b"10"),
                 (b"Server", b"x"), (b"Date", b"y")]
        sitemod.put_headers(put, pairs)
        for name, value in pairs:
            set_.setHeader(name.lower(), value)
        self.assertEqual(sorted(put.responseHeaders.getAllRawHeaders()),
                         sorted(set_.responseHeaders.getAllRawHeaders()))
        put.responseHeaders.setRawHeaders(b"etag", [b'"new"'])
        self.assertEqual(put.responseHeaders.getRawHeaders(b"etag"), [b'"new"'])


class ParseQueryTests(SynchronousTestCase):
    def test_same_as_twisted(self):
        """On 20,000 random queries the arguments are exactly Twisted's parse_qs(query, 1)."""
        import random

        from twisted.web.http import parse_qs
        pieces = [b"a", b"b", b"=", b"&", b";", b"%", b"%2", b"%41", b"%zz", b"+", b"%2B", b"\xff",
                  b"path", b"sid", b" "]
        rng = random.Random(5)
        for _ in range(20000):
            query = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 10)))
            self.assertEqual(sitemod.parse_query(query), parse_qs(query, 1), query)

    def test_request_args(self):
        """A request's args and path come from its target as before."""
        site = OwnCDNSite(Recorder(), spool_dir=Path(self.mktemp()), max_upload_size=LIMIT,
                          header_timeout=TIMEOUT, reactor=task.Clock())
        channel = site.buildProtocol(None)
        channel.makeConnection(StringTransport())
        channel.dataReceived(head(path=b"/getfile?sid=files&path=a%20b+c&path=&x"))
        request = site.resource.requests[0]
        self.assertEqual(request.path, b"/getfile")
        self.assertEqual(request.args, {b"sid": [b"files"], b"path": [b"a b c", b""]})


class Streamed(Resource):
    """
    Streams C{size} bytes held in memory as pieces of C{piece} bytes,
    the way a memory-cache hit on a big item is sent (send_file's
    producer).
    """

    isLeaf = True

    def __init__(self, size: int, piece: int):
        super().__init__()
        from owncdn.interfaces import FileInfo
        from owncdn.services.memorycache import CachedFile
        self.data = os.urandom(size)
        pieces = [self.data[n:n + piece] for n in range(0, size, piece)]
        self.body = CachedFile(FileInfo("big", size, 0.0, "e" * 32, "application/octet-stream"),
                               pieces, 0, 0.0)

    def render(self, request):
        from owncdn.web.fileresponse import send_file
        defer.Deferred.fromCoroutine(send_file(request, self.body))
        return NOT_DONE_YET


class StreamingTests(TestCase):
    """
    A big response streamed by a producer in writes small enough to go
    straight to the socket still arrives whole, however slowly the
    client reads.
    """

    timeout = 30

    @defer.inlineCallbacks
    def fetch_twice(self, piece: int):
        resource = Streamed(8 * 1024 * 1024, piece)
        site = OwnCDNSite(resource, spool_dir=Path(self.mktemp()), max_upload_size=LIMIT,
                          header_timeout=TIMEOUT)
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client = Collector()
        yield endpoints.connectProtocol(
            endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), client)
        client.transport.write(head(path=b"/big") + head(path=b"/big", headers=[b"Connection: close"]))
        data = yield client.closed
        responses = split_responses(data)
        self.assertEqual([body == resource.data for _, body in responses], [True, True])

    def test_small_pieces(self):
        return self.fetch_twice(16 * 1024)

    def test_pieces_at_the_direct_limit(self):
        return self.fetch_twice(channelmod.DIRECT_SEND_LIMIT)

    def test_large_pieces(self):
        return self.fetch_twice(1024 * 1024)


class RequestLineTests(SynchronousTestCase):
    def test_same_as_twisted(self):
        """On 30,000 random request lines the quick check agrees with Twisted's parser."""
        import random

        from twisted.web.http import _parseRequestLine
        pieces = [b"GET", b"get", b" ", b"  ", b"/", b"/a?b=c", b"HTTP/1.1", b"HTTP/1.0",
                  b"HTTP/2.0", b"\x00", b"\x7f", b"\xb0", b"\xb1", b"\xff", b"\t", b"@", b"(",
                  b"~", b"!"]
        rng = random.Random(7)
        for _ in range(30000):
            line = b"".join(rng.choice(pieces) for _ in range(rng.randint(1, 6)))
            try:
                expected = _parseRequestLine(line)
            except ValueError:
                expected = None
            parsed = channelmod._REQUEST_LINE.fullmatch(line)
            self.assertEqual(parsed.groups() if parsed else None, expected, line)


class WholeHeadFuzzTests(SiteTestMixin, SynchronousTestCase):
    def test_random_headers_same_both_ways(self):
        """Random header lines give the same answer and the same headers whole or trickled."""
        import random
        self.make_site()
        pieces = [b"X-A", b"x-a", b"Host", b"Content-Length", b"Transfer-Encoding", b":", b": ",
                  b"1", b"chunked", b"identity", b" ", b"\t", b"\x00", b"\r", b"\n", b"(",
                  b"\xff", b"v"]
        rng = random.Random(11)
        self.seen = set()
        for _ in range(400):
            lines = [b"".join(rng.choice(pieces) for _ in range(rng.randint(1, 5)))
                     for _ in range(rng.randint(1, 4))]
            if any(not line or line[:1] in b" \t" or b"\r\n" in line or line.endswith(b"\r")
                   for line in lines):
                continue
            data = head(b"GET", headers=lines)
            self.resource.requests = []
            whole, whole_t = self.connect()
            whole.dataReceived(data)
            whole_headers = [sorted(r.requestHeaders.getAllRawHeaders())
                             for r in self.resource.requests]
            self.resource.requests = []
            trickled, trickled_t = self.connect()
            for offset in range(len(data)):
                if trickled_t.disconnecting:
                    break
                trickled.dataReceived(data[offset:offset + 1])
            trickled_headers = [sorted(r.requestHeaders.getAllRawHeaders())
                                for r in self.resource.requests]
            self.seen.add(status_of(whole_t))
            self.assertEqual(status_of(whole_t), status_of(trickled_t), lines)
            self.assertEqual(whole_headers, trickled_headers, lines)
        self.assertEqual(self.seen, {b"HTTP/1.1 200 OK", b"HTTP/1.1 400 Bad Request"})


class HeadBookkeepingTests(SiteTestMixin, SynchronousTestCase):
    def setUp(self):
        self.make_site()

    def test_100_continue(self):
        """An accepted HTTP/1.1 upload that expects 100-continue gets it before the answer."""
        channel, transport = self.connect()
        channel.dataReceived(head(b"PUT", headers=[b"Content-Length: 3",
                                                   b"Expect: 100-Continue"]))
        self.assertEqual(transport.value(), b"HTTP/1.1 100 Continue\r\n\r\n")
        channel.dataReceived(b"abc")
        self.assertEqual(self.resource.bodies[0][1], b"abc")
        self.assertIn(b"200 OK", transport.value())

    def test_no_100_continue_for_http_10(self):
        """HTTP/1.0 clients never get a 100 Continue."""
        channel, transport = self.connect()
        channel.dataReceived(b"PUT / HTTP/1.0\r\nContent-Length: 3\r\n"
                             b"Expect: 100-continue\r\n\r\n")
        self.assertEqual(transport.value(), b"")

    def test_cookies_and_persistence(self):
        """Cookies are parsed as Twisted parses them and Connection: close is honoured."""
        channel, transport = self.connect()
        channel.dataReceived(head(headers=[b"Cookie: a=1; b=2", b"Connection: close"]))
        self.assertEqual(self.resource.requests[0].received_cookies, {b"a": b"1", b"b": b"2"})
        self.assertTrue(transport.disconnecting)
