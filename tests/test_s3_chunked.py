"""
Tests for L{owncdn.s3.chunked}: C{aws-chunked} decoding and chunk,
trailer and checksum verification, against the S3 documentation's
chunked-upload examples and the bodies boto3 sends, fed in every split;
and L{open_payload}'s choice of reader for each payload form.
"""

import base64
import hashlib
import io
import random

from twisted.trial.unittest import SynchronousTestCase

from owncdn.s3 import sigv4
from owncdn.s3.checksums import PayloadDigests, new_checksum
from owncdn.s3.chunked import (
    MAX_LINE, ChunkedDecoder, DecodedBody, SignatureChain, open_payload, stored_content_encoding,
)
from owncdn.s3.errors import S3Error
from tests.test_s3_sigv4 import (
    EXAMPLE_KEY_ID, EXAMPLE_NOW, EXAMPLE_SECRET, EXAMPLE_SEED_HEADERS, KEY_ID, SECRET, botocore_request,
)

EXAMPLE_KEY = sigv4.signing_key(EXAMPLE_SECRET, "20130524", "us-east-1", "s3")
EXAMPLE_TIME = "20130524T000000Z"
EXAMPLE_SCOPE = "20130524/us-east-1/s3/aws4_request"
EXAMPLE_PAYLOAD = b"a" * 66560
EXAMPLE_SEED = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"

# The body of the S3 documentation's chunked-upload example: 64 KiB,
# 1 KiB and the final empty chunk, each signed after the seed signature.
EXAMPLE_BODY = (
    b"10000;chunk-signature=ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648\r\n"
    + b"a" * 65536 + b"\r\n"
    b"400;chunk-signature=0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497\r\n"
    + b"a" * 1024 + b"\r\n"
    b"0;chunk-signature=b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9\r\n\r\n")

# The same upload with a signed trailing CRC32C ("Signature Calculations
# for the Authorization Header: Including Trailing Headers"): its seed
# request and body, trailers after a blank line as the page shows them.
TRAILER_SEED_HEADERS = {
    **{name: value for name, value in EXAMPLE_SEED_HEADERS.items() if name != "content-length"},
    "x-amz-content-sha256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER",
    "x-amz-trailer": "x-amz-checksum-crc32c",
    "authorization": "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,"
                     "SignedHeaders=content-encoding;host;x-amz-content-sha256;x-amz-date;"
                     "x-amz-decoded-content-length;x-amz-storage-class;x-amz-trailer,"
                     "Signature=106e2a8a18243abcf37539882f36619c00e2dfc72633413f02d3b74544bfeb8e",
}
TRAILER_BODY = (
    b"10000;chunk-signature=b474d8862b1487a5145d686f57f013e54db672cee1c953b3010fb58501ef5aa2\r\n"
    + b"a" * 65536 + b"\r\n"
    b"400;chunk-signature=1c1344b170168f8e65b41376b44b20fe354e373826ccbbe2c1d40a8cae51e5c7\r\n"
    + b"a" * 1024 + b"\r\n"
    b"0;chunk-signature=2ca2aba2005185cf7159c6277faf83795951dd77a3a99e6e65d5c9f85863f992\r\n\r\n"
    b"x-amz-checksum-crc32c:sOO8/Q==\r\n"
    b"x-amz-trailer-signature:d81f82fc3505edab99d459891051a732e8730629a2e4a59689829ca17fe2e435\r\n")

TRAILER_SEED = "106e2a8a18243abcf37539882f36619c00e2dfc72633413f02d3b74544bfeb8e"

# The unsigned-trailer body of minio's tests of the same page.
UNSIGNED_TRAILER_BODY = b"b\r\nhello world\r\n0\r\nx-amz-checksum-crc32:DUoRhQ==\r\n\r\n"


def example_chain() -> SignatureChain:
    return SignatureChain(EXAMPLE_KEY, EXAMPLE_TIME, EXAMPLE_SCOPE, EXAMPLE_SEED)


def example_decoder(length: int = len(EXAMPLE_PAYLOAD)) -> ChunkedDecoder:
    return ChunkedDecoder(length, PayloadDigests(), example_chain())


def trailer_decoder(signed: bool = True, declared: tuple[str, ...] = ("x-amz-checksum-crc32c",),
                    length: int = len(EXAMPLE_PAYLOAD)) -> ChunkedDecoder:
    digests = PayloadDigests()
    for name in declared:
        digests.expect_trailer(name.removeprefix("x-amz-checksum-"))
    chain = None
    if signed:
        chain = SignatureChain(EXAMPLE_KEY, EXAMPLE_TIME, EXAMPLE_SCOPE, TRAILER_SEED)
    return ChunkedDecoder(length, digests, chain, declared)


