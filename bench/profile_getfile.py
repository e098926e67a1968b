"""
Where the daemon's CPU goes while it serves the getfile benchmark: run
the real daemon under the same wrk load and sample it with py-spy.

    .venv/bin/python bench/profile_getfile.py [--seconds 10] [--top 40]

Prints the functions with the most samples, by self time and by
inclusive time, and keeps the collapsed stacks (for flame graphs) in
bench/results/.  Needs py-spy (bench/setup.sh installs it).
"""

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import READER, ROOT, Daemon, upload, wrk, write_config  # noqa: E402


# Leaf frames that are system calls.  py-spy samples wall time, and a
# send() on loopback wakes wrk, which often preempts the daemon right
# there: those samples are mostly time the daemon was not running.
# /proc/PID/stat shows the daemon's system time is about 15% of its CPU
# time, so the report leaves these samples out and shows where the
# Python (user) time goes.
# OwnCDNChannel._send is where a response goes straight to the socket.
SYSCALL_LEAVES = ("untilConcludes (", "EPollReactor.doPoll (", "OwnCDNChannel._send (")


def report(stacks_path: Path, top: int) -> None:
    self_time: collections.Counter = collections.Counter()
    inclusive: collections.Counter = collections.Counter()
    total = skipped = 0
    for line in stacks_path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        stack, _, count = line.rpartition(" ")
        count = int(count)
        frames = stack.split(";")
        # py-spy names a frame "function (file:line)"; drop the line so
        # a function's samples add up.
        names = [f.rsplit(":", 1)[0] + ")" if "(" in f else f for f in frames]
        if names[-1].startswith(SYSCALL_LEAVES):
            skipped += count
            continue
        total += count
        self_time[names[-1]] += count
        for name in set(names):
            inclusive[name] += count
    print(f"{total} samples in Python code ({skipped} in send() and epoll_wait() left out)")
    print("\nself:")
    for name, count in self_time.most_common(top):
        print(f"  {count / total:6.1%}  {name}")
    print("\ninclusive:")
    for name, count in inclusive.most_common(top):
        print(f"  {count / total:6.1%}  {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--report", type=Path, metavar="STACKS",
                        help="only report on collapsed stacks recorded before")
    args = parser.parse_args()
    if args.report:
        report(args.report, args.top)
        return
    py_spy = shutil.which("py-spy") or str(ROOT / ".venv" / "bin" / "py-spy")
    if not os.path.exists(py_spy):
        raise SystemExit("py-spy is not installed: run bench/setup.sh")
    results = ROOT / "bench" / "results"
    results.mkdir(exist_ok=True)
    stacks = results / "getfile-profile.txt"
    with tempfile.TemporaryDirectory(dir=ROOT / "bench") as folder:
        data_dir = Path(folder) / "owncdn"
        write_config(data_dir)
        daemon = Daemon(data_dir)
        try:
            upload(daemon.url, "one-k.bin", os.urandom(1024))
            url = f"{daemon.url}/getfile?sid=files&path=one-k.bin"
            headers = {"x-owncdn-key": READER}
            wrk(url, 2, headers=headers)
            load = threading.Thread(target=wrk, args=(url, args.seconds + 2),
                                    kwargs={"headers": headers})
            load.start()
            subprocess.run([py_spy, "record", "--pid", str(daemon.pid), "--format", "raw",
                            "--rate", "250", "--duration", str(args.seconds),
                            "--output", str(stacks), "--nonblocking"],
                           check=True, timeout=args.seconds + 60,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            load.join(args.seconds + 60)
        finally:
            daemon.stop()
    print(f"collapsed stacks: {stacks}")
    report(stacks, args.top)


if __name__ == "__main__":
    main()
