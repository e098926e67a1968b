"""
Multipart uploads: the store of parts in the data folder
(L{owncdn.s3.multipart}) and the six S3 actions over it, in process.
"""

import hashlib
import io
import os
import tempfile
from pathlib import Path

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import SynchronousTestCase, TestCase

from owncdn.s3.errors import S3Error
from owncdn.s3.multipart import (
    MIN_PART_SIZE, SWEEP_INTERVAL, UPLOAD_EXPIRY, MultipartStore, Part, PartsReader,
    multipart_etag,
)
from owncdn.errors import BadDigest
from owncdn.s3.checksums import PayloadDigests, VerifiedBody
from owncdn.web import s3multipart
from owncdn.web.s3multipart import UploadExpiry
from owncdn.web.site import spool_file
from tests.test_s3_front import S3Front
from tests.util import asynctest

PART = MIN_PART_SIZE


class FailingBody:
    """
    A request body whose check fails at its end, as a bad chunk
    signature does.
    """

    def __init__(self, data: bytes):
        self._data = io.BytesIO(data)

    def read(self, size: int = -1) -> bytes:
        data = self._data.read(size)
        if not data:
            raise S3Error("SignatureDoesNotMatch")
        return data


class StoreTests(SynchronousTestCase):
    def setUp(self):
        self.root = Path(self.mktemp())
        self.store = MultipartStore(self.root)
        self.upload = self.store.create("files", "k", "WRITER", "text/plain", {"x-amz-meta-a": "1"}, 1000.0)

    def test_create_and_get(self):
        """An upload is found again by its ID, bucket and key only."""
        found = self.store.get(self.upload.upload_id, "files", "k")
        self.assertEqual(found, self.upload)
        for upload_id, bucket, key in ((self.upload.upload_id, "files", "other"),
                                       (self.upload.upload_id, "other", "k"),
                                       ("0" * 32, "files", "k"), ("../../etc", "files", "k")):
            error = self.assertRaises(S3Error, self.store.get, upload_id, bucket, key)
            self.assertEqual(error.code, "NoSuchUpload")

    def test_parts(self):
        """Parts are stored under their number and MD5; uploading a number again replaces it."""
        first = self.store.store_part(self.upload, 2, io.BytesIO(b"two"))
        self.store.store_part(self.upload, 1, io.BytesIO(b"one"))
        again = self.store.store_part(self.upload, 2, io.BytesIO(b"TWO!"))
        self.assertEqual(first.etag, hashlib.md5(b"two").hexdigest())
        parts = self.store.parts(self.upload)
        self.assertEqual([(p.number, p.etag, p.size) for p in parts],
                         [(1, hashlib.md5(b"one").hexdigest(), 3), (2, again.etag, 4)])
        reader = self.store.open_parts(self.upload, parts)
        self.assertEqual(reader.read(), b"oneTWO!")

    def test_part_synced_before_acknowledged(self):
        """
        A part's bytes are fsynced under its temporary name before the
        rename, and its folder after it, before store_part returns: an
        acknowledged part (its ETag given out) survives a power failure.
        """
        synced = []
        real_fsync = os.fsync

        def fsync(fd):
            synced.append(os.readlink(f"/proc/self/fd/{fd}"))
            real_fsync(fd)

        self.patch(os, "fsync", fsync)
        part = self.store.store_part(self.upload, 1, io.BytesIO(b"one"))
        folder = str((self.root / self.upload.upload_id).resolve())
        self.assertEqual(len(synced), 2)
        self.assertTrue(os.path.basename(synced[0]).startswith(".part-"))
        self.assertEqual(os.path.dirname(synced[0]), folder)
        self.assertEqual(synced[1], folder)
        self.assertEqual(part.etag, hashlib.md5(b"one").hexdigest())

    def test_failed_part_leaves_nothing(self):
        """A part whose body fails its check leaves no file, not even a temporary one."""
        self.assertRaises(S3Error, self.store.store_part, self.upload, 1, FailingBody(b"data"))
        self.assertEqual(self.store.parts(self.upload), [])
        self.assertEqual(os.listdir(self.root / self.upload.upload_id), ["upload.json"])

    def test_part_after_abort(self):
        """A part for an upload removed meanwhile is NoSuchUpload."""
        self.store.remove(self.upload.upload_id)
        error = self.assertRaises(S3Error, self.store.store_part, self.upload, 1, io.BytesIO(b"x"))
        self.assertEqual(error.code, "NoSuchUpload")

    def spooled(self, data: bytes, signed: bytes | None = None):
        """
        A part body as the site and the S3 layer make it: the request
        body spooled to a named file, read through its signed SHA-256.
        """
        spool = Path(self.mktemp())
        spool.mkdir()
        raw = spool_file(spool)
        self.addCleanup(raw.close)
        raw.write(data)
        raw.seek(0)
        digest = hashlib.sha256(data).digest() if signed is None else signed
        return raw, VerifiedBody(raw, PayloadDigests.from_headers({}, digest.hex()))

    def test_spooled_part_linked(self):
        """A spooled part becomes the part file without a copy, reads back byte for byte, and goes with an abort."""
        data = os.urandom(3 * 1024 * 1024 + 1)
        raw, body = self.spooled(data)
        part = self.store.store_part(self.upload, 1, body)
        self.assertEqual((part.etag, part.size), (hashlib.md5(data).hexdigest(), len(data)))
        path = self.root / self.upload.upload_id / f"00001.{part.etag}"
        self.assertEqual(os.stat(path).st_ino, os.fstat(raw.fileno()).st_ino)
        raw.close()
        reader = self.store.open_parts(self.upload, self.store.parts(self.upload))
        self.assertEqual(reader.read(), data)
        reader.close()
        self.store.remove(self.upload.upload_id)
        self.assertFalse((self.root / self.upload.upload_id).exists())

    def test_spooled_part_failing_check(self):
        """A spooled part that is not the one signed is refused and leaves nothing."""
        raw, body = self.spooled(os.urandom(2 * 1024 * 1024), signed=hashlib.sha256(b"other").digest())
        error = self.assertRaises(S3Error, self.store.store_part, self.upload, 1, body)
        self.assertEqual(error.code, "XAmzContentSHA256Mismatch")
        self.assertEqual(os.listdir(self.root / self.upload.upload_id), ["upload.json"])

    def test_unnamed_spool_copied(self):
        """A body in a file without a name is copied into place instead."""
        data = os.urandom(2 * 1024 * 1024)
        raw = tempfile.TemporaryFile()
        self.addCleanup(raw.close)
        raw.write(data)
        raw.seek(0)
        body = VerifiedBody(raw, PayloadDigests.from_headers({}, hashlib.sha256(data).hexdigest()))
        part = self.store.store_part(self.upload, 1, body)
        reader = self.store.open_parts(self.upload, [part])
        self.assertEqual(reader.read(), data)
        reader.close()

    def test_uploads_and_expiry(self):
        """Uploads are listed per bucket by key; a sweep removes the old ones."""
        later = self.store.create("files", "a", "WRITER", None, {}, 2000.0)
        self.store.create("other", "a", "WRITER", None, {}, 2000.0)
        self.assertEqual([u.upload_id for u in self.store.uploads("files")],
                         [later.upload_id, self.upload.upload_id])
        self.assertEqual(self.store.expire(1500.0), 1)
        self.assertEqual([u.key for u in self.store.uploads("files")], ["a"])
        now = 2000.0 + UPLOAD_EXPIRY + 1
        self.store.create("files", "b", "WRITER", None, {}, now)
        self.assertEqual([u.key for u in self.store.uploads("files")], ["a", "b"])
        self.assertEqual(self.store.expire(now - UPLOAD_EXPIRY), 2)
        self.assertEqual([u.key for u in self.store.uploads("files")], ["b"])
        self.assertEqual(self.store.uploads("other"), [])

    def test_configured_expiry(self):
        """A store made with a shorter s3UploadExpiry removes uploads after that long."""
        store = MultipartStore(self.store.root, expiry=100.0)
        now = 1000.0 + SWEEP_INTERVAL + 50
        store.create("files", "fresh", "WRITER", None, {}, now)
        self.assertEqual(store.expire(now - store.expiry), 1)
        self.assertEqual([u.key for u in store.uploads("files")], ["fresh"])

    def test_expiry_service(self):
        """The expiry service sweeps at start and then every interval, whatever uploads are created."""
        clock = task.Clock()
        clock.advance(2000.0)
        store = MultipartStore(self.store.root, expiry=500.0)
        ran = []

        def in_thread(function, *args):
            ran.append(args)
            return defer.succeed(function(*args))

        expiry = UploadExpiry(store, clock, interval=100.0, in_thread=in_thread)
        expiry.startService()
        self.addCleanup(expiry.stopService)
        self.assertEqual(ran, [(1500.0,)])
        self.assertEqual(store.uploads("files"), [])
        fresh = store.create("files", "fresh", "WRITER", None, {}, 2000.0)
        clock.advance(400.0)
        self.assertEqual([u.upload_id for u in store.uploads("files")], [fresh.upload_id])
        clock.advance(200.0)
        self.assertEqual(store.uploads("files"), [])
        self.assertEqual(ran, [(1500.0,), (1900.0,), (2100.0,)])

    def test_expiry_service_goes_on_after_failure(self):
        """A sweep that fails is logged and the next one still runs; stopping stops the sweeps."""
        clock = task.Clock()
        calls = []

        def in_thread(function, *args):
            calls.append(args)
            if len(calls) == 1:
                return defer.fail(OSError("disk gone"))
            return defer.succeed(function(*args))

        expiry = UploadExpiry(self.store, clock, interval=100.0, in_thread=in_thread)
        expiry.startService()
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        clock.advance(100.0)
        self.assertEqual(len(calls), 2)
        expiry.stopService()
        clock.advance(1000.0)
        self.assertEqual(len(calls), 2)

    def test_reader_crosses_parts(self):
        """The parts reader reads across part boundaries and closes each file it opened."""
        folder = Path(self.mktemp())
        folder.mkdir()
        paths = []
        for n, data in enumerate([b"abc", b"", b"defg"]):
            paths.append(folder / str(n))
            paths[-1].write_bytes(data)
        reader = PartsReader(paths)
        pieces = []
        while piece := reader.read(2):
            pieces.append(piece)
        self.assertEqual(pieces, [b"ab", b"c", b"de", b"fg"])
        reader.close()

    def test_multipart_etag(self):
        """The ETag is the MD5 of the parts' binary MD5s, a dash and their count."""
        parts = [Part(1, hashlib.md5(b"a").hexdigest(), 1, 0.0), Part(2, hashlib.md5(b"b").hexdigest(), 1, 0.0)]
        expected = hashlib.md5(hashlib.md5(b"a").digest() + hashlib.md5(b"b").digest()).hexdigest()
        self.assertEqual(multipart_etag(parts), f"{expected}-2")