def encode_signed(chunks: list[bytes], trailers: dict[str, str] | None = None, seed: str = EXAMPLE_SEED) -> bytes:
    """
    An aws-chunked body signed the documented way, with the example's
    key, time and scope (pinned against the documentation's own body).
    """
    out, previous = [], seed
    for chunk in [*chunks, b""]:
        previous = sigv4.sign(EXAMPLE_KEY, f"AWS4-HMAC-SHA256-PAYLOAD\n{EXAMPLE_TIME}\n{EXAMPLE_SCOPE}\n{previous}\n"
                                           f"{sigv4.EMPTY_SHA256}\n{hashlib.sha256(chunk).hexdigest()}")
        out.append(b"%x;chunk-signature=%s\r\n" % (len(chunk), previous.encode()))
        if chunk or trailers is None:
            out.append(chunk + b"\r\n")
    if trailers is not None:
        canonical = "".join(f"{name}:{value}\n" for name, value in sorted(trailers.items()))
        signature = sigv4.sign(EXAMPLE_KEY, f"AWS4-HMAC-SHA256-TRAILER\n{EXAMPLE_TIME}\n{EXAMPLE_SCOPE}\n"
                                            f"{previous}\n{hashlib.sha256(canonical.encode()).hexdigest()}")
        out += [f"{name}:{value}\r\n".encode() for name, value in trailers.items()]
        out.append(f"x-amz-trailer-signature:{signature}\r\n\r\n".encode())
    return b"".join(out)


def b64(algorithm: str, data: bytes) -> str:
    checksum = new_checksum(algorithm)
    checksum.update(data)
    return base64.b64encode(checksum.digest()).decode()


def decode(decoder: ChunkedDecoder, body: bytes, pieces: list[int] | None = None) -> bytes:
    """
    Feed C{body} in pieces of the given sizes (the rest in one), then finish.
    """
    out, position = [], 0
    for size in pieces or []:
        out.append(decoder.feed(body[position:position + size]))
        position += size
    out.append(decoder.feed(body[position:]))
    decoder.finish()
    return b"".join(out)


def random_pieces(seed: int, total: int) -> list[int]:
    chooser = random.Random(seed)
    pieces = []
    while sum(pieces) < total:
        pieces.append(chooser.choice([1, 2, 3, 7, 64, 90, 1000, 65536, 70000]))
    return pieces


class DocumentationExampleTests(SynchronousTestCase):
    """
    The S3 documentation's chunked uploads, whole and in every split.
    """

    def test_encoder_reproduces_example(self):
        """The test encoder gives the documentation's body byte for byte (so its other bodies are right)."""
        self.assertEqual(encode_signed([b"a" * 65536, b"a" * 1024]), EXAMPLE_BODY)

    def test_signed_example(self):
        """The signed example decodes to its 66560 "a" bytes."""
        self.assertEqual(decode(example_decoder(), EXAMPLE_BODY), EXAMPLE_PAYLOAD)

    def test_byte_by_byte(self):
        """Fed one byte at a time, chunk headers and CRLFs split everywhere, it decodes the same."""
        decoder = example_decoder()
        out = b"".join(decoder.feed(EXAMPLE_BODY[i:i + 1]) for i in range(len(EXAMPLE_BODY)))
        decoder.finish()
        self.assertEqual(out, EXAMPLE_PAYLOAD)

    def test_random_splits(self):
        """Fed in random splits, the signed and the trailer examples decode the same."""
        for seed in range(40):
            self.assertEqual(decode(example_decoder(), EXAMPLE_BODY, random_pieces(seed, len(EXAMPLE_BODY))),
                             EXAMPLE_PAYLOAD)
            self.assertEqual(decode(trailer_decoder(), TRAILER_BODY, random_pieces(seed, len(TRAILER_BODY))),
                             EXAMPLE_PAYLOAD)

    def test_signed_trailer_example(self):
        """The signed-trailer example decodes; its CRC32C and trailer signature check."""
        self.assertEqual(decode(trailer_decoder(), TRAILER_BODY), EXAMPLE_PAYLOAD)

    def test_trailer_signature_vector(self):
        """The trailer signature of the page's earlier version (checked by minio-go) verifies too."""
        chain = SignatureChain(EXAMPLE_KEY, EXAMPLE_TIME, EXAMPLE_SCOPE,
                               "e05ab64fe1dfdbf0b5870abbaabdb063c371d4e96f2767e6934d90529c5ae850")
        chain.verify_trailer(b"x-amz-checksum-crc32c:wdBDMA==\n",
                             "41e14ac611e27a8bb3d66c3bad6856f209297767d5dd4fc87d8fa9e422e03faf")

    def test_unsigned_trailer(self):
        """An unsigned body with a CRC32 trailer decodes, in every split."""
        for seed in range(20):
            decoder = trailer_decoder(False, ("x-amz-checksum-crc32",), 11)
            self.assertEqual(decode(decoder, UNSIGNED_TRAILER_BODY,
                                    random_pieces(seed, len(UNSIGNED_TRAILER_BODY))), b"hello world")

    def test_streams(self):
        """Bytes of a chunk come out as they arrive: the decoder does not hold a chunk."""
        decoder = example_decoder()
        self.assertEqual(decoder.feed(EXAMPLE_BODY[:EXAMPLE_BODY.index(b"\r\n") + 5]), b"aaa")


