"""
The writes waiting for a storage service's writer thread (group commit).

Writes are queued on the reactor thread.  Whenever the writer thread is
free it is handed every write waiting (up to L{BATCH_WRITES}), in the
order they were asked for, and the engine commits them in as few
transactions as it may (L{owncdn.storage.batch}).  After each commit
the queue first brings the service's memory up to date with each of
that transaction's writes in order, then answers their callers in
order; so a caller never hears of a write before the service's memory
(newest change, small files, the change feed) holds it.
"""

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure

from owncdn.storage.batch import Outcome, Write

# Writes handed to the writer thread at a time.  The engine commits the
# small ones among them together; the bound keeps the last of them from
# waiting long for the reactor to hear of the first.
BATCH_WRITES = 64

# Hands writes to the writer thread: C{(writes, committed) -> Deferred},
# see L{owncdn.storage.engine.StorageEngine.write_batch}.
BatchRunner = Callable[[list[Write], Callable[[list[Outcome]], object]], Deferred]


@dataclass
class _Queued:
    """
    A write waiting for the writer thread.

    @ivar done: run on the reactor thread with the write's result once
        it is committed, to bring the service's memory up to date;
        returns what the caller's Deferred fires with.
    """

    write: Write
    done: Callable[[object], object]
    deferred: Deferred
    failed: Callable[[], object] | None = None


class WriteQueue:
    """
    One storage service's writes, from the moment they are asked for
    until their callers are answered.  Reactor thread only.

    @param reactor: for C{callFromThread}.
    @param run_batch: hands a batch of writes to the writer thread.
    """

    def __init__(self, reactor, run_batch: BatchRunner):
        self._reactor = reactor
        self._run_batch = run_batch
        # Writes not yet handed to the writer thread, oldest first; those
        # handed over and not yet answered; Deferreds waiting for both to
        # be empty (drained).
        self._queue: deque[_Queued] = deque()
        self._in_flight: deque[_Queued] | None = None
        self._drain_waiters: list[Deferred] = []

    def add(self, write: Write, done: Callable[[object], object],
            failed: Callable[[], object] | None = None) -> Deferred:
        """
        Queue C{write} for the writer thread.

        @param failed: called on the reactor thread if the write fails
            (also when the caller has stopped waiting for it).
        @return: a Deferred that fires with what C{done} makes of the
            write's result once its transaction has committed, or fails
            with the write's own error.
        """
        d = Deferred()
        self._queue.append(_Queued(write, done, d, failed))
        self._next_batch()
        return d

    def _next_batch(self) -> None:
        """
        Hand the writes waiting to the writer thread, unless it is busy
        with the previous batch (then they go when it is done).
        """
        if self._in_flight is not None:
            return
        if not self._queue:
            waiters, self._drain_waiters = self._drain_waiters, []
            for waiter in waiters:
                waiter.callback(None)
            return
        batch = deque(self._queue.popleft()
                      for _ in range(min(BATCH_WRITES, len(self._queue))))
        self._in_flight = batch

        def committed(outcomes: list[Outcome]) -> None:
            self._reactor.callFromThread(self._answer, batch, outcomes)

        d = self._run_batch([queued.write for queued in batch], committed)
        d.addErrback(lambda failure: self._answer(batch, [(False, failure)] * len(batch)))
        d.addBoth(lambda _: self._batch_done())

    def _batch_done(self) -> None:
        self._in_flight = None
        self._next_batch()

    def _answer(self, batch: deque[_Queued], outcomes: list[Outcome]) -> None:
        """
        One transaction of C{batch} committed (or failed): bring memory
        up to date with each of its writes in order, then answer their
        callers in order.
        """
        answers = []
        for success, result in outcomes:
            queued = batch.popleft()
            if success:
                try:
                    result = queued.done(result)
                except Exception:
                    success, result = False, Failure()
            elif not isinstance(result, Failure):
                result = Failure(result)
            if not success and queued.failed is not None:
                queued.failed()
            answers.append((queued.deferred, success, result))
        for d, success, result in answers:
            if success:
                d.callback(result)
            else:
                d.errback(result)

    def drained(self) -> Deferred:
        """
        @return: a Deferred that fires once every queued write has been
            answered.
        """
        if self._in_flight is None and not self._queue:
            return succeed(None)
        d = Deferred()
        self._drain_waiters.append(d)
        return d
