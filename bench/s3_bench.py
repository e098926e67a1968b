"""
S3 mode side by side with moto's server and s3rver, in one run, with the
same load generator: GetObject and PutObject of 1 KiB (every request
signed, wrk cycling through a pool of pre-signed requests, see
s3_load.py), and a 1 GiB PutObject in one part and in 16 MiB parts.

    .venv/bin/python bench/s3_bench.py [--seconds 10] [--connections 32]
        [--big-size 1024] [--servers owncdn,owncdn-nofsync,moto,s3rver]
        [--big-servers owncdn,s3rver] [--big-only] [--rounds 3] [--profile]

Install the other servers first with bench/setup_s3_cdn.sh.  Targets:
GET at least 3 x s3rver's requests/s, PUT at least 1.5 x; the 1 GiB
uploads at least s3rver's MB/s with the daemon's peak RSS (VmHWM, reset
through /proc/PID/clear_refs before each upload) at most 64 MiB above
its resident size before it.

The servers are measured in turns, C{--rounds} times over (owncdn,
s3rver, owncdn, s3rver, ...: each round starts every server afresh on
an empty folder), and each figure compared is the median of its rounds,
for every server alike: on this kind of VM the same work costs a third
more CPU in some minutes than in others, which one run per server
would hand to whichever server it hit.  The peak RSS growth compared
is the largest of the rounds.
"""

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchtools import OtherLoad, Process, Profile, reset_peak, wait_quiet  # noqa: E402
from common import (  # noqa: E402
    LAUNCHER, ROOT, WRITER, Daemon, cpu_seconds, free_port, machine, save_result, status_kib,
    write_config,
)
from s3_load import (  # noqa: E402
    PART_SIZE, Account, BigFile, put_big, put_multipart, scratch_folder, write_pool, wrk_pool,
)

BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
MOTO = BENCH / ".venv-moto" / "bin" / "moto_server"
S3RVER = BENCH / "node_modules" / "s3rver" / "bin" / "s3rver.js"
GET_RATIO, PUT_RATIO = 3.0, 1.5
MAX_RSS_GROWTH_MIB = 64
GET_POOL, PUT_POOL = 20000, 5000
BIG_TIMEOUT = 900


class S3Server:
    """
    A running S3 server: its process (for CPU and memory), where it
    listens, the credentials it takes and the bucket to use.
    """

    def __init__(self, name: str, process, account: Account, bucket: str):
        self.name, self.process, self.account, self.bucket = name, process, account, bucket

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        self.process.stop()


def start_owncdn(folder: Path, name: str = "owncdn", launcher: str = LAUNCHER) -> S3Server:
    data_dir = folder / name
    write_config(data_dir)
    daemon = Daemon(data_dir, launcher=launcher)
    return S3Server(name, daemon, Account("127.0.0.1", daemon.port, "WRITER", WRITER), "files")


# Not what OwnCDN ships: storage commits with synchronous=NORMAL, no
# fsync per upload, as neither moto (memory) nor s3rver (no fsync) does
# one.  Shows how much of a small PUT is the fsync.
NO_FSYNC_LAUNCHER = "import owncdn.storage.schema as s; s.SYNCHRONOUS = 'NORMAL'; " + LAUNCHER


def start_owncdn_nofsync(folder: Path) -> S3Server:
    return start_owncdn(folder, "owncdn-nofsync", NO_FSYNC_LAUNCHER)


def start_moto(folder: Path) -> S3Server:
    if not MOTO.exists():
        raise SystemExit("moto is not installed: run bench/setup_s3_cdn.sh")
    port = free_port()
    server = Process([str(MOTO), "-H", "127.0.0.1", "-p", str(port)], port, folder / "moto.log")
    s3 = S3Server("moto", server, Account("127.0.0.1", port, "bench", "bench-secret"), "bench")
    status, answer = s3.account.request("PUT", "/bench")
    if status != 200:
        raise RuntimeError(f"moto CreateBucket answered {status}: {answer[:200]!r}")
    return s3


def start_s3rver(folder: Path) -> S3Server:
    if not S3RVER.exists():
        raise SystemExit("s3rver is not installed: run bench/setup_s3_cdn.sh")
    port = free_port()
    data = folder / "s3rver"
    data.mkdir()
    server = Process(["node", str(S3RVER), "-d", str(data), "-a", "127.0.0.1", "-p", str(port),
                      "--silent", "--no-vhost-buckets", "--configure-bucket", "bench"], port,
                     folder / "s3rver.log")
    # s3rver's built-in account.
    return S3Server("s3rver", server, Account("127.0.0.1", port, "S3RVER", "S3RVER"), "bench")