class MultipartTests(TestCase):
    def setUp(self):
        self.s3 = S3Front(self)

    async def start(self, key: str = "big", headers=None) -> str:
        reply = await self.s3.request("POST", f"/files/{key}?uploads", headers=headers)
        self.assertEqual(reply.code, 200, reply.body)
        self.assertEqual(reply.texts("Key"), [key])
        return reply.xml.findtext("UploadId")

    async def part(self, upload_id: str, number: int, data: bytes, key: str = "big", **kwargs) -> str:
        reply = await self.s3.request("PUT", f"/files/{key}?partNumber={number}&uploadId={upload_id}", data,
                                      payload="unsigned", **kwargs)
        self.assertEqual(reply.code, 200, reply.body)
        return reply.header("etag")

    def complete_document(self, parts) -> bytes:
        return ("<CompleteMultipartUpload>" + "".join(
            f"<Part><PartNumber>{n}</PartNumber><ETag>{etag}</ETag></Part>" for n, etag in parts)
            + "</CompleteMultipartUpload>").encode()

    async def complete(self, upload_id: str, parts, key: str = "big"):
        return await self.s3.request("POST", f"/files/{key}?uploadId={upload_id}", self.complete_document(parts))

    @asynctest
    async def test_upload(self):
        """Parts become one object, one version and one change, with the multipart ETag everywhere."""
        upload_id = await self.start(headers={"content-type": "video/mp4", "x-amz-meta-a": "1"})
        data = [os.urandom(PART), os.urandom(PART), b"tail"]
        etags = [await self.part(upload_id, n + 1, chunk) for n, chunk in enumerate(data)]
        self.assertEqual(etags[2], f'"{hashlib.md5(b"tail").hexdigest()}"')
        reply = await self.complete(upload_id, list(zip((1, 2, 3), etags)))
        self.assertEqual(reply.code, 200, reply.body)
        expected = hashlib.md5(b"".join(hashlib.md5(d).digest() for d in data)).hexdigest() + "-3"
        self.assertEqual(reply.texts("ETag"), [f'"{expected}"'])
        self.assertEqual((reply.texts("Bucket"), reply.texts("Key"), reply.texts("Location")),
                         (["files"], ["big"], ["/files/big"]))
        self.assertEqual(reply.header("x-amz-version-id"), "000000000001")
        got = await self.s3.request("GET", "/files/big")
        self.assertEqual(got.body, b"".join(data))
        self.assertEqual((got.header("etag"), got.header("content-type"), got.header("x-amz-meta-a")),
                         (f'"{expected}"', "video/mp4", "1"))
        listed = await self.s3.request("GET", "/files?list-type=2")
        self.assertEqual(listed.texts("Contents/ETag"), [f'"{expected}"'])
        self.assertEqual([c.op for c in self.s3.files.changes_after(0, 10).result], ["put"])
        self.assertFalse((self.s3.uploads_folder / upload_id).exists())
        reply = await self.s3.request("GET", f"/files/big?uploadId={upload_id}")
        self.assertEqual(reply.error, (404, "NoSuchUpload"))

    @asynctest
    async def test_conditions_on_complete(self):
        """Completing checks order (InvalidPartOrder), parts and ETags (InvalidPart) and sizes (EntityTooSmall)."""
        upload_id = await self.start()
        small = await self.part(upload_id, 1, b"small")
        big = await self.part(upload_id, 2, os.urandom(PART))
        reply = await self.complete(upload_id, [(2, big), (1, small)])
        self.assertEqual(reply.error, (400, "InvalidPartOrder"))
        reply = await self.complete(upload_id, [(2, big), (3, small)])
        self.assertEqual(reply.error, (400, "InvalidPart"))
        reply = await self.complete(upload_id, [(1, big)])
        self.assertEqual(reply.error, (400, "InvalidPart"))
        reply = await self.complete(upload_id, [(1, small), (2, big)])
        self.assertEqual(reply.error, (400, "EntityTooSmall"))
        reply = await self.s3.request("POST", f"/files/big?uploadId={upload_id}", b"<nonsense")
        self.assertEqual(reply.error, (400, "MalformedXML"))
        reply = await self.complete(upload_id, [(2, big.strip('"'))])
        self.assertEqual(reply.code, 200, reply.body)

    @asynctest
    async def test_no_such_upload(self):
        """Unknown uploads, uploads of another key and aborted uploads are NoSuchUpload."""
        upload_id = await self.start()
        for method, target in (("PUT", "/files/big?partNumber=1&uploadId=" + "0" * 32),
                               ("PUT", f"/files/other?partNumber=1&uploadId={upload_id}"),
                               ("POST", "/files/big?uploadId=nonsense")):
            reply = await self.s3.request(method, target, b"x")
            self.assertEqual(reply.error, (404, "NoSuchUpload"), target)
        reply = await self.s3.request("DELETE", f"/files/big?uploadId={upload_id}")
        self.assertEqual(reply.code, 204)
        reply = await self.s3.request("PUT", f"/files/big?partNumber=1&uploadId={upload_id}", b"x")
        self.assertEqual(reply.error, (404, "NoSuchUpload"))
        reply = await self.s3.request("DELETE", f"/files/big?uploadId={upload_id}")
        self.assertEqual(reply.error, (404, "NoSuchUpload"))

    @asynctest
    async def test_part_checks(self):
        """Part numbers outside 1..10000 are InvalidArgument; a part that fails its checksum is not kept."""
        upload_id = await self.start()
        for number in ("0", "10001", "x"):
            reply = await self.s3.request("PUT", f"/files/big?partNumber={number}&uploadId={upload_id}", b"x")
            self.assertEqual(reply.error, (400, "InvalidArgument"))
        reply = await self.s3.request("PUT", f"/files/big?partNumber=1&uploadId={upload_id}", b"x" * 5000,
                                      payload="chunked", chunk=1000, tamper=lambda b: b.replace(b"xxx", b"yyy", 1))
        self.assertEqual(reply.error, (403, "SignatureDoesNotMatch"))
        reply = await self.s3.request("GET", f"/files/big?uploadId={upload_id}")
        self.assertEqual(reply.texts("Part"), [])

    @asynctest
    async def test_list_parts(self):
        """ListParts pages by part number with max-parts and part-number-marker."""
        upload_id = await self.start()
        for number in (1, 2, 3):
            await self.part(upload_id, number, bytes([number]) * number)
        reply = await self.s3.request("GET", f"/files/big?uploadId={upload_id}&max-parts=2")
        self.assertEqual((reply.texts("Part/PartNumber"), reply.texts("Part/Size")), (["1", "2"], ["1", "2"]))
        self.assertEqual((reply.texts("IsTruncated"), reply.texts("NextPartNumberMarker")), (["true"], ["2"]))
        self.assertEqual(reply.texts("Initiator/ID"), ["WRITER"])
        reply = await self.s3.request("GET", f"/files/big?uploadId={upload_id}&part-number-marker=2")
        self.assertEqual((reply.texts("Part/PartNumber"), reply.texts("IsTruncated")), (["3"], ["false"]))
        self.assertEqual(reply.texts("Part/ETag"), [f'"{hashlib.md5(bytes([3]) * 3).hexdigest()}"'])

    @asynctest
    async def test_list_uploads(self):
        """ListMultipartUploads lists a bucket's uploads by key, with prefix, delimiter and markers."""
        ids = {key: await self.start(key) for key in ("a/1", "a/2", "b", "c")}
        second_b = await self.start("b")
        reply = await self.s3.request("GET", "/files?uploads")
        self.assertEqual(reply.texts("Upload/Key"), ["a/1", "a/2", "b", "b", "c"])
        self.assertEqual(reply.texts("Upload/UploadId")[2:4], [ids["b"], second_b])
        reply = await self.s3.request("GET", "/files?uploads&delimiter=/&max-uploads=2")
        self.assertEqual((reply.texts("CommonPrefixes/Prefix"), reply.texts("Upload/Key")), (["a/"], ["b"]))
        self.assertEqual((reply.texts("NextKeyMarker"), reply.texts("NextUploadIdMarker")), (["b"], [ids["b"]]))
        reply = await self.s3.request("GET", f"/files?uploads&key-marker=b&upload-id-marker={ids['b']}")
        self.assertEqual(reply.texts("Upload/UploadId"), [second_b, ids["c"]])
        reply = await self.s3.request("GET", "/files?uploads&prefix=a/")
        self.assertEqual(reply.texts("Upload/Key"), ["a/1", "a/2"])
        reply = await self.s3.request("GET", "/other?uploads")
        self.assertEqual(reply.texts("Upload"), [])

    def slow_puts(self, failure: Exception | None = None) -> None:
        """
        Make the bucket's puts take a moment (and fail with C{failure}),
        and the keep-alive start well within it.
        """
        self.patch(s3multipart, "KEEPALIVE_AFTER", 0.05)
        self.patch(s3multipart, "KEEPALIVE_EVERY", 0.05)
        put = self.s3.files.put

        def stored(args, kwargs):
            if failure is not None:
                raise failure
            return put(*args, **kwargs)

        def slow_put(*args, **kwargs):
            return task.deferLater(reactor, 0.3, stored, args, kwargs)

        self.patch(self.s3.files, "put", slow_put)

    @asynctest
    async def test_long_completion_keeps_alive(self):
        """A completion that takes long answers 200 at once, then spaces, then the result."""
        self.slow_puts()
        upload_id = await self.start()
        etag = await self.part(upload_id, 1, b"only part")
        reply = await self.complete(upload_id, [(1, etag)])
        self.assertEqual(reply.code, 200)
        declaration = b'<?xml version="1.0" encoding="UTF-8"?>\n'
        self.assertTrue(reply.body.startswith(declaration + b"  "), reply.body[:60])
        self.assertEqual(reply.body.count(declaration), 1)
        self.assertEqual(reply.texts("Key"), ["big"])
        self.assertEqual((await self.s3.request("GET", "/files/big")).body, b"only part")

    @asynctest
    async def test_long_completion_failing(self):
        """A long completion that fails sends the error document in its 200, as S3 does."""
        self.slow_puts(BadDigest("the parts changed"))
        upload_id = await self.start()
        etag = await self.part(upload_id, 1, b"only part")
        reply = await self.complete(upload_id, [(1, etag)])
        self.assertEqual(reply.code, 200)
        self.assertEqual(reply.xml.tag, "Error")
        self.assertEqual(reply.xml.findtext("Code"), "BadDigest")
