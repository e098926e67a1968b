"""
S3 mode's front door, in process over a real socket: signatures, keys
and access, routing of actions and sub-resources, the error documents
and their statuses, request IDs, and C{Expect: 100-continue}.

Also the harness the other in-process S3 tests share: L{S3Front} sends
requests built byte for byte and signed here, in every payload form.
"""

import hashlib
import time
from dataclasses import dataclass
from io import BytesIO
from xml.etree import ElementTree

from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, FileBodyProducer, readBody
from twisted.web.http_headers import Headers
from zope.interface import implementer

from owncdn.interfaces import IReadableFiles, IWritableFiles
from owncdn.s3 import sigv4
from owncdn.s3.xml import NAMESPACE
from owncdn.testing import MemoryFiles
from tests.util import asynctest
from tests.webserver import READER, WRITER, WebFront, base_config

SECRETS = {"WRITER": WRITER, "READER": READER, "LIMITED": "limited-secret-0123456789"}
REGION = "us-east-1"
# A fixed, plausible clock for the services' modification times, with a
# fraction of a second that XML times must keep.
EPOCH = 1_764_251_212.25


@implementer(IReadableFiles, IWritableFiles)
class PlainFiles:
    """
    A bucket without versions (like a file system service): a
    L{MemoryFiles} seen through the read and write interfaces only.
    """

    def __init__(self, clock):
        self._files = MemoryFiles(clock)

    def get(self, path, version=None, query=""):
        return self._files.get(path, version, query)

    def list(self, prefix, after, limit):
        return self._files.list(prefix, after, limit)

    def put(self, path, body, content_type=None, metadata=None, expected_md5=None, expected_sha256=None):
        return self._files.put(path, body, content_type, metadata, expected_md5, expected_sha256)

    def delete(self, path):
        return self._files.delete(path)


@dataclass
class Reply:
    code: int
    headers: Headers
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name.encode())
        return None if values is None else values[0].decode("latin-1")

    @property
    def xml(self) -> ElementTree.Element:
        """
        The body parsed, with the S3 namespace stripped from tags.
        """
        root = ElementTree.fromstring(self.body)
        for element in root.iter():
            element.tag = element.tag.replace("{%s}" % NAMESPACE, "")
        return root

    @property
    def error(self) -> tuple[int, str]:
        """
        The status and S3 error code of an error reply.
        """
        root = ElementTree.fromstring(self.body)
        assert root.tag == "Error", self.body
        return self.code, root.findtext("Code")

    def texts(self, path: str) -> list[str]:
        return [element.text or "" for element in self.xml.findall(path)]


def sign(method: str, target: str, host: str, headers: dict[str, str], payload_hash: str,
         key_id: str = "WRITER", now: float | None = None,
         region: str = REGION) -> tuple[dict[str, str], bytes, str, str]:
    """
    Sign a request the way S3 clients do; returns the headers to send,
    the signing key, the scope and the seed signature.
    """
    moment = time.gmtime(time.time() if now is None else now)
    amz_date = time.strftime("%Y%m%dT%H%M%SZ", moment)
    all_headers = {"host": host, "x-amz-date": amz_date, "x-amz-content-sha256": payload_hash}
    all_headers.update({name.lower(): value for name, value in headers.items()})
    names = sorted(name for name in all_headers if name not in ("content-length", "expect"))
    path, _, query = target.encode("latin-1").partition(b"?")
    canonical = sigv4.canonical_request(method, path, query, all_headers, names, payload_hash)
    scope = f"{amz_date[:8]}/{region}/s3/aws4_request"
    key = sigv4.signing_key(SECRETS.get(key_id, "no-such-secret"), amz_date[:8], region, "s3")
    signature = sigv4.sign(key, sigv4.string_to_sign(amz_date, scope, canonical))
    all_headers["authorization"] = (f"AWS4-HMAC-SHA256 Credential={key_id}/{scope}, "
                                    f"SignedHeaders={';'.join(names)}, Signature={signature}")
    return all_headers, key, f"{amz_date}\n{scope}", signature


