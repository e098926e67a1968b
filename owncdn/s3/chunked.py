"""
Request payloads: the plain forms and the C{aws-chunked} streaming forms,
decoded and verified as the storage engine reads them.

L{open_payload} is the entry point: given the spooled body and the
L{VerifiedRequest} of its headers it returns a reader whose C{read(n)}
yields the object's bytes (never the C{aws-chunked} framing) and raises
an L{S3Error} instead of reaching end-of-file when a chunk signature,
the trailer signature, a checksum or the declared length is wrong.

An C{aws-chunked} body is::

    <hex size>[;chunk-signature=<sig>]\\r\\n<size bytes>\\r\\n   (repeated)
    0[;chunk-signature=<sig>]\\r\\n
    then "\\r\\n" alone, or (-TRAILER forms) trailer lines
    x-amz-checksum-crc32c:<base64>\\r\\n[x-amz-trailer-signature:<sig>\\r\\n]\\r\\n

Each chunk signature signs the previous one (the first signs the seed
signature of the Authorization header), the chunk's SHA-256 and the
time and scope of the request, so chunks can be neither altered,
reordered nor dropped.

The decoder holds no chunk in memory: bytes pass through as they arrive
and each chunk's signature is checked when its last byte has passed.
Bytes handed out before a failure are therefore unverified; the failure
is raised before end-of-file, and the caller must discard everything it
read (the storage engine stores nothing from a read that raised).
"""

import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from typing import BinaryIO

from owncdn.s3.checksums import ALGORITHMS, CHECKSUM_PREFIX, CheckedReader, PayloadDigests, VerifiedBody
from owncdn.s3.errors import S3Error
from owncdn.s3.sigv4 import (
    EMPTY_SHA256, STREAMING_FORMS, STREAMING_SIGNED, STREAMING_UNSIGNED_TRAILER, UNSIGNED_PAYLOAD,
    VerifiedRequest, sign,
)

# A chunk header is "<hex>;chunk-signature=<64 hex>", under 100 bytes;
# trailer lines are shorter still.  Longer lines are an attack or garbage.
MAX_LINE = 4096
MAX_TRAILERS = 16
# 16 hex digits already allow 16 EiB: more is never a real size.
_CHUNK_SIZE = re.compile(rb"[0-9a-fA-F]{1,16}")
# How much of the spooled raw body is decoded at a time.
BLOCK = 1 << 16

TRAILER_SIGNATURE = "x-amz-trailer-signature"

_HEADER, _DATA, _DATA_END, _LAST_END, _TRAILERS, _DONE = range(6)


class SignatureChain:
    """
    The chain of chunk signatures that starts at the seed signature.
    """

    def __init__(self, signing_key: bytes, timestamp: str, scope: str, seed_signature: str):
        self._key = signing_key
        self._prefix = f"\n{timestamp}\n{scope}\n"
        self._previous = seed_signature

    def verify_chunk(self, chunk_sha256: str, signature: str) -> None:
        """
        @raise S3Error: C{SignatureDoesNotMatch}.
        """
        self._verify(f"AWS4-HMAC-SHA256-PAYLOAD{self._prefix}{self._previous}\n{EMPTY_SHA256}\n{chunk_sha256}",
                     signature)

    def verify_trailer(self, canonical_trailers: bytes, signature: str) -> None:
        """
        @param canonical_trailers: each trailer as C{name:value\\n}, sorted.
        @raise S3Error: C{SignatureDoesNotMatch}.
        """
        digest = hashlib.sha256(canonical_trailers).hexdigest()
        self._verify(f"AWS4-HMAC-SHA256-TRAILER{self._prefix}{self._previous}\n{digest}", signature)

    def _verify(self, to_sign: str, signature: str) -> None:
        expected = sign(self._key, to_sign)
        # Bytes, not str: compare_digest refuses non-ASCII str, and the
        # signature is whatever the client sent.
        if not hmac.compare_digest(expected.encode(), signature.encode("latin-1")):
            raise S3Error("SignatureDoesNotMatch", StringToSign=to_sign, SignatureProvided=signature)
        self._previous = expected


