"""
Big uploads stored while they arrive (owncdn/storage/staging.py,
owncdn/services/staging.py): the storage service's staged bodies, and
the same through the real daemon in standard and S3 mode, with bad
digests, clients that go away, SIGKILL, and replication.
"""

import base64
import hashlib
import io
import os
import random
import sqlite3
from pathlib import Path

import treq
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from twisted.internet import protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from owncdn.errors import BadDigest, NoSuchFile, NoSuchVersion
from owncdn.s3.checksums import PayloadDigests, VerifiedBody, new_checksum
from owncdn.s3.errors import S3Error
from owncdn.services.staging import AHEAD
from owncdn.storage.chunks import CHUNK_SIZE
from owncdn.storage.engine import StorageEngine
from owncdn.storage.restore import rewind
from tests.daemon import eventually, kill_hard, start_daemon, write_config
from tests.test_files_e2e import KEY, Client
from tests import test_replication
from tests.test_s3_boto import DaemonCase, error_of
from tests.test_storage_service import Harness
from tests.util import asynctest

SIZE = 5 * CHUNK_SIZE + 12345


def staged_left(db: Path) -> tuple[int, int]:
    """
    How many staged contents, and chunks of staged content no version
    points to, a database holds.
    """
    conn = sqlite3.connect(db)
    try:
        return (conn.execute("SELECT count(*) FROM staged").fetchone()[0],
                conn.execute("SELECT count(*) FROM chunks WHERE change_id < 0 AND change_id"
                             " NOT IN (SELECT content_id FROM changes WHERE content_id IS NOT NULL)"
                             ).fetchone()[0])
    finally:
        conn.close()


class Connection:
    """
    The producer a staged body pauses: records what it was told.
    """

    paused = False

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False


class QueuedPool:
    """
    A digest pool whose jobs wait until L{run} is called.
    """

    def __init__(self):
        self.jobs = []

    def callInThreadWithCallback(self, on_result, func, *args, **kwargs):
        self.jobs.append((func, args, kwargs))

    def run(self):
        while self.jobs:
            func, args, kwargs = self.jobs.pop(0)
            func(*args, **kwargs)

    def stop(self):
        self.run()


