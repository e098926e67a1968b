"""
Digests of big bodies computed beside the work that stores them.

C{hashlib}'s MD5 and SHA-256 release the GIL for every block of 2 KiB
or more, so on two cores the digests of a big body can run in a thread
of their own while the thread that read the body stores it: for a
1 GiB upload MD5 alone is about 1.5 s of CPU on this project's machine,
as much as writing the chunks.  L{DigestChain} hashes in a thread pool
owned by a service (the storage service's digest pool: staged uploads,
and the bodies its writer stores); L{BackgroundDigests} is a thread of
its own, for callers without such a pool (the S3 payload reader, the
multipart store).

A body reader may also compute a digest already (the S3 layer hashes
every payload to check its signed SHA-256 or its C{Content-MD5}); it
offers it through C{running_digest} (L{offered_digest}) so that the
same bytes are not hashed twice.
"""

import hashlib
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable
from typing import Protocol

# How many blocks may wait for the digest thread: the caller gets at
# most this far ahead of it, so memory stays at a few blocks.
QUEUE_BLOCKS = 2


class Digest(Protocol):
    """
    A running digest, the shape of C{hashlib}'s objects.
    """

    def update(self, data: bytes, /) -> None: ...

    def digest(self) -> bytes: ...


def offered_digest(body: object, algorithm: str) -> Digest | None:
    """
    The running digest C{body} keeps of the bytes its C{read} returns,
    if it keeps one for C{algorithm} (C{"md5"}, C{"sha256"}): a body
    reader may define C{running_digest(algorithm)} returning such an
    object or C{None}.  Its C{digest()} is the digest of the whole body
    once C{read} has returned end-of-file.
    """
    offer = getattr(body, "running_digest", None)
    return None if offer is None else offer(algorithm)


