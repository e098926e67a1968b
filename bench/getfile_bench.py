"""
getfile of a 1 KiB file under 32 concurrent connections (wrk): requests
per CPU-second of the server process, OwnCDN against nginx (one worker)
in the same run, with a bare twisted.web resource and static.File for
scale.

    .venv/bin/python bench/getfile_bench.py [--seconds 10] [--rounds 3] [--no-references]

Requests per CPU-second = requests / (user + system CPU time of the
server, read from /proc/PID/stat before and after the wrk run).  The
target is at least 0.2 of nginx's figure.
"""

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    PYTHON, READER, ROOT, Daemon, Nginx, Server, free_port, machine,
    per_cpu_second, save_result, upload, write_config,
)

TARGET_RATIO = 0.2


def measure(name: str, server, url: str, seconds: float, headers=None) -> dict:
    per_cpu_second(server, url, min(2.0, seconds), headers)  # warm up
    result = per_cpu_second(server, url, seconds, headers)
    print(f"  {name:<22} {result['requests']:>8} req in {result['seconds']:.1f} s, "
          f"server CPU {result['cpu']:.2f} s: {result['per_cpu_second']:>8,.0f} req/CPU-s "
          f"(p50 {result['p50']}, p99 {result['p99']}"
          + (f", {result['non2xx']} non-2xx" if result["non2xx"] else "") + ")")
    if result["non2xx"]:
        raise SystemExit(f"{name} answered errors")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3,
                        help="nginx and OwnCDN are measured this many times, alternately; "
                             "the verdict goes by the median ratio")
    parser.add_argument("--no-references", action="store_true",
                        help="skip the bare twisted.web and static.File servers")
    args = parser.parse_args()
    print(machine())
    body = os.urandom(1024)
    results = {"machine": machine(), "seconds": args.seconds, "rounds": []}
    with tempfile.TemporaryDirectory(dir=ROOT / "bench") as folder:
        folder = Path(folder)
        www = folder / "www"
        www.mkdir()
        (www / "one-k.bin").write_bytes(body)
        data_dir = folder / "owncdn"
        write_config(data_dir)
        nginx = Nginx(www)
        daemon = None
        try:
            daemon = Daemon(data_dir)
            upload(daemon.url, "one-k.bin", body)
            for n in range(args.rounds):
                print(f"round {n + 1}")
                figures = {
                    "nginx": measure("nginx (1 worker)", nginx, f"{nginx.url}/one-k.bin",
                                     args.seconds),
                    "owncdn": measure("owncdn getfile", daemon,
                                      f"{daemon.url}/getfile?sid=files&path=one-k.bin",
                                      args.seconds, {"x-owncdn-key": READER}),
                }
                figures["ratio"] = (figures["owncdn"]["per_cpu_second"]
                                    / figures["nginx"]["per_cpu_second"])
                print(f"  owncdn / nginx = {figures['ratio']:.3f}")
                results["rounds"].append(figures)
        finally:
            if daemon is not None:
                daemon.stop()
            nginx.stop()
        if not args.no_references:
            nginx_rate = statistics.median(r["nginx"]["per_cpu_second"]
                                           for r in results["rounds"])
            for name, mode, url in (("bare twisted.web", "bare", "/"),
                                    ("twisted static.File", "static", "/one-k.bin")):
                port = free_port()
                argv = [PYTHON, str(ROOT / "bench" / "reference_server.py"), mode, str(port)]
                server = Server(argv + ([str(www)] if mode == "static" else []), port)
                try:
                    figures = measure(name, server, server.url + url, args.seconds)
                finally:
                    server.stop()
                results[name] = figures
                print(f"  {name} / median nginx = "
                      f"{figures['per_cpu_second'] / nginx_rate:.3f}")
    ratio = statistics.median(r["ratio"] for r in results["rounds"])
    results["ratio"] = ratio
    verdict = "PASS" if ratio >= TARGET_RATIO else "FAIL"
    print(f"owncdn / nginx, median of {args.rounds} rounds = {ratio:.3f} "
          f"(target >= {TARGET_RATIO}): {verdict}")
    print(f"raw figures: {save_result('getfile', results)}")


if __name__ == "__main__":
    main()
