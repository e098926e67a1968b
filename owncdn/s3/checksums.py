"""
The payload checksums S3 clients send, and a body reader that checks
them as the storage engine reads the body.

A client states a digest of its payload in one or more places: the hex
SHA-256 of C{x-amz-content-sha256}, C{Content-MD5}, an
C{x-amz-checksum-<algorithm>} header (what boto3 sends by default over
plain HTTP), or the same name as a trailer after an C{aws-chunked} body.
All of them are computed over the payload bytes in one pass and compared
when the last byte has been read, so a mismatch surfaces as an exception
from C{read} before the reader ever returns end-of-file, and nothing is
stored.

The CRCs come from C{awscrt} (the AWS Common Runtime botocore itself
uses for CRC32C and CRC64NVME): a pure Python CRC would need minutes for
a 1 GiB upload.
"""

import base64
import binascii
import hashlib
import weakref
from collections.abc import Callable, Mapping
from typing import BinaryIO

from awscrt import checksums as crt

from owncdn.digests import BackgroundDigests, Digest
from owncdn.s3.errors import S3Error
from owncdn.storage.staging import staged_of

# The names S3 uses in x-amz-checksum-<name>, in its documentation's order.
ALGORITHMS = ("crc32", "crc32c", "crc64nvme", "sha1", "sha256")
CHECKSUM_PREFIX = "x-amz-checksum-"
# How much a "read everything" call pulls at a time.
_BLOCK = 1 << 16
# How much check_staged reads back at a time (a staged chunk).
STAGED_READ = 1 << 20
# A payload read in blocks of at least BACKGROUND_BLOCK is hashed in a
# thread of its own once BACKGROUND_AFTER bytes have gone by, so that the
# thread storing it only reads and writes (owncdn.digests).
BACKGROUND_BLOCK = 256 * 1024
BACKGROUND_AFTER = 1024 * 1024
_DISPLAY = {"crc32": "CRC32", "crc32c": "CRC32C", "crc64nvme": "CRC64NVME",
            "sha1": "SHA1", "sha256": "SHA256", "md5": "Content-MD5"}


# A running digest, the shape of hashlib's objects.
Checksum = Digest


class _CRC:
    """
    A running CRC over an C{awscrt} function that takes the previous
    value, giving the big-endian bytes S3 base64-encodes.
    """

    __slots__ = ("_function", "_size", "_value")

    def __init__(self, function: Callable[[bytes, int], int], size: int):
        self._function = function
        self._size = size
        self._value = 0

    def update(self, data: bytes, /) -> None:
        self._value = self._function(data, self._value)

    def digest(self) -> bytes:
        return self._value.to_bytes(self._size, "big")


def new_checksum(algorithm: str) -> Checksum:
    """
    A running digest for one of L{ALGORITHMS} or C{"md5"}.

    @raise KeyError: for any other name.
    """
    hashed = _HASHES.get(algorithm)
    if hashed is not None:
        return hashed()
    if algorithm == "crc32":
        return _CRC(crt.crc32, 4)
    if algorithm == "crc32c":
        return _CRC(crt.crc32c, 4)
    if algorithm == "crc64nvme":
        return _CRC(crt.crc64nvme, 8)
    raise KeyError(algorithm)


# hashlib's constructors, which hashlib.new looks up in Python each time.
_HASHES = {"sha1": hashlib.sha1, "sha256": hashlib.sha256, "md5": hashlib.md5}


def digest_size(algorithm: str) -> int:
    return {"crc32": 4, "crc32c": 4, "crc64nvme": 8, "sha1": 20, "sha256": 32, "md5": 16}[algorithm]


def decode_checksum(algorithm: str, value: str) -> bytes | None:
    """
    The digest bytes of a base64 checksum value, or C{None} when it is not
    valid base64 of the algorithm's size.
    """
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == digest_size(algorithm) else None


_CHECKSUM_HEADERS = tuple((name, CHECKSUM_PREFIX + name) for name in ALGORITHMS)


