"""
Request bodies spooled to a file (owncdn.web.site.RequestSpool): the
file is created and written in the site's spool threads, never on the
reactor thread, with the connection paused while those threads are
behind; the request is processed only once every byte is in the file;
a client gone or a failed write leaves nothing in the spool folder.

The unit tests drive the real channel over a StringTransport (a
producer whose state they read) with spool threads whose jobs run when
the test says so; one test uploads over a real socket through real
threads.
"""

import errno
import hashlib
import os
import random
import socket
import threading

from twisted.internet import reactor, threads
from twisted.internet.error import ConnectionLost
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from owncdn.spool import SPOOL_AHEAD, SPOOL_BLOCK
from owncdn.web import site as sitemod
from owncdn.web.site import OwnCDNSite
from tests.test_site import Recorder, SiteTestMixin, body_of, chunk, head, status_of
from tests.util import SpoolRecorder, send_while_producing

BIG = 16 * 1024 * 1024
PIECE = 64 * 1024


class RequestSpoolTests(SiteTestMixin, SynchronousTestCase):
    def setUp(self):
        self.make_site(max_upload_size=BIG)
        self.spools = SpoolRecorder(self, sitemod, "spool_file")
        self.data = random.Random(3).randbytes(5 * 1024 * 1024 + 123)
        self.channel, self.transport = self.connect()

    def put(self, headers=(b"Content-Type: application/octet-stream",)) -> None:
        self.channel.dataReceived(head(b"PUT", b"/upload", headers=[
            b"Content-Length: %d" % len(self.data), *headers]))

    def send(self, data: bytes) -> None:
        for start in range(0, len(data), PIECE):
            self.channel.dataReceived(data[start:start + PIECE])

    def send_all(self) -> None:
        send_while_producing(self.channel.dataReceived, self.data, PIECE, self.transport,
                             self.pool)

    def assert_nothing_left(self) -> None:
        (spool,) = self.spools.files
        self.assertTrue(spool.closed)
        self.assertEqual(os.listdir(self.spool), [])
        self.assertEqual(self.resource.requests, [])

    def test_spool_made_and_written_only_in_spool_threads(self):
        """The body's file is made and written only in the spool threads; the request waits for them."""
        self.put()
        self.send(self.data[:SPOOL_AHEAD])
        self.channel.dataReceived(self.data[SPOOL_AHEAD:])
        # All of the body is in, but none of it was written here.
        self.assertEqual(self.spools.files, [])
        self.assertEqual(os.listdir(self.spool), [])
        self.assertEqual(self.resource.requests, [])
        self.pool.run()
        (spool,) = self.spools.files
        content, received = self.resource.bodies[0]
        self.assertIs(content, spool)
        self.assertEqual(received, self.data)
        self.assertEqual(status_of(self.transport), b"HTTP/1.1 200 OK")
        # Gone with the request.
        self.assertTrue(spool.closed)
        self.assertEqual(os.listdir(self.spool), [])

    def test_body_round_trips_in_a_named_file(self):
        """A body sent in pieces reaches the resource whole, from a named file in the spool folder."""
        names = []
        render = self.resource.render

        def render_and_name(request):
            names.append(request.content.name)
            return render(request)

        self.resource.render = render_and_name
        self.put()
        self.send_all()
        self.pool.run()
        self.assertEqual(self.resource.bodies[0][1], self.data)
        self.assertEqual(os.path.dirname(names[0]), str(self.spool))
        self.assertEqual(status_of(self.transport), b"HTTP/1.1 200 OK")

    def test_chunked_body_spooled_in_spool_threads(self):
        """A chunked body that outgrows memory moves to a spool written in the spool threads, intact."""
        self.channel.dataReceived(head(b"PUT", b"/upload", headers=[b"Transfer-Encoding: chunked"]))
        for start in range(0, len(self.data), 100_000):
            self.channel.dataReceived(chunk(self.data[start:start + 100_000]))
            if self.transport.producerState == "paused":
                self.pool.run()
        self.channel.dataReceived(b"0\r\n\r\n")
        self.assertEqual(self.resource.requests, [])
        self.pool.run()
        (spool,) = self.spools.files
        self.assertEqual(spool.writers, {threading.current_thread()})  # in pool jobs only
        self.assertEqual(self.resource.bodies[0][1], self.data)

    def test_paused_while_the_spool_threads_are_behind(self):
        """Past SPOOL_AHEAD unwritten bytes the connection is paused, and resumed at half."""
        self.put()
        self.send(self.data[:SPOOL_AHEAD])
        self.assertEqual(self.transport.producerState, "producing")
        self.send(self.data[SPOOL_AHEAD:SPOOL_AHEAD + SPOOL_BLOCK])
        self.assertEqual(self.transport.producerState, "paused")
        self.pool.run()
        self.assertEqual(self.transport.producerState, "producing")
        self.send(self.data[SPOOL_AHEAD + SPOOL_BLOCK:])
        self.pool.run()
        self.assertEqual(self.resource.bodies[0][1], self.data)

    def test_client_gone_mid_body_leaves_nothing(self):
        """A client that goes away mid-body: the spool file is discarded and nothing more is written."""
        self.put()
        self.send(self.data[:2 * 1024 * 1024])
        self.pool.run()
        (spool,) = self.spools.files
        self.assertTrue(os.listdir(self.spool))
        self.send(self.data[2 * 1024 * 1024:3 * 1024 * 1024])
        self.channel.connectionLost(Failure(ConnectionLost()))
        self.pool.run()
        self.assert_nothing_left()
        self.assertEqual(self.pool.jobs, [])

    def test_client_gone_while_finishing_leaves_nothing(self):
        """A client gone after its last byte, before the spool is written, is never processed."""
        self.put()
        self.send(self.data)
        self.channel.connectionLost(Failure(ConnectionLost()))
        self.pool.run()
        self.assert_nothing_left()

    def test_disk_full_answers_507_and_leaves_nothing(self):
        """A spool write that fails for a full disk answers 507 at once, closes, and leaves nothing."""
        self.spools = SpoolRecorder(self, sitemod, "spool_file", fail_writes=True)
        self.put()
        self.send(self.data[:SPOOL_BLOCK])
        self.pool.run()
        self.assertEqual(status_of(self.transport), b"HTTP/1.1 507 Insufficient Storage")
        self.assertEqual(body_of(self.transport), b'{"error": {"code": "InsufficientStorage", '
                         b'"message": "there is no room left on the server\'s disk for the body"}}')
        self.assertTrue(self.transport.disconnecting)
        self.send(self.data[SPOOL_BLOCK:])
        self.pool.run()
        self.channel.connectionLost(Failure(ConnectionLost()))
        self.pool.run()
        self.assert_nothing_left()
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_disk_full_at_the_last_block_of_an_s3_request(self):
        """A write failing once the whole body is in still answers 507, in S3's terms for an S3 request."""
        self.spools = SpoolRecorder(self, sitemod, "spool_file", fail_writes=True)
        self.put(headers=[b"X-Amz-Content-Sha256: UNSIGNED-PAYLOAD"])
        self.send(self.data[:SPOOL_BLOCK - 1])
        self.channel.dataReceived(self.data[SPOOL_BLOCK - 1:SPOOL_BLOCK + 1])
        self.send(self.data[SPOOL_BLOCK + 1:])
        self.assertEqual(self.transport.value(), b"")
        self.pool.run()
        self.assertEqual(status_of(self.transport), b"HTTP/1.1 507 Insufficient Storage")
        self.assertIn(b"<Code>InsufficientStorage</Code>", body_of(self.transport))
        self.assertIn(b"x-amz-request-id: ", self.transport.value())
        self.channel.connectionLost(Failure(ConnectionLost()))
        self.pool.run()
        self.assert_nothing_left()
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_spool_folder_gone_answers_500_and_leaves_nothing(self):
        """A spool file that cannot be made (its folder is gone) answers 500 and processes nothing."""
        os.rmdir(self.spool)
        self.put()
        self.send(self.data)
        self.pool.run()
        self.assertEqual(status_of(self.transport), b"HTTP/1.1 500 Internal Server Error")
        self.assertIn(b'"InternalError"', body_of(self.transport))
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.resource.requests, [])
        error = self.flushLoggedErrors(FileNotFoundError)[0].value
        self.assertEqual(error.errno, errno.ENOENT)

    def test_spool_threads_stop_with_the_site(self):
        """The site stops its spool threads when told (after its drain)."""
        self.put()
        self.assertTrue(self.pool.started)
        self.site.stop_spooling()
        self.assertFalse(self.pool.started)