class TamperingTests(SynchronousTestCase):
    """
    Every change to a signed body is caught, before the reader reaches its end.
    """

    def assert_code(self, code: str, decoder: ChunkedDecoder, body: bytes) -> S3Error:
        error = self.assertRaises(S3Error, decode, decoder, body)
        self.assertEqual(error.code, code)
        return error

    def test_changed_byte(self):
        """One changed payload byte is SignatureDoesNotMatch."""
        body = bytearray(EXAMPLE_BODY)
        body[5000] = ord("b")
        error = self.assert_code("SignatureDoesNotMatch", example_decoder(), bytes(body))
        self.assertEqual(error.status, 403)

    def test_changed_signature(self):
        """A changed chunk signature is SignatureDoesNotMatch."""
        self.assert_code("SignatureDoesNotMatch", example_decoder(),
                         EXAMPLE_BODY.replace(b"ad80c730", b"ad80c731"))

    def test_other_seed(self):
        """Chunks signed for another request (another seed) are SignatureDoesNotMatch."""
        self.assert_code("SignatureDoesNotMatch", example_decoder(),
                         encode_signed([b"a" * 65536, b"a" * 1024], seed="0" * 64))

    def test_reordered_or_dropped(self):
        """Swapped or dropped chunks break the chain."""
        first, second = b"a" * 100, b"b" * 100
        body = encode_signed([first, second])
        one = body.index(b"64;", 1)
        last = body.index(b"0;")
        self.assert_code("SignatureDoesNotMatch", example_decoder(200), body[one:last] + body[:one] + body[last:])
        self.assert_code("SignatureDoesNotMatch", example_decoder(100), body[one:])

    def test_missing_chunk_signature(self):
        """A chunk without chunk-signature in a signed body is InvalidRequest."""
        self.assert_code("InvalidRequest", example_decoder(5), b"5\r\nhello\r\n0\r\n\r\n")

    def test_signed_trailer_changed(self):
        """A changed trailer value under a signature is SignatureDoesNotMatch."""
        self.assert_code("SignatureDoesNotMatch", trailer_decoder(),
                         TRAILER_BODY.replace(b"sOO8/Q==", b"sOO8/R=="))

    def test_signed_trailer_wrong_checksum(self):
        """A correctly signed but wrong trailer checksum is BadDigest."""
        payload = b"a" * 100
        good = encode_signed([payload], {"x-amz-checksum-crc32c": b64("crc32c", payload)}, TRAILER_SEED)
        self.assertEqual(decode(trailer_decoder(length=100), good), payload)
        bad = encode_signed([payload], {"x-amz-checksum-crc32c": b64("crc32c", b"b" * 100)}, TRAILER_SEED)
        self.assert_code("BadDigest", trailer_decoder(length=100), bad)

    def test_signed_trailer_without_signature(self):
        """Signed trailers without x-amz-trailer-signature are MalformedTrailerError."""
        body = TRAILER_BODY[:TRAILER_BODY.index(b"x-amz-trailer-signature")] + b"\r\n"
        self.assert_code("MalformedTrailerError", trailer_decoder(), body)

    def test_unsigned_trailer_wrong(self):
        """A wrong unsigned trailer checksum is BadDigest."""
        self.assert_code("BadDigest", trailer_decoder(False, ("x-amz-checksum-crc32",), 11),
                         UNSIGNED_TRAILER_BODY.replace(b"DUoRhQ==", b"AAAAAA=="))

    def test_declared_trailer_missing(self):
        """A declared trailer that never comes is MalformedTrailerError."""
        self.assert_code("MalformedTrailerError", trailer_decoder(False, ("x-amz-checksum-crc32",), 11),
                         b"b\r\nhello world\r\n0\r\n\r\n")

    def test_undeclared_trailer(self):
        """A trailer not declared in x-amz-trailer is MalformedTrailerError."""
        self.assert_code("MalformedTrailerError", trailer_decoder(False, ("x-amz-checksum-crc32",), 11),
                         UNSIGNED_TRAILER_BODY.replace(b"\r\n\r\n", b"\r\nx-amz-checksum-sha1:AAAA\r\n\r\n"))


