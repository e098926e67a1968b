"""
Helpers for the thread pools services own.
"""

import threading
from collections.abc import Callable

from twisted.python.threadpool import ThreadPool


def wait_in_pool(pool: ThreadPool, work: Callable):
    """
    Run C{work} in C{pool} and block until it is done: for start-up
    only, before the daemon serves (a service opening its database in
    its writer thread, so that a locked, corrupt or too new database
    stops the daemon with its error).

    @return: what C{work} returned.
    @raise: what C{work} raised.
    """
    done = threading.Event()
    outcome: list = []

    def finished(success: bool, result) -> None:
        outcome.append((success, result))
        done.set()

    pool.callInThreadWithCallback(finished, work)
    done.wait()
    success, result = outcome[0]
    if not success:
        result.raiseException()
    return result
