"""
The replica's download of a big body (past MEMORY_BODY) into a spool
file: written and hashed in the client's thread pool, never on the
reactor thread, with the connection paused while the pool falls behind.

The unit tests drive L{SourceClient} through a fake agent whose response
body arrives over a L{StringTransport} (a producer whose state the tests
read) and a thread pool whose jobs run when the test says so; one test
downloads from a real twisted.web server on 127.0.0.1 through real
threads.
"""

import hashlib
import os
import random
import threading
from pathlib import Path

from twisted.internet import defer
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import ResponseDone
from twisted.web.resource import Resource
from twisted.web.server import Site

from owncdn.config import ReplicationSource
from owncdn.interfaces import Change
from owncdn.replication import spool as replica_spool
from owncdn.replication.source import CONNECT_SLACK, MEMORY_BODY, SourceClient, SyncError
from owncdn.spool import SPOOL_AHEAD, SPOOL_BLOCK
from owncdn.testing import ThreadlessClock
from tests.util import QueuedPool, SpoolRecorder, asynctest, send_while_producing

KEY = "primary-secret-0123456789"
PIECE = 64 * 1024


def put_change(data: bytes, sha256: str | None = None) -> Change:
    return Change(id=1, time=0.0, op="put", path="big.bin", version="v1", size=len(data),
                  etag="", sha256=sha256 or hashlib.sha256(data).hexdigest(),
                  content_type="application/octet-stream")


class FakeResponse:
    code = 200

    def __init__(self):
        self.transport = StringTransport()
        self.protocol = None

    def deliverBody(self, protocol) -> None:
        self.protocol = protocol
        protocol.makeConnection(self.transport)


class FakeAgent:
    def __init__(self):
        self.responses: list[FakeResponse] = []

    def request(self, method, uri, headers=None, bodyProducer=None):
        response = FakeResponse()
        self.responses.append(response)
        return defer.succeed(response)


