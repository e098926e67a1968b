"""
Tests for L{owncdn.s3.checksums}: the checksum algorithms against
published values, the digests a request states in its headers, and the
plain body reader that checks them.
"""

import base64
import hashlib
import io

from twisted.trial.unittest import SynchronousTestCase

from owncdn.s3.checksums import ALGORITHMS, PayloadDigests, VerifiedBody, decode_checksum, new_checksum
from owncdn.s3.errors import S3Error


def b64(algorithm: str, data: bytes) -> str:
    checksum = new_checksum(algorithm)
    checksum.update(data)
    return base64.b64encode(checksum.digest()).decode()


class AlgorithmTests(SynchronousTestCase):
    """
    The five S3 checksum algorithms and MD5.
    """

    def test_check_values(self):
        """Each CRC gives its catalogued check value for "123456789" (CRC-32, CRC-32C, CRC-64/NVME)."""
        for algorithm, value in [("crc32", "cbf43926"), ("crc32c", "e3069283"), ("crc64nvme", "ae8b14860a799888")]:
            checksum = new_checksum(algorithm)
            checksum.update(b"123456789")
            self.assertEqual(checksum.digest().hex(), value, algorithm)

    def test_s3_values(self):
        """The base64 values S3 documents: crc32("hello world"), crc32c of the chunked example."""
        self.assertEqual(b64("crc32", b"hello world"), "DUoRhQ==")
        self.assertEqual(b64("crc32c", b"a" * 66560), "sOO8/Q==")

    def test_hashes(self):
        """sha1, sha256 and md5 are the hashlib digests."""
        for algorithm in ("sha1", "sha256", "md5"):
            checksum = new_checksum(algorithm)
            checksum.update(b"abc")
            self.assertEqual(checksum.digest(), hashlib.new(algorithm, b"abc").digest())

    def test_streaming(self):
        """Updating piece by piece gives the digest of the whole."""
        data = bytes(range(256)) * 100
        for algorithm in ALGORITHMS:
            checksum = new_checksum(algorithm)
            for start in range(0, len(data), 777):
                checksum.update(data[start:start + 777])
            self.assertEqual(base64.b64encode(checksum.digest()).decode(), b64(algorithm, data), algorithm)

    def test_unknown(self):
        """An unknown algorithm name is a KeyError."""
        self.assertRaises(KeyError, new_checksum, "crc16")

    def test_decode(self):
        """A checksum value must be valid base64 of the algorithm's digest size."""
        self.assertEqual(decode_checksum("crc32", "DUoRhQ=="), bytes.fromhex("0d4a1185"))
        for value in ["DUoRhQ", "DUoRhQ==AA", "not base64!", "AAAAAAAAAAA="]:
            self.assertIsNone(decode_checksum("crc32", value), value)


