"""
syncnext over a real socket: immediate answers, long polls woken by a
put, and waiters removed the moment their client disconnects.
"""

from io import BytesIO

from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.trial.unittest import TestCase

from owncdn.testing import MemoryFiles
from tests.util import asynctest
from tests.webserver import WRITER, WebFront, base_config


class SyncnextTests(TestCase):
    def setUp(self):
        self.files = MemoryFiles()
        raw = base_config(services=[{"id": "media", "type": "storage"},
                                    {"id": "disk", "type": "filesystem", "directory": "/x"}])
        self.front = WebFront(self, raw, services={"media": self.files, "disk": object()})

    def put(self, path: str, data: bytes):
        return self.files.put(path, BytesIO(data))

    @asynctest
    async def test_answers_changes_at_once(self):
        """Existing changes after `after` are answered at once, with dbid and last."""
        await self.put("a.txt", b"alpha")
        await self.put("b.txt", b"beta")
        status, body = await self.front.json("GET", "syncnext?sid=media&after=1&limit=5&wait=30")
        self.assertEqual(status, 200)
        self.assertEqual(body["last"], 2)
        self.assertEqual(body["dbid"], self.files.dbid)
        (change,) = body["changes"]
        self.assertEqual({k: change[k] for k in ("id", "op", "path", "size")},
                         {"id": 2, "op": "put", "path": "b.txt", "size": 4})
        self.assertEqual(len(change["sha256"]), 64)

    @asynctest
    async def test_long_poll_woken_by_put(self):
        """A waiting syncnext answers with the change as soon as a put commits."""
        waiting = defer.ensureDeferred(self.front.json("GET", "syncnext?sid=media&after=0&wait=60"))
        await self._parked()
        await self.put("late.txt", b"late")
        status, body = await waiting
        self.assertEqual([c["path"] for c in body["changes"]], ["late.txt"])

    @asynctest
    async def test_disconnect_removes_waiter(self):
        """A client that goes away mid-wait is removed from the feed at once."""
        client = await connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", self.front.port.getHost().port),
            protocol.Protocol())
        client.transport.write(
            b"GET /syncnext?sid=media&after=0&wait=60 HTTP/1.1\r\nHost: x\r\n"
            b"x-owncdn-key: " + WRITER.encode() + b"\r\n\r\n")
        waiter = await self._parked()
        feed = self.front.state.feed("media")
        self.assertEqual(feed.waiting, 1)
        gone = defer.Deferred()
        waiter.addBoth(lambda _: gone.callback(None))
        client.transport.loseConnection()
        await gone.addTimeout(10, reactor)
        self.assertEqual(feed.waiting, 0)

    async def _parked(self):
        """
        Wait until a syncnext request is parked in the feed.
        """
        feed = self.front.state.feed("media")
        parked = defer.Deferred()
        original = feed.wait_for_change

        def wait_for_change():
            waiter = original()
            if not parked.called:
                reactor.callLater(0, parked.callback, [waiter])
            return waiter

        feed.wait_for_change = wait_for_change
        (waiter,) = await parked.addTimeout(10, reactor)
        return waiter

    @asynctest
    async def test_wait_over_60_refused(self):
        """wait over 60 seconds gets InvalidParameter."""
        status, body = await self.front.json("GET", "syncnext?sid=media&after=0&wait=61")
        self.assertEqual((status, body["error"]["code"]), (400, "InvalidParameter"))

    @asynctest
    async def test_bad_after_refused(self):
        """A non-numeric `after` gets InvalidParameter."""
        status, body = await self.front.json("GET", "syncnext?sid=media&after=-1")
        self.assertEqual((status, body["error"]["code"]), (400, "InvalidParameter"))

    @asynctest
    async def test_not_a_storage_service(self):
        """syncnext on a service without a change log gets NotSupported."""
        status, body = await self.front.json("GET", "syncnext?sid=disk&after=0")
        self.assertEqual((status, body["error"]["code"]), (400, "NotSupported"))
