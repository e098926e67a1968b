"""
The S3 PutObject of 1 KiB without sockets: the daemon's own site and
resource tree (built by owncdn.tap.build_daemon from a real data folder,
real storage service with its writer thread and group commit) fed
requests signed by botocore, as bench/s3_bench.py's pool has them, over
in-memory transports: C{--connections} connections with one request in
flight each, as wrk keeps them.

    .venv/bin/python bench/s3put_harness.py [--requests 5000] [--rounds 3] [--profile 30]

It prints, per PUT, the CPU microseconds of the reactor thread (the
thread that limits a small PUT, docs/performance-s3-cdn.md) and of the
whole process, and the PUTs per second; with --profile, cProfile's top
functions of the reactor thread.  Deterministic enough to compare one
change against the next; the wrk figure in s3_bench.py is what the
target is judged by.
"""

import argparse
import cProfile
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, WRITER, write_config  # noqa: E402
from getfile_harness import connect, leave, stop  # noqa: E402
from s3_load import Account  # noqa: E402
from twisted.internet import reactor  # noqa: E402
from twisted.internet.error import ConnectionDone  # noqa: E402

from owncdn.runtime import tune  # noqa: E402
from owncdn.tap import build_daemon  # noqa: E402

BODY = os.urandom(1024)
ROUND_TIMEOUT = 120.0
# How long one reactor iteration may wait for something to happen.  The
# answers come from the writer thread's commits, which wake the reactor
# (callFromThread), so a longer wait costs no time; a short one would
# spin through every connection each time it ran out, which under
# callgrind (threads run one at a time) made the instruction count of a
# run depend on scheduling.
IDLE_WAIT = 0.05


def pool(count: int, round_number: int) -> list[bytes]:
    account = Account("127.0.0.1", 8080, "WRITER", WRITER)
    return [account.raw("PUT", f"/files/put/{round_number}/{i:05d}.bin", BODY) for i in range(count)]


def run(site, requests: list[bytes], connections: int) -> tuple[float, float, float]:
    """
    Send C{requests} over C{connections} connections, one in flight on
    each, until every one is answered.

    @return: reactor-thread CPU seconds, process CPU seconds, wall seconds.
    """
    pairs = [connect(site) for _ in range(connections)]
    waiting = list(requests)
    in_flight = [False] * connections
    answered = 0
    thread_before, process_before = time.thread_time(), time.process_time()
    started = time.monotonic()
    deadline = started + ROUND_TIMEOUT
    while answered < len(requests):
        if time.monotonic() > deadline:
            raise SystemExit(f"only {answered} of {len(requests)} answered in {ROUND_TIMEOUT} s")
        for index, (protocol, transport) in enumerate(pairs):
            if in_flight[index]:
                answer = transport.value()
                if not answer.endswith(b"\r\n\r\n"):
                    continue
                if not answer.startswith(b"HTTP/1.1 200 "):
                    raise SystemExit(f"unexpected answer: {answer[:600]!r}")
                transport.clear()
                in_flight[index] = False
                answered += 1
            if waiting:
                in_flight[index] = True
                protocol.dataReceived(waiting.pop())
        reactor.iterate(IDLE_WAIT)
    wall = time.monotonic() - started
    thread = time.thread_time() - thread_before
    process = time.process_time() - process_before
    for protocol, _ in pairs:
        protocol.connectionLost(ConnectionDone())
    return thread, process, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", type=int, metavar="TOP", default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=ROOT / "bench") as folder:
        data_dir = Path(folder) / "owncdn"
        write_config(data_dir)
        root = build_daemon(data_dir, ["tcp:0:interface=127.0.0.1"], reactor)
        root.startService()
        # What the daemon does once its reactor runs (iterate never
        # fires callWhenRunning).
        tune()
        site = next(child.factory for child in root.getServiceNamed("web")
                    if hasattr(child, "factory"))
        try:
            run(site, pool(args.requests // 10, 0), args.connections)  # warm up
            figures = []
            for number in range(1, args.rounds + 1):
                requests = pool(args.requests, number)
                thread, process, wall = run(site, requests, args.connections)
                count = len(requests)
                figures.append((thread / count * 1e6, process / count * 1e6, count / wall))
                print(f"round {number}: reactor thread {figures[-1][0]:6.1f} us/PUT, process "
                      f"{figures[-1][1]:6.1f} us/PUT, {figures[-1][2]:7,.0f} PUT/s", flush=True)
            best = min(figures)
            print(f"best of {args.rounds} rounds of {args.requests}: reactor thread {best[0]:.1f} "
                  f"us/PUT, process {best[1]:.1f} us/PUT, {best[2]:,.0f} PUT/s")
            if args.profile:
                requests = pool(args.requests, args.rounds + 1)
                profile = cProfile.Profile()
                profile.enable()
                run(site, requests, args.connections)
                profile.disable()
                stats = pstats.Stats(profile)
                stats.sort_stats("tottime").print_stats(args.profile)
                stats.sort_stats("cumulative").print_stats(args.profile)
        finally:
            stop(root)
    leave()


if __name__ == "__main__":
    main()
