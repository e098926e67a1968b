"""
S3 object actions in process: PutObject in every payload form and what
is kept with an object, GetObject/HeadObject with versions, ranges,
conditions and overrides, CopyObject, DeleteObject, tagging and ACLs,
and the keys S3 allows.
"""

import base64
import hashlib
import os
from email.utils import formatdate

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.trial.unittest import TestCase
from zope.interface import alsoProvides

from owncdn.errors import BadDigest
from owncdn.interfaces import IHeadable
from owncdn.s3.checksums import new_checksum
from tests.test_s3_front import EPOCH, HeadOnly, S3Front, sign
from tests.util import asynctest

TEXT = b"The quick brown fox jumps over the lazy dog.\n" * 100


def b64(algorithm: str, data: bytes) -> str:
    checksum = new_checksum(algorithm)
    checksum.update(data)
    return base64.b64encode(checksum.digest()).decode()


def quoted_md5(data: bytes) -> str:
    return f'"{hashlib.md5(data).hexdigest()}"'


class PayloadFormTests(TestCase):
    """
    Every way a client sends a body stores exactly its bytes, and every
    way it can be wrong stores nothing.
    """

    def setUp(self):
        self.s3 = S3Front(self)

    async def assert_stored(self, key: str, data: bytes) -> None:
        reply = await self.s3.request("GET", f"/files/{key}")
        self.assertEqual((reply.code, reply.body), (200, data))
        self.assertEqual(reply.header("etag"), quoted_md5(data))

    async def assert_nothing_stored(self, key: str) -> None:
        reply = await self.s3.request("GET", f"/files/{key}")
        self.assertEqual(reply.error, (404, "NoSuchKey"))
        self.assertEqual(self.s3.files.last_change_id(), 0)

    @asynctest
    async def test_signed_sha256(self):
        """A body signed by its SHA-256 is stored; a PUT answers its ETag and version."""
        reply = await self.s3.put("/files/doc.txt", TEXT)
        self.assertEqual(reply.header("etag"), quoted_md5(TEXT))
        self.assertEqual(reply.header("x-amz-version-id"), "000000000001")
        await self.assert_stored("doc.txt", TEXT)

    @asynctest
    async def test_sha256_mismatch(self):
        """A body that is not the one signed is XAmzContentSHA256Mismatch and nothing is stored."""
        reply = await self.s3.request("PUT", "/files/doc", TEXT, tamper=lambda body: body[:-1] + b"!")
        self.assertEqual(reply.error, (400, "XAmzContentSHA256Mismatch"))
        await self.assert_nothing_stored("doc")

    @asynctest
    async def test_unsigned_payload_with_md5(self):
        """UNSIGNED-PAYLOAD is stored; its Content-MD5 is checked (BadDigest, nothing stored)."""
        md5 = base64.b64encode(hashlib.md5(TEXT).digest()).decode()
        await self.s3.put("/files/good", TEXT, payload="unsigned", headers={"content-md5": md5})
        await self.assert_stored("good", TEXT)
        reply = await self.s3.request("PUT", "/files/bad", TEXT + b"x", payload="unsigned",
                                      headers={"content-md5": md5})
        self.assertEqual(reply.error, (400, "BadDigest"))
        self.assertEqual(self.s3.files.last_change_id(), 1)

    @asynctest
    async def test_checksum_header(self):
        """An x-amz-checksum-crc32 header, as boto3 sends over HTTP, is verified."""
        await self.s3.put("/files/crc", TEXT, payload="unsigned",
                          headers={"x-amz-checksum-crc32": b64("crc32", TEXT)})
        await self.assert_stored("crc", TEXT)
        reply = await self.s3.request("PUT", "/files/crc", b"other", payload="unsigned",
                                      headers={"x-amz-checksum-crc32": b64("crc32", TEXT)})
        self.assertEqual(reply.error, (400, "BadDigest"))

    @asynctest
    async def test_signed_chunks(self):
        """STREAMING-AWS4-HMAC-SHA256-PAYLOAD bodies are decoded and stored, multi-MiB too."""
        data = os.urandom(3 * 1024 * 1024 + 7)
        await self.s3.put("/files/big", data, payload="chunked", chunk=1024 * 1024)
        await self.assert_stored("big", data)
        await self.s3.put("/files/small", b"tiny", payload="chunked")
        await self.assert_stored("small", b"tiny")

    @asynctest
    async def test_tampered_chunk(self):
        """A chunk changed on the way is SignatureDoesNotMatch and nothing is stored."""
        reply = await self.s3.request("PUT", "/files/doc", TEXT, payload="chunked", chunk=1000,
                                      tamper=lambda body: body.replace(b"quick", b"quack", 1))
        self.assertEqual(reply.error, (403, "SignatureDoesNotMatch"))
        await self.assert_nothing_stored("doc")

    @asynctest
    async def test_trailer_forms(self):
        """Both trailer forms are stored when the trailing CRC32C matches, refused when not."""
        for form in ("signed-trailer", "unsigned-trailer"):
            await self.s3.put(f"/files/{form}", TEXT, payload=form, chunk=1000, trailer=b64("crc32c", TEXT))
            await self.assert_stored(form, TEXT)
            reply = await self.s3.request("PUT", f"/files/bad-{form}", TEXT, payload=form,
                                          trailer=b64("crc32c", b"other"))
            self.assertEqual(reply.error, (400, "BadDigest"))

    @asynctest
    async def test_stored_content_encoding(self):
        """aws-chunked is framing: a Content-Encoding of aws-chunked,gzip is stored as gzip."""
        await self.s3.put("/files/z.gz", b"\x1f\x8b fake", payload="chunked",
                          headers={"content-encoding": "aws-chunked,gzip"})
        reply = await self.s3.request("HEAD", "/files/z.gz")
        self.assertEqual(reply.header("content-encoding"), "gzip")
        await self.s3.put("/files/plain", b"x", payload="chunked")
        reply = await self.s3.request("HEAD", "/files/plain")
        self.assertIsNone(reply.header("content-encoding"))