STARTERS = {"owncdn": start_owncdn, "owncdn-nofsync": start_owncdn_nofsync, "moto": start_moto,
            "s3rver": start_s3rver}


def profiled(s3: S3Server, args, what: str, seconds: float) -> Profile | None:
    """
    py-spy on an OwnCDN daemon for the run about to start, with --profile.
    """
    if not (args.profile and s3.name.startswith("owncdn")):
        return None
    return Profile(s3.pid, RESULTS / f"profile-s3-{s3.name}-{what}.txt", seconds)


def run_pool(s3: S3Server, folder: Path, method: str, paths: list[str], body: bytes,
             seconds: float, connections: int, args) -> dict:
    pool = write_pool(folder / f"{s3.name}-{method}.pool", s3.account, method, paths, body)
    url = f"http://{s3.account.netloc}/"
    wrk_pool(url, pool, min(2.0, seconds), connections)  # warm up
    quiet = wait_quiet([s3.pid])
    load = OtherLoad([s3.pid]).start()
    profile = profiled(s3, args, method.lower(), seconds)
    before = cpu_seconds(s3.pid)
    result = wrk_pool(url, pool, seconds, connections)
    result["cpu"] = cpu_seconds(s3.pid) - before
    result["other_load"] = load.stop()
    result["other_load_before"] = quiet
    if result["non2xx"] or result["socket_errors"]:
        raise SystemExit(f"{s3.name} {method} answered errors: {result}")
    print(f"  {s3.name:<14} {method:<4} 1 KiB {result['rate']:>8,.0f} req/s "
          f"(server CPU {result['cpu']:.1f} s in {result['seconds']:.1f} s, "
          f"p50 {result['p50']}, p99 {result['p99']}; other load {result['other_load']:.2f} cores)",
          flush=True)
    if profile is not None:
        print(profile.wait(), flush=True)
    return result


def run_big(s3: S3Server, big: BigFile, how: str, args) -> dict:
    upload = put_big if how == "single" else put_multipart
    wait_quiet([s3.pid])
    reset_peak(s3.pid)
    rss_before = status_kib(s3.pid, "VmRSS")
    load = OtherLoad([s3.pid]).start()
    cpu_before = cpu_seconds(s3.pid)
    profile = profiled(s3, args, how, big.size / 100e6)
    seconds = upload(s3.account, s3.bucket, f"big-{how}.bin", big, BIG_TIMEOUT)
    result = {"seconds": seconds, "mb_per_s": big.size / seconds / 1e6,
              "cpu": cpu_seconds(s3.pid) - cpu_before, "other_load": load.stop(),
              "rss_before_mib": rss_before / 1024,
              "rss_growth_mib": (status_kib(s3.pid, "VmHWM") - rss_before) / 1024}
    if how == "multipart":
        result["completion_seconds"] = put_multipart.completion
    print(f"  {s3.name:<14} {big.size // 2**20} MiB {how:<9} {result['mb_per_s']:>7.0f} MB/s "
          f"({seconds:.1f} s, server CPU {result['cpu']:.1f} s, peak RSS "
          f"+{result['rss_growth_mib']:.0f} MiB; other load {result['other_load']:.2f} cores"
          + (f"; completion {result['completion_seconds']:.1f} s" if how == "multipart" else "") + ")",
          flush=True)
    if profile is not None:
        print(profile.wait(), flush=True)
    return result


def measure(name: str, folder: Path, args, body: bytes, big: BigFile | None) -> dict:
    s3 = STARTERS[name](folder)
    results = {}
    try:
        status, answer = s3.account.request("PUT", f"/{s3.bucket}/one-k.bin", body)
        if status != 200:
            raise RuntimeError(f"{name} PutObject answered {status}: {answer[:200]!r}")
        if not args.big_only:
            results["get"] = run_pool(s3, folder, "GET", [f"/{s3.bucket}/one-k.bin"] * GET_POOL, b"",
                                      args.seconds, args.connections, args)
            results["put"] = run_pool(s3, folder, "PUT",
                                      [f"/{s3.bucket}/put/{i:05d}.bin" for i in range(PUT_POOL)], body,
                                      args.seconds, args.connections, args)
        if big is not None and name in args.big_servers:
            for how in ("single", "multipart"):
                try:
                    results[how] = run_big(s3, big, how, args)
                except Exception as error:  # noqa: BLE001 - reported, then the others go on
                    print(f"  {name} big {how}: failed: {error}", flush=True)
                    results[how] = {"error": str(error)}
        results["idle_rss_mib"] = status_kib(s3.pid, "VmRSS") / 1024
    finally:
        s3.stop()
    return results