class FramingTests(SynchronousTestCase):
    """
    Malformed, short and oversized bodies.
    """

    def unsigned(self, length: int) -> ChunkedDecoder:
        return ChunkedDecoder(length, PayloadDigests(), None, ())

    def assert_code(self, code: str, decoder: ChunkedDecoder, body: bytes) -> S3Error:
        error = self.assertRaises(S3Error, decode, decoder, body)
        self.assertEqual(error.code, code)
        return error

    def test_shorter_than_declared(self):
        """Fewer decoded bytes than x-amz-decoded-content-length is IncompleteBody."""
        self.assert_code("IncompleteBody", example_decoder(len(EXAMPLE_PAYLOAD) + 1), EXAMPLE_BODY)

    def test_longer_than_declared(self):
        """A chunk reaching past x-amz-decoded-content-length is refused at its header."""
        decoder = example_decoder(len(EXAMPLE_PAYLOAD) - 1)
        second_header = EXAMPLE_BODY.index(b"400;")
        decoder.feed(EXAMPLE_BODY[:second_header])
        error = self.assertRaises(S3Error, decoder.feed, EXAMPLE_BODY[second_header:second_header + 100])
        self.assertEqual(error.code, "InvalidRequest")

    def test_truncated(self):
        """A body cut anywhere before its final chunk is IncompleteBody."""
        for end in (0, 10, 100, 66000, len(EXAMPLE_BODY) - 90):
            self.assert_code("IncompleteBody", example_decoder(), EXAMPLE_BODY[:end])

    def test_final_crlf_forgiven(self):
        """A body ending right after its final signed chunk header is accepted."""
        self.assertEqual(decode(example_decoder(), EXAMPLE_BODY[:-2]), EXAMPLE_PAYLOAD)

    def test_chunk_longer_than_size(self):
        """Data running past its chunk's size is InvalidRequest."""
        self.assert_code("InvalidRequest", self.unsigned(4), b"4\r\nhello\r\n0\r\n\r\n")

    def test_bad_sizes(self):
        """A chunk size that is not 1 to 16 hex digits is InvalidRequest."""
        for size in [b"", b"x", b"0x5", b"+5", b"1_0", b"0" * 17 + b"1"]:
            self.assert_code("InvalidRequest", self.unsigned(5), size + b"\r\nhello\r\n0\r\n\r\n")

    def test_bare_lf(self):
        """Lines ended by LF alone are InvalidRequest."""
        self.assert_code("InvalidRequest", self.unsigned(5), b"5\nhello\n0\n\n")

    def test_long_line(self):
        """A line over the cap is refused as soon as the cap is passed, without waiting for its end."""
        decoder = self.unsigned(5)
        self.assertEqual(decoder.feed(b"5;" + b"x" * (MAX_LINE - 2)), b"")
        error = self.assertRaises(S3Error, decoder.feed, b"y" * 10)
        self.assertEqual(error.code, "InvalidRequest")

    def test_after_end(self):
        """Bytes after the end of the body are InvalidRequest."""
        self.assert_code("InvalidRequest", self.unsigned(5), b"5\r\nhello\r\n0\r\n\r\nmore")

    def test_too_many_trailers(self):
        """An endless trailer section is MalformedTrailerError."""
        body = b"0\r\n" + b"".join(b"x-amz-meta-%d:1\r\n" % i for i in range(100)) + b"\r\n"
        self.assert_code("MalformedTrailerError", self.unsigned(0), body)


