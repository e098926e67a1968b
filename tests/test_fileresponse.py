"""
Tests for the push producer of L{owncdn.web.fileresponse} over a real
socket: a big download to a client that stops reading holds a bounded
number of bytes whatever the file's size, and while the client does not
read the producer stays paused and does nothing.

The client is a raw socket with a small receive buffer that the test
reads (or not) between reactor turns; nothing here depends on time.
"""

import hashlib
import socket

from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from owncdn.interfaces import FileInfo, IFileBody, IReadableFiles
from owncdn.web import fileresponse
from tests.util import asynctest
from tests.webserver import WebFront, base_config

MiB = 1024 * 1024
SIZE = 128 * MiB
# The content: these bytes over and over.
PATTERN = bytes(range(256)) * (MiB // 256)
# The socket buffers on both ends; the kernel doubles what it is asked.
SOCKET_BUFFER = 64 * 1024
# What may have been read from the body and not yet reached the client:
# the block read ahead and the one waiting for the transport, the
# transport's buffer (one block beyond its bufferSize), and the two
# sockets' buffers.  A sixteenth of the file.
BOUND = 8 * MiB
# Reactor turns a stalled download must stay idle through; and the
# bound of every wait in these tests.
IDLE_TURNS = 200
MAX_TURNS = 200_000


@implementer(IFileBody)
class GeneratedBody:
    """
    C{size} bytes of L{PATTERN}, made as they are read (so the test
    holds none of them), each read answered on a later reactor turn as a
    read in a thread pool would be.  Counts what is read.
    """

    def __init__(self, size: int):
        self.info = FileInfo("big.bin", size, 0.0, "e", "application/octet-stream")
        self.reads = 0
        self.bytes_read = 0
        self.closed = False

    def read(self, offset: int, length: int) -> Deferred:
        start = offset % len(PATTERN)
        data = PATTERN[start:start + min(length, self.info.size - offset)]
        self.reads += 1
        self.bytes_read += len(data)
        return deferLater(reactor, 0, lambda: data)

    def alternate(self, encoding: str) -> None:
        return None

    def close(self) -> None:
        self.closed = True


@implementer(IReadableFiles)
class GeneratedFiles:
    def __init__(self, size: int):
        self.size = size
        self.bodies: list[GeneratedBody] = []

    def get(self, path, version=None, query=""):
        body = GeneratedBody(self.size)
        self.bodies.append(body)
        return succeed(body)

    def list(self, prefix, after, limit):
        return succeed(([], None))


async def turn() -> None:
    """
    Let the reactor run one iteration (no timer: a zero-delay call).
    """
    await deferLater(reactor, 0, lambda: None)


class SlowClientTests(TestCase):
    timeout = 120

    def setUp(self):
        self.files = GeneratedFiles(SIZE)
        raw = base_config(services=[{"id": "files", "type": "storage"},
                                    {"id": "www", "type": "public", "source": "files"}])
        self.front = WebFront(self, raw, {"files": self.files})
        self.calls = {"pause": 0, "resume": 0}
        self.patch(fileresponse.BodyProducer, "start", self.counting_start())

    def counting_start(self):
        """
        L{BodyProducer.start}, counting the producer's pauses and
        resumes, and with a small send buffer on the server's socket
        (the kernel would otherwise grow it to a few MiB).
        """
        start = fileresponse.BodyProducer.start
        calls = self.calls

        def counting(producer):
            pause, resume = producer.pauseProducing, producer.resumeProducing

            def paused():
                calls["pause"] += 1
                pause()

            def resumed():
                calls["resume"] += 1
                resume()

            producer.pauseProducing, producer.resumeProducing = paused, resumed
            producer._request.channel.transport.getHandle().setsockopt(
                socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
            return start(producer)

        return counting

    def connect(self) -> socket.socket:
        client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(client.close)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
        client.connect(("127.0.0.1", self.front.port.getHost().port))
        client.sendall(b"GET /big.bin HTTP/1.1\r\nHost: cdn.example\r\nConnection: close\r\n\r\n")
        client.setblocking(False)
        return client

    async def settled(self, body: GeneratedBody) -> None:
        """
        Wait until the download is stalled: the producer paused, and
        neither a body read nor a resume for L{IDLE_TURNS} turns.
        """
        for _ in range(MAX_TURNS // IDLE_TURNS):
            before = (body.reads, self.calls["resume"])
            for _ in range(IDLE_TURNS):
                await turn()
            if (body.reads, self.calls["resume"]) == before and (
                    self.calls["pause"] > self.calls["resume"]):
                return
        self.fail("the download never stalled behind the client")

    @asynctest
    async def test_stalled_client(self):
        """A client that stops reading: the producer pauses, stays idle, and what was read stays bounded; then the whole file arrives intact."""
        client = self.connect()
        for _ in range(MAX_TURNS):
            if self.files.bodies and self.files.bodies[0].reads:
                break
            await turn()
        else:
            self.fail("the server never started to send the file")
        [body] = self.files.bodies

        await self.settled(body)
        self.assertLessEqual(body.bytes_read, BOUND)
        stalled = (body.reads, body.bytes_read, dict(self.calls))
        for _ in range(IDLE_TURNS):
            await turn()
        self.assertEqual((body.reads, body.bytes_read, self.calls), stalled)

        head, received, digest = b"", 0, hashlib.md5()
        most_in_flight = 0
        for _ in range(MAX_TURNS):
            try:
                data = client.recv(SOCKET_BUFFER)
            except BlockingIOError:
                await turn()
                continue
            if not data:
                break
            if head is not None:
                head += data
                if b"\r\n\r\n" not in head:
                    continue
                head, _, data = head.partition(b"\r\n\r\n")
                self.assertTrue(head.startswith(b"HTTP/1.1 200 "), head[:100])
                self.assertIn(b"\r\nContent-Length: %d\r\n" % SIZE, head + b"\r\n")
                head = None
            received += len(data)
            digest.update(data)
            most_in_flight = max(most_in_flight, body.bytes_read - received)
        else:
            self.fail(f"the download did not finish: {received} of {SIZE} bytes")

        self.assertEqual(received, SIZE)
        expected = hashlib.md5()
        for _ in range(SIZE // len(PATTERN)):
            expected.update(PATTERN)
        self.assertEqual(digest.hexdigest(), expected.hexdigest())
        self.assertLessEqual(most_in_flight, BOUND)
        # Every read brought one whole block, and the producer woke up
        # only when the transport had room: its work follows the bytes,
        # not the time the client took.
        self.assertEqual(body.reads, SIZE // fileresponse.BLOCK)
        self.assertLessEqual(self.calls["resume"], self.calls["pause"])
        self.assertLessEqual(self.calls["pause"], body.reads + 1)
        self.assertTrue(body.closed)
