"""
How file content is cut into chunks and how each chunk is encoded.

Content is stored as fixed-size chunks so that a byte range reads only
the chunks it covers; each chunk is kept Brotli-compressed when that
makes it clearly smaller, else as it is.  Nothing here knows about
versions, paths or SQLite: the storage engine and a disk cache both
build on these functions.  The figures behind the constants are in
docs/storage.md.
"""

import io
import sqlite3
from collections.abc import Iterator
from typing import BinaryIO

import brotli

# 1 MiB: big enough that streaming pays one thread hop and one SQLite
# lookup per MiB (well over 1 GB/s end to end), small enough that a
# byte range never decodes much it does not return.
CHUNK_SIZE = 1024 * 1024

# Quality 4 compresses text at about 110 MB/s, quality 5 at 60 MB/s for
# a 7% better ratio: 4 keeps uploads of big text near network speed.
# Small chunks are whole small files, the ones browsers get as stored
# Brotli; quality 5 makes them 6% smaller than 4 for 0.07 ms more per
# 16 KiB.  Qualities 10 and 11 would win another 9-12% but cost 6-16 ms
# a file in the single writer thread, capping small uploads at under
# 200 a second.
QUALITY = 4
SMALL_CHUNK = 64 * 1024
SMALL_CHUNK_QUALITY = 5

# Bodies smaller than this are stored as they are.  With its response
# headers (about 300 bytes from the daemon) such a body fits in one TCP
# segment (1,448 bytes of payload on an Ethernet path, less TLS's ~30)
# compressed or not, so Brotli would save no packet and no round trip,
# while costing the single writer thread ~20 us per upload and every
# reader a decompression.  docs/storage.md has the measurements.
MIN_COMPRESS_SIZE = 1100

# A compressed chunk is kept only if it saves at least 1/32 of the raw
# size: below that every read would pay for decompression to save
# almost no space.
MIN_SAVING_FRACTION = 32

# Incompressible data (JPEG, video, archives) is recognised from a few
# samples compressed at quality 1, so it does not pay for a full
# compression that would be thrown away.  The samples are at most a
# quarter of the data; below PROBE_MIN_SIZE a full attempt costs little
# more than the probe would.
SAMPLE_SLICE = 4096
SAMPLE_SLICES = 4
PROBE_MIN_SIZE = 2048
SAMPLE_QUALITY = 1
# A sample that does not shrink below 90% means the chunk would not get
# under the MIN_SAVING_FRACTION bar either.
SAMPLE_MAX_RATIO = 0.9


# Chunks at least this big are written into a zero-filled blob of their
# size rather than bound as a parameter: binding copies the whole chunk
# once more (SQLite takes a private copy of a bound Python bytes), which
# is about 0.1 CPU-s per GiB uploaded; filling zeros costs less than
# that copy.  Smaller chunks are cheaper in one statement.
BLOB_WRITE_SIZE = 256 * 1024


def looks_compressible(data: bytes) -> bool:
    """
    Whether compressing C{data} is worth trying, judged from evenly
    spaced samples.  Data under L{PROBE_MIN_SIZE} is always tried.
    """
    if len(data) < PROBE_MIN_SIZE:
        return True
    size = min(SAMPLE_SLICE, len(data) // (4 * SAMPLE_SLICES))
    step = (len(data) - size) // (SAMPLE_SLICES - 1)
    sample = b"".join(data[i * step:i * step + size] for i in range(SAMPLE_SLICES))
    packed = brotli.compress(sample, quality=SAMPLE_QUALITY)
    return len(packed) < len(sample) * SAMPLE_MAX_RATIO


def encode_chunk(data: bytes) -> tuple[bytes, bool]:
    """
    Encode one chunk for storage.

    @return: the stored bytes and whether they are Brotli-compressed.
        A compressed chunk is one complete Brotli stream.
    """
    if len(data) < MIN_COMPRESS_SIZE or not looks_compressible(data):
        return data, False
    quality = SMALL_CHUNK_QUALITY if len(data) <= SMALL_CHUNK else QUALITY
    packed = brotli.compress(data, quality=quality)
    if len(packed) <= len(data) - len(data) // MIN_SAVING_FRACTION - 1:
        return packed, True
    return data, False


def insert_chunk(conn: sqlite3.Connection, key: int, index: int,
                 block: bytes) -> tuple[bytes, bool]:
    """
    Encode C{block} and insert it as chunk C{index} under C{key} (a
    change ID, or staged content's key) into a storage database.

    @return: what L{encode_chunk} made of it.
    """
    stored, compressed = encode_chunk(block)
    if len(stored) < BLOB_WRITE_SIZE:
        conn.execute(
            "INSERT INTO chunks (change_id, idx, compressed, data) VALUES (?, ?, ?, ?)",
            (key, index, compressed, stored),
        )
        return stored, compressed
    row = conn.execute(
        "INSERT INTO chunks (change_id, idx, compressed, data) VALUES (?, ?, ?, zeroblob(?))",
        (key, index, compressed, len(stored)),
    ).lastrowid
    with conn.blobopen("chunks", "data", row) as blob:
        blob.write(stored)
    return stored, compressed


def decode_chunk(stored: bytes, compressed: bool) -> bytes:
    """
    The original bytes of a chunk made by L{encode_chunk}.
    """
    return brotli.decompress(stored) if compressed else stored


def read_blocks(body: BinaryIO, size: int = CHUNK_SIZE) -> Iterator[bytes]:
    """
    Read C{body} to its end in blocks of exactly C{size} bytes (the last
    one shorter), so that chunk boundaries fall at fixed offsets
    whatever sizes the file object's C{read} returns.
    """
    while True:
        block = body.read(size)
        if not block:
            return
        while len(block) < size:
            more = body.read(size - len(block))
            if not more:
                break
            block += more
        yield block


class _Replay:
    """
    A body whose first bytes were read ahead: those, then the rest.
    """

    def __init__(self, head: list[bytes], rest: BinaryIO):
        self._head = head
        self._rest = rest

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            head, self._head = self._head, []
            return b"".join(head) + self._rest.read()
        if not self._head:
            return self._rest.read(size)
        piece = self._head.pop(0)
        if size < len(piece):
            piece, tail = piece[:size], piece[size:]
            self._head.insert(0, tail)
        return piece


def first_chunk(body: BinaryIO, size: int = CHUNK_SIZE) -> tuple[BinaryIO, int | None]:
    """
    Read the first C{size} bytes of C{body} ahead, to learn whether it is
    longer than that.

    @return: a body that reads the same bytes as C{body} did, and the
        content's length when it is at most C{size} (the body has then
        been read to its end), else C{None}.
    """
    head = next(read_blocks(body, size), b"")
    more = body.read(1) if len(head) == size else b""
    if not more:
        return io.BytesIO(head), len(head)
    return _Replay([head, more], body), None


def chunk_span(offset: int, length: int, size: int, chunk_size: int) -> tuple[int, int, int]:
    """
    Where a read of C{length} bytes at C{offset} of a C{size}-byte file
    falls, stopping at the end of the chunk that holds C{offset}.

    @return: the chunk index, and the start and end offsets within that
        chunk; start == end when there is nothing to read.
    """
    if offset < 0 or length < 0:
        raise ValueError(f"cannot read {length} bytes at offset {offset}")
    index = offset // chunk_size
    chunk_start = index * chunk_size
    end = min(offset + length, size, chunk_start + chunk_size)
    start = offset - chunk_start
    return index, start, max(start, end - chunk_start)