class PayloadDigests:
    """
    Every digest a request promised for its payload, computed in one pass.

    Build it with L{from_headers}; add L{expect_trailer} for a checksum
    that arrives after an C{aws-chunked} body; L{update} it with the
    payload bytes; L{verify} at the end.
    """

    def __init__(self) -> None:
        self._running: dict[str, Checksum] = {}
        # (algorithm, expected digest, the error to raise on a mismatch)
        self._expected: list[tuple[str, bytes, Callable[[bytes, bytes], S3Error]]] = []
        self._trailers: list[str] = []
        self._seen = 0
        self._background: BackgroundDigests | None = None

    @classmethod
    def from_headers(cls, headers: Mapping[str, str], content_sha256: str | None = None) -> "PayloadDigests":
        """
        The digests stated by C{Content-MD5} and C{x-amz-checksum-*}
        request headers, plus C{content_sha256} (the hex value of
        C{x-amz-content-sha256}) when the payload was signed that way.

        @raise S3Error: C{InvalidDigest} for a malformed C{Content-MD5},
            C{InvalidRequest} for a malformed or repeated checksum header.
        """
        digests = cls()
        if content_sha256 is not None:
            digests._expect("sha256", bytes.fromhex(content_sha256), _sha256_mismatch)
        md5 = headers.get("content-md5")
        if md5 is not None:
            expected = decode_checksum("md5", md5)
            if expected is None:
                raise S3Error("InvalidDigest")
            digests._expect("md5", expected, _bad_digest("md5"))
        stated = [name for name, header in _CHECKSUM_HEADERS if header in headers]
        if len(stated) > 1:
            raise S3Error("InvalidRequest", "Expecting a single x-amz-checksum- header. "
                          "Multiple checksum Types are not allowed.")
        for algorithm in stated:
            expected = decode_checksum(algorithm, headers[CHECKSUM_PREFIX + algorithm])
            if expected is None:
                raise S3Error("InvalidRequest", f"Value for {CHECKSUM_PREFIX}{algorithm} header is invalid.")
            digests._expect(algorithm, expected, _bad_digest(algorithm))
        return digests

    def expect_trailer(self, algorithm: str) -> None:
        """
        Compute C{algorithm} too; its expected value is the
        C{x-amz-checksum-<algorithm>} trailer given to L{verify}.
        """
        self._running.setdefault(algorithm, new_checksum(algorithm))
        self._trailers.append(algorithm)

    def update(self, data: bytes) -> None:
        self._seen += len(data)
        if self._background is None and self._running and len(data) >= BACKGROUND_BLOCK \
                and self._seen > BACKGROUND_AFTER:
            self._background = BackgroundDigests(self._running.values())
            # A payload not read to its end (the store failed or was
            # given up) stops its thread once nothing refers to it.
            weakref.finalize(self, self._background.abandon)
        if self._background is not None:
            self._background.update(data)
            return
        for running in self._running.values():
            running.update(data)

    def algorithms(self) -> list[str]:
        """
        The algorithms computed (all but trailer checksums are known
        from the headers).
        """
        return list(self._running)

    def adopt(self, digests: Mapping[str, Checksum]) -> bool:
        """
        Take finished digests of the whole payload, computed elsewhere
        (as a staged body arrived), instead of computing them here.

        @return: whether C{digests} held every algorithm needed; if not,
            nothing was taken.
        """
        if not set(self._running) <= set(digests):
            return False
        self._running = {algorithm: digests[algorithm] for algorithm in self._running}
        return True

    def abandon(self) -> None:
        """
        Stop hashing, without waiting: for a payload not read to its end.
        """
        if self._background is not None:
            self._background.abandon()

    def running(self, algorithm: str) -> Checksum | None:
        """
        The running digest of C{algorithm} if one is being computed
        (see L{CheckedReader.running_digest}).
        """
        return self._running.get(algorithm)

    def verify(self, trailers: Mapping[str, str] | None = None) -> None:
        """
        Compare every computed digest with what the client stated.

        @param trailers: the trailing headers of an C{aws-chunked} body,
            lower-case name to value.
        @raise S3Error: C{BadDigest} or C{XAmzContentSHA256Mismatch} on a
            mismatch, C{MalformedTrailerError} for a missing or malformed
            trailer checksum.
        """
        if self._background is not None:
            self._background.finish()
        expected = list(self._expected)
        for algorithm in self._trailers:
            value = (trailers or {}).get(CHECKSUM_PREFIX + algorithm)
            digest = None if value is None else decode_checksum(algorithm, value)
            if digest is None:
                raise S3Error("MalformedTrailerError",
                              f"The {CHECKSUM_PREFIX}{algorithm} trailer is missing or not valid.")
            expected.append((algorithm, digest, _bad_digest(algorithm)))
        for algorithm, digest, mismatch in expected:
            computed = self._running[algorithm].digest()
            if computed != digest:
                raise mismatch(digest, computed)

    def _expect(self, algorithm: str, digest: bytes, mismatch: Callable[[bytes, bytes], S3Error]) -> None:
        self._running.setdefault(algorithm, new_checksum(algorithm))
        self._expected.append((algorithm, digest, mismatch))