def chunked_body(data: bytes, chunk: int, key: bytes | None, time_scope: str, seed: str,
                 trailers: dict[str, str] | None = None) -> bytes:
    """
    An C{aws-chunked} body: chunk signatures chained from C{seed} when
    C{key} is given, and the trailers (signed too, with a key).
    """
    out, previous = [], seed
    pieces = [data[i:i + chunk] for i in range(0, len(data), chunk)] + [b""]
    for piece in pieces:
        line = b"%x" % len(piece)
        if key is not None:
            previous = sigv4.sign(key, f"AWS4-HMAC-SHA256-PAYLOAD\n{time_scope}\n{previous}\n"
                                       f"{sigv4.EMPTY_SHA256}\n{hashlib.sha256(piece).hexdigest()}")
            line += b";chunk-signature=" + previous.encode()
        out.append(line + b"\r\n")
        if piece or trailers is None:
            out.append(piece + b"\r\n")
    if trailers is not None:
        out += [f"{name}:{value}\r\n".encode() for name, value in trailers.items()]
        if key is not None:
            canonical = "".join(f"{name}:{value}\n" for name, value in sorted(trailers.items()))
            signature = sigv4.sign(key, f"AWS4-HMAC-SHA256-TRAILER\n{time_scope}\n{previous}\n"
                                        f"{hashlib.sha256(canonical.encode()).hexdigest()}")
            out.append(f"x-amz-trailer-signature:{signature}\r\n".encode())
        out.append(b"\r\n")
    return b"".join(out)


STREAMING = {
    "chunked": sigv4.STREAMING_SIGNED,
    "signed-trailer": sigv4.STREAMING_SIGNED_TRAILER,
    "unsigned-trailer": sigv4.STREAMING_UNSIGNED_TRAILER,
}


class S3Front:
    """
    An OwnCDN web front with S3 buckets on in-memory services:
    C{files} and C{other} keep versions, C{plain} does not, C{mirror} is
    a replica; keys C{WRITER} (write all), C{READER} (read all) and
    C{LIMITED} (read C{files}, nothing else).
    """

    def __init__(self, testcase):
        self.clock = Clock()
        self.clock.advance(EPOCH)
        self.files = MemoryFiles(self.clock)
        self.other = MemoryFiles(self.clock)
        self.plain = PlainFiles(self.clock)
        raw = base_config(
            services=[{"id": "files", "type": "storage"}, {"id": "other", "type": "storage"},
                      {"id": "plain", "type": "filesystem", "directory": "/nonexistent"},
                      {"id": "mirror", "type": "storage", "replica": {"source": "hq", "sid": "files"}},
                      {"id": "www", "type": "public", "source": "files"}],
            keys=[{"id": "LIMITED", "value": SECRETS["LIMITED"], "access": {"files": "read"}}],
        )
        raw["replicationSources"] = [{"id": "hq", "url": "http://127.0.0.1:1/", "key": "k"}]
        self.web = WebFront(testcase, raw, {"files": self.files, "other": self.other,
                                            "plain": self.plain, "mirror": MemoryFiles(self.clock)})
        self.host = self.web.url.removeprefix("http://")
        self.agent = Agent(reactor)
        # The region requests are signed for.
        self.region = REGION

    @property
    def uploads_folder(self):
        return self.web.state.data_dir / "s3-uploads"

    async def request(self, method: str, target: str, body: bytes = b"", headers: dict | None = None,
                      key: str | None = "WRITER", payload: str = "sha256", chunk: int = 65536,
                      trailer: str | None = None, now: float | None = None,
                      tamper=None) -> Reply:
        """
        Send one request.  C{target} is sent exactly as given (already
        percent-encoded).  C{payload} is the form: C{sha256},
        C{unsigned}, C{chunked}, C{signed-trailer} or
        C{unsigned-trailer}; C{trailer} the checksum value of the
        trailer forms (C{x-amz-checksum-crc32c}); C{tamper} may change
        the encoded body before it is sent.
        """
        headers = dict(headers or {})
        sent = body
        if key is None:
            all_headers = {"x-amz-date": time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()), **headers}
        elif payload in STREAMING:
            headers.setdefault("content-encoding", "aws-chunked")
            headers["x-amz-decoded-content-length"] = str(len(body))
            if payload != "chunked":
                headers["x-amz-trailer"] = "x-amz-checksum-crc32c"
            all_headers, signing_key, time_scope, seed = sign(
                method, target, self.host, headers, STREAMING[payload], key, now, self.region)
            trailers = None if payload == "chunked" else {"x-amz-checksum-crc32c": trailer}
            sent = chunked_body(body, chunk, None if payload == "unsigned-trailer" else signing_key,
                                time_scope, seed, trailers)
        else:
            payload_hash = sigv4.UNSIGNED_PAYLOAD if payload == "unsigned" else hashlib.sha256(body).hexdigest()
            all_headers, *_ = sign(method, target, self.host, headers, payload_hash, key, now,
                                   self.region)
        if tamper is not None:
            sent = tamper(sent)
        return await self.raw(method, target, all_headers, sent)

    async def raw(self, method: str, target: str, headers: dict[str, str], body: bytes = b"") -> Reply:
        """
        Send a request with exactly these headers (the agent adds
        C{Host} and C{Content-Length}).
        """
        headers = {name: value for name, value in headers.items() if name != "host"}
        producer = FileBodyProducer(BytesIO(body)) if body or method in ("PUT", "POST") else None
        response = await self.agent.request(
            method.encode(), f"http://{self.host}{target}".encode("latin-1"),
            Headers({name: [value.encode("latin-1")] for name, value in headers.items()}), producer)
        return Reply(response.code, response.headers, await readBody(response))

    async def put(self, target: str, body: bytes, **kwargs) -> Reply:
        reply = await self.request("PUT", target, body, **kwargs)
        assert reply.code == 200, reply.body
        return reply


