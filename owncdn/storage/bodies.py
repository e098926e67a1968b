"""
File bodies: one version's content opened for reading.

A small file is read from memory (L{BytesBody}); anything else is read
chunk by chunk from the database (L{StoredBody}), each chunk fetched in
a reader thread when the web layer's producer asks for it.  Both answer
a read with at most the rest of the chunk that holds the offset, so a
caller sees the same pieces whichever body it got.
"""

from collections.abc import Callable
from dataclasses import replace

from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from owncdn.interfaces import FileInfo, IFileBody
from owncdn.storage.chunks import CHUNK_SIZE, chunk_span
from owncdn.storage.reads import StoredVersion


def _piece(chunk: bytes, start: int, end: int) -> bytes:
    # The common case of a whole chunk costs no copy.
    if start == 0 and end == len(chunk):
        return chunk
    return chunk[start:end]


@implementer(IFileBody)
class BytesBody:
    """
    Content held in memory.

    @param br: the content as one complete Brotli stream, when the store
        holds it that way; offered by C{alternate("br")}.
    """

    def __init__(self, info: FileInfo, data: bytes, chunk_size: int = CHUNK_SIZE,
                 br: bytes | None = None):
        self.info = info
        self._data = data
        self._chunk_size = chunk_size
        self._br = br

    def read(self, offset: int, length: int) -> Deferred:
        size = len(self._data)
        if offset == 0 and length >= size <= self._chunk_size:
            # The whole of a small file, as a small GET asks for it.
            return succeed(self._data)
        index, start, end = chunk_span(offset, length, size, self._chunk_size)
        base = index * self._chunk_size
        return succeed(_piece(self._data, base + start, base + end))

    def alternate(self, encoding: str) -> "BytesBody | None":
        if encoding != "br" or self._br is None:
            return None
        return BytesBody(replace(self.info, size=len(self._br)), self._br,
                         chunk_size=max(len(self._br), 1))

    def close(self) -> None:
        pass


# Fetches one chunk of a change in a reader thread: (change_id, index,
# decode) -> Deferred[bytes].
ChunkReader = Callable[[int, int, bool], Deferred]


@implementer(IFileBody)
class StoredBody:
    """
    Content read from the database one chunk at a time.  The last chunk
    fetched is kept, so a caller that reads in pieces smaller than a
    chunk does not fetch (and decompress) the same chunk again.

    @param encoded: read the single stored Brotli chunk as it is (the
        C{br} alternate) instead of the original bytes.
    """

    def __init__(self, stored: StoredVersion, read_chunk: ChunkReader,
                 encoded: bool = False):
        self._stored = stored
        self._read_chunk = read_chunk
        self._encoded = encoded
        if encoded:
            self.info = replace(stored.info, size=stored.br_size)
            self._chunk_size = max(stored.br_size, 1)
        else:
            self.info = stored.info
            self._chunk_size = stored.chunk_size
        self._kept: tuple[int, bytes] | None = None

    def read(self, offset: int, length: int) -> Deferred:
        index, start, end = chunk_span(offset, length, self.info.size, self._chunk_size)
        if start == end:
            return succeed(b"")
        if self._kept is not None and self._kept[0] == index:
            return succeed(_piece(self._kept[1], start, end))

        def keep(chunk: bytes) -> bytes:
            self._kept = (index, chunk)
            return _piece(chunk, start, end)

        d = self._read_chunk(self._stored.change_id, index, not self._encoded)
        return d.addCallback(keep)

    def alternate(self, encoding: str) -> "StoredBody | None":
        if encoding != "br" or self._encoded or self._stored.br_size is None:
            return None
        return StoredBody(self._stored, self._read_chunk, encoded=True)

    def close(self) -> None:
        self._kept = None
