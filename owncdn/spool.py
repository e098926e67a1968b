"""
Bodies too big for memory, spooled to a file that is created, written
(and hashed, if asked) in a pool thread, piece after piece in order (a
L{DigestChain} over the file), never on the reactor thread, with the
connection they arrive on paused while more than L{SPOOL_AHEAD} bytes
wait for that thread.

Two users: replica downloads (L{owncdn.replication.spool}) and request
bodies the site does not stage into storage (L{owncdn.web.site}).  A
write to a file can block for long (dirty-page writeback throttling, a
slow disk); on the reactor it would stop every connection meanwhile.
"""

import hashlib
import threading
from collections.abc import Callable, Iterable
from typing import BinaryIO

from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from owncdn.digests import DigestChain

# Bytes of a spooled body received but not yet written, past which its
# connection stops reading until the spool thread has caught up to half
# of it: with the poller's 16 downloads at most 64 MiB wait in memory.
SPOOL_AHEAD = 4 * 1024 * 1024
# A spooled body's pieces go to the spool thread this many bytes at a
# time: one hand-over per piece (64 KiB at most) cost as much CPU again
# as the thread saved the reactor.
SPOOL_BLOCK = 256 * 1024


class SpoolDiscarded(Exception):
    """
    The spool file was discarded before its body was finished.
    """


class SpoolFile:
    """
    A spool file and the digests of the bytes written to it, fed by a
    L{DigestChain} (it has the shape of a running digest whose blocks
    are lists of pieces): L{update} runs in a pool thread, one block
    after another, and creates the file with the first.  L{finish} and
    L{discard} run in pool jobs of their own, so every use of the file
    holds a lock; after L{discard} nothing is written any more.

    @param open_file: creates the file (in the pool thread).
    @param algorithms: the digests to compute (C{hashlib} names).
    @ivar written: how many bytes have been written (and hashed).
    @ivar error: what writing raised, if it failed.
    """

    def __init__(self, open_file: Callable[[], BinaryIO], algorithms: Iterable[str] = ()):
        self._open = open_file
        self._file: BinaryIO | None = None
        self._digests = {algorithm: hashlib.new(algorithm) for algorithm in algorithms}
        self._lock = threading.Lock()
        self._discarded = False
        self.written = 0
        self.error: Exception | None = None

    def update(self, pieces: list[bytes]) -> None:
        with self._lock:
            if self._discarded or self.error is not None:
                return
            try:
                if self._file is None:
                    self._file = self._open()
                for piece in pieces:
                    self._file.write(piece)
                    for digest in self._digests.values():
                        digest.update(piece)
                    self.written += len(piece)
            except Exception as error:
                self.error = error
                raise

    def hexdigest(self, algorithm: str) -> str:
        return self._digests[algorithm].hexdigest()

    def finish(self, chain: DigestChain) -> BinaryIO:
        """
        Once C{chain} has written every block: the file, positioned at 0
        (created now if no byte was written).

        @raise SpoolDiscarded: L{discard} came first.
        @raise Exception: what writing raised.
        """
        chain.wait()
        with self._lock:
            if self._discarded:
                raise SpoolDiscarded("the spool file was discarded")
            if self._file is None:
                self._file = self._open()
            self._file.seek(0)
            return self._file

    def discard(self) -> None:
        with self._lock:
            self._discarded = True
            if self._file is not None:
                self._file.close()


class Spooled:
    """
    The reactor side of a body written into a L{SpoolFile}: its pieces
    are handed, L{SPOOL_BLOCK} bytes at a time, to a L{DigestChain} in
    C{pool} to be written and hashed, and C{producer} is paused while
    more than L{SPOOL_AHEAD} bytes wait for it.  The pool calls back to
    the reactor only to resume C{producer} (at half) or to call
    C{failed} at once when a write failed, not for every block.

    @param open_file: creates the spool file, in a pool thread.
    @param pool: the spool threads (owned by a service).
    @param producer: what the body arrives from (C{pauseProducing},
        C{resumeProducing}).
    @param failed: called on the reactor with the L{Failure} of the
        first write that failed; the rest of the body is not written.
    @param algorithms: digests of the body to compute while writing.
    """

    def __init__(self, open_file: Callable[[], BinaryIO], pool: ThreadPool, reactor, producer,
                 failed: Callable[[Failure], object], algorithms: Iterable[str] = ()):
        self._reactor = reactor
        self._pool = pool
        self._producer = producer
        self._failed = failed
        self.file = SpoolFile(open_file, algorithms)
        self._chain = DigestChain(self.file, pool, self._written_in_pool)
        self._pieces: list[bytes] = []
        self._piece_bytes = 0
        # Shared with the pool thread, under the lock.
        self._lock = threading.Lock()
        self._handed = 0
        self._paused = False
        self._failing = False

    def write(self, data: bytes) -> None:
        self._pieces.append(data)
        self._piece_bytes += len(data)
        if self._piece_bytes >= SPOOL_BLOCK:
            self._hand_over()

    def _hand_over(self) -> None:
        pieces, self._pieces = self._pieces, []
        with self._lock:
            self._handed += self._piece_bytes
        self._piece_bytes = 0
        self._chain.update(pieces)
        with self._lock:
            # Checked under the lock: a block written after this sees
            # the pause and resumes; one written before is counted here.
            pause = self._handed - self.file.written > SPOOL_AHEAD
            if pause:
                self._paused = True
        if pause:
            self._producer.pauseProducing()

    def _written_in_pool(self) -> None:
        with self._lock:
            if self.file.error is not None:
                if self._failing:
                    return
                self._failing = True
                then = self._write_failed
            elif self._paused and self._handed - self.file.written <= SPOOL_AHEAD // 2:
                self._paused = False
                then = self._producer.resumeProducing
            else:
                return
        self._reactor.callFromThread(then)

    def _write_failed(self) -> None:
        self._failed(Failure(self.file.error))

    def finish(self) -> defer.Deferred:
        """
        Hand over the last pieces.

        @return: a Deferred that fires with the spool file, positioned at
            0, once every byte is written (the digests are then those of
            the whole body), or fails with what writing raised, or with
            L{SpoolDiscarded}.
        """
        if self._pieces:
            self._hand_over()
        return deferToThreadPool(self._reactor, self._pool, self.file.finish, self._chain)

    def discard(self) -> defer.Deferred:
        """
        Close the spool file (if made) and write nothing more to it.
        """
        self._pieces = []
        return deferToThreadPool(self._reactor, self._pool, self.file.discard)
