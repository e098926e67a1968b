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
memory stays at a few chunks whatever the client's speed; and all the
uploads of one service share a L{BUDGET} of chunks in flight
(L{StagingBudget}), so memory stays bounded whatever the number of
clients.
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

# Chunks received but not yet stored and hashed, past which an upload's
# connection stops reading until they are (and resumes at half): what
# one upload alone may have in flight.
AHEAD = 16
# What the chunks in flight of all the staged uploads of one storage
# service may add up to (64 chunks): uploads share it, each at most
# AHEAD chunks and at least MIN_SHARE, and one that finds it full waits,
# paused, for its turn (StagingBudget).
BUDGET = 64 * 1024 * 1024
MIN_SHARE = 2
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
    @param budget: the service's budget of chunks in flight, which
        pauses and resumes the producer.
    @param producer: the connection, paused while the body is too far
        ahead of storing and hashing.
    """

    def __init__(self, owner: object, staged_id: int, length: int, chunk_size: int,
                 digests: Mapping[str, Digest], pool: ThreadPool, budget: "StagingBudget",
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
        self._budget = budget
        self._producer = producer
        self._paused = False
        # Chunks of the budget held for what the next read may complete.
        self._reserved = 0
        # Closed before a put took it: its blocks are no longer hashed.
        self._abandoned = False
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
        sent = self.chunk_count
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
        if self.size == self.length:
            if self._pending:
                self._send_pending()
            self._budget.leave(self)
        elif self.chunk_count > sent and not self._paused:
            self._budget.sent(self)

    def _in_flight(self) -> int:
        """
        Chunks received but not yet both stored and hashed by every
        digest (C{hashed} counts are written by the pool threads); once
        the body is abandoned, not yet stored.
        """
        done = self._stored
        if not self._abandoned:
            done = min([done] + [chain.hashed for chain in self._chains.values()])
        return self.chunk_count - done

    def _next_chunks(self) -> int:
        """
        How many chunks the reads (of at most a chunk each) until the
        next chunk is cut may complete: two when what is left of the
        body, pending bytes included, is between one and two chunks
        (one read may fill the pending chunk and end the body).
        """
        left = self._pending_size + self.length - self.size
        return 2 if self.chunk_size < left < 2 * self.chunk_size else 1

    def _pause(self) -> None:
        self._paused = True
        self._producer.pauseProducing()

    def _resume(self) -> None:
        self._paused = False
        self._producer.resumeProducing()

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
        self._budget.progress()

    def _store_failed(self, failure, index: int) -> None:
        # The put finds the chunk missing and fails; nothing more to do.
        log.failure("staging chunk {index} of upload {id} failed", failure,
                    index=index, id=self.staged_id)
        self._chunk_stored(None)

    def _hashed(self) -> None:
        # Pool thread.  The reactor hears of hashing only while an
        # upload of the service waits for room: a wake-up per chunk and
        # digest would cost more than the bookkeeping is worth.
        if self._budget.waiting:
            self._budget.wake()

    def close(self) -> None:
        """
        The request is over (answered, or the client went away): unless
        a put took the content, stop hashing it and delete it; its
        share of the budget goes to the others.
        """
        if self.closed:
            return
        self.closed = True
        self._pending = []
        if not self.claimed:
            self._abandoned = True
            for chain in self._chains.values():
                chain.abandon()
        if self.size < self.length:
            self._budget.leave(self)
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


class StagingBudget:
    """
    The chunks in flight (received, not yet both stored and hashed) of
    all the staged uploads of one storage service, kept within
    L{chunks}.  Reactor thread only, but for L{waiting} and L{wake},
    which the digest pool's threads use.

    Each upload still receiving has a share of the budget: the budget
    divided among them, at most L{AHEAD} chunks, at least L{MIN_SHARE}.
    An upload reads (its connection is not paused) only while it has
    fewer chunks in flight than its share and the chunks its next read
    may complete fit in the budget, beside what every other reading
    upload holds for its own next read: so the chunks in flight never
    add up to more than the budget, however many uploads arrive at once
    (as long as a read brings at most a chunk, as the site's do).  One that does not fit
    pauses and waits in line; as chunks are stored and hashed, the first
    ones that fit read again, once they are down to half their share.
    A body whose last byte is in, or that is closed, leaves the line and
    the division; its chunks still count until they are done.

    @ivar chunks: the budget, in chunks (at least L{MIN_SHARE}).
    """

    def __init__(self, reactor, chunks: int):
        self.chunks = max(MIN_SHARE, chunks)
        self._reactor = reactor
        # Bodies that may have chunks in flight; those still receiving;
        # chunks held by reading bodies for their next read; paused
        # bodies, oldest first; whether a wake-up is on its way.
        self._bodies: list[StagedBody] = []
        self._receiving = 0
        self._reserved = 0
        self._waiting: dict[StagedBody, None] = {}
        self._woken = False

    @property
    def waiting(self) -> bool:
        """
        Whether an upload waits for room (read by pool threads).
        """
        return bool(self._waiting)

    def in_flight(self) -> int:
        """
        The chunks in flight of all the bodies (forgetting closed ones
        that have none left).
        """
        total, kept = 0, []
        for body in self._bodies:
            count = body._in_flight()
            if count or not body.closed:
                kept.append(body)
                total += count
        self._bodies = kept
        return total

    def share(self) -> int:
        """
        How many chunks one receiving upload may have in flight now.
        """
        return max(MIN_SHARE, min(AHEAD, self.chunks // max(1, self._receiving)))

    def add(self, body: StagedBody) -> None:
        """
        A new body: it reads if there is room and nobody waits before
        it, else waits.
        """
        self._bodies.append(body)
        self._receiving += 1
        if not self._waiting and self._fits(body, self.in_flight(), self.share()):
            self._reserve(body)
        else:
            self._wait(body)

    def sent(self, body: StagedBody) -> None:
        """
        A reading body sent chunks: the uploads waiting get the room
        first, then it reads on if it still fits, else waits.
        """
        self._release(body)
        total, share = self.in_flight(), self.share()
        self._resume_waiting(total, share)
        if self._fits(body, total, share):
            self._reserve(body)
        else:
            self._wait(body)

    def leave(self, body: StagedBody) -> None:
        """
        A body has all its bytes, or is closed before: it reads no more
        from the budget (and its connection is no longer paused by it).
        """
        self._receiving -= 1
        self._release(body)
        if body in self._waiting:
            del self._waiting[body]
            body._resume()
        self.progress()

    def wake(self) -> None:
        """
        Pool thread: have L{progress} run in the reactor thread (once
        for the wake-ups that come before it runs).
        """
        if not self._woken:
            self._woken = True
            self._reactor.callFromThread(self.progress)

    def progress(self) -> None:
        """
        Chunks may be done: resume the uploads waiting that fit now.
        """
        self._woken = False
        if self._waiting:
            self._resume_waiting(self.in_flight(), self.share())

    def _fits(self, body: StagedBody, total: int, share: int) -> bool:
        # The share is a limit on what a body runs ahead (the last,
        # partial chunk may go past it); the budget holds exactly.
        return (body._in_flight() < share
                and total + self._reserved + body._next_chunks() <= self.chunks)

    def _resume_waiting(self, total: int, share: int) -> None:
        for body in list(self._waiting):
            if total + self._reserved >= self.chunks:
                return
            if body._in_flight() <= share // 2 and self._fits(body, total, share):
                del self._waiting[body]
                self._reserve(body)
                body._resume()

    def _reserve(self, body: StagedBody) -> None:
        body._reserved = body._next_chunks()
        self._reserved += body._reserved

    def _release(self, body: StagedBody) -> None:
        self._reserved -= body._reserved
        body._reserved = 0

    def _wait(self, body: StagedBody) -> None:
        self._waiting[body] = None
        body._pause()
        # A digest job that finished just before the body was in line
        # did not call back: look again.
        self.progress()


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
        self.budget = StagingBudget(reactor, BUDGET // engine.chunk_size)

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

        body = StagedBody(engine, staged_id, length, engine.chunk_size, running, pool,
                          self.budget, producer, store_chunk, read_chunk, self.discard)
        self.budget.add(body)
        return body

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