class RealThreadsTests(TestCase):
    def test_spool_written_off_the_reactor_thread(self):
        """Over a real socket the spool file is made and written only in the site's threads, and the body arrives exactly."""
        spool_dir = self.mktemp()
        os.mkdir(spool_dir)
        resource = Recorder()
        site = OwnCDNSite(resource, spool_dir=spool_dir, max_upload_size=BIG, header_timeout=30)
        spools = SpoolRecorder(self, sitemod, "spool_file")
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(site.stop_spooling)
        self.addCleanup(port.stopListening)
        data = random.Random(4).randbytes(6 * 1024 * 1024 + 7)
        address = ("127.0.0.1", port.getHost().port)

        def upload() -> bytes:
            with socket.create_connection(address, timeout=30) as client:
                client.sendall(head(b"PUT", b"/up", headers=[
                    b"Content-Length: %d" % len(data), b"Connection: close"]) + data)
                answer = b""
                while chunk := client.recv(65536):
                    answer += chunk
                return answer

        def check(answer: bytes) -> None:
            self.assertTrue(answer.startswith(b"HTTP/1.1 200 OK"), answer[:100])
            received = resource.bodies[0][1]
            self.assertEqual(hashlib.sha256(received).digest(), hashlib.sha256(data).digest())
            (made,) = spools.files
            reactor_thread = threading.current_thread()
            self.assertNotEqual(made.made_in, reactor_thread)
            self.assertTrue(made.writers)
            self.assertNotIn(reactor_thread, made.writers)
            self.assertEqual(os.listdir(spool_dir), [])

        return threads.deferToThread(upload).addCallback(check)
