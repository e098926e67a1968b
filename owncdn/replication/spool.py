"""
Replica downloads too big for memory: a spool file created, written and
hashed (SHA-256) in a pool thread, never on the reactor thread, with the
connection paused while too much waits for that thread
(L{owncdn.spool}).  Used by L{owncdn.replication.source.SourceClient}.
"""

import tempfile
from pathlib import Path
from typing import BinaryIO

from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from owncdn import spool
from owncdn.replication.errors import SyncError

def _open_spool_file(directory: Path) -> BinaryIO:
    # A file without a name (or one unlinked at once): nothing is left
    # in the folder whatever happens to the download or the process.
    return tempfile.TemporaryFile(dir=directory, prefix="replica-")


class Spooled(spool.Spooled):
    """
    A download spooled into C{directory}, its SHA-256 computed on the
    way; C{body} is paused while the spool thread is behind, and failed
    (C{body.fail}) at once when a write failed.
    """

    def __init__(self, directory: Path, pool: ThreadPool, reactor, body):
        # Looked up at each call: tests replace the module's function.
        super().__init__(lambda: _open_spool_file(directory), pool, reactor, body, body.fail,
                         ("sha256",))

    def finish(self) -> defer.Deferred:
        """
        Hand over the last pieces.

        @return: a Deferred that fires with the spool file, positioned at
            0, and the SHA-256 of its bytes in hex once all are written.
        """
        d = super().finish()
        d.addCallbacks(lambda file: (file, self.file.hexdigest("sha256")), _discarded)
        return d


def _discarded(failure: Failure) -> Failure:
    failure.trap(spool.SpoolDiscarded)
    raise SyncError("the spool file was discarded")