class SpooledDownloadTests(SynchronousTestCase):
    def setUp(self):
        self.clock = ThreadlessClock()
        self.pool = QueuedPool()
        self.agent = FakeAgent()
        self.spool_dir = Path(self.mktemp())
        self.spool_dir.mkdir()
        self.client = SourceClient(ReplicationSource("hq", "HQ", "http://primary.example/", KEY),
                                   "media", self.clock, self.spool_dir, agent=self.agent,
                                   make_pool=lambda *args: self.pool)
        self.spools = SpoolRecorder(self, replica_spool, "_open_spool_file")
        self.data = random.Random(1).randbytes(5 * 1024 * 1024 + 123)

    def getfile(self, change: Change):
        d = self.client.getfile(change)
        (response,) = self.agent.responses
        return d, response

    def send(self, response: FakeResponse, data: bytes) -> None:
        for start in range(0, len(data), PIECE):
            response.protocol.dataReceived(data[start:start + PIECE])

    def finish(self, response: FakeResponse) -> None:
        response.protocol.connectionLost(Failure(ResponseDone()))
        self.pool.run()

    def assert_spool_closed(self) -> None:
        (spool,) = self.spools.files
        self.assertTrue(spool.closed)
        self.assertEqual(os.listdir(self.spool_dir), [])

    def test_large_body_round_trips(self):
        """A body of several MiB is downloaded into a spool file, whole, positioned at 0."""
        d, response = self.getfile(put_change(self.data))
        send_while_producing(response.protocol.dataReceived, self.data, PIECE,
                             response.transport, self.pool)
        self.finish(response)
        spool = self.successResultOf(d)
        self.assertEqual(spool.tell(), 0)
        self.assertEqual(spool.read(), self.data)
        self.assertGreater(len(self.data), MEMORY_BODY)
        spool.close()

    def test_body_paused_while_the_pool_is_behind(self):
        """Past SPOOL_AHEAD unwritten bytes the connection is paused, and resumed once written."""
        d, response = self.getfile(put_change(self.data))
        self.send(response, self.data[:SPOOL_AHEAD])
        self.assertEqual(response.transport.producerState, "producing")
        self.send(response, self.data[SPOOL_AHEAD:SPOOL_AHEAD + SPOOL_BLOCK])
        self.assertEqual(response.transport.producerState, "paused")
        self.assertEqual(self.spools.files, [])  # nothing made or written on this thread
        self.pool.run()
        self.assertEqual(response.transport.producerState, "producing")
        self.send(response, self.data[SPOOL_AHEAD + SPOOL_BLOCK:])
        self.finish(response)
        self.assertEqual(self.successResultOf(d).read(), self.data)

    def test_paused_body_is_not_a_stalled_one(self):
        """A body we paused does not time out; once resumed, the stall timeout counts again."""
        d, response = self.getfile(put_change(self.data))
        self.send(response, self.data[:SPOOL_AHEAD + SPOOL_BLOCK])
        self.assertEqual(response.transport.producerState, "paused")
        for _ in range(4):
            self.clock.advance(CONNECT_SLACK)
        self.assertEqual(response.transport.producerState, "paused")
        self.pool.run()
        self.assertNoResult(d)
        self.assertEqual(response.transport.producerState, "producing")
        self.clock.advance(CONNECT_SLACK)
        self.assertEqual(response.transport.producerState, "producing")
        self.clock.advance(CONNECT_SLACK)
        self.pool.run()
        self.failureResultOf(d, SyncError)
        self.assertEqual(response.transport.producerState, "stopped")
        self.assert_spool_closed()

    def test_wrong_sha256_fails_and_closes_the_spool(self):
        """Bytes that do not match the change's SHA-256 fail the download; the spool is closed."""
        d, response = self.getfile(put_change(self.data, sha256="0" * 64))
        self.send(response, self.data)
        self.finish(response)
        self.assertIn("SHA-256", str(self.failureResultOf(d, SyncError).value))
        self.assert_spool_closed()

    def test_too_long_body_stops_at_once(self):
        """A body longer than announced stops the connection at its first extra byte."""
        d, response = self.getfile(put_change(self.data[:-1]))
        self.pool.run()
        self.send(response, self.data)
        self.assertEqual(response.transport.producerState, "stopped")
        self.pool.run()
        self.assertIn("more than", str(self.failureResultOf(d, SyncError).value))
        self.assert_spool_closed()

    def test_short_body_fails(self):
        """A body shorter than announced fails the download and closes the spool."""
        d, response = self.getfile(put_change(self.data + b"!"))
        self.send(response, self.data)
        self.finish(response)
        self.assertIn("bytes, not", str(self.failureResultOf(d, SyncError).value))
        self.assert_spool_closed()

    def test_cancelled_download_leaves_nothing(self):
        """A cancelled download drops the connection and leaves no file in the spool folder."""
        d, response = self.getfile(put_change(self.data))
        self.send(response, self.data[:2 * 1024 * 1024])
        self.pool.run()
        d.cancel()
        self.assertEqual(response.transport.producerState, "stopped")
        self.pool.run()
        self.failureResultOf(d, defer.CancelledError)
        self.assert_spool_closed()

    def test_cancelled_while_finishing(self):
        """A download cancelled while its last bytes are being written still closes its spool."""
        d, response = self.getfile(put_change(self.data))
        self.send(response, self.data)
        response.protocol.connectionLost(Failure(ResponseDone()))
        d.cancel()
        self.pool.run()
        self.failureResultOf(d, defer.CancelledError)
        self.assert_spool_closed()

    def test_failed_write_stops_the_download(self):
        """A spool write that fails (disk full) drops the connection without reading the rest."""
        self.spools = SpoolRecorder(self, replica_spool, "_open_spool_file", fail_writes=True)
        d, response = self.getfile(put_change(self.data))
        self.send(response, self.data[:SPOOL_BLOCK])
        self.pool.run()
        self.assertEqual(response.transport.producerState, "stopped")
        self.pool.run()
        self.assertEqual(self.failureResultOf(d, OSError).value.errno, 28)
        self.assert_spool_closed()

    def test_released_spool_is_closed_in_the_pool(self):
        """A spool handed back is closed in the pool; once the client is closed, at once."""
        d, response = self.getfile(put_change(self.data))
        self.send(response, self.data)
        self.finish(response)
        spool = self.successResultOf(d)
        self.client.release(spool)
        self.assertFalse(spool.closed)
        self.pool.run()
        self.assertTrue(spool.closed)
        self.successResultOf(self.client.close())
        self.assertFalse(self.pool.started)
        self.agent.responses.clear()
        d, response = self.getfile(put_change(self.data))
        self.send(response, self.data)
        self.finish(response)
        spool = self.successResultOf(d)
        self.client.close()
        self.client.release(spool)
        self.assertTrue(spool.closed)

    def test_small_body_needs_no_thread(self):
        """A body up to MEMORY_BODY is downloaded in memory, without a spool file or a thread."""
        data = self.data[:MEMORY_BODY]
        d, response = self.getfile(put_change(data))
        self.send(response, data)
        response.protocol.connectionLost(Failure(ResponseDone()))
        self.assertEqual(self.successResultOf(d).read(), data)
        self.assertEqual((self.pool.jobs, self.spools.files), ([], []))


class Body(Resource):
    isLeaf = True

    def __init__(self, data: bytes):
        super().__init__()
        self.data = data

    def render_GET(self, request):
        return self.data


class RealThreadsTests(TestCase):
    @asynctest
    async def test_spool_written_off_the_reactor_thread(self):
        """Over a real connection the spool file is made and written only in pool threads."""
        from twisted.internet import reactor

        data = random.Random(2).randbytes(6 * 1024 * 1024)
        port = reactor.listenTCP(0, Site(Body(data)), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        spool_dir = Path(self.mktemp())
        spool_dir.mkdir()
        client = SourceClient(
            ReplicationSource("hq", "HQ", f"http://127.0.0.1:{port.getHost().port}/", KEY),
            "media", reactor, spool_dir)
        self.addCleanup(client.close)
        spools = SpoolRecorder(self, replica_spool, "_open_spool_file")
        spool = await client.getfile(put_change(data))
        self.addCleanup(client.release, spool)
        self.assertEqual(spool.read(), data)
        (made,) = spools.files
        reactor_thread = threading.current_thread()
        self.assertNotEqual(made.made_in, reactor_thread)
        self.assertTrue(made.writers)
        self.assertNotIn(reactor_thread, made.writers)
