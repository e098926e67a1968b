"""
The budget of chunks in flight that the staged uploads of one storage
service share (owncdn/services/staging.py, L{StagingBudget}): uploads
at once never hold more than the budget, each gets its turn, a client
that goes away gives its share back, and one upload alone still runs
L{AHEAD} chunks ahead.
"""

import hashlib
import random
from pathlib import Path

from twisted.internet.defer import Deferred, gatherResults
from twisted.trial.unittest import SynchronousTestCase, TestCase

from owncdn.services.staging import AHEAD
from owncdn.storage.chunks import CHUNK_SIZE
from tests import test_staging
from tests.daemon import start_daemon, write_config
from tests.test_files_e2e import Client
from tests.test_staging import Connection, staged_left
from tests.test_storage_service import Harness
from tests.util import asynctest


class StepPool:
    """
    A digest pool whose jobs run one at a time, oldest first, when the
    test says so.
    """

    def __init__(self):
        self.jobs = []

    def callInThreadWithCallback(self, on_result, func, *args, **kwargs):
        self.jobs.append((on_result, func, args, kwargs))

    def step(self) -> None:
        if self.jobs:
            on_result, func, args, kwargs = self.jobs.pop(0)
            on_result(True, func(*args, **kwargs))

    def run(self) -> None:
        for _ in range(100_000):
            if not self.jobs:
                return
            self.step()
        raise AssertionError("the digest jobs never ran out")

    def stop(self):
        self.run()


class Upload:
    """
    One client's upload into a staged body, a piece at a time while its
    connection reads.
    """

    def __init__(self, service, data: bytes):
        self.data = data
        self.connection = Connection()
        self.body = service.stage_body(len(data), self.connection)
        self.sent = 0

    @property
    def done(self) -> bool:
        return self.sent == len(self.data)

    def send(self, size: int) -> None:
        """
        Write the next C{size} bytes (what one read brings) unless the
        connection is paused or the body is all sent.
        """
        if self.connection.paused or self.done:
            return
        piece = self.data[self.sent:self.sent + size]
        self.body.write(piece)
        self.sent += len(piece)

    def send_chunks(self, count: int) -> None:
        for _ in range(count):
            self.send(CHUNK_SIZE)