class ChunkedDecoder:
    """
    An incremental C{aws-chunked} decoder: C{feed} it the raw body in
    pieces split anywhere, then call C{finish} at its end.

    @param decoded_length: C{x-amz-decoded-content-length}.
    @param digests: updated with the decoded bytes and verified, with the
        trailers, by C{finish}.
    @param chain: the signature chain for the signed forms, else C{None}.
    @param trailers: the trailer names declared in C{x-amz-trailer}, for
        the C{-TRAILER} forms; C{None} for the forms without trailers.
    """

    def __init__(self, decoded_length: int, digests: PayloadDigests,
                 chain: SignatureChain | None = None, trailers: Sequence[str] | None = None):
        self._expected_length = decoded_length
        self.digests = digests
        self._chain = chain
        self._declared = None if trailers is None else frozenset(trailers)
        self._state = _HEADER
        self._line = b""
        self._remaining = 0
        self._produced = 0
        self._signature = ""
        self._chunk_hash = hashlib.sha256()
        self._trailers: dict[str, str] = {}

    def feed(self, data: bytes) -> bytes:
        """
        Decode the next piece of the raw body.

        @return: the payload bytes it completed, possibly C{b""}.
        @raise S3Error: on bad framing, a length or signature mismatch.
        """
        out = []
        position, end = 0, len(data)
        while position < end:
            if self._state == _DATA:
                take = min(self._remaining, end - position)
                piece = data if take == end else data[position:position + take]
                position += take
                self._remaining -= take
                self.digests.update(piece)
                if self._chain is not None:
                    self._chunk_hash.update(piece)
                out.append(piece)
                if self._remaining == 0:
                    self._data_done()
            elif self._state == _DONE:
                raise _malformed("there are bytes after its end")
            else:
                position = self._scan_line(data, position)
        return b"".join(out)

    def finish(self) -> None:
        """
        The raw body has ended: check that it was complete, and verify the
        trailer signature and every checksum.

        @raise S3Error: C{IncompleteBody}, C{MalformedTrailerError},
            C{SignatureDoesNotMatch}, C{BadDigest}...
        """
        if self._line:
            raise S3Error("IncompleteBody", "The aws-chunked body ends in the middle of a line.")
        if self._state == _TRAILERS:
            self._trailers_done()
        elif self._state not in (_LAST_END, _DONE):
            # (A missing CRLF after the final chunk is forgiven: the
            # payload was complete and its last signature checked.)
            raise S3Error("IncompleteBody", "The aws-chunked body ends before its final chunk.")
        self._state = _DONE
        if self._produced != self._expected_length:
            raise S3Error("IncompleteBody", f"The decoded body has {self._produced} bytes; "
                          f"x-amz-decoded-content-length says {self._expected_length}.")
        self.digests.verify(self._trailers)

    def _scan_line(self, data: bytes, position: int) -> int:
        # Look no further than the line cap, so garbage costs no more than that.
        limit = position + MAX_LINE + 2 - len(self._line)
        newline = data.find(b"\n", position, limit)
        if newline == -1:
            if limit < len(data):
                raise _malformed("a line is too long")
            self._line += data[position:]
            return len(data)
        line = self._line + data[position:newline + 1]
        self._line = b""
        if not line.endswith(b"\r\n"):
            raise _malformed("lines must end with CRLF")
        self._on_line(line[:-2])
        return newline + 1

    def _on_line(self, line: bytes) -> None:
        if self._state == _HEADER:
            self._chunk_header(line)
        elif self._state in (_DATA_END, _LAST_END):
            if line:
                raise _malformed("a chunk is longer than its stated size")
            self._state = _HEADER if self._state == _DATA_END else _DONE
        elif line:
            self._trailer_line(line)
        elif self._trailers or not self._declared:
            self._trailers_done()
            self._state = _DONE
        # else: the blank line the S3 documentation puts between the final
        # chunk and the trailers it declared.

    def _chunk_header(self, line: bytes) -> None:
        size_text, *extensions = line.split(b";")
        if not _CHUNK_SIZE.fullmatch(size_text):
            raise _malformed("a chunk size is not 1 to 16 hex digits")
        size = int(size_text, 16)
        if size > self._expected_length - self._produced:
            raise _malformed("the chunks are longer than x-amz-decoded-content-length")
        self._signature = ""
        for extension in extensions:
            name, _, value = extension.partition(b"=")
            if name.strip() == b"chunk-signature":
                self._signature = value.strip().decode("latin-1")
        if self._chain is not None and not self._signature:
            raise _malformed("a chunk has no chunk-signature")
        self._produced += size
        self._remaining = size
        if size:
            self._chunk_hash = hashlib.sha256()
            self._state = _DATA
        else:
            self._verify_chunk(EMPTY_SHA256)
            self._state = _LAST_END if self._declared is None else _TRAILERS

    def _data_done(self) -> None:
        self._verify_chunk(self._chunk_hash.hexdigest())
        self._state = _DATA_END

    def _verify_chunk(self, chunk_sha256: str) -> None:
        if self._chain is not None:
            self._chain.verify_chunk(chunk_sha256, self._signature)

    def _trailer_line(self, line: bytes) -> None:
        name, colon, value = line.decode("latin-1").partition(":")
        name = name.strip().lower()
        if not colon or not name or name in self._trailers or len(self._trailers) >= MAX_TRAILERS:
            raise S3Error("MalformedTrailerError")
        self._trailers[name] = value.strip()

    def _trailers_done(self) -> None:
        signature = self._trailers.pop(TRAILER_SIGNATURE, None)
        undeclared = self._trailers.keys() - (self._declared or frozenset())
        if undeclared:
            raise S3Error("MalformedTrailerError", f"The trailer {sorted(undeclared)[0]} was not declared in "
                          "x-amz-trailer.")
        if self._chain is not None:
            if signature is None:
                raise S3Error("MalformedTrailerError", "The trailer has no x-amz-trailer-signature.")
            canonical = "".join(f"{name}:{value}\n" for name, value in sorted(self._trailers.items()))
            self._chain.verify_trailer(canonical.encode("latin-1"), signature)