def _sha256_mismatch(stated: bytes, computed: bytes) -> S3Error:
    return S3Error("XAmzContentSHA256Mismatch",
                   ClientComputedContentSHA256=stated.hex(),
                   S3ComputedContentSHA256=computed.hex())


def _bad_digest(algorithm: str) -> Callable[[bytes, bytes], S3Error]:
    def mismatch(stated: bytes, computed: bytes) -> S3Error:
        if algorithm == "md5":
            return S3Error("BadDigest", "The Content-MD5 you specified did not match what we received.",
                           ExpectedDigest=base64.b64encode(stated).decode(),
                           CalculatedDigest=base64.b64encode(computed).decode())
        return S3Error("BadDigest",
                       f"The {_DISPLAY[algorithm]} you specified did not match the calculated checksum.")
    return mismatch


class CheckedReader:
    """
    The base of the body readers: C{read(n)} until C{b""}, where a failed
    check is raised from C{read} instead of end-of-file, and raised again
    on every later call so a caller cannot mistake it for a short body.
    """

    def __init__(self, digests: "PayloadDigests") -> None:
        self._digests = digests
        self._error: S3Error | None = None
        self._done = False

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            # Read to the end, so "read everything" is checked too.
            return b"".join(iter(lambda: self.read(_BLOCK), b""))
        if self._error is not None:
            raise self._error
        if self._done or size == 0:
            return b""
        try:
            data = self._read(size)
            if not data:
                self._finish()
                self._done = True
            return data
        except S3Error as error:
            self._error = error
            self._digests.abandon()
            raise

    def running_digest(self, algorithm: str) -> Checksum | None:
        """
        The digest of C{algorithm} this reader computes anyway over the
        bytes C{read} returns, if it does (L{owncdn.digests.offered_digest}):
        the storage engine and the multipart store take it instead of
        hashing the payload a second time.
        """
        return self._digests.running(algorithm)

    def payload_file(self) -> BinaryIO | None:
        """
        The file that holds exactly the payload from its start, when the
        body was spooled to a file and sent as it is; else C{None}.
        """
        return None

    def _read(self, size: int) -> bytes:
        raise NotImplementedError()

    def _finish(self) -> None:
        raise NotImplementedError()


class VerifiedBody(CheckedReader):
    """
    A plain (not C{aws-chunked}) request body, read as sent and checked
    against C{digests} when the last byte has been read.
    """

    def __init__(self, raw: BinaryIO, digests: PayloadDigests):
        super().__init__(digests)
        self._raw = raw

    def payload_file(self) -> BinaryIO | None:
        try:
            self._raw.fileno()
        except (AttributeError, OSError):
            return None
        return self._raw

    def _read(self, size: int) -> bytes:
        data = self._raw.read(size)
        self._digests.update(data)
        return data

    def _finish(self) -> None:
        self._digests.verify()

    def staged_content(self):
        """
        The staged content the body was stored as while it arrived, if
        it was (L{owncdn.storage.staging}): a plain body is the payload
        unchanged.
        """
        return staged_of(self._raw)

    def check_staged(self, digests: Mapping[str, Checksum]) -> None:
        """
        Check a staged payload, stored without being read through this
        reader, with the digests computed as it arrived; one that was
        not computed then is computed now by reading the payload back.

        @raise S3Error: as L{read} would at the end of the payload.
        """
        if not self._digests.adopt(digests):
            while self.read(STAGED_READ):
                pass
            return
        try:
            self._finish()
        except S3Error as error:
            self._error = error
            raise
        finally:
            self._done = True
