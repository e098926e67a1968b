"""
The bodies a disk cache hands its clients for items read from its
database: a fill in progress (L{DiskFill}), and a hold on an item's
chunks for as long as a client reads them (L{HeldBody}, counted by
L{ItemReaders}, which discards an item once it is neither served nor
read).
"""

from collections.abc import Callable

from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure
from zope.interface import implementer

from owncdn.interfaces import IFileBody


def _piece(chunk: bytes, start: int, end: int) -> bytes:
    if start == 0 and end >= len(chunk):
        return chunk
    return chunk[start:end]


@implementer(IFileBody)
class DiskFill:
    """
    A source body being written into the cache, readable by any number
    of clients while it arrives.  Chunks already written are read from
    the database; the chunk being written and the one arriving are
    read from memory; reads past what has arrived wait for it.

    If the source's body fails, every reader's read fails (the web
    layer aborts those responses) and nothing is cached.
    """

    def __init__(self, info, item_id: int, generation: int, chunk_size: int,
                 read_chunk: Callable[[int, int, bool], Deferred]):
        self.info = info
        self.item_id = item_id
        self.generation = generation
        self.received = 0
        self._chunk_size = chunk_size
        self._read_chunk = read_chunk
        self._written = 0
        self._sealed: dict[int, bytes] = {}
        self._block = bytearray()
        self.block_index = 0
        self._waiting: list[tuple[int, int, Deferred]] = []
        self._failure: Failure | None = None
        self._done = False

    # Fed by DiskCache._copy.

    def add(self, data: bytes) -> None:
        self._block += data
        self.received += len(data)
        self._wake()

    def seal(self) -> tuple[int, bytes]:
        """
        The chunk that has arrived whole, to be written; it is read
        from memory until L{written}.
        """
        index, block = self.block_index, bytes(self._block)
        self._sealed[index] = block
        self._block = bytearray()
        self.block_index += 1
        return index, block

    def written(self, index: int) -> None:
        self._written = index + 1
        self._sealed.pop(index, None)
        self._wake()

    def finish(self) -> None:
        self._done = True
        self._wake()

    def fail(self, failure: Failure) -> None:
        self._failure = failure
        self._sealed.clear()
        self._block = bytearray()
        self._wake()

    # IFileBody

    def read(self, offset: int, length: int) -> Deferred:
        d = self._try(offset, length)
        if d is not None:
            return d
        d = Deferred(lambda d: self._forget(d))
        self._waiting.append((offset, length, d))
        return d

    def _try(self, offset: int, length: int) -> Deferred | None:
        if self._failure is not None:
            return fail(self._failure)
        if offset >= self.info.size:
            return succeed(b"") if self._done else None
        index, start = divmod(offset, self._chunk_size)
        end = min(start + length, self._chunk_size)
        if index < self._written:
            return self._read_chunk(self.item_id, index, True).addCallback(_piece, start, end)
        sealed = self._sealed.get(index)
        if sealed is not None:
            return succeed(_piece(sealed, start, end))
        if index == self.block_index and start < len(self._block):
            return succeed(bytes(self._block[start:end]))
        return None

    def _forget(self, d: Deferred) -> None:
        self._waiting = [w for w in self._waiting if w[2] is not d]

    def _wake(self) -> None:
        waiting, self._waiting = self._waiting, []
        for offset, length, d in waiting:
            ready = self._try(offset, length)
            if ready is None:
                self._waiting.append((offset, length, d))
            else:
                ready.chainDeferred(d)

    def alternate(self, encoding: str) -> None:
        return None

    def close(self) -> None:
        pass


@implementer(IFileBody)
class HeldBody:
    """
    One client's body of an item read from the database (a stored item
    or a fill): while it is open the item's chunks are kept, even if the
    item stops being served meanwhile.
    """

    def __init__(self, body, hold: Callable, release: Callable[[], None]):
        self.info = body.info
        self._body = body
        self._hold = hold
        self._release = release

    def read(self, offset: int, length: int) -> Deferred:
        return self._body.read(offset, length)

    def alternate(self, encoding: str) -> "HeldBody | None":
        alternate = self._body.alternate(encoding)
        return None if alternate is None else self._hold(alternate)

    def close(self) -> None:
        if self._release is not None:
            release, self._release = self._release, None
            self._body.close()
            release()


class ItemReaders:
    """
    Which items clients are reading, and the discarding of items that
    are no longer served: such an item goes from the database at once,
    or once its last reader is done (until then it is an orphan, which
    a restart removes), so no download is cut short.

    @param discard: removes items from the database, in the background.
    @param orphan: marks items as no longer served, keeping their
        chunks, in the background.
    """

    def __init__(self, discard: Callable[[list[int]], None],
                 orphan: Callable[[list[int]], None]):
        self._remove = discard
        self._orphan = orphan
        self._count: dict[int, int] = {}
        self._doomed: set[int] = set()

    def hold(self, item_id: int, body) -> HeldBody:
        """
        A client's C{body} of item C{item_id}, which holds the item's
        chunks until it is closed.
        """
        self._count[item_id] = self._count.get(item_id, 0) + 1
        return HeldBody(body, lambda alternate: self.hold(item_id, alternate),
                        lambda: self._release(item_id))

    def _release(self, item_id: int) -> None:
        left = self._count.pop(item_id) - 1
        if left:
            self._count[item_id] = left
        elif item_id in self._doomed:
            self._doomed.discard(item_id)
            self._remove([item_id])

    def discard(self, item_ids: list[int]) -> None:
        """
        Remove items from the database now, or once their last reader
        is done.
        """
        now = [item_id for item_id in item_ids if item_id not in self._count]
        later = [item_id for item_id in item_ids if item_id in self._count]
        if now:
            self._remove(now)
        if later:
            self._doomed.update(later)
            self._orphan(later)

    def discard_when_read(self, item_ids: list[int]) -> list[int]:
        """
        Of C{item_ids}, those being read: each is removed once its last
        reader is done, and the caller orphans them itself.
        """
        held = [item_id for item_id in item_ids if item_id in self._count]
        self._doomed.update(held)
        return held
