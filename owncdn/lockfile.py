"""
Advisory locks that tell "a daemon is using this" to the admin tools.

The daemon holds C{owncdn.lock} in the data folder while it runs, and
each storage service holds C{<db>.lock} beside its database; C{owncdn
status}, C{owncdn log} and C{owncdn rewind} probe them.  C{flock} locks
belong to the open file, so they survive twistd's fork into the
background and vanish when the process dies, even by SIGKILL.
"""

import fcntl
import os
from pathlib import Path


class LockedByOther(Exception):
    """
    Another process holds the lock.
    """


class FileLock:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self, note: str = "") -> None:
        """
        Take the lock without waiting and write C{note} (such as the pid)
        into the file.

        @raise LockedByOther: another process holds it.
        """
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LockedByOther(str(self.path)) from None
        self._fd = fd
        self.write_note(note)

    def write_note(self, note: str) -> None:
        """
        Replace what the lock file says, such as the pid after twistd's
        fork into the background.
        """
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, note.encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None


def is_locked(path: Path) -> bool:
    """
    Whether some process holds the lock at C{path} now.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def lock_note(path: Path) -> str:
    """
    What the holder wrote into the lock file (empty if none).
    """
    try:
        return Path(path).read_text()
    except FileNotFoundError:
        return ""
