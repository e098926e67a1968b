"""
A 1 GiB upload and download through the real daemon, with its peak
memory; nginx serving the same file in the same run; and 1 GiB of text
stored at three Brotli qualities.

    .venv/bin/python bench/bigfile_bench.py [--size-mib 1024] [--only random|text]
        [--qualities 4,1,5]

random: uploads SIZE MiB of incompressible data with curl (PUT
uploadfile), waits for the daemon to go idle (the WAL checkpoint runs
after the upload is answered), downloads it three times with curl
(getfile) and three times from nginx, and reads the daemon's VmHWM
(peak RSS) from /proc/PID/status.  The best download of each counts.
Targets: peak RSS under 150 MiB, download at least half of nginx's MB/s,
upload at least 150 MB/s.

text: uploads SIZE MiB of text (Python's own sources, repeated) to a
fresh daemon per Brotli chunk quality (the daemon's module constant,
set by the launcher here) and reads the stored size from the database.
The first quality listed is the one the product uses.
"""

import argparse
import glob
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    READER, ROOT, WRITER, Daemon, Nginx, machine, save_result, write_config,
)

MiB = 1024 * 1024
RSS_TARGET_MIB = 150
UPLOAD_TARGET = 150e6
DOWNLOAD_RATIO_TARGET = 0.5