class DecodedBodyTests(SynchronousTestCase):
    """
    The file-like reader the storage engine reads from a worker thread.
    """

    def test_reads(self):
        """read(n) returns the decoded bytes in pieces of at most n, then b""."""
        body = DecodedBody(io.BytesIO(EXAMPLE_BODY), example_decoder())
        pieces = list(iter(lambda: body.read(5000), b""))
        self.assertTrue(all(len(piece) <= 5000 for piece in pieces))
        self.assertEqual(b"".join(pieces), EXAMPLE_PAYLOAD)

    def test_failure_instead_of_eof(self):
        """A bad last chunk is raised by read, never b"", and again on every later read."""
        body = DecodedBody(io.BytesIO(EXAMPLE_BODY.replace(b"b6c6ea8a", b"b6c6ea8b")), example_decoder())

        def read_to_end():
            while body.read(4096):
                pass

        self.assertRaises(S3Error, read_to_end)
        self.assertRaises(S3Error, body.read, 4096)

    def test_read_all(self):
        """read() returns the whole payload."""
        self.assertEqual(DecodedBody(io.BytesIO(EXAMPLE_BODY), example_decoder()).read(), EXAMPLE_PAYLOAD)


class OpenPayloadTests(SynchronousTestCase):
    """
    The reader open_payload chooses for each x-amz-content-sha256 form.
    """

    def verified(self, content_sha256: str) -> sigv4.VerifiedRequest:
        return sigv4.VerifiedRequest(EXAMPLE_KEY_ID, EXAMPLE_TIME, EXAMPLE_SCOPE, EXAMPLE_KEY, EXAMPLE_SEED,
                                     content_sha256)

    def read(self, body: bytes, content_sha256: str, headers: dict[str, str]) -> bytes:
        return open_payload(io.BytesIO(body), self.verified(content_sha256), headers).read()

    def test_documentation_example(self):
        """The documented request verifies and its payload reads back decoded."""
        auth = sigv4.verify_request("PUT", b"/examplebucket/chunkObject.txt", EXAMPLE_SEED_HEADERS,
                                    {EXAMPLE_KEY_ID: EXAMPLE_SECRET}.get, EXAMPLE_NOW)
        self.assertEqual(open_payload(io.BytesIO(EXAMPLE_BODY), auth, EXAMPLE_SEED_HEADERS).read(),
                         EXAMPLE_PAYLOAD)

    def test_documentation_trailer_example(self):
        """The documented signed-trailer request verifies and its payload reads back decoded."""
        auth = sigv4.verify_request("PUT", b"/examplebucket/chunkObject.txt", TRAILER_SEED_HEADERS,
                                    {EXAMPLE_KEY_ID: EXAMPLE_SECRET}.get, EXAMPLE_NOW)
        self.assertEqual(open_payload(io.BytesIO(TRAILER_BODY), auth, TRAILER_SEED_HEADERS).read(),
                         EXAMPLE_PAYLOAD)

    def test_hex_sha256(self):
        """A hex x-amz-content-sha256 is checked against the body: XAmzContentSHA256Mismatch."""
        self.assertEqual(self.read(b"data", hashlib.sha256(b"data").hexdigest(), {}), b"data")
        error = self.assertRaises(S3Error, self.read, b"data", hashlib.sha256(b"dada").hexdigest(), {})
        self.assertEqual((error.code, error.status), ("XAmzContentSHA256Mismatch", 400))

    def test_unsigned_payload(self):
        """UNSIGNED-PAYLOAD reads as sent, still checking Content-MD5 and checksum headers."""
        self.assertEqual(self.read(b"data", sigv4.UNSIGNED_PAYLOAD, {}), b"data")
        error = self.assertRaises(S3Error, self.read, b"data", sigv4.UNSIGNED_PAYLOAD,
                                  {"content-md5": b64("md5", b"dada")})
        self.assertEqual(error.code, "BadDigest")

    def test_chunked_header_checksum(self):
        """A checksum header on an aws-chunked request is checked against the decoded bytes."""
        headers = {"x-amz-decoded-content-length": "66560", "x-amz-checksum-crc32": b64("crc32", EXAMPLE_PAYLOAD)}
        self.assertEqual(self.read(EXAMPLE_BODY, sigv4.STREAMING_SIGNED, headers), EXAMPLE_PAYLOAD)
        headers["x-amz-checksum-crc32"] = b64("crc32", b"x")
        self.assertRaises(S3Error, self.read, EXAMPLE_BODY, sigv4.STREAMING_SIGNED, headers)

    def test_decoded_length_required(self):
        """An aws-chunked request without a numeric x-amz-decoded-content-length is refused up front."""
        for headers, code in [({}, "MissingContentLength"),
                              ({"x-amz-decoded-content-length": "-1"}, "InvalidArgument"),
                              ({"x-amz-decoded-content-length": "\u00b2"}, "InvalidArgument")]:
            error = self.assertRaises(S3Error, open_payload, io.BytesIO(b""),
                                      self.verified(sigv4.STREAMING_UNSIGNED_TRAILER), headers)
            self.assertEqual(error.code, code)

    def test_unknown_trailer(self):
        """A declared trailer that is no S3 checksum is InvalidRequest."""
        error = self.assertRaises(S3Error, open_payload, io.BytesIO(b""),
                                  self.verified(sigv4.STREAMING_UNSIGNED_TRAILER),
                                  {"x-amz-decoded-content-length": "0", "x-amz-trailer": "x-amz-meta-a"})
        self.assertEqual(error.code, "InvalidRequest")

    def test_trailer_needs_trailer_form(self):
        """x-amz-trailer with the trailer-less signed form is InvalidRequest."""
        error = self.assertRaises(S3Error, open_payload, io.BytesIO(b""), self.verified(sigv4.STREAMING_SIGNED),
                                  {"x-amz-decoded-content-length": "0", "x-amz-trailer": "x-amz-checksum-crc32"})
        self.assertEqual(error.code, "InvalidRequest")

    def test_stored_content_encoding(self):
        """aws-chunked is dropped from the Content-Encoding to store; other codings stay."""
        self.assertIsNone(stored_content_encoding("aws-chunked"))
        self.assertIsNone(stored_content_encoding(None))
        self.assertEqual(stored_content_encoding("aws-chunked, gzip"), "gzip")
        self.assertEqual(stored_content_encoding("gzip,AWS-CHUNKED, br"), "gzip, br")


