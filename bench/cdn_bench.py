"""
The CDN chain side by side with nginx serving the same files and Varnish
caching the same origin, in one run:

    public -> memorycache -> httpfetcher -> origin (nginx)

* a memory-cache hit of a 1 KiB file, 32 connections (wrk): requests per
  CPU-second of the server process (requests / its user + system CPU
  from /proc/PID/stat; nginx's master and worker, Varnish's manager and
  cache process with all its threads);
* a 64 MiB file: the miss, then hits (wrk, 4 connections): MB/s, and the
  daemon's peak RSS (VmHWM, reset before the miss) against its resident
  size before it.

    .venv/bin/python bench/cdn_bench.py [--seconds 10] [--profile]

Install Varnish, nginx and wrk with bench/setup_s3_cdn.sh.  Targets: the
1 KiB hit at least 0.25 of nginx's requests per CPU-second; the 64 MiB
hit at least half nginx's MB/s, the peak RSS growing by the cached bytes
only (allowed: the item's size plus 16 MiB).
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchtools import OtherLoad, Profile, reset_peak, wait_quiet, wrk  # noqa: E402
from common import (  # noqa: E402
    ROOT, Daemon, Nginx, children, cpu_seconds, free_port, http, machine, save_result,
    status_kib, stop_process, wait_for_port, write_config,
)

HIT_RATIO = 0.25
BIG_RATIO = 0.5
BIG_MIB = 64
RSS_SLACK_MIB = 16
BIG_CONNECTIONS = 4

VCL = """vcl 4.1;
backend origin {{ .host = "127.0.0.1"; .port = "{port}"; }}
sub vcl_backend_response {{ set beresp.ttl = 1h; }}
"""


class Varnish:
    """
    varnishd in the foreground caching C{origin_port} in memory; its CPU
    is the manager's plus the cache process's (all its threads).
    """

    def __init__(self, folder: Path, origin_port: int):
        varnishd = shutil.which("varnishd") or "/usr/sbin/varnishd"
        if not Path(varnishd).exists():
            raise SystemExit("Varnish is not installed: run bench/setup_s3_cdn.sh")
        folder.mkdir()
        vcl = folder / "bench.vcl"
        vcl.write_text(VCL.format(port=origin_port))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(folder / "varnishd.log", "ab")
        self.process = subprocess.Popen(
            [varnishd, "-F", "-j", "none", "-n", str(folder / "work"), "-a", f"127.0.0.1:{self.port}",
             "-T", "none", "-f", str(vcl), "-s", "malloc,1G"],
            stdout=self._log, stderr=subprocess.STDOUT)
        self.pid = self.process.pid
        wait_for_port(self.port)

    def pids(self) -> list[int]:
        return [self.pid] + children(self.pid)

    def cpu(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.pids())

    def peak_rss_mib(self) -> float:
        return sum(status_kib(pid, "VmHWM") for pid in self.pids()) / 1024

    def stop(self) -> None:
        stop_process(self.process, signal.SIGTERM)
        self._log.close()


def owncdn_services(origin_url: str) -> list[dict]:
    return [
        {"id": "api", "type": "api", "host": "*", "port": "*", "cors": False},
        {"id": "origin", "type": "httpfetcher", "sourceUrl": origin_url + "/"},
        {"id": "hot", "type": "memorycache", "source": "origin", "maxItemSize": "100MB",
         "maxMemory": "512MB"},
        {"id": "www", "type": "public", "host": "*", "port": "*", "pathPrefix": "/",
         "source": "hot"},
    ]


RESULTS = ROOT / "bench" / "results"


def profiled(server, profile: bool, what: str, seconds: float) -> Profile | None:
    return Profile(server.pid, RESULTS / f"profile-cdn-{what}.txt", seconds) if profile else None


def hit_rate(name: str, server, url: str, seconds: float, profile: bool = False) -> dict:
    """
    Requests per CPU-second of C{server} under 32 connections, after a
    first request (the miss) and a warm-up.
    """
    status, _ = http("GET", url)
    if status != 200:
        raise SystemExit(f"{name} answered {status} for {url}")
    wrk(url, min(2.0, seconds), 32, threads=2)
    pids = server.pids() if hasattr(server, "pids") else [server.pid]
    wait_quiet(pids)
    load = OtherLoad(pids).start()
    spy = profiled(server, profile, "hit", seconds)
    before = server.cpu()
    result = wrk(url, seconds, 32, threads=2)
    result["cpu"] = server.cpu() - before
    result["other_load"] = load.stop()
    result["per_cpu_second"] = result["requests"] / result["cpu"]
    if result["non2xx"] or result["socket_errors"]:
        raise SystemExit(f"{name} answered errors: {result}")
    print(f"  {name:<8} 1 KiB hit {result['rate']:>8,.0f} req/s, server CPU {result['cpu']:.2f} s "
          f"in {result['seconds']:.1f} s: {result['per_cpu_second']:>8,.0f} req/CPU-s "
          f"(p50 {result['p50']}, p99 {result['p99']}; other load {result['other_load']:.2f} cores)",
          flush=True)
    if spy is not None:
        print(spy.wait(), flush=True)
    return result


def big_rate(name: str, server, url: str, seconds: float, profile: bool = False) -> dict:
    """
    MB/s of hits on the 64 MiB file (the first request, a miss, timed
    apart).
    """
    started = time.monotonic()
    status, body = http("GET", url)
    miss = time.monotonic() - started
    if status != 200 or len(body) != BIG_MIB * 2**20:
        raise SystemExit(f"{name} answered {status} with {len(body)} bytes for {url}")
    del body
    wrk(url, min(2.0, seconds), BIG_CONNECTIONS)
    pids = server.pids() if hasattr(server, "pids") else [server.pid]
    wait_quiet(pids)
    load = OtherLoad(pids).start()
    spy = profiled(server, profile, "big", seconds)
    before = server.cpu()
    result = wrk(url, seconds, BIG_CONNECTIONS)
    result["cpu"] = server.cpu() - before
    result["other_load"] = load.stop()
    result["miss_seconds"] = miss
    result["mb_per_s"] = result["bytes_read"] / result["seconds"] / 1e6
    if result["non2xx"] or result["socket_errors"]:
        raise SystemExit(f"{name} answered errors: {result}")
    print(f"  {name:<8} {BIG_MIB} MiB hit {result['mb_per_s']:>7,.0f} MB/s ({result['requests']} "
          f"responses in {result['seconds']:.1f} s, server CPU {result['cpu']:.1f} s; first "
          f"request {miss:.2f} s; other load {result['other_load']:.2f} cores)", flush=True)
    if spy is not None:
        print(spy.wait(), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--profile", action="store_true",
                        help="py-spy the daemon during its measured runs (bench/results/)")
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    print(machine(), flush=True)
    results = {"machine": machine(), "seconds": args.seconds, "command": " ".join(sys.argv)}
    with tempfile.TemporaryDirectory(dir=ROOT / "bench") as folder:
        folder = Path(folder)
        www = folder / "www"
        www.mkdir()
        (www / "one-k.bin").write_bytes(os.urandom(1024))
        with open(www / "big.bin", "wb") as out:
            for _ in range(BIG_MIB):
                out.write(os.urandom(2**20))

        nginx = Nginx(www)
        try:
            results["nginx"] = {
                "hit": hit_rate("nginx", nginx, f"{nginx.url}/one-k.bin", args.seconds),
                "big": big_rate("nginx", nginx, f"{nginx.url}/big.bin", args.seconds)}

            varnish = Varnish(folder / "varnish", nginx.port)
            try:
                results["varnish"] = {
                    "hit": hit_rate("varnish", varnish, f"{varnish.url}/one-k.bin", args.seconds),
                    "big": big_rate("varnish", varnish, f"{varnish.url}/big.bin", args.seconds)}
            finally:
                varnish.stop()

            data_dir = folder / "owncdn"
            write_config(data_dir, services=owncdn_services(nginx.url))
            daemon = Daemon(data_dir)
            try:
                results["owncdn"] = {
                    "hit": hit_rate("owncdn", daemon, f"{daemon.url}/one-k.bin", args.seconds,
                                    args.profile)}
                reset_peak(daemon.pid)
                rss_before = status_kib(daemon.pid, "VmRSS")
                results["owncdn"]["big"] = big_rate("owncdn", daemon, f"{daemon.url}/big.bin",
                                                    args.seconds, args.profile)
                growth = (status_kib(daemon.pid, "VmHWM") - rss_before) / 1024
                results["owncdn"]["big"]["rss_growth_mib"] = growth
                print(f"  owncdn   peak RSS +{growth:.0f} MiB over the miss and the hits "
                      f"(cached: {BIG_MIB} MiB)", flush=True)
            finally:
                daemon.stop()
        finally:
            nginx.stop()

    own, ngx, vrn = results["owncdn"], results["nginx"], results["varnish"]
    hit = own["hit"]["per_cpu_second"] / ngx["hit"]["per_cpu_second"]
    big = own["big"]["mb_per_s"] / ngx["big"]["mb_per_s"]
    growth = own["big"]["rss_growth_mib"]
    rows = [
        ("1 KiB hit req/CPU-s / nginx", f"{hit:.3f} x", f">= {HIT_RATIO} x", hit >= HIT_RATIO),
        ("1 KiB hit req/CPU-s / Varnish",
         f"{own['hit']['per_cpu_second'] / vrn['hit']['per_cpu_second']:.3f} x", "reported", None),
        (f"{BIG_MIB} MiB hit MB/s / nginx", f"{big:.2f} x", f">= {BIG_RATIO} x", big >= BIG_RATIO),
        (f"{BIG_MIB} MiB hit MB/s / Varnish",
         f"{own['big']['mb_per_s'] / vrn['big']['mb_per_s']:.2f} x", "reported", None),
        (f"{BIG_MIB} MiB peak RSS growth", f"{growth:.0f} MiB",
         f"<= {BIG_MIB + RSS_SLACK_MIB} MiB", growth <= BIG_MIB + RSS_SLACK_MIB),
    ]
    results["verdicts"] = rows
    print("targets:")
    for what, measured, target, passed in rows:
        verdict = "" if passed is None else (": PASS" if passed else ": FAIL")
        print(f"  {what:<32} {measured:>10}  (target {target}){verdict}")
    print(f"raw figures: {save_result('cdn', results)}")


if __name__ == "__main__":
    main()
