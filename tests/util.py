"""
Small helpers shared by the tests.
"""

from twisted.internet import defer


def asynctest(f):
    """
    Run an C{async def} test method under trial.
    """
    def run(self):
        return defer.ensureDeferred(f(self))
    run.__name__ = f.__name__
    run.__doc__ = f.__doc__
    return run