def random_file(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        for _ in range(size // (64 * MiB)):
            f.write(os.urandom(64 * MiB))
        f.write(os.urandom(size % (64 * MiB)))


def text_file(path: Path, size: int) -> None:
    """
    Python's standard library sources, repeated: text like the JS, CSS,
    HTML and JSON a CDN stores.  The corpus (tens of MiB) is far bigger
    than a chunk, and chunks are compressed one by one, so repeating it
    does not flatter the ratio.
    """
    library = os.path.dirname(os.__file__)
    corpus = b"".join(Path(name).read_bytes()
                      for name in sorted(glob.glob(f"{library}/**/*.py", recursive=True)))
    with open(path, "wb") as f:
        written = 0
        while written < size:
            piece = corpus[:size - written]
            f.write(piece)
            written += len(piece)


def curl(*args: str, timeout: float = 900) -> dict:
    """
    Run curl and return its transfer figures.
    """
    out = subprocess.run(
        ["curl", "-sS", "--fail-with-body", "-w",
         '{"code": %{http_code}, "seconds": %{time_total}, "up": %{size_upload},'
         ' "down": %{size_download}}', *args],
        capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"curl failed: {out.stderr} {out.stdout[-500:]}")
    return json.loads(out.stdout[out.stdout.rindex('{"code"'):])


def upload(daemon: Daemon, path: str, source: Path) -> dict:
    cpu = daemon.cpu()
    result = curl("-T", str(source), "-H", f"x-owncdn-key: {WRITER}",
                  "-H", "Content-Type: application/octet-stream", "-o", os.devnull,
                  f"{daemon.url}/uploadfile?sid=files&path={path}")
    result["cpu"] = daemon.cpu() - cpu
    result["rate"] = result["up"] / result["seconds"]
    return result


def download(url: str, headers: list[str], server) -> dict:
    cpu = server.cpu()
    args = []
    for header in headers:
        args += ["-H", header]
    result = curl(*args, "-o", os.devnull, url)
    result["cpu"] = server.cpu() - cpu
    result["rate"] = result["down"] / result["seconds"]
    return result


def wait_idle(server, timeout: float = 120) -> float:
    """
    Seconds until C{server} uses under 2% of a core over half a second.
    """
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        cpu = server.cpu()
        time.sleep(0.5)
        if server.cpu() - cpu < 0.01:
            return time.monotonic() - started
    raise RuntimeError(f"the server was still busy after {timeout} s")


def mb(rate: float) -> str:
    return f"{rate / 1e6:,.0f} MB/s"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def bench_random(folder: Path, size: int, results: dict) -> None:
    source = folder / "www" / "big.bin"
    source.parent.mkdir()
    random_file(source, size)
    data_dir = folder / "owncdn"
    write_config(data_dir)
    daemon = Daemon(data_dir)
    try:
        start_rss = daemon.peak_rss_mib()
        up = upload(daemon, "big.bin", source)
        up_rss = daemon.peak_rss_mib()
        print(f"upload {size // MiB} MiB random: {mb(up['rate'])} "
              f"({up['seconds']:.1f} s, daemon CPU {up['cpu']:.1f} s); "
              f"peak RSS {start_rss:.0f} MiB at start, {up_rss:.0f} MiB after the upload")
        settled = wait_idle(daemon)
        print(f"the daemon went idle {settled:.1f} s after answering the upload "
              f"(the WAL checkpoint runs after the answer)")
        owncdn = [download(f"{daemon.url}/getfile?sid=files&path=big.bin",
                           [f"x-owncdn-key: {READER}"], daemon) for _ in range(3)]
        down_rss = daemon.peak_rss_mib()
    finally:
        daemon.stop()
    nginx_server = Nginx(source.parent)
    try:
        nginx = [download(f"{nginx_server.url}/big.bin", [], nginx_server) for _ in range(3)]
    finally:
        nginx_server.stop()
    for name, runs in (("owncdn", owncdn), ("nginx", nginx)):
        for n, run in enumerate(runs):
            if run["down"] != size:
                raise SystemExit(f"{name} sent {run['down']} bytes, not {size}")
            print(f"download {name} #{n + 1}: {mb(run['rate'])} "
                  f"({run['seconds']:.2f} s, server CPU {run['cpu']:.2f} s)")
    best_owncdn = max(r["rate"] for r in owncdn)
    best_nginx = max(r["rate"] for r in nginx)
    ratio = best_owncdn / best_nginx
    print(f"peak RSS {down_rss:.0f} MiB (target < {RSS_TARGET_MIB}): "
          f"{verdict(down_rss < RSS_TARGET_MIB)}")
    print(f"download {mb(best_owncdn)} = {ratio:.2f} of nginx's {mb(best_nginx)} "
          f"(target >= {DOWNLOAD_RATIO_TARGET}): {verdict(ratio >= DOWNLOAD_RATIO_TARGET)}")
    print(f"upload {mb(up['rate'])} (target >= {mb(UPLOAD_TARGET)}): "
          f"{verdict(up['rate'] >= UPLOAD_TARGET)}")
    results["random"] = {"upload": up, "owncdn": owncdn, "nginx": nginx,
                         "rss_start_mib": start_rss, "rss_after_upload_mib": up_rss,
                         "rss_peak_mib": down_rss, "download_ratio": ratio}
    source.unlink()


# Runs twistd with the chunk quality replaced: the product has no
# setting for it, on purpose.
QUALITY_LAUNCHER = ("import sys; import owncdn.storage.chunks as chunks; "
                    "chunks.QUALITY = {quality}; "
                    "from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()")


def stored_bytes(db: Path) -> int:
    conn = sqlite3.connect(f"{db.absolute().as_uri()}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT coalesce(sum(length(data)), 0) FROM chunks").fetchone()[0]
    finally:
        conn.close()


def bench_text(folder: Path, size: int, qualities: list[int], results: dict) -> None:
    source = folder / "text.txt"
    text_file(source, size)
    results["text"] = {}
    print(f"upload {size // MiB} MiB of text (quality: upload speed, stored size, ratio)")
    for quality in qualities:
        data_dir = folder / f"text-q{quality}"
        write_config(data_dir)
        daemon = Daemon(data_dir, launcher=QUALITY_LAUNCHER.format(quality=quality))
        try:
            up = upload(daemon, "big.txt", source)
            rss = daemon.peak_rss_mib()
        finally:
            daemon.stop()
        stored = stored_bytes(data_dir / "files.db")
        chosen = " (chosen)" if quality == qualities[0] else ""
        print(f"  q{quality}{chosen}: {mb(up['rate'])} ({up['seconds']:.1f} s, daemon CPU "
              f"{up['cpu']:.1f} s), stored {stored / MiB:,.0f} MiB = {stored / size:.3f}, "
              f"peak RSS {rss:.0f} MiB")
        results["text"][quality] = {"upload": up, "stored": stored, "ratio": stored / size,
                                    "rss_peak_mib": rss}
        for leftover in data_dir.glob("files.db*"):
            leftover.unlink()
    source.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--only", choices=("random", "text"))
    parser.add_argument("--qualities", default="4,1,5",
                        help="Brotli chunk qualities for the text run, the product's first")
    args = parser.parse_args()
    print(machine())
    size = args.size_mib * MiB
    results = {"machine": machine(), "size": size}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=ROOT / "bench") as folder:
        if args.only in (None, "random"):
            bench_random(Path(folder), size, results)
        if args.only in (None, "text"):
            bench_text(Path(folder), size,
                       [int(q) for q in args.qualities.split(",")], results)
    print(f"raw figures: {save_result('bigfile', results)} "
          f"({time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