class BackgroundDigests:
    """
    A thread that feeds every block handed to L{update} to C{digests},
    in order.  Use it as a context manager (or call L{close}): leaving
    it, also on an error, stops the thread.  L{finish} waits for the
    last block and raises what hashing raised; the digests are then
    complete.

    A block must not change after it is handed over (C{bytes} never do).
    """

    def __init__(self, digests: Iterable[Digest]):
        self._digests = list(digests)
        self._queue: queue.Queue = queue.Queue(QUEUE_BLOCKS)
        self._error: BaseException | None = None
        self._closed = False
        self._abandoned = False
        self._thread = threading.Thread(target=self._run, name="owncdn-digests", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (block := self._queue.get()) is not None:
            if self._abandoned:
                return
            if self._error is not None:
                # Keep taking blocks so that update() never waits forever.
                continue
            try:
                for digest in self._digests:
                    digest.update(block)
            except BaseException as error:  # noqa: BLE001 - handed to finish()
                self._error = error

    def update(self, block: bytes) -> None:
        """
        Hash C{block} after the blocks before it; waits only while
        L{QUEUE_BLOCKS} blocks are already waiting.
        """
        if self._closed:
            raise ValueError("the digest thread has stopped")
        self._queue.put(block)

    def finish(self) -> None:
        """
        Wait until every block is hashed.

        @raise Exception: what a digest raised.
        """
        self.close()
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        """
        Stop the thread once the blocks already handed over are done.
        Safe to call twice.
        """
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join()

    def abandon(self) -> None:
        """
        Stop the thread without waiting for it, dropping the blocks not
        hashed yet (the digests are then of no use): for a reader that
        will not be read to its end, from a thread that must not wait.
        """
        if self._closed:
            return
        self._closed = self._abandoned = True
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            # The thread has blocks to take and stops at the next one.
            pass

    def __enter__(self) -> "BackgroundDigests":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class DigestChain:
    """
    Feeds blocks to one running digest in order, one job at a time in a
    shared thread pool (so digests of different uploads and algorithms
    run side by side, within the pool's bound).  C{hashlib} releases the
    GIL on blocks this big, so the hashing really runs beside the
    reactor and the writer thread.

    @ivar hashed: how many blocks have been hashed.
    @param pool: a thread pool (C{callInThreadWithCallback}), owned by a
        service.
    @param done: called in the pool thread after each block.
    @param limit: how many blocks may wait before L{update} waits for the
        job (from a worker thread only; C{None}: no bound, for a caller
        that bounds what it hands over itself, like the reactor).
    """

    def __init__(self, digest: Digest, pool, done: Callable[[], object] = lambda: None,
                 limit: int | None = None):
        self.digest = digest
        self.hashed = 0
        self._pool = pool
        self._done = done
        self._limit = limit
        self._blocks: deque[bytes] = deque()
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        self._idle = threading.Event()
        self._idle.set()
        self._error: BaseException | None = None

    def update(self, block: bytes) -> None:
        """
        Hash C{block} after the blocks before it, in the pool.
        """
        with self._lock:
            while self._limit is not None and len(self._blocks) >= self._limit:
                self._room.wait()
            self._blocks.append(block)
            if not self._idle.is_set():
                return
            self._idle.clear()
        self._pool.callInThreadWithCallback(_ignore, self._run)

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._blocks:
                    self._idle.set()
                    return
                block = self._blocks.popleft()
                self._room.notify()
            try:
                if self._error is None:
                    self.digest.update(block)
            except BaseException as error:  # noqa: BLE001 - raised by wait()
                self._error = error
            self.hashed += 1
            self._done()

    def wait(self, timeout: float | None = None) -> bool:
        """
        Wait until every block added is hashed (from a thread other than
        the reactor's).

        @return: C{False} if that did not happen within C{timeout}
            seconds.
        @raise Exception: what the digest raised.
        """
        if not self._idle.wait(timeout):
            return False
        if self._error is not None:
            raise self._error
        return True

    def finish(self) -> None:
        """
        L{wait} without a time limit (the caller hands over a few blocks
        at most: C{limit}).
        """
        self.wait()

    def abandon(self) -> None:
        """
        Drop the blocks not yet hashed (nobody will ask for the digest),
        so their memory goes now; a block being hashed still counts in
        L{hashed} when done.
        """
        with self._lock:
            self._blocks.clear()
            self._room.notify_all()

    def close(self) -> None:
        """
        Nothing to stop: the job ends with the blocks handed over.
        """


def _ignore(success: bool, result: object) -> None:
    # DigestChain._run catches what it raises.
    pass


class BodyDigests:
    """
    The digests of a body as it is read, block by block: those the body
    offers (L{offered_digest}) are taken from it, the others computed
    here, in the caller's thread for the first block and, once a second
    block shows the body is big, each beside the caller (MD5 alone takes
    as long as the inserts of the blocks): in a L{DigestChain} on
    C{pool} (the storage service's), or without one in a
    L{BackgroundDigests} thread of its own.  A context manager, like
    L{BackgroundDigests}.
    """

    def __init__(self, body: object, algorithms: Iterable[str], pool=None):
        self._pool = pool
        self._digests: dict[str, Digest] = {}
        self._own: list[Digest] = []
        for algorithm in algorithms:
            offered = offered_digest(body, algorithm)
            if offered is None:
                offered = hashlib.new(algorithm)
                self._own.append(offered)
            self._digests[algorithm] = offered
        self._blocks = 0
        self._background: list[BackgroundDigests | DigestChain] = []

    def update(self, block: bytes) -> None:
        self._blocks += 1
        if self._blocks == 2:
            for digest in self._own:
                self._background.append(
                    BackgroundDigests([digest]) if self._pool is None
                    else DigestChain(digest, self._pool, limit=QUEUE_BLOCKS))
        if self._background:
            for background in self._background:
                background.update(block)
        else:
            for digest in self._own:
                digest.update(block)

    def finish(self) -> dict[str, bytes]:
        """
        The digests of every block given, by algorithm, once the body
        has been read to its end.
        """
        for background in self._background:
            background.finish()
        return {algorithm: digest.digest() for algorithm, digest in self._digests.items()}

    def close(self) -> None:
        for background in self._background:
            background.close()

    def __enter__(self) -> "BodyDigests":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
