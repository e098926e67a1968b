"""
Replica downloads too big for memory: a spool file created, written and
hashed in a pool thread, piece after piece in order (a L{DigestChain}
over the file), never on the reactor thread, with the connection paused
while more than L{SPOOL_AHEAD} bytes wait for that thread.  Used by
L{owncdn.replication.source.SourceClient}.
"""

import hashlib
import tempfile
import threading
from pathlib import Path
from typing import BinaryIO

from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from owncdn.digests import DigestChain
from owncdn.replication.errors import SyncError

# Bytes of a spooled body received but not yet written, past which its
# connection stops reading until the spool thread has caught up to half
# of it: with the poller's 16 downloads at most 64 MiB wait in memory.
SPOOL_AHEAD = 4 * 1024 * 1024
# A spooled body's pieces go to the spool thread this many bytes at a
# time: one hand-over per piece (64 KiB at most) cost as much CPU again
# as the thread saved the reactor.
SPOOL_BLOCK = 256 * 1024


class _SpoolFile:
    """
    A spool file and the SHA-256 of the bytes written to it, fed by a
    L{DigestChain} (it has the shape of a running digest whose blocks
    are lists of pieces): L{update} runs in a pool thread, one block
    after another, and creates the file with the first.  L{finish} and
    L{discard} run in pool jobs of their own, so every use of the file
    holds a lock; after L{discard} nothing is written any more.

    @ivar written: how many bytes have been written (and hashed).
    @ivar error: what writing raised, if it failed.
    """

    def __init__(self, directory: Path):
        self._directory = directory
        self._file: BinaryIO | None = None
        self._sha256 = hashlib.sha256()
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
                    self._file = _open_spool_file(self._directory)
                for piece in pieces:
                    self._file.write(piece)
                    self._sha256.update(piece)
                    self.written += len(piece)
            except Exception as error:
                self.error = error
                raise

    def digest(self) -> bytes:
        return self._sha256.digest()

    def finish(self, chain: DigestChain) -> tuple[BinaryIO, str]:
        """
        Once C{chain} has written every block: the file, positioned at 0,
        and the SHA-256 of its bytes in hex.

        @raise Exception: what writing raised.
        """
        chain.wait()
        with self._lock:
            if self._discarded or self._file is None:
                raise SyncError("the spool file was discarded")
            self._file.seek(0)
            return self._file, self._sha256.hexdigest()

    def discard(self) -> None:
        with self._lock:
            self._discarded = True
            if self._file is not None:
                self._file.close()


def _open_spool_file(directory: Path) -> BinaryIO:
    # A file without a name (or one unlinked at once): nothing is left
    # in the folder whatever happens to the download or the process.
    return tempfile.TemporaryFile(dir=directory, prefix="replica-")


class Spooled:
    """
    The reactor side of a body downloaded into a L{_SpoolFile}: its
    pieces are handed, L{SPOOL_BLOCK} bytes at a time, to a
    L{DigestChain} in C{pool} to be written and hashed, and C{body} is
    paused while more than L{SPOOL_AHEAD} bytes wait for it.  The pool
    calls back to the reactor only to resume C{body} (at half) or to
    fail it at once when a write failed, not for every block.
    """

    def __init__(self, directory: Path, pool: ThreadPool, reactor, body):
        self._reactor = reactor
        self._pool = pool
        self._body = body
        self._file = _SpoolFile(directory)
        self._chain = DigestChain(self._file, pool, self._written_in_pool)
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
            pause = self._handed - self._file.written > SPOOL_AHEAD
            if pause:
                self._paused = True
        if pause:
            self._body.pauseProducing()

    def _written_in_pool(self) -> None:
        with self._lock:
            if self._file.error is not None:
                if self._failing:
                    return
                self._failing = True
                then = self._write_failed
            elif self._paused and self._handed - self._file.written <= SPOOL_AHEAD // 2:
                self._paused = False
                then = self._body.resumeProducing
            else:
                return
        self._reactor.callFromThread(then)

    def _write_failed(self) -> None:
        self._body.fail(Failure(self._file.error))

    def finish(self) -> defer.Deferred:
        """
        Hand over the last pieces.

        @return: a Deferred that fires with the spool file, positioned at
            0, and the SHA-256 of its bytes once all are written.
        """
        if self._pieces:
            self._hand_over()
        return deferToThreadPool(self._reactor, self._pool, self._file.finish, self._chain)

    def discard(self) -> defer.Deferred:
        """
        Close the spool file (if made) and write nothing more to it.
        """
        return deferToThreadPool(self._reactor, self._pool, self._file.discard)