class PutAnswerTests(TestCase):
    """
    A PutObject is answered once the bucket's service has stored the
    object, from a callback (L{owncdn.web.handler.AsyncResource.answer_when}):
    failures are answered as errors raised by the action are.
    """

    def setUp(self):
        self.s3 = S3Front(self)

    @asynctest
    async def test_refused_by_the_service(self):
        """A refusal of the service (OwnCDN's error) is answered in S3's terms."""
        self.patch(self.s3.files, "put", lambda *args, **kwargs: defer.fail(BadDigest("no")))
        reply = await self.s3.request("PUT", "/files/a", b"data")
        self.assertEqual(reply.error, (400, "BadDigest"))
        self.assertTrue(reply.header("x-amz-request-id"))

    @asynctest
    async def test_unexpected_failure(self):
        """Anything else is logged and answered as an internal error that tells nothing of it."""
        self.patch(self.s3.files, "put", lambda *args, **kwargs: defer.fail(RuntimeError("disk on fire")))
        reply = await self.s3.request("PUT", "/files/a", b"data")
        self.assertEqual(reply.error, (500, "InternalError"))
        self.assertNotIn(b"fire", reply.body)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    @asynctest
    async def test_client_gone_before_stored(self):
        """A client gone before its object is stored gets no answer, and the object is stored all the same."""
        stored, called, closed = defer.Deferred(), defer.Deferred(), defer.Deferred()
        real_put = self.s3.files.put

        def put(*args, **kwargs):
            result = real_put(*args, **kwargs)
            called.callback(None)
            return stored.addCallback(lambda _: result)

        self.patch(self.s3.files, "put", put)
        site = self.s3.web.site
        channel_closed = site.channel_closed

        def note_closed(channel):
            channel_closed(channel)
            closed.callback(None)

        self.patch(site, "channel_closed", note_closed)
        body = b"data"
        headers, *_ = sign("PUT", "/files/gone", self.s3.host, {"content-length": str(len(body))},
                           hashlib.sha256(body).hexdigest())
        request = b"PUT /files/gone HTTP/1.1\r\n" + b"".join(
            f"{name}: {value}\r\n".encode() for name, value in headers.items()) + b"\r\n" + body
        # Sent whole as the "head": HeadOnly only sends it and collects the answer.
        client = HeadOnly(request)
        port = self.s3.web.port.getHost().port
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        await called.addTimeout(10, reactor)
        client.transport.loseConnection()
        self.assertEqual(await client.done.addTimeout(10, reactor), b"")
        await closed.addTimeout(10, reactor)
        stored.callback(None)
        reply = await self.s3.request("GET", "/files/gone")
        self.assertEqual((reply.code, reply.body), (200, body))


