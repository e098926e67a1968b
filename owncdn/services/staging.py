"""
The body of a big upload, stored while it arrives (the reactor side of
L{owncdn.storage.staging}).

The site makes a L{StagedBody} the request's C{content} when the
resource that will take the upload says so from the request head.  Its
C{write}, on the reactor thread, cuts the bytes into chunks; each chunk
is queued as a staging write for the storage service's writer thread
and handed to one serial digest job per algorithm in the service's
digest pool (L{owncdn.digests.DigestChain}), so that when the last byte is in, only
the put's own small transaction is left.  While more than L{AHEAD}
chunks wait to be stored or hashed the connection stops reading, so
memory stays at a few chunks whatever the client's speed.
"""

import hashlib
from collections.abc import Callable, Mapping

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from owncdn.digests import Digest, DigestChain
from owncdn.storage.staging import content_key

log = Logger()

# Chunks received but not yet stored and hashed, past which the
# connection stops reading until they are (and resumes at half).
AHEAD = 16
# How long the put waits for the digest jobs to finish the last chunks.
FINISH_TIMEOUT = 600.0
# Staged chunks commit without an fsync; every this many bytes of them
# the WAL is written out (see UploadStaging._committed).
WAL_FLUSH_BYTES = 64 * 1024 * 1024


def nothing(result: object) -> None:
    return None


class StagingFailed(Exception):
    """
    A staged body cannot be stored: it is incomplete, or storing one of
    its chunks failed.
    """


class StagedBody:
    """
    A request body written chunk by chunk into a storage service while
    it arrives; the service's put of it only points a change at it.

    Made by L{owncdn.services.storage.StorageService.stage_body}.  Writes
    happen on the reactor thread; L{staged_content} is what the storage
    engine asks for in the writer thread; reading the body back (for a
    reader that needs a digest not computed on the way in) reads the
    staged chunks, in a worker thread.

    @param owner: the storage engine the chunks go to.
    @param store_chunk: queues one chunk for the writer thread,
        C{(staged_id, index, block) -> Deferred}.
    @param read_chunk: reads a staged chunk back, blocking,
        C{(staged_id, index) -> bytes}.
    @param discard: queues the deletion of the staged content.
    @param reactor: for C{callFromThread}.
    @param producer: the connection, paused while the body is too far
        ahead of storing and hashing.
    """

    def __init__(self, owner: object, staged_id: int, length: int, chunk_size: int,
                 digests: Mapping[str, Digest], pool: ThreadPool, reactor,
                 producer, store_chunk: Callable, read_chunk: Callable[[int, int], bytes],
                 discard: Callable[[int], object]):
        self.owner = owner
        self.staged_id = staged_id
        self.length = length
        self.chunk_size = chunk_size
        self.size = 0
        self.chunk_count = 0
        self.claimed = False
        self.closed = False
        self._reactor = reactor
        self._producer = producer
        self._paused = False
        self._store_chunk = store_chunk
        self._read_chunk = read_chunk
        self._discard = discard
        self._pending: list[memoryview] = []
        self._pending_size = 0
        # Chunks whose staging write has been answered.
        self._stored = 0
        self._chains = {algorithm: DigestChain(digest, pool, self._hashed)
                        for algorithm, digest in digests.items()}
        self._position = 0
        self._read_buffer = b""

    # Writing: reactor thread.

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        if self.size + len(data) > self.length:
            raise StagingFailed(f"more than the {self.length} bytes announced")
        self.size += len(data)
        # Pieces are cut without copying; each byte is copied once, into
        # its chunk.
        view = memoryview(data)
        while view:
            room = self.chunk_size - self._pending_size
            piece, view = view[:room], view[room:]
            self._pending.append(piece)
            self._pending_size += len(piece)
            if self._pending_size == self.chunk_size:
                self._send_pending()
        if self.size == self.length and self._pending:
            self._send_pending()
        if self._in_flight() >= AHEAD and self.size < self.length and not self._paused:
            self._paused = True
            self._producer.pauseProducing()
            # A digest job that finished just before the flag was set
            # did not call back: look again.
            self._progress()

    def _in_flight(self) -> int:
        """
        Chunks received but not yet both stored and hashed by every
        digest (C{hashed} counts are written by the pool threads).
        """
        done = min([self._stored] + [chain.hashed for chain in self._chains.values()])
        return self.chunk_count - done

    def _send_pending(self) -> None:
        block = b"".join(self._pending)
        self._pending, self._pending_size = [], 0
        index = self.chunk_count
        self.chunk_count += 1
        for chain in self._chains.values():
            chain.update(block)
        d = self._store_chunk(self.staged_id, index, block)
        d.addCallbacks(self._chunk_stored, self._store_failed, errbackArgs=(index,))

    def _chunk_stored(self, result: object) -> None:
        self._stored += 1
        self._progress()

    def _store_failed(self, failure, index: int) -> None:
        # The put finds the chunk missing and fails; nothing more to do.
        log.failure("staging chunk {index} of upload {id} failed", failure,
                    index=index, id=self.staged_id)
        self._chunk_stored(None)

    def _hashed(self) -> None:
        # Pool thread.  The reactor hears of hashing only while it waits
        # for it: a wake-up per chunk and digest would cost more than
        # the bookkeeping is worth.
        if self._paused:
            self._reactor.callFromThread(self._progress)

    def _progress(self) -> None:
        if self._paused and self._in_flight() <= AHEAD // 2:
            self._paused = False
            self._producer.resumeProducing()

    def close(self) -> None:
        """
        The request is over (answered, or the client went away): unless
        a put took the content, delete it.
        """
        if self.closed:
            return
        self.closed = True
        self._pending = []
        if self._paused:
            self._paused = False
            self._producer.resumeProducing()
        if not self.claimed:
            self._discard(self.staged_id)

    # What the storage engine asks: writer thread.

    def staged_content(self) -> "StagedBody":
        return self

    def finish(self) -> Mapping[str, Digest]:
        """
        See L{owncdn.storage.staging.StagedContent.finish}.
        """
        if self.size != self.length:
            raise StagingFailed(f"the body is incomplete: {self.size} of {self.length} bytes")
        for chain in self._chains.values():
            if not chain.wait(FINISH_TIMEOUT):
                raise StagingFailed(f"hashing did not finish within {FINISH_TIMEOUT} seconds")
        return {algorithm: chain.digest for algorithm, chain in self._chains.items()}

    # A file, as request.content is: reading back the staged chunks.

    def seek(self, offset: int, whence: int = 0) -> int:
        if (offset, whence) != (0, 0):
            raise OSError("a staged body can only be read from its start")
        self._position, self._read_buffer = 0, b""
        return 0

    def tell(self) -> int:
        return self._position

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return b"".join(iter(lambda: self.read(self.chunk_size), b""))
        if not self._read_buffer:
            if self._position >= self.size:
                return b""
            index = self._position // self.chunk_size
            self._read_buffer = self._read_chunk(self.staged_id, index)
        data, self._read_buffer = self._read_buffer[:size], self._read_buffer[size:]
        self._position += len(data)
        return data

    def fileno(self) -> int:
        raise OSError("a staged body is not a file")