class StagedBodyTests(Harness, SynchronousTestCase):
    def stage(self, service, data: bytes, piece: int = 300_000):
        body = service.stage_body(len(data), Connection())
        for start in range(0, len(data), piece):
            body.write(data[start:start + piece])
        return body

    def read_all(self, service, path: str, version=None) -> bytes:
        body = self.successResultOf(service.get(path, version))
        parts, offset = [], 0
        while offset < body.info.size:
            part = self.successResultOf(body.read(offset, body.info.size))
            parts.append(part)
            offset += len(part)
        return b"".join(parts)

    def test_round_trip_and_ranges(self):
        """A staged upload reads back byte for byte, also in ranges across chunks, and leaves nothing staged."""
        service = self.make_files()
        data = random.Random(1).randbytes(SIZE)
        info = self.successResultOf(service.put("big.bin", self.stage(service, data)))
        self.assertEqual((info.size, info.etag, info.sha256),
                         (SIZE, hashlib.md5(data).hexdigest(), hashlib.sha256(data).hexdigest()))
        self.assertEqual(self.read_all(service, "big.bin"), data)
        body = self.successResultOf(service.get("big.bin"))
        self.assertEqual(self.successResultOf(body.read(CHUNK_SIZE - 5, 10)),
                         data[CHUNK_SIZE - 5:CHUNK_SIZE])
        self.assertEqual(self.successResultOf(body.read(3 * CHUNK_SIZE + 7, 100)),
                         data[3 * CHUNK_SIZE + 7:3 * CHUNK_SIZE + 107])
        self.assertEqual(staged_left(service.db_path), (0, 0))

    def test_standard_digest_checked(self):
        """A Content-MD5 that does not match fails with BadDigest; nothing is stored or left staged."""
        service = self.make_files()
        data = os.urandom(SIZE)
        self.successResultOf(service.put("big.bin", io.BytesIO(b"before")))
        body = self.stage(service, data)
        self.failureResultOf(service.put("big.bin", body, expected_md5=b"\0" * 16), BadDigest)
        body.close()
        self.assertEqual(self.read_all(service, "big.bin"), b"before")
        self.assertEqual(staged_left(service.db_path), (0, 0))

    def test_given_up(self):
        """A body closed before any put took it (the client went away) is deleted."""
        service = self.make_files()
        body = self.stage(service, os.urandom(SIZE)[:3 * CHUNK_SIZE])
        body.close()
        self.assertEqual(staged_left(service.db_path), (0, 0))
        self.assertEqual(self.successResultOf(service.list("", None, 10)), ([], None))

    def test_incomplete_body_refused(self):
        """A put of a body that did not arrive whole fails and leaves nothing."""
        service = self.make_files()
        body = service.stage_body(SIZE, Connection())
        body.write(os.urandom(2 * CHUNK_SIZE))
        self.failureResultOf(service.put("big.bin", body))
        body.close()
        self.assertEqual(staged_left(service.db_path), (0, 0))
        self.assertEqual(self.successResultOf(service.list("", None, 10)), ([], None))

    def test_connection_paused_while_hashing_lags(self):
        """The connection stops reading while AHEAD chunks wait to be hashed, and resumes after."""
        service = self.make_files()
        service._digest_pool = pool = QueuedPool()
        connection = Connection()
        data = os.urandom(AHEAD * CHUNK_SIZE + 10)
        body = service.stage_body(len(data), connection)
        for start in range(0, AHEAD * CHUNK_SIZE, CHUNK_SIZE):
            self.assertFalse(connection.paused)
            body.write(data[start:start + CHUNK_SIZE])
        self.assertTrue(connection.paused)
        pool.run()
        self.assertFalse(connection.paused)
        body.write(data[AHEAD * CHUNK_SIZE:])
        pool.run()
        info = self.successResultOf(service.put("big.bin", body))
        self.assertEqual(info.etag, hashlib.md5(data).hexdigest())

    def test_put_elsewhere_reads_the_body(self):
        """A body staged for one service and put into another is read back and stored there whole."""
        staged_in, other = self.make_files(), self.make_files()
        data = os.urandom(SIZE)
        body = self.stage(staged_in, data)
        info = self.successResultOf(other.put("big.bin", body))
        self.assertEqual(info.etag, hashlib.md5(data).hexdigest())
        self.assertEqual(self.read_all(other, "big.bin"), data)
        body.close()
        self.assertEqual(staged_left(staged_in.db_path), (0, 0))
        self.assertEqual(staged_left(other.db_path), (0, 0))

    def test_s3_checksum_not_computed_on_the_way_in(self):
        """An S3 checksum the staged body did not compute is computed by reading it back, and checked."""
        service = self.make_files()
        data = os.urandom(SIZE)
        crc = new_checksum("crc32")
        crc.update(data)
        good = {"x-amz-checksum-crc32": base64.b64encode(crc.digest()).decode()}
        body = VerifiedBody(self.stage(service, data), PayloadDigests.from_headers(good))
        info = self.successResultOf(service.put("good.bin", body))
        self.assertEqual(info.etag, hashlib.md5(data).hexdigest())
        bad = {"x-amz-checksum-crc32": base64.b64encode(b"\0\0\0\0").decode()}
        staged = self.stage(service, data)
        body = VerifiedBody(staged, PayloadDigests.from_headers(bad))
        self.assertEqual(self.failureResultOf(service.put("bad.bin", body), S3Error).value.code,
                         "BadDigest")
        staged.close()
        self.assertEqual(self.read_all(service, "good.bin"), data)
        self.failureResultOf(service.get("bad.bin"), NoSuchFile)
        self.assertEqual(staged_left(service.db_path), (0, 0))

    def test_small_bodies_not_staged(self):
        """A body of one chunk or less is not staged (it is cheaper to spool)."""
        service = self.make_files()
        self.assertIsNone(service.stage_body(CHUNK_SIZE, Connection()))

    def test_prune_and_rewind_delete_staged_content(self):
        """Pruning a staged version and rewinding past one delete its chunks."""
        service = self.make_files()
        data = os.urandom(SIZE)
        self.successResultOf(service.put("a.bin", self.stage(service, data)))
        first = self.successResultOf(service.versions("a.bin"))[0].version
        self.successResultOf(service.put("a.bin", io.BytesIO(b"small")))
        self.successResultOf(service.put("b.bin", self.stage(service, data)))
        service.keep_versions = False
        self.assertEqual(self.successResultOf(service.prune_versions()), 1)
        self.failureResultOf(service.get("a.bin", first), NoSuchVersion)
        self.stop(service)

        def staged_chunks() -> int:
            conn = sqlite3.connect(service.db_path)
            try:
                return conn.execute("SELECT count(*) FROM chunks WHERE change_id < 0").fetchone()[0]
            finally:
                conn.close()

        self.assertEqual(staged_chunks(), 6)
        rewind(service.db_path, to_id=2)
        self.assertEqual(staged_chunks(), 0)

    def test_start_deletes_what_a_crash_left(self):
        """Staged content left by a crash is deleted when the database opens again."""
        db = self.folder / "crashed.db"
        engine = StorageEngine(db)
        engine.open()
        for index in range(3):
            engine.write(engine.staged.stage_write(7, index, os.urandom(1000)))
        engine.close()
        self.assertEqual(staged_left(db), (1, 3))
        engine = StorageEngine(db)
        state = engine.open()
        engine.close()
        self.assertEqual((state.staged_discarded, state.next_staged_id), (1, 8))
        self.assertEqual(staged_left(db), (0, 0))


