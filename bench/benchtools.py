"""
What the side-by-side benchmarks (s3_bench.py, cdn_bench.py) need beyond
common.py: wrk with a Lua script, the CPU the rest of the machine spent
while a figure was taken (other people's builds and tests share these
two cores), waiting for a quiet machine, and peak-RSS resets.
"""

import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import CLOCK_TICKS, cpu_seconds, stop_process, wait_for_port

CORES = os.cpu_count() or 1


def _busy_and_total() -> tuple[int, int]:
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user
    return total - idle, total


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class OtherLoad:
    """
    The CPU spent by everything but C{pids} (and this process's children
    that ended meanwhile, such as wrk) between L{start} and L{stop}, in
    cores: 0.0 is a quiet machine, 1.0 a whole core taken by others.
    """

    def __init__(self, pids: list[int]):
        self.pids = pids

    def _ours(self) -> float:
        total = _children_cpu() + time.process_time()
        for pid in self.pids:
            try:
                total += cpu_seconds(pid)
            except OSError:
                pass
        return total

    def start(self) -> "OtherLoad":
        self._busy, _ = _busy_and_total()
        self._ours_before = self._ours()
        self._wall = time.monotonic()
        return self

    def stop(self) -> float:
        busy, _ = _busy_and_total()
        machine = (busy - self._busy) / CLOCK_TICKS
        wall = time.monotonic() - self._wall
        return max(0.0, machine - (self._ours() - self._ours_before)) / wall if wall else 0.0


def wait_quiet(pids: list[int], threshold: float = 0.1, longest: float = 90.0) -> float:
    """
    Wait (at most C{longest} seconds) until the rest of the machine has
    used less than C{threshold} of a core for two seconds; the load seen
    last, in cores.
    """
    deadline = time.monotonic() + longest
    while True:
        load = OtherLoad(pids).start()
        time.sleep(2)
        other = load.stop()
        if other < threshold or time.monotonic() > deadline:
            return other


def wrk(url: str, seconds: float, connections: int, threads: int = 1,
        script: Path | None = None, script_args: list[str] | None = None) -> dict:
    """
    Run wrk; its request count, rate, transfer rate, latencies and
    errors.
    """
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed: run bench/setup_s3_cdn.sh")
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{round(seconds)}s", "--latency"]
    if script is not None:
        argv += ["-s", str(script)]
    argv.append(url)
    if script_args:
        argv += ["--", *script_args]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60,
                         check=True).stdout
    match = re.search(r"(\d+) requests in ([\d.]+)(m?s), ([\d.]+)([KMG]?B) read", out)
    if match is None:
        raise RuntimeError(f"cannot read wrk's output:\n{out}")
    duration = float(match.group(2)) * (60 if match.group(3) == "m" else 1)
    read = float(match.group(4)) * {"B": 1, "KB": 2**10, "MB": 2**20, "GB": 2**30}[match.group(5)]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    if non2xx or socket_errors:
        print(out, file=sys.stderr)
    latency = {label: (re.search(rf"\s{label}%\s+(\S+)", out) or [None, "?"])[1]
               for label in ("50", "99")}
    return {"requests": int(match.group(1)), "seconds": duration,
            "rate": int(match.group(1)) / duration, "bytes_read": read,
            "non2xx": int(non2xx.group(1)) if non2xx else 0,
            "socket_errors": socket_errors.group(1) if socket_errors else "",
            "p50": latency["50"], "p99": latency["99"]}


def reset_peak(pid: int) -> None:
    """
    Reset a process's peak RSS (VmHWM) to its current RSS.
    """
    Path(f"/proc/{pid}/clear_refs").write_text("5")


class Process:
    """
    A server process listening on C{port}, its output in C{log}.
    """

    def __init__(self, argv: list[str], port: int, log: Path, env: dict | None = None):
        self.port = port
        self._log = open(log, "ab")
        self.process = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT,
                                        env=None if env is None else {**os.environ, **env})
        self.pid = self.process.pid
        try:
            wait_for_port(port)
        except RuntimeError:
            self.stop()
            raise RuntimeError(f"{argv[0]} did not start: {log.read_text()[-2000:]}")

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def stop(self) -> None:
        stop_process(self.process)
        self._log.close()


class Profile:
    """
    py-spy sampling a process (all its threads, idle time left out,
    without pausing it) into a collapsed-stack file, for the side of a
    figure that needs explaining.
    """

    def __init__(self, pid: int, path: Path, seconds: float, rate: int = 200):
        spy = Path(sys.executable).with_name("py-spy")
        if not spy.exists():
            raise SystemExit("py-spy is not installed: run bench/setup_s3_cdn.sh")
        self.path = path
        self.process = subprocess.Popen(
            [str(spy), "record", "-p", str(pid), "-d", str(round(seconds)), "-r", str(rate),
             "--threads", "--nonblocking", "-f", "raw", "-o", str(path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def wait(self) -> str:
        self.process.wait(60)
        return summarize(self.path)


def summarize(path: Path, top: int = 15) -> str:
    """
    The busiest threads and the frames where most samples were taken
    (self time), from a py-spy raw file.
    """
    threads: dict[str, int] = {}
    frames: dict[str, int] = {}
    total = 0
    for line in Path(path).read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        samples = int(count)
        total += samples
        parts = stack.split(";")
        threads[parts[0]] = threads.get(parts[0], 0) + samples
        frames[parts[-1]] = frames.get(parts[-1], 0) + samples
    if not total:
        return "no samples"
    lines = [f"{samples * 100 / total:5.1f}%  {name}" for name, samples in
             sorted(threads.items(), key=lambda item: -item[1])]
    lines.append("self time:")
    lines += [f"{samples * 100 / total:5.1f}%  {name}" for name, samples in
              sorted(frames.items(), key=lambda item: -item[1])[:top]]
    return "\n".join(lines)
