"""
AsyncResource (owncdn.web.handler): answers that need no waiting are
given at once, answers that wait are given when their Deferred fires,
a client that goes away cancels the wait, and errors on either path
become the resource's error response.
"""

from pathlib import Path

from twisted.internet import defer, task
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from owncdn import errors
from owncdn.web.handler import AsyncResource
from tests.util import logged_text
from owncdn.web.site import OwnCDNSite


class Answers(AsyncResource):
    """
    Awaits C{self.wait} (a Deferred, fired or not), then answers with
    what it gave, or raises C{self.fail_with} before or after waiting.
    """

    def __init__(self):
        super().__init__()
        self.wait = defer.succeed(b"ready")
        self.fail_before = None
        self.fail_after = None
        self.cancelled = []

    async def handle(self, request):
        if self.fail_before is not None:
            raise self.fail_before
        try:
            body = await self.wait
        except defer.CancelledError:
            self.cancelled.append(request)
            raise
        if self.fail_after is not None:
            raise self.fail_after
        request.setHeader(b"content-length", b"%d" % len(body))
        request.write(body)
        request.finish()

    def send_error(self, request, error):
        body = error.code.encode()
        request.setResponseCode(error.status)
        request.setHeader(b"content-length", b"%d" % len(body))
        request.write(body)
        request.finish()


REQUEST = b"GET /x HTTP/1.1\r\nHost: example\r\n\r\n"


class AsyncResourceTests(SynchronousTestCase):
    def setUp(self):
        self.resource = Answers()
        self.site = OwnCDNSite(self.resource, spool_dir=Path(self.mktemp()),
                               max_upload_size=1000, header_timeout=30, reactor=task.Clock())
        self.channel = self.site.buildProtocol(None)
        self.transport = StringTransport()
        self.channel.makeConnection(self.transport)

    def test_ready_answer_given_at_once(self):
        """An answer whose data is already there is on the wire when the request is parsed."""
        self.channel.dataReceived(REQUEST)
        self.assertTrue(self.transport.value().startswith(b"HTTP/1.1 200 OK"))
        self.assertTrue(self.transport.value().endswith(b"\r\n\r\nready"))

    def test_ready_answers_keep_alive(self):
        """Many ready answers on one connection each come whole, in order."""
        self.channel.dataReceived(REQUEST * 5)
        self.assertEqual(self.transport.value().count(b"\r\n\r\nready"), 5)

    def test_waiting_answer_given_when_ready(self):
        """An answer that waits is given once its data arrives."""
        self.resource.wait = defer.Deferred()
        self.channel.dataReceived(REQUEST)
        self.assertEqual(self.transport.value(), b"")
        self.resource.wait.callback(b"later")
        self.assertTrue(self.transport.value().endswith(b"\r\n\r\nlater"))

    def test_client_gone_cancels_wait(self):
        """A client that disconnects while its answer waits cancels the wait."""
        self.resource.wait = defer.Deferred()
        self.channel.dataReceived(REQUEST)
        self.channel.connectionLost(Exception("gone"))
        self.assertEqual(len(self.resource.cancelled), 1)
        self.assertEqual(self.transport.value(), b"")

    def test_error_before_waiting(self):
        """An error raised at once becomes the resource's error response."""
        self.resource.fail_before = errors.NoSuchFile("no")
        self.channel.dataReceived(REQUEST)
        self.assertTrue(self.transport.value().startswith(b"HTTP/1.1 404 "))
        self.assertTrue(self.transport.value().endswith(b"NoSuchFile"))

    def test_error_after_waiting(self):
        """An error raised after a wait becomes the resource's error response."""
        self.resource.wait = defer.Deferred()
        self.resource.fail_after = errors.AccessDenied("no")
        self.channel.dataReceived(REQUEST)
        self.resource.wait.callback(b"")
        self.assertTrue(self.transport.value().startswith(b"HTTP/1.1 403 "))

    def test_bug_is_500(self):
        """An unexpected exception on the ready path is a logged 500."""
        self.resource.fail_before = RuntimeError("a bug")
        self.channel.dataReceived(REQUEST)
        self.assertTrue(self.transport.value().startswith(b"HTTP/1.1 500 "))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_bug_logged_without_query(self):
        """The log of a bug names the request's path, never its query (a presigned signature)."""
        logged = logged_text(self)
        self.resource.fail_before = RuntimeError("a bug")
        self.channel.dataReceived(REQUEST.replace(b"/x", b"/x?X-Amz-Signature=c0ffee"))
        self.assertTrue(self.transport.value().startswith(b"HTTP/1.1 500 "))
        self.flushLoggedErrors(RuntimeError)
        text = logged()
        self.assertIn("/x", text)
        self.assertNotIn("c0ffee", text)


class Pieces:
    """
    A body whose reads give at most C{piece} bytes, and that ends
    C{missing} bytes early.
    """

    def __init__(self, data: bytes, piece: int, missing: int = 0):
        from owncdn.interfaces import FileInfo
        self.info = FileInfo("f", len(data), 0.0, "e" * 32, "application/octet-stream")
        self.data = data[:len(data) - missing]
        self.piece = piece
        self.closed = False

    def read(self, offset, length):
        return defer.succeed(self.data[offset:offset + min(length, self.piece)])

    def alternate(self, encoding):
        return None

    def close(self):
        self.closed = True


class SendsFile(Answers):
    async def handle(self, request):
        from owncdn.web.fileresponse import send_file
        await send_file(request, self.body)


class SmallFileTests(SynchronousTestCase):
    def answer(self, body):
        resource = SendsFile()
        resource.body = body
        site = OwnCDNSite(resource, spool_dir=Path(self.mktemp()), max_upload_size=1000,
                          header_timeout=30, reactor=task.Clock())
        channel = site.buildProtocol(None)
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.dataReceived(REQUEST)
        return transport.value()

    def test_read_in_pieces(self):
        """A small file whose reads come in pieces is sent whole, in one response."""
        data = bytes(range(256)) * 4
        body = Pieces(data, 100)
        answer = self.answer(body)
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 OK"))
        self.assertTrue(answer.endswith(b"\r\n\r\n" + data))
        self.assertTrue(body.closed)

    def test_body_ending_early(self):
        """A small file whose body ends early gets an error, never a short 200."""
        body = Pieces(b"x" * 1000, 100, missing=10)
        answer = self.answer(body)
        self.assertTrue(answer.startswith(b"HTTP/1.1 500 "))
        self.assertEqual(len(self.flushLoggedErrors(IOError)), 1)
        self.assertTrue(body.closed)
