"""
The CDN chain's 1 KiB memory-cache hit without sockets: the daemon's own
site and resource tree (built by owncdn.tap.build_daemon from a real data
folder) with bench/cdn_bench.py's chain, public -> memorycache ->
httpfetcher -> origin, the origin a twisted.web static folder on
127.0.0.1 in this process.  After the miss and a warm-up, the hit wrk
sends is fed over in-memory transports: C{--connections} connections
with one request in flight each, as wrk keeps them, and one reactor
round per sweep over them.  Every measured request must be a
memory-cache hit (the cache's counters are checked).

    .venv/bin/python bench/cdnhit_harness.py [--requests 30000] [--rounds 5] [--profile 30]

It prints the CPU microseconds per hit of each round (best of the
rounds) and the young-generation collections per 1,000 hits.  Under
callgrind, instructions per hit are the difference of two runs with
different C{--requests} (one round each), which takes the start-up out:

    valgrind --tool=callgrind --callgrind-out-file=/tmp/cg-hit-N.out \\
        .venv/bin/python bench/cdnhit_harness.py --rounds 1 --requests N

C{--young-threshold} and C{--no-allocator} change what
L{owncdn.runtime.tune} applies, to compare its settings; code without
owncdn.runtime (before session 4) runs untuned, as its daemon did.  The
wrk figure in cdn_bench.py is what the target is judged by.
"""

import argparse
import cProfile
import gc
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cdn_bench import owncdn_services  # noqa: E402
from common import ROOT, write_config  # noqa: E402
from getfile_harness import connect, leave, stop  # noqa: E402
from twisted.internet import reactor  # noqa: E402
from twisted.internet.error import ConnectionDone  # noqa: E402
from twisted.web import server, static  # noqa: E402

from owncdn.services.memorycache import MemoryCache  # noqa: E402
from owncdn.tap import build_daemon  # noqa: E402

try:
    from owncdn import runtime
except ImportError:  # the code before session 4
    runtime = None

# What wrk sends (its default request: the path and a Host header).
HIT = b"GET /one-k.bin HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"
MISS_TIMEOUT = 30.0


def origin(folder: Path) -> str:
    """
    A static site serving C{folder} on 127.0.0.1, answered by this
    process's reactor; its URL.
    """
    port = reactor.listenTCP(0, server.Site(static.File(str(folder))), interface="127.0.0.1")
    return f"http://127.0.0.1:{port.getHost().port}"


def check(answer: bytes, body: bytes) -> None:
    if not (answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"\r\n\r\n" + body)):
        raise SystemExit(f"unexpected answer: {answer[:600]!r}")


def miss(site, body: bytes) -> None:
    """
    The first request: the cache fetches the file from the origin.
    """
    # The origin's name is resolved in the reactor's thread pool, which
    # only starts with reactor.run.
    threads = reactor.getThreadPool()
    if not threads.started:
        threads.start()
    protocol, transport = connect(site)
    protocol.dataReceived(HIT)
    deadline = time.monotonic() + MISS_TIMEOUT
    while not transport.value().endswith(body) and time.monotonic() < deadline:
        reactor.iterate(0.01)
    check(transport.value(), body)
    protocol.connectionLost(ConnectionDone())


def run(site, body: bytes, count: int, connections: int) -> tuple[float, int]:
    """
    C{count} hits over C{connections} connections, one in flight on
    each: a hit is answered within its C{dataReceived}, so each sweep
    over the connections is one reactor round of wrk's load.

    @return: process CPU seconds, young collections meanwhile.
    """
    pairs = [connect(site) for _ in range(connections)]
    young_before = gc.get_stats()[0]["collections"]
    started = time.process_time()
    sent = 0
    while sent < count:
        for protocol, transport in pairs[:count - sent]:
            protocol.dataReceived(HIT)
            if not transport.value().endswith(body):
                check(transport.value(), body)
            transport.clear()
        sent += min(connections, count - sent)
        # What the reactor does between its rounds of reads.
        reactor.iterate(0)
    spent = time.process_time() - started
    young = gc.get_stats()[0]["collections"] - young_before
    for protocol, _ in pairs:
        protocol.connectionLost(ConnectionDone())
    return spent, young


def tune(args) -> str:
    if runtime is None:
        return "untuned (no owncdn.runtime)"
    if args.young_threshold:
        runtime.YOUNG_COLLECTION_THRESHOLD = args.young_threshold
    runtime.tune_collector()
    allocator = not args.no_allocator and runtime.tune_allocator()
    return (f"young-GC threshold {gc.get_threshold()[0]}, "
            f"allocator settings {'applied' if allocator else 'not applied'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--requests", type=int, default=30_000)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3000)
    parser.add_argument("--young-threshold", type=int, default=0,
                        help="instead of owncdn.runtime.YOUNG_COLLECTION_THRESHOLD")
    parser.add_argument("--no-allocator", action="store_true",
                        help="leave out owncdn.runtime's glibc settings")
    parser.add_argument("--profile", type=int, metavar="TOP", default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=ROOT / "bench") as folder:
        www = Path(folder) / "www"
        www.mkdir()
        body = os.urandom(1024)
        (www / "one-k.bin").write_bytes(body)
        data_dir = Path(folder) / "owncdn"
        write_config(data_dir, services=owncdn_services(origin(www)))
        root = build_daemon(data_dir, ["tcp:0:interface=127.0.0.1"], reactor)
        root.startService()
        # What the daemon does once its reactor runs (iterate never
        # fires callWhenRunning).
        tuning = tune(args)
        site = next(child.factory for child in root.getServiceNamed("web")
                    if hasattr(child, "factory"))
        cache = next(service for service in root if isinstance(service, MemoryCache))
        try:
            miss(site, body)
            run(site, body, args.warmup, args.connections)
            counters = cache.counters
            before = (counters.hits, counters.misses, counters.source_requests)
            figures = []
            for number in range(1, args.rounds + 1):
                spent, young = run(site, body, args.requests, args.connections)
                figures.append(spent / args.requests * 1e6)
                print(f"round {number}: {figures[-1]:6.1f} us/hit, "
                      f"{young * 1000 / args.requests:.1f} young collections per 1,000 hits",
                      flush=True)
            after = (counters.hits, counters.misses, counters.source_requests)
            if after != (before[0] + args.requests * args.rounds, before[1], before[2]):
                raise SystemExit(f"not every request was a memory-cache hit: "
                                 f"hits, misses, source requests {before} -> {after}")
            print(f"best of {args.rounds} rounds of {args.requests} hits over "
                  f"{args.connections} connections: {min(figures):.1f} us/hit ({tuning}; "
                  f"all {args.requests * args.rounds} memory-cache hits)")
            if args.profile:
                profile = cProfile.Profile()
                profile.runcall(run, site, body, args.requests, args.connections)
                for order in ("tottime", "cumulative"):
                    pstats.Stats(profile).sort_stats(order).print_stats(args.profile)
        finally:
            stop(root)
    leave()


if __name__ == "__main__":
    main()
