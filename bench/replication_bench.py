"""
Live replication between two real daemons on 127.0.0.1: lag, catch-up,
and 100 long-polling replicas on one primary.

    .venv/bin/python bench/replication_bench.py [--uploads 200] [--catchup 10000]
        [--waiters 100] [--idle-seconds 10] [--only lag|catchup|waiters] [--profile]
        [--catchup-size BYTES]

lag: a small file is uploaded to the primary; the time from the upload's
answer to the moment the replica serves it (a syncnext long poll on the
replica returns and a getfile there gives the new ETag) is the lag.
Targets: median under 50 ms, 99th percentile under 200 ms.

catchup: the replica is stopped, 10,000 files of 1-10 KiB are uploaded to
the primary, and the replica is started again; changes applied per
second from the moment the replica listens until its last change ID is
the primary's.  Target: at least 1,000 changes/s.  It first waits for
the rest of the machine to be quiet, and reports the CPU the rest of the
machine used during catch-up ("other load").  The CPU time of both
daemons during catch-up is reported, the replica's split into its
reactor thread and the rest (the storage threads); --profile adds
py-spy profiles of the replica and the primary (bench/results/).
With --catchup-size the files all have that size instead (say 100 files
of 4 MiB: the replica's spooled downloads); the rate is then reported in
MB/s too, without a verdict.

waiters: 100 clients each hold a syncnext long poll (wait=60) on the
primary; the primary's CPU time is read over an idle period, then one
upload must wake every one of them.  Targets: all woken; the primary
idle (we report its CPU time over the period).
"""

import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchtools import OtherLoad, Profile, wait_quiet  # noqa: E402
from common import READER, ROOT, WRITER, Daemon, machine, save_result, write_config  # noqa: E402

LAG_MEDIAN_MS = 50
LAG_P99_MS = 200
CATCHUP_RATE = 1000
POLL_TIMEOUT = 60


class Client:
    """
    One keep-alive HTTP connection to a daemon.
    """

    def __init__(self, port: int, timeout: float = POLL_TIMEOUT + 15):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)

    def call(self, method: str, url: str, body: bytes | None = None,
             key: str = READER) -> tuple[int, bytes]:
        self.conn.request(method, url, body=body, headers={"x-owncdn-key": key})
        response = self.conn.getresponse()
        return response.status, response.read()

    def json(self, url: str) -> dict:
        status, body = self.call("GET", url)
        if status != 200:
            raise RuntimeError(f"{url} answered {status}: {body[:200]!r}")
        return json.loads(body)

    def upload(self, path: str, body: bytes) -> dict:
        status, answer = self.call("PUT", f"/uploadfile?sid=files&path={path}", body, WRITER)
        if status != 200:
            raise RuntimeError(f"upload of {path} answered {status}: {answer[:200]!r}")
        return json.loads(answer)

    def last(self, after: int = 0) -> int:
        # Asked with the change ID it waits for, syncnext answers from
        # memory (no changes after it yet): polling costs the replica
        # under catch-up little.
        return self.json(f"/syncnext?sid=files&after={after}&limit=1")["last"]

    def close(self) -> None:
        self.conn.close()


def primary_config(data_dir: Path) -> None:
    write_config(data_dir)


def replica_config(data_dir: Path, primary_url: str) -> None:
    write_config(
        data_dir,
        services=[
            {"id": "api", "type": "api", "host": "*", "port": "*", "cors": False},
            {"id": "files", "type": "storage", "replica": {"source": "primary", "sid": "files"}},
        ],
        sources=[{"id": "primary", "name": "Primary", "url": primary_url + "/",
                  "key": READER}],
    )


