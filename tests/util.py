"""
Small helpers shared by the tests.
"""

import threading
from collections.abc import Callable

from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.logger import formatEvent, globalLogPublisher


def asynctest(f):
    """
    Run an C{async def} test method under trial.
    """
    def run(self):
        return defer.ensureDeferred(f(self))
    run.__name__ = f.__name__
    run.__doc__ = f.__doc__
    return run


def read_all(case, body) -> bytes:
    """
    The whole content of an L{IFileBody} whose reads fire at once (fakes,
    inline thread pools), read forward as the web layer reads it.

    @param case: the running test, whose C{successResultOf} checks each
        read fired.
    """
    parts, offset = [], 0
    while True:
        part = case.successResultOf(body.read(offset, 1 << 20))
        if not part:
            return b"".join(parts)
        parts.append(part)
        offset += len(part)


def logged_text(case) -> Callable[[], str]:
    """
    Record what is logged from now until C{case} ends; the function
    returned gives it as formatted text so far.
    """
    events = []
    globalLogPublisher.addObserver(events.append)
    case.addCleanup(globalLogPublisher.removeObserver, events.append)
    return lambda: "\n".join(formatEvent(event) for event in events)


class QueuedPool:
    """
    A thread pool whose jobs wait until L{run} (in the test's thread).
    """

    def __init__(self, minthreads: int = 0, maxthreads: int = 1, name: str = ""):
        self.jobs: list = []
        self.started = False

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        self.started = False

    def callInThreadWithCallback(self, on_result, func, *args, **kwargs) -> None:
        self.jobs.append((on_result, func, args, kwargs))

    def callInThread(self, func, *args, **kwargs) -> None:
        self.callInThreadWithCallback(lambda success, result: None, func, *args, **kwargs)

    def run(self, limit: int = 10_000) -> None:
        """
        Run the queued jobs, and those they queue, in order.
        """
        for _ in range(limit):
            if not self.jobs:
                return
            on_result, func, args, kwargs = self.jobs.pop(0)
            try:
                success, result = True, func(*args, **kwargs)
            except BaseException:
                success, result = False, Failure()
            on_result(success, result)
        raise AssertionError("the pool never ran dry")


class RecordingFile:
    """
    A spool file that records the threads that made it and wrote to it.
    """

    def __init__(self, made, fail_writes: bool = False):
        self.made_in = threading.current_thread()
        self.writers: set = set()
        self.fail_writes = fail_writes
        self._file = made

    def write(self, data: bytes) -> int:
        self.writers.add(threading.current_thread())
        if self.fail_writes:
            raise OSError(28, "No space left on device")
        return self._file.write(data)

    def __getattr__(self, name):
        return getattr(self._file, name)


class SpoolRecorder:
    """
    Replaces the spool file factory C{name} of C{module} for the test;
    keeps every file it made (L{RecordingFile}s).
    """

    def __init__(self, case, module, name: str, fail_writes: bool = False):
        self.files: list[RecordingFile] = []
        made = getattr(module, name)

        def record(*args):
            recorded = RecordingFile(made(*args), fail_writes)
            self.files.append(recorded)
            return recorded

        case.patch(module, name, record)


def send_while_producing(receive: Callable[[bytes], object], data: bytes, piece: int,
                         transport, pool: QueuedPool) -> None:
    """
    Feed C{data} to C{receive} C{piece} bytes at a time, as a peer
    sends: nothing while C{transport} is paused, when the C{pool}'s
    jobs run instead (and catch up).
    """
    sent = 0
    for _ in range(len(data) // piece + 100):
        if sent == len(data):
            return
        if transport.producerState == "paused":
            pool.run()
            continue
        receive(data[sent:sent + piece])
        sent = min(sent + piece, len(data))
    raise AssertionError("the data was never all sent")