class BotocorePayloadTests(SynchronousTestCase):
    """
    PutObject bodies exactly as boto3 sends them with default settings:
    a signed SHA-256 and checksum header over HTTP, the unsigned
    aws-chunked trailer form over HTTPS.
    """

    DATA = bytes(range(256)) * 5000

    def put(self, endpoint: str, algorithm: str, data: bytes = DATA) -> tuple[sigv4.VerifiedRequest, dict, bytes]:
        method, target, headers, body, now = botocore_request(
            lambda client: client.put_object(Bucket="media", Key="k", Body=data, ChecksumAlgorithm=algorithm),
            endpoint=endpoint)
        auth = sigv4.verify_request(method, target, headers, {KEY_ID: SECRET}.get, now)
        return auth, headers, body

    def test_http_checksum_header(self):
        """Over HTTP every checksum algorithm arrives as a header, and is verified."""
        for algorithm in ("CRC32", "CRC32C", "CRC64NVME", "SHA1", "SHA256"):
            auth, headers, body = self.put("http://127.0.0.1:8080", algorithm)
            self.assertIn("x-amz-checksum-" + algorithm.lower(), headers)
            self.assertEqual(open_payload(io.BytesIO(body), auth, headers).read(), self.DATA)

    def test_http_tampered(self):
        """A changed byte under boto3's signed SHA-256 is XAmzContentSHA256Mismatch."""
        auth, headers, body = self.put("http://127.0.0.1:8080", "CRC32")
        error = self.assertRaises(S3Error, open_payload(io.BytesIO(body[:-1] + b"!"), auth, headers).read)
        self.assertEqual(error.code, "XAmzContentSHA256Mismatch")

    def test_https_trailer(self):
        """Over HTTPS boto3 sends aws-chunked with a trailing checksum: decoded and verified for each algorithm."""
        for algorithm in ("CRC32", "CRC32C", "CRC64NVME", "SHA1", "SHA256"):
            auth, headers, body = self.put("https://127.0.0.1:8443", algorithm)
            self.assertEqual(auth.content_sha256, sigv4.STREAMING_UNSIGNED_TRAILER)
            self.assertEqual(headers["content-encoding"], "aws-chunked")
            self.assertEqual(open_payload(io.BytesIO(body), auth, headers).read(), self.DATA)

    def test_https_tampered(self):
        """A changed byte in boto3's unsigned aws-chunked body is BadDigest from its trailer."""
        auth, headers, body = self.put("https://127.0.0.1:8443", "CRC32")
        tampered = body.replace(b"\x00\x01\x02", b"\x00\x01\x03", 1)
        error = self.assertRaises(S3Error, open_payload(io.BytesIO(tampered), auth, headers).read)
        self.assertEqual(error.code, "BadDigest")
