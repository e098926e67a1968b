"""
Small helpers shared by the tests.
"""

from collections.abc import Callable

from twisted.internet import defer
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
