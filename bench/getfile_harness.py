"""
The getfile request without sockets: the daemon's own site and resource
tree (built by owncdn.tap.build_daemon from a real data folder) fed the
benchmark's request over an in-memory transport, next to a bare
twisted.web resource on a stock Site.

    .venv/bin/python bench/getfile_harness.py [--requests 50000] [--profile 30]

It prints the CPU microseconds per request of each, so the cost of the
Python code can be read without the kernel's share and without wrk
competing for the CPU; with --profile, cProfile's top functions of the
OwnCDN request.  Deterministic enough to compare one change against the
next (the wrk figure in getfile_bench.py is what the target is judged by).
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

from common import READER, ROOT, write_config  # noqa: E402
from twisted.internet import reactor  # noqa: E402
from twisted.internet.address import IPv4Address  # noqa: E402
from twisted.internet.error import ConnectionDone  # noqa: E402
from twisted.internet.testing import StringTransport  # noqa: E402
from twisted.web import resource, server  # noqa: E402

from owncdn.tap import build_daemon  # noqa: E402

BODY = os.urandom(1024)
GETFILE = (b"GET /getfile?sid=files&path=one-k.bin HTTP/1.1\r\n"
           b"Host: 127.0.0.1:8080\r\n"
           b"x-owncdn-key: " + READER.encode() + b"\r\n\r\n")
UPLOAD = (b"PUT /uploadfile?sid=files&path=one-k.bin HTTP/1.1\r\n"
          b"Host: 127.0.0.1:8080\r\n"
          b"x-owncdn-key: writer-secret-0123456789\r\n"
          b"Content-Length: 1024\r\n\r\n" + BODY)
BARE = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"


class Bare(resource.Resource):
    isLeaf = True

    def render_GET(self, request):
        request.setHeader(b"content-type", b"application/octet-stream")
        return BODY


def connect(site):
    protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport(hostAddress=IPv4Address("TCP", "127.0.0.1", 8080),
                                peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
    protocol.makeConnection(transport)
    return protocol, transport


def run(site, request: bytes, count: int) -> float:
    """
    CPU microseconds per request over C{count} requests on one
    persistent connection.
    """
    protocol, transport = connect(site)
    protocol.dataReceived(request)
    answer = transport.value()
    if b" 200 " not in answer.split(b"\r\n", 1)[0]:
        raise SystemExit(f"unexpected answer: {answer[:300]!r}")
    transport.clear()
    started = time.process_time()
    for n in range(count):
        protocol.dataReceived(request)
        transport.clear()
        if n % 32 == 0:
            # What the reactor loop does between reads: moves new timed
            # calls (each request starts and cancels two) into its heap.
            reactor.runUntilCurrent()
    spent = time.process_time() - started
    protocol.connectionLost(ConnectionDone())
    return spent / count * 1e6


def owncdn_site(data_dir: Path):
    write_config(data_dir)
    root = build_daemon(data_dir, ["tcp:0:interface=127.0.0.1"], reactor)
    root.startService()
    site = next(child.factory for child in root.getServiceNamed("web")
                if hasattr(child, "factory"))
    protocol, transport = connect(site)
    protocol.dataReceived(UPLOAD)
    deadline = time.monotonic() + 10
    while b"\r\n\r\n" not in transport.value() and time.monotonic() < deadline:
        reactor.iterate(0.01)  # the put runs in the writer thread
    if b" 200 " not in transport.value().split(b"\r\n", 1)[0]:
        raise SystemExit(f"upload failed: {transport.value()[:300]!r}")
    protocol.connectionLost(ConnectionDone())
    return root, site


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", type=int, metavar="TOP", default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=ROOT / "bench") as folder:
        root, site = owncdn_site(Path(folder) / "owncdn")
        bare_site = server.Site(Bare())
        run(site, GETFILE, args.requests // 10)
        bare, ours = [], []
        for _ in range(args.rounds):
            bare.append(run(bare_site, BARE, args.requests))
            ours.append(run(site, GETFILE, args.requests))
        # The fastest round is the one least disturbed by the rest of
        # the machine.
        print(f"bare twisted.web {min(bare):6.1f} us/request, owncdn getfile {min(ours):6.1f} "
              f"us/request ({min(ours) / min(bare):.2f}x), best of {args.rounds} rounds "
              f"of {args.requests}")
        if args.profile:
            profile = cProfile.Profile()
            profile.enable()
            run(site, GETFILE, args.requests // 5)
            profile.disable()
            stats = pstats.Stats(profile)
            stats.sort_stats("tottime").print_stats(args.profile)
            stats.sort_stats("cumulative").print_stats(args.profile)
        stop(root)
    leave()


def stop(root, seconds: float = 10) -> None:
    """
    Stop the daemon's services, giving them at most C{seconds}.
    """
    stopped = root.stopService()
    deadline = time.monotonic() + seconds
    while not stopped.called and time.monotonic() < deadline:
        reactor.iterate(0.01)


def leave() -> None:
    """
    End the process.  The daemon's stop does not finish under
    C{reactor.iterate}, and its writer thread would keep the process
    alive; the data folder is gone already.
    """
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