def wait_caught_up(replica: Client, last: int, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if replica.last(after=last) >= last:
            return time.monotonic()
        time.sleep(0.02)
    raise RuntimeError(f"the replica did not reach change {last} in {timeout} s")


def small_body(n: int) -> bytes:
    return os.urandom(1024 + (n * 7919) % (9 * 1024))


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def bench_lag(primary: Daemon, replica: Daemon, uploads: int) -> dict:
    writer, reader = Client(primary.port), Client(replica.port)
    lags = []
    try:
        for n in range(uploads):
            after = reader.last()
            path = f"lag/{n:05d}.bin"
            seen: dict = {}

            def watch():
                watcher = Client(replica.port)
                try:
                    watcher.json(f"/syncnext?sid=files&after={after}&wait={POLL_TIMEOUT}")
                    status, _ = watcher.call("GET", f"/getfile?sid=files&path={path}")
                    seen["status"] = status
                    seen["at"] = time.perf_counter()
                finally:
                    watcher.close()

            thread = threading.Thread(target=watch)
            thread.start()
            time.sleep(0.005)  # let the long poll park, as a real reader's would be
            writer.upload(path, small_body(n))
            acknowledged = time.perf_counter()
            thread.join(POLL_TIMEOUT + 15)
            if seen.get("status") != 200:
                raise RuntimeError(f"{path} is not readable on the replica: {seen}")
            lags.append((seen["at"] - acknowledged) * 1000)
            time.sleep(0.01)
    finally:
        writer.close()
        reader.close()
    median, p99 = statistics.median(lags), percentile(lags, 0.99)
    print(f"lag over {uploads} uploads: median {median:.1f} ms, p99 {p99:.1f} ms, "
          f"max {max(lags):.1f} ms")
    print(f"  median < {LAG_MEDIAN_MS} ms: {'PASS' if median < LAG_MEDIAN_MS else 'FAIL'}; "
          f"p99 < {LAG_P99_MS} ms: {'PASS' if p99 < LAG_P99_MS else 'FAIL'}")
    return {"lags_ms": lags, "median_ms": median, "p99_ms": p99}


def upload_many(port: int, count: int, size: int | None = None, connections: int = 4) -> float:
    """
    Upload C{count} files of 1-10 KiB (or of C{size} bytes each) over a
    few connections; seconds.
    """
    local = threading.local()

    def one(n: int) -> None:
        if not hasattr(local, "client"):
            local.client = Client(port)
        body = small_body(n) if size is None else os.urandom(size)
        local.client.upload(f"catchup/{n // 100:03d}/{n:05d}.bin", body)

    started = time.monotonic()
    with ThreadPoolExecutor(connections) as pool:
        for _ in pool.map(one, range(count)):
            pass
    return time.monotonic() - started


def thread_cpu(pid: int) -> dict[int, float]:
    """
    CPU seconds (user + system) of each thread of C{pid}, by thread ID.
    """
    ticks = os.sysconf("SC_CLK_TCK")
    times = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue  # the thread ended
        times[int(task.name)] = (int(fields[11]) + int(fields[12])) / ticks
    return times


def bench_catchup(primary: Daemon, replica_dir: Path, count: int, profile: bool,
                  size: int | None = None) -> dict:
    with _Closing(Client(primary.port)) as client:
        # The replica was up to date (or never started) when it stopped.
        before = client.last()
    seconds = upload_many(primary.port, count, size)
    with _Closing(Client(primary.port)) as client:
        last = client.last()
    print(f"uploaded {count:,} files to the primary while the replica was down "
          f"({count / seconds:,.0f} uploads/s)")
    quiet = wait_quiet([primary.pid])
    primary_cpu = primary.cpu()
    replica = Daemon(replica_dir)
    started = time.monotonic()
    load = OtherLoad([primary.pid, replica.pid]).start()
    spies = []
    if profile:
        spies = [Profile(daemon.pid, ROOT / "bench" / "results" / f"profile-catchup-{name}.txt",
                         count / CATCHUP_RATE)
                 for name, daemon in (("replica", replica), ("primary", primary))]
    try:
        reader = Client(replica.port)
        try:
            done = wait_caught_up(reader, last, timeout=600)
        finally:
            reader.close()
        cpu = replica.cpu()
        threads = thread_cpu(replica.pid)
        primary_cpu = primary.cpu() - primary_cpu
        other = load.stop()
    finally:
        replica.stop()
    applied = last - before
    rate = applied / (done - started)
    reactor = threads.pop(replica.pid, 0.0)
    if size is None:
        print(f"catch-up: {applied:,} changes in {done - started:.1f} s = {rate:,.0f} "
              f"changes/s (target >= {CATCHUP_RATE:,}): "
              f"{'PASS' if rate >= CATCHUP_RATE else 'FAIL'}")
    else:
        print(f"catch-up: {applied:,} files of {size:,} bytes in {done - started:.1f} s = "
              f"{rate:,.1f} changes/s, {rate * size / 1e6:,.0f} MB/s")
    print(f"  CPU: replica {cpu:.1f} s (reactor thread {reactor:.1f} s, other threads "
          f"{sum(threads.values()):.1f} s), primary {primary_cpu:.1f} s; "
          f"{cpu / applied * 1000:.2f} ms of replica CPU per change; other load {other:.2f} "
          f"cores (before: {quiet:.2f})")
    for name, spy in zip(("replica", "primary"), spies):
        print(f"{name}:\n{spy.wait()}")
    return {"changes": applied, "size": size, "seconds": done - started, "rate": rate,
            "upload_seconds": seconds, "replica_cpu": cpu, "replica_reactor_cpu": reactor,
            "replica_other_cpu": sum(threads.values()), "primary_cpu": primary_cpu,
            "other_load": other, "other_load_before": quiet}


class _Closing:
    def __init__(self, client: Client):
        self.client = client

    def __enter__(self) -> Client:
        return self.client

    def __exit__(self, *exc) -> None:
        self.client.close()


def bench_waiters(primary: Daemon, waiters: int, idle_seconds: float) -> dict:
    with _Closing(Client(primary.port)) as client:
        after = client.last()
    woken: list[float] = []
    answers: list[dict] = []
    lock = threading.Lock()

    def wait() -> None:
        poller = Client(primary.port)
        try:
            answer = poller.json(f"/syncnext?sid=files&after={after}&wait={POLL_TIMEOUT}")
            at = time.perf_counter()
            with lock:
                woken.append(at)
                answers.append(answer)
        finally:
            poller.close()

    threads = [threading.Thread(target=wait) for _ in range(waiters)]
    for thread in threads:
        thread.start()
    time.sleep(2)  # every poll connected and parked
    if woken:
        raise RuntimeError(f"{len(woken)} long polls answered before any change")
    cpu = primary.cpu()
    time.sleep(idle_seconds)
    idle_cpu = primary.cpu() - cpu
    cpu = primary.cpu()
    with _Closing(Client(primary.port)) as client:
        started = time.perf_counter()
        client.upload("wake/one.bin", small_body(1))
        acknowledged = time.perf_counter()
    for thread in threads:
        thread.join(POLL_TIMEOUT + 15)
    wake_cpu = primary.cpu() - cpu
    with_change = sum(1 for a in answers if a["changes"])
    last_woken = (max(woken) - acknowledged) * 1000 if woken else float("nan")
    print(f"{waiters} long polls parked: primary CPU {idle_cpu * 1000:.0f} ms over "
          f"{idle_seconds:.0f} s idle ({idle_cpu / idle_seconds:.2%} of a core)")
    print(f"one upload (answered in {(acknowledged - started) * 1000:.1f} ms) woke "
          f"{with_change} of {waiters}; the last answered {last_woken:.1f} ms after the upload's "
          f"answer ({(max(woken) - started) * 1000:.1f} ms after it was sent; primary CPU "
          f"{wake_cpu * 1000:.0f} ms for the upload and the {waiters} answers): "
          f"{'PASS' if with_change == waiters else 'FAIL'}")
    return {"waiters": waiters, "idle_seconds": idle_seconds, "idle_cpu": idle_cpu,
            "woken": with_change, "last_woken_ms": last_woken,
            "upload_ms": (acknowledged - started) * 1000,
            "all_woken_after_send_ms": (max(woken) - started) * 1000, "wake_cpu": wake_cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--uploads", type=int, default=200)
    parser.add_argument("--catchup", type=int, default=10_000)
    parser.add_argument("--waiters", type=int, default=100)
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--only", choices=("lag", "catchup", "waiters"))
    parser.add_argument("--catchup-size", type=int,
                        help="catch up files of this many bytes instead of 1-10 KiB")
    parser.add_argument("--profile", action="store_true",
                        help="py-spy the replica during catch-up (bench/results/)")
    args = parser.parse_args()
    print(machine())
    results = {"machine": machine()}
    with tempfile.TemporaryDirectory(dir=ROOT / "bench") as folder:
        primary_dir, replica_dir = Path(folder) / "primary", Path(folder) / "replica"
        primary_config(primary_dir)
        primary = Daemon(primary_dir)
        try:
            replica_config(replica_dir, primary.url)
            if args.only in (None, "lag"):
                replica = Daemon(replica_dir)
                try:
                    with _Closing(Client(primary.port)) as client:
                        client.upload("warm-up.bin", b"warm")
                        last = client.last()
                    with _Closing(Client(replica.port)) as client:
                        wait_caught_up(client, last, timeout=30)
                    results["lag"] = bench_lag(primary, replica, args.uploads)
                finally:
                    replica.stop()
            if args.only in (None, "catchup"):
                results["catchup"] = bench_catchup(primary, replica_dir, args.catchup,
                                                 args.profile, args.catchup_size)
            if args.only in (None, "waiters"):
                results["waiters"] = bench_waiters(primary, args.waiters, args.idle_seconds)
        finally:
            primary.stop()
    print(f"raw figures: {save_result('replication', results)}")


if __name__ == "__main__":
    main()
