"""
How file content is cut into chunks and how each chunk is encoded.

Content is stored as fixed-size chunks so that a byte range reads only
the chunks it covers; each chunk is kept Brotli-compressed when that
makes it clearly smaller, else as it is.  Nothing here knows about
versions, paths or SQLite: the storage engine and a disk cache both
build on these functions.  The figures behind the constants are in
docs/storage.md.
"""

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

# A compressed chunk is kept only if it saves at least 1/32 of the raw
# size: below that every read would pay for decompression to save
# almost no space.
MIN_SAVING_FRACTION = 32

# Incompressible data (JPEG, video, archives) is recognised from a few
# samples compressed at quality 1, so it does not pay for a full
# compression that would be thrown away.
SAMPLE_SLICE = 4096
SAMPLE_SLICES = 4
SAMPLE_QUALITY = 1
# A sample that does not shrink below 90% means the chunk would not get
# under the MIN_SAVING_FRACTION bar either.
SAMPLE_MAX_RATIO = 0.9


def looks_compressible(data: bytes) -> bool:
    """
    Whether compressing C{data} is worth trying, judged from evenly
    spaced samples.  Data no bigger than the samples is always tried.
    """
    if len(data) <= SAMPLE_SLICE * SAMPLE_SLICES:
        return True
    step = (len(data) - SAMPLE_SLICE) // (SAMPLE_SLICES - 1)
    sample = b"".join(
        data[i * step:i * step + SAMPLE_SLICE] for i in range(SAMPLE_SLICES)
    )
    packed = brotli.compress(sample, quality=SAMPLE_QUALITY)
    return len(packed) < len(sample) * SAMPLE_MAX_RATIO


def encode_chunk(data: bytes) -> tuple[bytes, bool]:
    """
    Encode one chunk for storage.

    @return: the stored bytes and whether they are Brotli-compressed.
        A compressed chunk is one complete Brotli stream.
    """
    if not data or not looks_compressible(data):
        return data, False
    quality = SMALL_CHUNK_QUALITY if len(data) <= SMALL_CHUNK else QUALITY
    packed = brotli.compress(data, quality=quality)
    if len(packed) <= len(data) - len(data) // MIN_SAVING_FRACTION - 1:
        return packed, True
    return data, False


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
