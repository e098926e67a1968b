"""
Process-wide tuning of the Python runtime and the C allocator, applied
once the daemon runs (L{tune}).  The figures behind each setting are in
docs/performance-s3-cdn.md ("The runtime").
"""

import ctypes
import gc

from twisted.logger import Logger

log = Logger()

# Allocations between two young-generation collections (Python's
# default is 700).  A collection walks every young object still alive,
# and under load those are mostly the requests in flight, whatever the
# threshold: at 700 the walk came every few requests and cost 3% of a
# small PUT.  Garbage without cycles is freed at once either way.
YOUNG_COLLECTION_THRESHOLD = 10_000

# glibc's mallopt parameters and our values.  Bodies move through the
# daemon as buffers of up to a chunk (1 MiB) and a socket read (1 MiB):
# by default glibc serves blocks that large with fresh mmap()ed pages
# and gives them back on free(), so every megabyte received was
# page-faulted and zeroed anew, which on this kind of VM cost a quarter
# of a 1 GiB upload's CPU.  Served from the heap and kept there instead,
# the same pages are reused.  Blocks of MMAP_THRESHOLD and more still
# get their own mapping; up to TRIM_THRESHOLD of free memory stays
# with the process (its RSS) for the next upload.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 8 * 1024 * 1024
TRIM_THRESHOLD = 64 * 1024 * 1024


def tune() -> None:
    """
    Once the daemon runs: L{tune_collector} and L{tune_allocator}.
    """
    tune_collector()
    tune_allocator()


def tune_collector() -> None:
    """
    What start-up built (modules, configuration, services) lives as long
    as the daemon, so it leaves the collector's generations (full
    collections, which stall every request, stay short), and young
    collections come less often.
    """
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, middle, old)


def tune_allocator() -> bool:
    """
    Keep big buffers on the C heap and reuse them (see
    L{MMAP_THRESHOLD}), where the C library is glibc; elsewhere (musl,
    macOS) nothing changes.

    @return: whether the settings were applied.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError):
        return False
    applied = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    if not applied:
        log.warn("the C library refused the allocator settings; big uploads cost more CPU")
    return applied
