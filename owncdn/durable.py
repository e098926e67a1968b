"""
Making a file or a rename survive a power failure: the data of a file
is on disk only once it is fsynced, and a new name in a folder only once
the folder is.
"""

import os
from pathlib import Path


def sync_file(path: Path | str) -> None:
    """
    Flush what has been written to C{path} to the disk.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_folder(folder: Path | str) -> None:
    """
    Flush C{folder}'s entries (names created, renamed or removed in it)
    to the disk.
    """
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
