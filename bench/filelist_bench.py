"""
filelist on a storage service holding 100,000 files, through HTTP:
how long each page of 1,000 takes.

    .venv/bin/python bench/filelist_bench.py [--files 100000] [--passes 3]

The database is filled with the storage engine itself before the daemon
starts (synchronous=OFF for the fill only, so it takes seconds rather
than one fsync per file); the daemon then serves it as usual.  One
keep-alive connection pages through the whole listing with after=,
several times, and every page is timed from request to last byte.
Target: every page under 50 ms.
"""

import argparse
import http.client
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import READER, ROOT, Daemon, machine, save_result, write_config  # noqa: E402

from owncdn.storage import schema  # noqa: E402
from owncdn.storage.engine import StorageEngine  # noqa: E402

TARGET_MS = 50.0
PAGE = 1000


def fill(db: Path, count: int) -> None:
    """
    C{count} small files in a tree of folders, like a site's assets.
    """
    schema.SYNCHRONOUS = "OFF"
    engine = StorageEngine(db)
    engine.open()
    try:
        for n in range(count):
            path = f"assets/{n % 100:02d}/{n // 100:05d}/file-{n:06d}.js"
            engine.put(path, io.BytesIO(b"x" * (n % 512)), "text/javascript", None, None,
                       None, 1_700_000_000.0 + n)
    finally:
        engine.close()
        schema.SYNCHRONOUS = "FULL"


def page_through(port: int, prefix: str = "") -> list[float]:
    """
    Milliseconds per page, paging through everything under C{prefix}.
    """
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    times, after, files = [], None, 0
    try:
        while True:
            url = f"/filelist?sid=files&limit={PAGE}&prefix={quote(prefix)}"
            if after is not None:
                url += f"&after={quote(after)}"
            started = time.perf_counter()
            conn.request("GET", url, headers={"x-owncdn-key": READER})
            response = conn.getresponse()
            body = response.read()
            times.append((time.perf_counter() - started) * 1000)
            if response.status != 200:
                raise RuntimeError(f"filelist answered {response.status}: {body[:200]!r}")
            answer = json.loads(body)
            files += len(answer["files"])
            after = answer["next"]
            if after is None:
                return times
    finally:
        conn.close()


def summary(times: list[float]) -> str:
    ordered = sorted(times)
    return (f"{len(times)} pages: median {statistics.median(ordered):.1f} ms, "
            f"p99 {ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]:.1f} ms, "
            f"max {ordered[-1]:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--passes", type=int, default=3)
    args = parser.parse_args()
    print(machine())
    results = {"machine": machine(), "files": args.files}
    with tempfile.TemporaryDirectory(dir=ROOT / "bench") as folder:
        data_dir = Path(folder) / "owncdn"
        write_config(data_dir)
        started = time.monotonic()
        fill(data_dir / "files.db", args.files)
        print(f"filled {args.files:,} files in {time.monotonic() - started:.0f} s")
        daemon = Daemon(data_dir)
        try:
            all_times = []
            for n in range(args.passes):
                times = page_through(daemon.port)
                print(f"pass {n + 1}, whole listing: {summary(times)}")
                all_times += times
            prefix_times = page_through(daemon.port, "assets/42/")
            print(f"prefix assets/42/ ({args.files // 100:,} files): {summary(prefix_times)}")
            all_times += prefix_times
        finally:
            daemon.stop()
    worst = max(all_times)
    results.update(times_ms=all_times, worst_ms=worst)
    verdict = "PASS" if worst < TARGET_MS else "FAIL"
    print(f"slowest page {worst:.1f} ms (target < {TARGET_MS:.0f} ms): {verdict}")
    print(f"raw figures: {save_result('filelist', results)}")


if __name__ == "__main__":
    main()