class PayloadDigestsTests(SynchronousTestCase):
    """
    The digests stated by Content-MD5, x-amz-checksum-* and x-amz-content-sha256.
    """

    DATA = b"hello world"

    def check(self, headers: dict[str, str], content_sha256: str | None = None, data: bytes = DATA) -> None:
        digests = PayloadDigests.from_headers(headers, content_sha256)
        digests.update(data[:4])
        digests.update(data[4:])
        digests.verify()

    def assert_code(self, code: str, *args) -> S3Error:
        error = self.assertRaises(S3Error, self.check, *args)
        self.assertEqual(error.code, code)
        return error

    def test_none(self):
        """No stated digest: nothing to check."""
        self.check({})

    def test_checksum_headers(self):
        """Each x-amz-checksum-* header is verified; a mismatch is BadDigest naming the algorithm."""
        for algorithm in ALGORITHMS:
            self.check({f"x-amz-checksum-{algorithm}": b64(algorithm, self.DATA)})
            error = self.assert_code("BadDigest", {f"x-amz-checksum-{algorithm}": b64(algorithm, b"other")})
            self.assertEqual(error.status, 400)
            self.assertIn(algorithm.upper(), error.message)

    def test_checksum_header_malformed(self):
        """A checksum header that is not base64 of the right size is InvalidRequest."""
        self.assert_code("InvalidRequest", {"x-amz-checksum-crc32": "AAAA"})

    def test_two_checksum_headers(self):
        """Two x-amz-checksum-* headers are InvalidRequest, as on S3."""
        self.assert_code("InvalidRequest", {"x-amz-checksum-crc32": b64("crc32", self.DATA),
                                            "x-amz-checksum-sha1": b64("sha1", self.DATA)})

    def test_other_checksum_headers(self):
        """x-amz-checksum-algorithm, -type and x-amz-sdk-checksum-algorithm state no digest."""
        self.check({"x-amz-checksum-algorithm": "CRC32", "x-amz-checksum-type": "FULL_OBJECT",
                    "x-amz-sdk-checksum-algorithm": "CRC32"})

    def test_content_md5(self):
        """Content-MD5 is verified; a mismatch is BadDigest, a malformed value InvalidDigest."""
        self.check({"content-md5": b64("md5", self.DATA)})
        self.assert_code("BadDigest", {"content-md5": b64("md5", b"other")})
        self.assert_code("InvalidDigest", {"content-md5": "bm90IG1kNQ=="})

    def test_content_sha256(self):
        """A hex x-amz-content-sha256 mismatch is XAmzContentSHA256Mismatch with both digests."""
        good = hashlib.sha256(self.DATA).hexdigest()
        self.check({}, good)
        error = self.assert_code("XAmzContentSHA256Mismatch", {}, "0" * 64)
        self.assertEqual(error.details, {"ClientComputedContentSHA256": "0" * 64,
                                         "S3ComputedContentSHA256": good})

    def test_all_together(self):
        """Content-MD5, a checksum header and the signed SHA-256 are all checked, the signed one first."""
        headers = {"content-md5": b64("md5", self.DATA), "x-amz-checksum-sha256": b64("sha256", self.DATA)}
        self.check(headers, hashlib.sha256(self.DATA).hexdigest())
        self.assert_code("XAmzContentSHA256Mismatch", headers, hashlib.sha256(self.DATA).hexdigest(), b"hello!")
        self.assert_code("BadDigest", headers, None, b"hello!")

    def test_trailer(self):
        """An expected trailer checksum is compared with the trailer given to verify."""
        digests = PayloadDigests()
        digests.expect_trailer("crc32c")
        digests.update(self.DATA)
        digests.verify({"x-amz-checksum-crc32c": b64("crc32c", self.DATA)})
        for trailers, code in [({"x-amz-checksum-crc32c": b64("crc32c", b"x")}, "BadDigest"),
                               ({}, "MalformedTrailerError"),
                               ({"x-amz-checksum-crc32c": "!!"}, "MalformedTrailerError")]:
            error = self.assertRaises(S3Error, digests.verify, trailers)
            self.assertEqual(error.code, code)


class VerifiedBodyTests(SynchronousTestCase):
    """
    The plain body reader: bytes as sent, the check raised from read at the end.
    """

    DATA = bytes(range(256)) * 1000

    def body(self, content_sha256: str) -> VerifiedBody:
        return VerifiedBody(io.BytesIO(self.DATA), PayloadDigests.from_headers({}, content_sha256))

    def test_reads_through(self):
        """A good body reads back whole in blocks, then b""."""
        body = self.body(hashlib.sha256(self.DATA).hexdigest())
        self.assertEqual(b"".join(iter(lambda: body.read(10000), b"")), self.DATA)
        self.assertEqual(body.read(10), b"")

    def test_mismatch_raised_before_eof(self):
        """A mismatch is raised by the read that would have returned b"", and by every read after."""
        body = self.body("0" * 64)
        self.assertEqual(len(body.read(len(self.DATA))), len(self.DATA))
        self.assertRaises(S3Error, body.read, 10)
        self.assertRaises(S3Error, body.read, 10)

    def test_read_all(self):
        """read() with no size reads everything and checks it."""
        self.assertEqual(self.body(hashlib.sha256(self.DATA).hexdigest()).read(), self.DATA)
        self.assertRaises(S3Error, self.body("0" * 64).read)

    def test_read_zero(self):
        """read(0) returns b"" without ending the body."""
        body = self.body("0" * 64)
        self.assertEqual(body.read(0), b"")
        self.assertEqual(len(body.read(5)), 5)