class ExpectContinue(protocol.Protocol):
    """
    Sends a request head with C{Expect: 100-continue}, the body only
    after the interim response, and collects everything.
    """

    def __init__(self, head: bytes, body: bytes):
        self.head, self.body = head, body
        self.received = b""
        self.done = defer.Deferred()

    def connectionMade(self):
        self.transport.write(self.head)

    def dataReceived(self, data):
        before = self.received
        self.received += data
        if b"100 Continue" in self.received and b"100 Continue" not in before:
            self.transport.write(self.body)
        if b"\r\n\r\n" in self.received.split(b"100 Continue\r\n\r\n", 1)[-1]:
            self.transport.loseConnection()

    def connectionLost(self, reason):
        self.done.callback(self.received)


class HeadOnly(protocol.Protocol):
    """
    Sends a request head and no body, and collects what comes back until
    the server closes the connection.
    """

    def __init__(self, head: bytes):
        self.head = head
        self.received = b""
        self.done = defer.Deferred()

    def connectionMade(self):
        self.transport.write(self.head)

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.done.callback(self.received)


class FrontDoorTests(TestCase):
    def setUp(self):
        self.s3 = S3Front(self)

    @asynctest
    async def test_anonymous(self):
        """A request without Authorization is AccessDenied, as an S3 error document."""
        reply = await self.s3.request("GET", "/files/a", key=None)
        self.assertEqual(reply.error, (403, "AccessDenied"))
        self.assertEqual(reply.header("content-type"), "application/xml")
        self.assertEqual(reply.xml.findtext("Resource"), "/files/a")
        self.assertEqual(reply.xml.findtext("RequestId"), reply.header("x-amz-request-id"))

    @asynctest
    async def test_unknown_key(self):
        """An access key ID no key has is InvalidAccessKeyId."""
        reply = await self.s3.request("GET", "/files", key="NOBODY")
        self.assertEqual(reply.error, (403, "InvalidAccessKeyId"))

    @asynctest
    async def test_wrong_signature(self):
        """A signature of another request is SignatureDoesNotMatch, with the string to sign."""
        headers, *_ = sign("GET", "/files?x=1", self.s3.host, {}, sigv4.EMPTY_SHA256)
        reply = await self.s3.raw("GET", "/files", headers)
        self.assertEqual(reply.error, (403, "SignatureDoesNotMatch"))
        self.assertIn("AWS4-HMAC-SHA256", reply.xml.findtext("StringToSign"))

    @asynctest
    async def test_skewed_clock(self):
        """A request signed 20 minutes off the server clock is RequestTimeTooSkewed."""
        reply = await self.s3.request("GET", "/files", now=time.time() - 1200)
        self.assertEqual(reply.error, (403, "RequestTimeTooSkewed"))
        self.assertIsNotNone(reply.xml.findtext("ServerTime"))

    @asynctest
    async def test_malformed_authorization(self):
        """An Authorization header S3 cannot read is AuthorizationHeaderMalformed."""
        reply = await self.s3.raw("GET", "/files", {
            "authorization": "AWS4-HMAC-SHA256 Credential=WRITER", "x-amz-content-sha256": sigv4.EMPTY_SHA256,
            "x-amz-date": time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())})
        self.assertEqual(reply.error, (400, "AuthorizationHeaderMalformed"))

    @asynctest
    async def test_request_ids(self):
        """Every response, success or error, carries its own x-amz-request-id."""
        replies = [await self.s3.request("GET", "/"), await self.s3.request("GET", "/nope"),
                   await self.s3.request("HEAD", "/files/none")]
        ids = [reply.header("x-amz-request-id") for reply in replies]
        self.assertEqual(len(set(ids)), 3)
        for request_id in ids:
            # As S3's: 16 upper-case hex digits.
            self.assertRegex(request_id, r"\A[0-9A-F]{16}\Z")

    @asynctest
    async def test_head_error_has_no_body(self):
        """A HEAD that fails gets the error's status and no body."""
        reply = await self.s3.request("HEAD", "/files/missing")
        self.assertEqual((reply.code, reply.body), (404, b""))
        reply = await self.s3.request("HEAD", "/nope")
        self.assertEqual((reply.code, reply.body), (404, b""))

    @asynctest
    async def test_no_such_bucket(self):
        """Unknown services, the api service and public bindings are NoSuchBucket."""
        for bucket in ("nope", "api", "www"):
            reply = await self.s3.request("GET", f"/{bucket}/key")
            self.assertEqual(reply.error, (404, "NoSuchBucket"))
            self.assertEqual(reply.xml.findtext("BucketName"), bucket)

    @asynctest
    async def test_read_only_key(self):
        """A read key reads but its writes are AccessDenied."""
        await self.s3.put("/files/doc", b"data")
        reply = await self.s3.request("GET", "/files/doc", key="READER")
        self.assertEqual((reply.code, reply.body), (200, b"data"))
        for method, target in (("PUT", "/files/doc"), ("DELETE", "/files/doc"),
                               ("POST", "/files/doc?uploads")):
            reply = await self.s3.request(method, target, key="READER")
            self.assertEqual(reply.error, (403, "AccessDenied"))

    @asynctest
    async def test_services_the_key_may_not_touch(self):
        """Reading a bucket the key has no access to is AccessDenied."""
        reply = await self.s3.request("GET", "/other?list-type=2", key="LIMITED")
        self.assertEqual(reply.error, (403, "AccessDenied"))
        reply = await self.s3.request("HEAD", "/other", key="LIMITED")
        self.assertEqual(reply.code, 403)

    @asynctest
    async def test_replica_is_read_only(self):
        """A write to a replica is AccessDenied, saying it is a read-only replica."""
        reply = await self.s3.request("PUT", "/mirror/doc", b"x")
        self.assertEqual(reply.error, (403, "AccessDenied"))
        self.assertIn("read-only replica", reply.xml.findtext("Message"))
        reply = await self.s3.request("GET", "/mirror?list-type=2")
        self.assertEqual(reply.code, 200)

    @asynctest
    async def test_actions_not_offered(self):
        """Sub-resources we do not offer are NotImplemented (501), as S3 answers them."""
        for method, target in (("PUT", "/files?policy"), ("PUT", "/files/doc?acl"),
                               ("PUT", "/files?lifecycle"), ("PUT", "/files/doc?tagging"),
                               ("DELETE", "/files?cors"), ("GET", "/files?inventory"),
                               ("POST", "/files/doc?restore"), ("GET", "/files/doc?partNumber=2")):
            reply = await self.s3.request(method, target)
            self.assertEqual(reply.error, (501, "NotImplemented"), target)

    @asynctest
    async def test_method_not_allowed(self):
        """A method a resource does not take is MethodNotAllowed."""
        reply = await self.s3.request("POST", "/files/doc")
        self.assertEqual(reply.error, (405, "MethodNotAllowed"))
        reply = await self.s3.request("DELETE", "/")
        self.assertEqual(reply.error, (405, "MethodNotAllowed"))

    @asynctest
    async def test_buckets_are_services(self):
        """CreateBucket of a service is BucketAlreadyOwnedByYou; of anything else AccessDenied."""
        reply = await self.s3.request("PUT", "/files")
        self.assertEqual(reply.error, (409, "BucketAlreadyOwnedByYou"))
        reply = await self.s3.request("PUT", "/newbucket")
        self.assertEqual(reply.error, (403, "AccessDenied"))
        reply = await self.s3.request("DELETE", "/files")
        self.assertEqual(reply.error, (501, "NotImplemented"))

    async def send_head(self, method: str, target: str, headers: dict[str, str]) -> tuple[bytes, bytes]:
        """
        Send only the head of a request; the status line and body of the
        answer the server gave before closing the connection.
        """
        head = f"{method} {target} HTTP/1.1\r\n".encode() + b"".join(
            f"{name}: {value}\r\n".encode() for name, value in headers.items()) + b"\r\n"
        client = HeadOnly(head)
        port = self.s3.web.port.getHost().port
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        received = await client.done.addTimeout(10, reactor)
        status, _, rest = received.partition(b"\r\n")
        return status, rest.partition(b"\r\n\r\n")[2]

    @asynctest
    async def test_bad_signature_refused_before_body(self):
        """A badly signed 4 GiB upload is refused from its head, and the connection closed, before any body byte."""
        size = {"content-length": str(4 * 1024**3)}
        for signed_target, key, code in (("/files/other", "WRITER", "SignatureDoesNotMatch"),
                                         ("/files/big", "NOBODY", "InvalidAccessKeyId")):
            headers, *_ = sign("PUT", signed_target, self.s3.host, size, sigv4.UNSIGNED_PAYLOAD, key)
            status, body = await self.send_head("PUT", "/files/big", headers)
            self.assertEqual(status, b"HTTP/1.1 403 Forbidden", body)
            error = ElementTree.fromstring(body)
            self.assertEqual((error.findtext("Code"), error.findtext("Resource")), (code, "/files/big"))
        reply = await self.s3.request("GET", "/files?list-type=2")
        self.assertEqual(reply.texts("Contents/Key"), [])

    @asynctest
    async def test_good_head_with_large_body(self):
        """A well-signed upload over 1 MiB, whose head is checked early, is stored as sent."""
        body = b"0123456789abcdef" * 100_000
        await self.s3.put("/files/large", body, payload="chunked")
        await self.s3.put("/files/large", body, headers={"expect": "100-continue"})
        self.assertEqual((await self.s3.request("GET", "/files/large")).body, body)

    @asynctest
    async def test_standard_mode_not_checked_early(self):
        """A standard-mode request with a large body is not refused by S3's early signature check."""
        reply = await self.s3.raw("PUT", "/putfile", {"x-owncdn-key": "nope", "x-amz-date": "junk"},
                                  b"x" * (2 * 1024 * 1024))
        self.assertEqual(reply.header("content-type"), "application/json")

    @asynctest
    async def test_expect_continue(self):
        """A PUT with Expect: 100-continue gets the interim response, then its answer."""
        body = b"after the interim response"
        headers, *_ = sign("PUT", "/files/expected", self.s3.host,
                           {"expect": "100-continue", "content-length": str(len(body))},
                           hashlib.sha256(body).hexdigest())
        head = b"PUT /files/expected HTTP/1.1\r\n" + b"".join(
            f"{name}: {value}\r\n".encode() for name, value in headers.items()) + b"\r\n"
        port = self.s3.web.port.getHost().port
        client = ExpectContinue(head, body)
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        received = await client.done.addTimeout(10, reactor)
        self.assertTrue(received.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"), received)
        body_read = await self.s3.request("GET", "/files/expected")
        self.assertEqual(body_read.body, body)