class DecodedBody(CheckedReader):
    """
    The payload of a spooled C{aws-chunked} body: C{read(n)} decodes the
    raw file block by block, holding at most one block and C{n} bytes.
    """

    def __init__(self, raw: BinaryIO, decoder: ChunkedDecoder):
        super().__init__(decoder.digests)
        self._raw = raw
        self._decoder = decoder
        self._buffer = bytearray()
        self._raw_done = False

    def _read(self, size: int) -> bytes:
        while len(self._buffer) < size and not self._raw_done:
            block = self._raw.read(BLOCK)
            if block:
                self._buffer += self._decoder.feed(block)
            else:
                self._raw_done = True
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def _finish(self) -> None:
        self._decoder.finish()


def open_payload(raw: BinaryIO, auth: VerifiedRequest, headers: Mapping[str, str]) -> CheckedReader:
    """
    The reader of a request's payload, chosen by its
    C{x-amz-content-sha256} form: the raw body checked against its hex
    SHA-256 (if signed that way) and any C{Content-MD5} or
    C{x-amz-checksum-*} header, or the decoded C{aws-chunked} body checked
    against its chunk signatures, trailer and headers.

    @param raw: the spooled body, positioned at its start.
    @param auth: what L{owncdn.s3.sigv4.verify_request} returned.
    @param headers: the request headers, lower-case name to value.
    @raise S3Error: for headers that make the payload unreadable
        (malformed digests, C{MissingContentLength}, unknown trailers);
        the reader raises the rest.
    """
    form = auth.content_sha256
    if form not in STREAMING_FORMS:
        signed_hash = None if form == UNSIGNED_PAYLOAD else form
        return VerifiedBody(raw, PayloadDigests.from_headers(headers, signed_hash))
    declared = headers.get("x-amz-decoded-content-length")
    if declared is None:
        raise S3Error("MissingContentLength", "An aws-chunked body needs x-amz-decoded-content-length.")
    if not (declared.isascii() and declared.isdigit()):
        raise S3Error("InvalidArgument", "x-amz-decoded-content-length is not a number.")
    digests = PayloadDigests.from_headers(headers)
    trailers = None
    if form != STREAMING_SIGNED:
        trailers = [name.strip().lower() for name in headers.get("x-amz-trailer", "").split(",") if name.strip()]
        for name in trailers:
            algorithm = name.removeprefix(CHECKSUM_PREFIX)
            if not name.startswith(CHECKSUM_PREFIX) or algorithm not in ALGORITHMS:
                raise S3Error("InvalidRequest", f"The trailer {name} is not supported.")
            digests.expect_trailer(algorithm)
    elif "x-amz-trailer" in headers:
        raise S3Error("InvalidRequest", f"x-amz-trailer needs x-amz-content-sha256: {STREAMING_SIGNED}-TRAILER.")
    chain = None
    if form != STREAMING_UNSIGNED_TRAILER:
        chain = SignatureChain(auth.signing_key, auth.timestamp, auth.scope, auth.signature)
    return DecodedBody(raw, ChunkedDecoder(int(declared), digests, chain, trailers))


def stored_content_encoding(value: str | None) -> str | None:
    """
    The C{Content-Encoding} to store for an object: the request's, less
    the C{aws-chunked} transfer framing (S3 never stores that).
    """
    if value is None:
        return None
    codings = [coding.strip() for coding in value.split(",")]
    kept = [coding for coding in codings if coding and coding.lower() != "aws-chunked"]
    return ", ".join(kept) or None


def _malformed(reason: str) -> S3Error:
    return S3Error("InvalidRequest", f"The aws-chunked body is malformed: {reason}.")