def summary(rounds: list[dict]) -> dict:
    """
    One server's figures over the rounds: each rate and MB/s the median
    of the rounds (every round's kept beside it), the peak RSS growth
    the largest; a single round as it is.
    """
    if len(rounds) == 1:
        return rounds[0]
    merged: dict = {"rounds": rounds}
    for what, figure in (("get", "rate"), ("put", "rate"), ("single", "mb_per_s"),
                         ("multipart", "mb_per_s")):
        runs = [measured[what] for measured in rounds if figure in measured.get(what, {})]
        if not runs:
            continue
        runs.sort(key=lambda run: run[figure])
        # The median run (the lower middle one of an even count).
        merged[what] = dict(runs[(len(runs) - 1) // 2])
        merged[what][f"{figure}_rounds"] = [run[figure] for run in runs]
        if "rss_growth_mib" in runs[0]:
            merged[what]["rss_growth_mib"] = max(run["rss_growth_mib"] for run in runs)
    merged["idle_rss_mib"] = max(measured["idle_rss_mib"] for measured in rounds)
    return merged


def verdicts(results: dict) -> list[tuple[str, str, str, bool]]:
    own, ref = results["owncdn"], results["s3rver"]
    big = f"{results['big_size_mib']} MiB"
    rows = []
    for action, ratio in (("get", GET_RATIO), ("put", PUT_RATIO)):
        if action not in own or action not in ref:
            continue
        measured = own[action]["rate"] / ref[action]["rate"]
        rows.append((f"{action.upper()} 1 KiB / s3rver", f"{measured:.2f} x", f">= {ratio} x",
                     measured >= ratio))
    for how in ("single", "multipart"):
        if "mb_per_s" in own.get(how, {}) and "mb_per_s" in ref.get(how, {}):
            measured = own[how]["mb_per_s"] / ref[how]["mb_per_s"]
            rows.append((f"{big} {how} MB/s / s3rver", f"{measured:.2f} x", ">= 1 x", measured >= 1))
        if "rss_growth_mib" in own.get(how, {}):
            growth = own[how]["rss_growth_mib"]
            rows.append((f"{big} {how} peak RSS growth", f"{growth:.0f} MiB",
                         f"< {MAX_RSS_GROWTH_MIB} MiB", growth < MAX_RSS_GROWTH_MIB))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--big-size", type=int, default=1024, help="MiB; 0 skips the big uploads")
    parser.add_argument("--servers", default="owncdn,owncdn-nofsync,moto,s3rver")
    parser.add_argument("--big-servers", default="owncdn,s3rver")
    parser.add_argument("--big-only", action="store_true",
                        help="only the big uploads (skip the 1 KiB GET and PUT runs)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="measure every server this many times, in turns; "
                             "each figure is the median of its rounds")
    parser.add_argument("--profile", action="store_true",
                        help="py-spy the OwnCDN daemons during each measured run (bench/results/)")
    args = parser.parse_args()
    args.big_servers = args.big_servers.split(",")
    RESULTS.mkdir(exist_ok=True)
    print(machine(), flush=True)
    results = {"machine": machine(), "seconds": args.seconds, "connections": args.connections,
               "big_size_mib": args.big_size, "part_size_mib": PART_SIZE // 2**20,
               "command": " ".join(sys.argv)}
    folder = scratch_folder(BENCH)
    try:
        big = None
        if args.big_size:
            started = time.monotonic()
            big = BigFile(folder, args.big_size * 2**20)
            # Written out now: its writeback would otherwise delay the
            # first round's fsyncs (PUT p99 of 130-300 ms instead of 20).
            os.sync()
            print(f"made a {args.big_size} MiB file in {time.monotonic() - started:.1f} s", flush=True)
        body = os.urandom(1024)
        rounds: dict[str, list[dict]] = {name: [] for name in args.servers.split(",")}
        for number in range(1, args.rounds + 1):
            if args.rounds > 1:
                print(f"round {number} of {args.rounds}", flush=True)
            for name in rounds:
                # A fresh folder each time; gone (with what the server
                # stored) before the next server starts.
                work = folder / f"{name}-{number}"
                work.mkdir()
                try:
                    rounds[name].append(measure(name, work, args, body, big))
                finally:
                    shutil.rmtree(work, ignore_errors=True)
        for name, measured in rounds.items():
            results[name] = summary(measured)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if "owncdn" in results and "s3rver" in results:
        rows = verdicts(results)
        results["verdicts"] = rows
        print("targets:")
        for what, measured, target, passed in rows:
            print(f"  {what:<34} {measured:>10}  (target {target}): {'PASS' if passed else 'FAIL'}")
    print(f"raw figures: {save_result('s3', results)}")


if __name__ == "__main__":
    main()