class StandardUploadTests(TestCase):
    timeout = 120

    async def start(self, data_dir: Path) -> Client:
        self.daemon = await start_daemon(self, data_dir)
        return Client(self.daemon.url)

    async def begin_upload(self, length: int, sent: bytes) -> protocol.Protocol:
        """
        A connection that announced an upload of big.bin, C{length}
        bytes, and has sent C{sent} of them.
        """
        conn = await connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", self.daemon.ports[0]), protocol.Protocol())
        conn.transport.write(
            b"PUT /uploadfile?sid=files&path=big.bin HTTP/1.1\r\nHost: x\r\n"
            b"x-owncdn-key: " + KEY.encode() + b"\r\nContent-Length: %d\r\n\r\n" % length)
        conn.transport.write(sent)
        return conn

    @asynctest
    async def test_disconnect_mid_body_leaves_nothing(self):
        """A client that goes away mid-body leaves the old version current and nothing staged."""
        data_dir = Path(self.mktemp())
        write_config(data_dir)
        client = await self.start(data_dir)
        await client.upload("big.bin", b"before")
        conn = await self.begin_upload(9000000, os.urandom(4 * CHUNK_SIZE))
        conn.transport.loseConnection()
        response, body = await client.get("big.bin")
        self.assertEqual(body, b"before")
        await client.upload("after.bin", os.urandom(2 * CHUNK_SIZE + 1))
        await self.daemon.stop()
        self.assertEqual(staged_left(data_dir / "files.db"), (0, 0))

    @asynctest
    async def test_sigkill_mid_upload(self):
        """SIGKILL mid-upload, then a restart: the previous version is intact and nothing is staged."""
        data_dir = Path(self.mktemp())
        write_config(data_dir)
        client = await self.start(data_dir)
        before = os.urandom(2 * CHUNK_SIZE + 5)
        await client.upload("big.bin", before)
        conn = await self.begin_upload(50000000, os.urandom(20_000_000))
        # Staged chunks are committed as they arrive: wait for some.
        db = data_dir / "files.db"

        def staged() -> bool:
            try:
                return staged_left(db)[1] > 0
            except sqlite3.OperationalError:
                return False

        await eventually(staged, timeout=30)
        await kill_hard(self.daemon)
        conn.transport.abortConnection()
        client = await self.start(data_dir)
        response, body = await client.get("big.bin")
        self.assertEqual(body, before)
        await self.daemon.stop()
        self.assertEqual(staged_left(db), (0, 0))