class UploadStaging:
    """
    A storage service's uploads stored as they arrive: hands out their
    L{StagedBody} objects, deletes those no put took, and has the WAL
    written out behind them.

    @ivar next_id: the staged ID the next upload gets (from the database
        when the service starts).
    @param write: the service's write queue, C{(write, done, failed) ->
        Deferred}.
    @param running: whether the service still takes writes.
    """

    def __init__(self, engine, reactor, write: Callable[..., Deferred],
                 running: Callable[[], bool]):
        self.next_id = 1
        self._engine = engine
        self._reactor = reactor
        self._write = write
        self._running = running
        # Staged bytes committed since the WAL was last written out, and
        # whether that is being done.
        self._unflushed = 0
        self._flushing = False
        self._pool: ThreadPool | None = None

    def body(self, length: int, producer, pool: ThreadPool,
             digests: Mapping[str, Callable[[], Digest]] | None = None) -> StagedBody:
        """
        A new staged body; see
        L{owncdn.services.storage.StorageService.stage_body}.

        @param pool: the service's digest pool.
        """
        self._pool = pool
        staged_id, self.next_id = self.next_id, self.next_id + 1
        running: dict[str, Digest] = {"md5": hashlib.md5(), "sha256": hashlib.sha256()}
        for algorithm, make in (digests or {}).items():
            running.setdefault(algorithm, make())
        engine = self._engine

        def store_chunk(staged_id: int, index: int, block: bytes) -> Deferred:
            d = self._write(engine.staged.stage_write(staged_id, index, block), nothing)
            return d.addCallback(self._committed, len(block))

        def read_chunk(staged_id: int, index: int) -> bytes:
            return engine.read_chunk(content_key(staged_id), index)

        return StagedBody(engine, staged_id, length, engine.chunk_size, running, pool,
                          self._reactor, producer, store_chunk, read_chunk, self.discard)

    def _committed(self, result: None, size: int) -> None:
        """
        A staged chunk is committed (without an fsync): every
        L{WAL_FLUSH_BYTES} of them, have the kernel write the WAL out in
        a pool thread, so that the fsync of the put that takes them does
        not write the whole body on the upload's time.
        """
        self._unflushed += size
        if self._unflushed < WAL_FLUSH_BYTES or self._flushing or not self._running():
            return
        self._unflushed, self._flushing = 0, True

        def flushed(result: object) -> None:
            self._flushing = False

        d = deferToThreadPool(self._reactor, self._pool, self._engine.flush_wal)
        d.addErrback(lambda failure: log.failure("storage {db}: writing the WAL out failed",
                                                 failure, db=str(self._engine.db_path)))
        d.addBoth(flushed)

    def discard(self, staged_id: int) -> None:
        """
        Delete staged content no put took (after the staging writes
        queued before); what a stopped service cannot delete, the next
        start does.
        """
        if not self._running():
            return
        self._write(self._engine.staged.discard_write(staged_id), nothing).addErrback(
            lambda failure: log.failure("storage {db}: deleting staged upload {id} failed",
                                        failure, db=str(self._engine.db_path), id=staged_id))