class StagingBudgetTests(Harness, SynchronousTestCase):
    def setUp(self):
        super().setUp()
        self.service = self.make_files()
        self.service._digest_pool = self.pool = StepPool()
        self.budget = self.service._staging.budget
        self.rng = random.Random(7)

    def upload(self, size: int) -> Upload:
        return Upload(self.service, self.rng.randbytes(size))

    def assert_stored(self, upload: Upload, path: str) -> None:
        """
        The rest of the upload arrives (hashed as it comes), then it is
        put and reads back byte for byte.
        """
        for _ in range(len(upload.data) // CHUNK_SIZE + 2):
            self.pool.run()
            upload.send(CHUNK_SIZE)
        self.assertTrue(upload.done)
        self.pool.run()
        info = self.successResultOf(self.service.put(path, upload.body))
        upload.body.close()
        self.assertEqual((info.size, info.etag, info.sha256),
                         (len(upload.data), hashlib.md5(upload.data).hexdigest(),
                          hashlib.sha256(upload.data).hexdigest()))
        self.assertEqual(test_staging.StagedBodyTests.read_all(self, self.service, path),
                         upload.data)

    def test_uploads_share_the_budget(self):
        """
        Eight uploads at once, on a budget of eight chunks and a digest
        pool slower than the clients: the chunks in flight never add up
        to more than the budget, which they do fill, and every upload
        completes with its bytes exactly.
        """
        self.budget.chunks = 8
        uploads = [self.upload(5 * CHUNK_SIZE + 1000 * n) for n in range(1, 9)]
        peak = 0
        for _ in range(10_000):
            if all(upload.done for upload in uploads):
                break
            for upload in uploads:
                # Reads that are not chunk-aligned, so that some end two
                # chunks at once.
                upload.send(700_000)
                peak = max(peak, self.budget.in_flight())
                self.assertLessEqual(self.budget.in_flight(), 8)
            self.pool.step()
        else:
            self.fail("the uploads stalled: " + ", ".join(
                f"{upload.sent} of {len(upload.data)}" for upload in uploads))
        self.assertEqual(peak, 8)
        for number, upload in enumerate(uploads):
            self.assertFalse(upload.connection.paused)
            self.assert_stored(upload, f"big{number}.bin")
        self.assertEqual(self.budget.in_flight(), 0)
        self.assertFalse(self.budget.waiting)

    def test_disconnect_releases_its_share(self):
        """
        When the client of a paused upload goes away, its chunks are no
        longer hashed and its share goes to the uploads waiting, which
        read again.
        """
        self.budget.chunks = 4
        gone, first, second = (self.upload(3 * CHUNK_SIZE + 10) for _ in range(3))
        gone.send_chunks(2)
        first.send_chunks(1)
        second.send_chunks(1)
        self.assertEqual([u.connection.paused for u in (gone, first, second)], [True] * 3)
        self.assertEqual(self.budget.in_flight(), 4)
        gone.body.close()
        self.assertEqual([u.connection.paused for u in (gone, first, second)], [False] * 3)
        self.assertEqual(self.budget.in_flight(), 2)
        self.assert_stored(first, "first.bin")
        self.assert_stored(second, "second.bin")
        self.assertEqual([chain.hashed for chain in gone.body._chains.values()], [0, 0])
        self.assertEqual(staged_left(self.service.db_path), (0, 0))

    def test_alone_again_runs_ahead(self):
        """
        Two uploads on a budget of AHEAD chunks get half each; once one
        is over, the other runs AHEAD chunks ahead again.
        """
        self.budget.chunks = AHEAD
        first, second = self.upload((AHEAD + 2) * CHUNK_SIZE), self.upload(2 * AHEAD * CHUNK_SIZE)
        first.send_chunks(AHEAD)
        second.send_chunks(AHEAD)
        self.assertEqual((first.sent, second.sent), (AHEAD // 2 * CHUNK_SIZE,) * 2)
        self.assertTrue(first.connection.paused and second.connection.paused)
        first.body.close()
        self.assertFalse(second.connection.paused)
        second.send_chunks(AHEAD)
        self.assertEqual(second.sent, AHEAD * CHUNK_SIZE)
        self.assertTrue(second.connection.paused)
        self.assertEqual(self.budget.in_flight(), AHEAD)
        self.assert_stored(second, "second.bin")

    def test_single_upload_runs_ahead(self):
        """
        With the default budget, one upload alone has AHEAD chunks in
        flight before its connection is paused.
        """
        upload = self.upload(2 * AHEAD * CHUNK_SIZE)
        upload.send_chunks(2 * AHEAD)
        self.assertEqual(upload.sent, AHEAD * CHUNK_SIZE)
        self.assertTrue(upload.connection.paused)
        self.assertEqual(self.budget.in_flight(), AHEAD)
        self.assert_stored(upload, "big.bin")


class ConcurrentUploadTests(TestCase):
    timeout = 120

    @asynctest
    async def test_many_uploads_at_once(self):
        """
        Eight big uploads at once through the daemon, more than the
        budget lets run AHEAD chunks ahead each: all are stored whole
        and nothing is left staged.
        """
        data_dir = Path(self.mktemp())
        write_config(data_dir)
        daemon = await start_daemon(self, data_dir)
        client = Client(daemon.url)
        rng = random.Random(3)
        files = {f"big{n}.bin": rng.randbytes(12 * CHUNK_SIZE + 777 * n) for n in range(8)}
        await gatherResults([Deferred.fromCoroutine(client.upload(path, data))
                             for path, data in files.items()])
        for path, data in files.items():
            response, body = await client.get(path)
            self.assertEqual((response.code, hashlib.sha256(body).hexdigest()),
                             (200, hashlib.sha256(data).hexdigest()))
        await daemon.stop()
        self.assertEqual(staged_left(data_dir / "files.db"), (0, 0))