class StagedS3Case(DaemonCase):
    """
    The S3 daemon of L{DaemonCase}, with the path of its C{files} database.
    """

    timeout = 120

    async def start(self) -> None:
        # DaemonCase.start makes its folder with mktemp: note which.
        made, mktemp = [], self.mktemp
        self.mktemp = lambda: made.append(mktemp()) or made[-1]
        try:
            await super().start()
        finally:
            del self.mktemp
        self.db = Path(made[0]).absolute() / "data" / "files.db"

    async def put_and_read_back(self, client, data: bytes) -> None:
        """
        PutObject C{data} as C{files/big.bin}: the ETag is its MD5 and a
        GetObject gives it back whole.
        """
        put = await deferToThread(client.put_object, Bucket="files", Key="big.bin", Body=data)
        self.assertEqual(put["ETag"], f'"{hashlib.md5(data).hexdigest()}"')
        got = await deferToThread(client.get_object, Bucket="files", Key="big.bin")
        self.assertEqual(got["Body"].read(), data)


class S3PutObjectTests(StagedS3Case):

    @asynctest
    async def test_round_trip_ranges_and_bad_digests(self):
        """A big PutObject round-trips with ranges; a bad SHA-256 or Content-MD5 stores and stages nothing."""
        await self.start()
        client = self.client(request_checksum_calculation="when_required")
        data = random.Random(3).randbytes(SIZE)
        await self.put_and_read_back(client, data)
        start, end = CHUNK_SIZE - 3, 4 * CHUNK_SIZE + 3
        got = await deferToThread(client.get_object, Bucket="files", Key="big.bin",
                                  Range=f"bytes={start}-{end}")
        self.assertEqual(got["Body"].read(), data[start:end + 1])
        wrong_md5 = base64.b64encode(hashlib.md5(b"other").digest()).decode()
        status, code, _ = await deferToThread(
            error_of, client.put_object, Bucket="files", Key="big.bin", Body=data[::-1],
            ContentMD5=wrong_md5)
        self.assertEqual((status, code), (400, "BadDigest"))

        # Signed with the SHA-256 of other bytes than those sent.
        request = AWSRequest("PUT", f"{self.url}/files/big.bin", data=data[::-1], headers={
            "X-Amz-Content-SHA256": hashlib.sha256(data).hexdigest()})
        SigV4Auth(Credentials("WRITER", self.keys["WRITER"]), "s3", "us-east-1").add_auth(request)
        response = await treq.put(request.url, data=data[::-1], headers=dict(request.headers),
                                  timeout=60, persistent=False)
        self.assertEqual(response.code, 400)
        self.assertIn(b"XAmzContentSHA256Mismatch", await response.content())
        got = await deferToThread(client.get_object, Bucket="files", Key="big.bin")
        self.assertEqual(got["Body"].read(), data)
        await self.daemon.stop()
        self.assertEqual(staged_left(self.db), (0, 0))


class S3PutObjectTLSTests(StagedS3Case):
    https = True

    @asynctest
    async def test_round_trip_over_tls(self):
        """Over TLS a big PutObject (an UNSIGNED-PAYLOAD body) is stored as it arrives and reads back whole."""
        await self.start()
        client = self.client(request_checksum_calculation="when_required")
        data = random.Random(4).randbytes(SIZE)
        await self.put_and_read_back(client, data)
        client.close()
        await self.daemon.stop()
        self.assertEqual(staged_left(self.db), (0, 0))
        conn = sqlite3.connect(self.db)
        self.addCleanup(conn.close)
        self.assertIsNotNone(conn.execute("SELECT content_id FROM changes").fetchone()[0])


class StagedReplicationTests(TestCase):
    timeout = 240
    start_primary = test_replication.ReplicationTests.start_primary
    start_replica = test_replication.ReplicationTests.start_replica
    assert_same = test_replication.ReplicationTests.assert_same

    @asynctest
    async def test_big_put_replicates(self):
        """Big uploads stored as they arrived replicate byte for byte, versions included."""
        primary, _ = await self.start_primary()
        replica, _ = await self.start_replica(primary)
        data = random.Random(5).randbytes(SIZE)
        await primary.put("big.bin", data)
        await primary.put("big.bin", data[::-1])
        await replica.wait_for(await primary.last())
        await self.assert_same(primary, replica, ["big.bin"])
