"""
Small puts into a C{filesystem} service, in process: what one upload's
containment checks, fsyncs (file and folder) and rename cost.

    .venv/bin/python bench/filesystem_put_bench.py [--count 300] [--size 1024]
        [--source DIR]

Writes C{count} files of C{size} random bytes over ten folders of a
fresh directory under /tmp, calling the service's blocking put directly
(no threads, no HTTP), twice, and prints which owncdn ran, puts per
wall second and per CPU second.  C{--source} runs another checkout's C{owncdn} (say an
older commit unpacked with C{git archive}) for a before/after.
"""

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--source", default=str(ROOT),
                        help="the folder holding the owncdn package to run (default: this checkout)")
    args = parser.parse_args()
    sys.path.insert(0, args.source)
    from owncdn.services.filesystem import FileSystem
    from owncdn.testing import InlineThreadPool, ThreadlessClock

    print(f"owncdn from {sys.modules['owncdn.services.filesystem'].__file__}")
    with tempfile.TemporaryDirectory(dir="/tmp") as directory:
        files = FileSystem(directory, ThreadlessClock(), make_pool=InlineThreadPool)
        data = os.urandom(args.size)
        for run in range(2):
            wall, cpu = time.perf_counter(), time.process_time()
            for index in range(args.count):
                files._put(f"dir{index % 10}/run{run}-{index}", io.BytesIO(data),
                           "application/octet-stream", {}, None, None)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            print(f"run {run + 1}: {args.count / wall:.0f} puts/s, "
                  f"{args.count / cpu:.0f} puts per CPU-second")


if __name__ == "__main__":
    main()