class ObjectTests(TestCase):
    def setUp(self):
        self.s3 = S3Front(self)

    @asynctest
    async def test_kept_with_the_object(self):
        """Content-Type, the representation headers and x-amz-meta-* come back on GET and HEAD."""
        headers = {"content-type": "text/plain; charset=utf-8", "cache-control": "max-age=60",
                   "content-disposition": 'attachment; filename="a.txt"', "content-language": "en",
                   "x-amz-meta-colour": "blue", "x-amz-meta-Owner": "J\xe9r\xf4me"}
        await self.s3.put("/files/a.txt", b"hello", headers=headers)
        for method in ("GET", "HEAD"):
            reply = await self.s3.request(method, "/files/a.txt")
            self.assertEqual(reply.header("content-type"), "text/plain; charset=utf-8")
            self.assertEqual(reply.header("cache-control"), "max-age=60")
            self.assertEqual(reply.header("content-disposition"), 'attachment; filename="a.txt"')
            self.assertEqual(reply.header("content-language"), "en")
            self.assertEqual(reply.header("x-amz-meta-colour"), "blue")
            self.assertEqual(reply.header("x-amz-meta-owner"), "J\xe9r\xf4me")
            self.assertEqual(reply.header("accept-ranges"), "bytes")
            self.assertEqual(reply.header("last-modified"), formatdate(EPOCH, usegmt=True))
            self.assertEqual(reply.header("x-amz-version-id"), "000000000001")
        self.assertEqual(reply.body, b"")

    @asynctest
    async def test_content_type_guessed(self):
        """Without a Content-Type the key's extension decides."""
        await self.s3.put("/files/site.css", b"body{}")
        reply = await self.s3.request("HEAD", "/files/site.css")
        self.assertEqual(reply.header("content-type"), "text/css")

    @asynctest
    async def test_metadata_too_large(self):
        """More than 2 KiB of x-amz-meta-* is MetadataTooLarge."""
        reply = await self.s3.request("PUT", "/files/a", b"x", headers={"x-amz-meta-big": "x" * 2100})
        self.assertEqual(reply.error, (400, "MetadataTooLarge"))

    @asynctest
    async def test_encryption_refused(self):
        """Server-side encryption headers are NotImplemented rather than silently ignored."""
        reply = await self.s3.request("PUT", "/files/a", b"x", headers={"x-amz-server-side-encryption": "AES256"})
        self.assertEqual(reply.error, (501, "NotImplemented"))

    @asynctest
    async def test_head_object_asks_head(self):
        """
        HeadObject on a bucket whose service can describe a file without
        its content (a cache or an HTTP fetcher: IHeadable) asks it with
        head, so a HEAD never downloads the object; GET still opens it.
        """
        await self.s3.put("/plain/doc", b"data")
        service = self.s3.plain
        asked = []
        real_get = service.get

        def head(path, version=None, query=""):
            asked.append(("head", path))
            return real_get(path, version, query)

        def get(path, version=None, query=""):
            asked.append(("get", path))
            return real_get(path, version, query)

        alsoProvides(service, IHeadable)
        service.head, service.get = head, get
        reply = await self.s3.request("HEAD", "/plain/doc")
        self.assertEqual((reply.code, reply.header("content-length"), reply.header("etag")),
                         (200, "4", f'"{hashlib.md5(b"data").hexdigest()}"'))
        self.assertEqual(asked, [("head", "doc")])
        reply = await self.s3.request("GET", "/plain/doc")
        self.assertEqual(reply.body, b"data")
        self.assertEqual(asked, [("head", "doc"), ("get", "doc")])

    @asynctest
    async def test_service_without_versions(self):
        """A bucket without versions stores and serves objects with no x-amz-version-id."""
        reply = await self.s3.put("/plain/doc", b"data")
        self.assertIsNone(reply.header("x-amz-version-id"))
        reply = await self.s3.request("GET", "/plain/doc")
        self.assertEqual((reply.body, reply.header("x-amz-version-id")), (b"data", None))
        reply = await self.s3.request("GET", "/plain/doc?versionId=null")
        self.assertEqual(reply.body, b"data")
        reply = await self.s3.request("GET", "/plain/doc?versionId=000000000001")
        self.assertEqual(reply.error, (400, "InvalidArgument"))
        reply = await self.s3.request("DELETE", "/plain/doc")
        self.assertEqual((reply.code, reply.header("x-amz-delete-marker")), (204, None))
        reply = await self.s3.request("GET", "/plain/doc")
        self.assertEqual(reply.error, (404, "NoSuchKey"))

    @asynctest
    async def test_keys(self):
        """Keys with spaces, +, %, //, non-ASCII and a trailing / round-trip exactly."""
        keys = {"a b": "a%20b", "a+b": "a%2Bb", "100%": "100%25", "x//y": "x//y", "dir/": "dir/",
                "caf\xe9/\u263a": "caf%C3%A9/%E2%98%BA", "a+b c": "a+b%20c"}
        for key, encoded in keys.items():
            await self.s3.put(f"/files/{encoded}", key.encode())
        for key, encoded in keys.items():
            reply = await self.s3.request("GET", f"/files/{encoded}")
            self.assertEqual(reply.body, key.encode(), key)
        listed = (await self.s3.request("GET", "/files?list-type=2")).texts("Contents/Key")
        self.assertEqual(listed, sorted(keys, key=lambda k: k.encode()))

    @asynctest
    async def test_keys_refused(self):
        """Keys with . or .. segments or a leading / are InvalidArgument; over 1024 bytes KeyTooLongError."""
        for target in ("/files/a/./b", "/files/a/../b", "/files//lead", "/files/.."):
            reply = await self.s3.request("PUT", target, b"x")
            self.assertEqual(reply.error, (400, "InvalidArgument"), target)
        reply = await self.s3.request("PUT", "/files/" + "k" * 1025, b"x")
        self.assertEqual(reply.error, (400, "KeyTooLongError"))
        await self.s3.put("/files/" + "k" * 1024, b"x")

    @asynctest
    async def test_range(self):
        """A Range gets 206 with Content-Range; one past the end gets 416 InvalidRange."""
        await self.s3.put("/files/r", TEXT)
        reply = await self.s3.request("GET", "/files/r", headers={"range": "bytes=4-8"})
        self.assertEqual((reply.code, reply.body), (206, TEXT[4:9]))
        self.assertEqual(reply.header("content-range"), f"bytes 4-8/{len(TEXT)}")
        reply = await self.s3.request("GET", "/files/r", headers={"range": "bytes=-3"})
        self.assertEqual((reply.code, reply.body), (206, TEXT[-3:]))
        reply = await self.s3.request("GET", "/files/r", headers={"range": f"bytes={len(TEXT)}-"})
        self.assertEqual(reply.error, (416, "InvalidRange"))
        self.assertEqual(reply.xml.findtext("ActualObjectSize"), str(len(TEXT)))
        reply = await self.s3.request("HEAD", "/files/r", headers={"range": f"bytes={len(TEXT)}-"})
        self.assertEqual((reply.code, reply.body), (416, b""))

    @asynctest
    async def test_conditions(self):
        """If-Match fails with 412 PreconditionFailed; If-None-Match and If-Modified-Since give 304."""
        await self.s3.put("/files/c", TEXT)
        etag = quoted_md5(TEXT)
        reply = await self.s3.request("GET", "/files/c", headers={"if-match": '"0000"'})
        self.assertEqual(reply.error, (412, "PreconditionFailed"))
        self.assertEqual(reply.xml.findtext("Condition"), "If-Match")
        reply = await self.s3.request("GET", "/files/c", headers={"if-match": etag})
        self.assertEqual(reply.body, TEXT)
        reply = await self.s3.request("GET", "/files/c", headers={"if-none-match": etag})
        self.assertEqual((reply.code, reply.body, reply.header("etag")), (304, b"", etag))
        later = formatdate(EPOCH + 10, usegmt=True)
        earlier = formatdate(EPOCH - 10, usegmt=True)
        reply = await self.s3.request("GET", "/files/c", headers={"if-modified-since": later})
        self.assertEqual(reply.code, 304)
        reply = await self.s3.request("GET", "/files/c", headers={"if-modified-since": earlier})
        self.assertEqual(reply.code, 200)
        reply = await self.s3.request("GET", "/files/c", headers={"if-unmodified-since": earlier})
        self.assertEqual(reply.error, (412, "PreconditionFailed"))
        reply = await self.s3.request("HEAD", "/files/c", headers={"if-match": '"0000"'})
        self.assertEqual((reply.code, reply.body), (412, b""))

    @asynctest
    async def test_response_overrides(self):
        """response-content-type and the other response-* parameters set those headers."""
        await self.s3.put("/files/o", b"x", headers={"content-type": "text/plain"})
        reply = await self.s3.request(
            "GET", "/files/o?response-content-type=application%2Fjson&response-cache-control=no-cache"
                   "&response-content-disposition=attachment%3B%20filename%3Do.json"
                   "&response-content-language=fr&response-expires=0&response-content-encoding=identity")
        self.assertEqual(reply.header("content-type"), "application/json")
        self.assertEqual(reply.header("cache-control"), "no-cache")
        self.assertEqual(reply.header("content-disposition"), "attachment; filename=o.json")
        self.assertEqual(reply.header("content-language"), "fr")
        self.assertEqual(reply.header("expires"), "0")
        self.assertEqual(reply.header("content-encoding"), "identity")

    @asynctest
    async def test_versions(self):
        """versionId reads an old version; bad IDs are InvalidArgument, unknown ones NoSuchVersion."""
        await self.s3.put("/files/v", b"one")
        await self.s3.put("/files/v", b"two")
        reply = await self.s3.request("GET", "/files/v?versionId=000000000001")
        self.assertEqual((reply.body, reply.header("x-amz-version-id")), (b"one", "000000000001"))
        reply = await self.s3.request("GET", "/files/v")
        self.assertEqual((reply.body, reply.header("x-amz-version-id")), (b"two", "000000000002"))
        reply = await self.s3.request("GET", "/files/v?versionId=abc")
        self.assertEqual(reply.error, (400, "InvalidArgument"))
        reply = await self.s3.request("GET", "/files/v?versionId=000000000099")
        self.assertEqual(reply.error, (404, "NoSuchVersion"))

    @asynctest
    async def test_deleted_key(self):
        """After a delete, GET is NoSuchKey with x-amz-delete-marker; the marker's version is 405."""
        await self.s3.put("/files/d", b"bytes")
        reply = await self.s3.request("DELETE", "/files/d")
        self.assertEqual((reply.code, reply.body), (204, b""))
        self.assertEqual(reply.header("x-amz-delete-marker"), "true")
        marker = reply.header("x-amz-version-id")
        reply = await self.s3.request("GET", "/files/d")
        self.assertEqual(reply.error, (404, "NoSuchKey"))
        self.assertEqual((reply.header("x-amz-delete-marker"), reply.header("x-amz-version-id")),
                         ("true", marker))
        reply = await self.s3.request("GET", f"/files/d?versionId={marker}")
        self.assertEqual(reply.error, (405, "MethodNotAllowed"))
        self.assertEqual(reply.header("x-amz-delete-marker"), "true")
        reply = await self.s3.request("GET", "/files/never")
        self.assertEqual((reply.error, reply.header("x-amz-delete-marker")), ((404, "NoSuchKey"), None))

    @asynctest
    async def test_delete_missing(self):
        """Deleting a key that does not exist succeeds with 204 and adds nothing."""
        reply = await self.s3.request("DELETE", "/files/none")
        self.assertEqual(reply.code, 204)
        self.assertEqual(self.s3.files.last_change_id(), 0)

    @asynctest
    async def test_delete_version(self):
        """DeleteObject with versionId removes that version for good; the one before is current."""
        await self.s3.put("/files/p", b"one")
        await self.s3.put("/files/p", b"two")
        reply = await self.s3.request("DELETE", "/files/p?versionId=000000000002")
        self.assertEqual((reply.code, reply.header("x-amz-version-id")), (204, "000000000002"))
        self.assertIsNone(reply.header("x-amz-delete-marker"))
        reply = await self.s3.request("GET", "/files/p")
        self.assertEqual(reply.body, b"one")
        changes = self.s3.files.changes_after(2, 10).result
        self.assertEqual([(c.op, c.version) for c in changes], [("purge", "000000000002")])
        marker = (await self.s3.request("DELETE", "/files/p")).header("x-amz-version-id")
        reply = await self.s3.request("DELETE", f"/files/p?versionId={marker}")
        self.assertEqual(reply.header("x-amz-delete-marker"), "true")
        self.assertEqual((await self.s3.request("GET", "/files/p")).body, b"one")

    @asynctest
    async def test_copy(self):
        """CopyObject copies bytes and metadata, answering the new ETag, version and source version."""
        await self.s3.put("/files/src", TEXT, headers={"content-type": "text/plain", "x-amz-meta-a": "1"})
        reply = await self.s3.request("PUT", "/files/dst", headers={"x-amz-copy-source": "/files/src"})
        self.assertEqual(reply.code, 200, reply.body)
        self.assertEqual(reply.texts("ETag"), [quoted_md5(TEXT)])
        self.assertTrue(reply.xml.findtext("LastModified").endswith(".250Z"))
        self.assertEqual((reply.header("x-amz-version-id"), reply.header("x-amz-copy-source-version-id")),
                         ("000000000002", "000000000001"))
        copied = await self.s3.request("GET", "/files/dst")
        self.assertEqual((copied.body, copied.header("content-type"), copied.header("x-amz-meta-a")),
                         (TEXT, "text/plain", "1"))

    @asynctest
    async def test_copy_replacing_metadata(self):
        """x-amz-metadata-directive REPLACE takes the request's metadata, also onto the object itself."""
        await self.s3.put("/files/m", b"x", headers={"content-type": "text/plain", "x-amz-meta-a": "1"})
        reply = await self.s3.request("PUT", "/files/m", headers={
            "x-amz-copy-source": "files/m", "x-amz-metadata-directive": "REPLACE",
            "content-type": "text/html", "x-amz-meta-b": "2"})
        self.assertEqual(reply.code, 200, reply.body)
        reply = await self.s3.request("HEAD", "/files/m")
        self.assertEqual((reply.header("content-type"), reply.header("x-amz-meta-a"), reply.header("x-amz-meta-b")),
                         ("text/html", None, "2"))
        reply = await self.s3.request("PUT", "/files/m", headers={"x-amz-copy-source": "files/m"})
        self.assertEqual(reply.error, (400, "InvalidRequest"))

    @asynctest
    async def test_copy_across_buckets_and_versions(self):
        """A copy reads another bucket, or a given version, and is refused where the key may not read."""
        await self.s3.put("/other/k%20ey", b"v1")
        await self.s3.put("/other/k%20ey", b"v2")
        reply = await self.s3.request("PUT", "/plain/c", headers={
            "x-amz-copy-source": "/other/k%20ey?versionId=000000000001"})
        self.assertEqual(reply.code, 200, reply.body)
        self.assertEqual((await self.s3.request("GET", "/plain/c")).body, b"v1")
        reply = await self.s3.request("PUT", "/files/c", headers={"x-amz-copy-source": "/other/none"})
        self.assertEqual(reply.error, (404, "NoSuchKey"))
        reply = await self.s3.request("PUT", "/files/c", headers={"x-amz-copy-source": "/nope/k"})
        self.assertEqual(reply.error, (404, "NoSuchBucket"))
        reply = await self.s3.request("PUT", "/files/c", headers={"x-amz-copy-source": "nokey"})
        self.assertEqual(reply.error, (400, "InvalidArgument"))

    @asynctest
    async def test_copy_conditions(self):
        """x-amz-copy-source-if-* conditions that fail are PreconditionFailed."""
        await self.s3.put("/files/s", b"x")
        for name, value in (("if-match", '"0000"'), ("if-none-match", quoted_md5(b"x")),
                            ("if-unmodified-since", formatdate(EPOCH - 10, usegmt=True)),
                            ("if-modified-since", formatdate(EPOCH + 10, usegmt=True))):
            reply = await self.s3.request("PUT", "/files/t", headers={
                "x-amz-copy-source": "/files/s", f"x-amz-copy-source-{name}": value})
            self.assertEqual(reply.error, (412, "PreconditionFailed"), name)
        reply = await self.s3.request("PUT", "/files/t", headers={
            "x-amz-copy-source": "/files/s", "x-amz-copy-source-if-match": quoted_md5(b"x")})
        self.assertEqual(reply.code, 200)

    @asynctest
    async def test_copy_large(self):
        """A source over 1 MiB is spooled through the data folder and copied exactly."""
        data = os.urandom(2 * 1024 * 1024 + 3)
        await self.s3.put("/files/large", data, payload="unsigned")
        reply = await self.s3.request("PUT", "/other/large", headers={"x-amz-copy-source": "/files/large"})
        self.assertEqual(reply.texts("ETag"), [quoted_md5(data)])
        self.assertEqual((await self.s3.request("GET", "/other/large")).body, data)

    @asynctest
    async def test_tagging(self):
        """GetObjectTagging is an empty tag set; of a missing key NoSuchKey; DeleteObjectTagging 204."""
        await self.s3.put("/files/t", b"x")
        reply = await self.s3.request("GET", "/files/t?tagging")
        self.assertEqual(reply.body, b'<?xml version="1.0" encoding="UTF-8"?>\n'
                                     b'<Tagging xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
                                     b"<TagSet></TagSet></Tagging>")
        reply = await self.s3.request("GET", "/files/none?tagging")
        self.assertEqual(reply.error, (404, "NoSuchKey"))
        reply = await self.s3.request("DELETE", "/files/t?tagging")
        self.assertEqual(reply.code, 204)

    @asynctest
    async def test_acls(self):
        """Object and bucket ACLs grant the key what it may do: FULL_CONTROL to writers, READ to readers."""
        await self.s3.put("/files/a", b"x")
        reply = await self.s3.request("GET", "/files/a?acl")
        self.assertEqual(reply.texts("AccessControlList/Grant/Permission"), ["FULL_CONTROL"])
        self.assertEqual(reply.texts("Owner/ID"), ["WRITER"])
        reply = await self.s3.request("GET", "/files?acl", key="READER")
        self.assertEqual(reply.texts("AccessControlList/Grant/Permission"), ["READ"])
        reply = await self.s3.request("GET", "/files/none?acl")
        self.assertEqual(reply.error, (404, "NoSuchKey"))
