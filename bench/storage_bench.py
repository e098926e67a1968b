"""
Measure the storage engine: Brotli quality against speed and ratio,
when small bodies are worth compressing, upload and streaming
throughput, small-upload rate per synchronous setting and per group
commit size, and the cost of a small GET served from memory.

    .venv/bin/python bench/storage_bench.py [--size-mib 1024]
        [--only brotli|small|big|gets]

The figures in docs/storage.md come from this script.
"""

import argparse
import glob
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import brotli

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from owncdn.services.storage import StorageService  # noqa: E402
from owncdn.storage import chunks, schema  # noqa: E402
from owncdn.storage.engine import StorageEngine  # noqa: E402
from owncdn.testing import InlineThreadPool, ThreadlessClock  # noqa: E402


def text_corpus(size: int) -> bytes:
    """
    Python's own standard library sources: text like the JS, CSS, HTML
    and JSON a CDN stores.
    """
    library = os.path.dirname(os.__file__)
    parts, total = [], 0
    for name in sorted(glob.glob(f"{library}/**/*.py", recursive=True)):
        data = Path(name).read_bytes()
        parts.append(data)
        total += len(data)
        if total >= size:
            break
    return b"".join(parts)[:size]


def random_file(folder: Path, size: int):
    """
    An upload body of C{size} random bytes (whole 64 MiB blocks), in a
    temporary file like the ones the web layer spools uploads into.
    """
    noise = os.urandom(64 * 1024 * 1024)
    body = tempfile.TemporaryFile(dir=folder)
    for _ in range(size // len(noise)):
        body.write(noise)
    body.seek(0)
    return body


def rate(nbytes: int, seconds: float) -> str:
    return f"{nbytes / seconds / 1e6:,.0f} MB/s"


def qualities(text: bytes) -> None:
    print("Brotli on 1 MiB chunks of text (quality: compress, decompress, ratio)")
    for quality in range(0, 8):
        started, packed = time.perf_counter(), []
        for i in range(0, len(text), chunks.CHUNK_SIZE):
            packed.append(brotli.compress(text[i:i + chunks.CHUNK_SIZE], quality=quality))
        compress = time.perf_counter() - started
        started = time.perf_counter()
        for piece in packed:
            brotli.decompress(piece)
        decompress = time.perf_counter() - started
        ratio = sum(map(len, packed)) / len(text)
        print(f"  q{quality}: {rate(len(text), compress)}, {rate(len(text), decompress)}, "
              f"{ratio:.3f}")
    files = [text[i:i + 16384] for i in range(0, 400 * 16384, 16384)]
    print("Brotli on 16 KiB files (quality: ms per file, ratio)")
    for quality in (4, 5, 9, 10, 11):
        started = time.perf_counter()
        size = sum(len(brotli.compress(f, quality=quality)) for f in files)
        per_file = (time.perf_counter() - started) / len(files) * 1000
        print(f"  q{quality}: {per_file:.2f} ms, {size / sum(map(len, files)):.3f}")


def encoding(text: bytes, noise: bytes) -> None:
    for name, data in (("text", text), ("random", noise)):
        started = time.perf_counter()
        for i in range(0, len(data), chunks.CHUNK_SIZE):
            chunks.encode_chunk(data[i:i + chunks.CHUNK_SIZE])
        print(f"encode_chunk, {name}: {rate(len(data), time.perf_counter() - started)}")


def small_encoding(text: bytes) -> None:
    """
    What encode_chunk costs and wins on small bodies, against always
    compressing them at the small-file quality (what it did before the
    size threshold and the probe below 16 KiB).
    """
    print("encode_chunk on small bodies (us of CPU per body now / always compressed; "
          "text ratio now / always; text bodies the probe refused)")
    for size in (512, 1024, 1100, 2047, 2048, 4096, 8192, 16384):
        texts = [text[i:i + size] for i in range(0, 400 * size, size)]
        noises = [os.urandom(size) for _ in range(400)]
        row = []
        for bodies in (texts, noises):
            started = time.process_time()
            encoded = [chunks.encode_chunk(b) for b in bodies]
            now = (time.process_time() - started) / len(bodies) * 1e6
            started = time.process_time()
            always = [brotli.compress(b, quality=chunks.SMALL_CHUNK_QUALITY) for b in bodies]
            before = (time.process_time() - started) / len(bodies) * 1e6
            row.append((now, before, encoded, always))
        (t_now, t_before, t_encoded, t_always), (n_now, n_before, _, _) = row
        ratio_now = sum(len(e) for e, _ in t_encoded) / (size * len(texts))
        ratio_always = sum(min(len(a), size) for a in t_always) / (size * len(texts))
        refused = sum(1 for b in texts if size >= chunks.MIN_COMPRESS_SIZE
                      and not chunks.looks_compressible(b))
        print(f"  {size:>6} B: text {t_now:6.1f} / {t_before:6.1f} us, "
              f"random {n_now:6.1f} / {n_before:6.1f} us; text ratio {ratio_now:.2f} / "
              f"{ratio_always:.2f}; probe refused {refused} of {len(texts)} text bodies")


def group_commit(folder: Path) -> None:
    """
    1 KiB random puts through write_batch, N to a batch: what one
    commit per put costs against sharing it.
    """
    engine = StorageEngine(folder / "groups.db")
    engine.open()
    count = 2048
    bodies = [os.urandom(1024) for _ in range(count)]
    print("1 KiB random puts, synchronous=FULL, by puts per transaction "
          "(ms of writer time per put, wall and CPU)")
    for group in (1, 8, 64):
        started, cpu = time.perf_counter(), time.process_time()
        for first in range(0, count, group):
            engine.write_batch(
                [engine.put_write(f"g{group}/{n}", io.BytesIO(bodies[n]), "x", None, None, None,
                                  1.0) for n in range(first, first + group)],
                lambda outcomes: None)
        wall = (time.perf_counter() - started) / count * 1000
        cpu = (time.process_time() - cpu) / count * 1000
        print(f"  {group:>3} per commit: {wall:.3f} ms wall, {cpu:.3f} ms CPU")
    engine.close()


def engine_throughput(folder: Path, size: int) -> None:
    engine = StorageEngine(folder / "throughput.db")
    engine.open()
    with random_file(folder, size) as body:
        started = time.perf_counter()
        change, loaded = engine.put("big.bin", body, "x", None, None, None, 1.0)
        put = time.perf_counter() - started
        started = time.perf_counter()
        # The service runs this in the writer thread after answering.
        engine.checkpoint()
        print(f"put {size >> 20} MiB random: {rate(size, put)}, then the WAL checkpoint "
              f"{time.perf_counter() - started:.1f} s")
    for attempt in ("cold", "warm"):
        started = time.perf_counter()
        for index in range((size + chunks.CHUNK_SIZE - 1) // chunks.CHUNK_SIZE):
            engine.read_chunk(change.id, index)
        print(f"stream {size >> 20} MiB from the engine ({attempt}): "
              f"{rate(size, time.perf_counter() - started)}")
    text = text_corpus(64 * 1024 * 1024)
    started = time.perf_counter()
    change, _ = engine.put("big.txt", io.BytesIO(text), "x", None, None, None, 2.0)
    print(f"put 64 MiB text: {rate(len(text), time.perf_counter() - started)}")
    started = time.perf_counter()
    for index in range(len(text) // chunks.CHUNK_SIZE):
        engine.read_chunk(change.id, index)
    print(f"stream 64 MiB text (decompressing): {rate(len(text), time.perf_counter() - started)}")
    engine.close()


def service_streaming(folder: Path, size: int) -> None:
    """
    Stream a file through the service with real threads on the real
    reactor: one thread hop per 1 MiB chunk, as the web layer reads it.
    """
    from twisted.internet import defer, reactor, task

    @defer.inlineCallbacks
    def run(reactor):
        service = StorageService(folder / "stream.db", reactor)
        service.startService()
        with random_file(folder, size) as body:
            yield service.put("big.bin", body)
        for attempt in ("first", "second"):
            body = yield service.get("big.bin")
            started, offset = time.perf_counter(), 0
            while piece := (yield body.read(offset, chunks.CHUNK_SIZE)):
                offset += len(piece)
            print(f"stream {size >> 20} MiB through the service ({attempt}): "
                  f"{rate(offset, time.perf_counter() - started)}")
        yield service.stopService()

    task.react(run)


def small_puts(folder: Path) -> None:
    data = text_corpus(8 * 1024)
    for setting in ("NORMAL", "FULL"):
        schema.SYNCHRONOUS = setting
        engine = StorageEngine(folder / f"small-{setting}.db")
        engine.open()
        started, count = time.perf_counter(), 500
        for n in range(count):
            engine.put(f"f{n}.js", io.BytesIO(data), "x", None, None, None, 1.0)
        per_put = (time.perf_counter() - started) / count * 1000
        print(f"8 KiB puts, synchronous={setting}: {per_put:.2f} ms each")
        engine.close()


def cached_gets(folder: Path) -> None:
    clock = ThreadlessClock()
    service = StorageService(folder / "cache.db", clock, make_pool=InlineThreadPool)
    service.startService()
    service.put("app.js", io.BytesIO(text_corpus(1024)))
    count = 200_000
    started = time.process_time()
    for _ in range(count):
        service.get("app.js").addCallback(lambda body: body.read(0, 65536))
    per_get = (time.process_time() - started) / count * 1e6
    print(f"cached 1 KiB get + read: {per_get:.2f} us of CPU each "
          f"({1e6 / per_get:,.0f} per CPU-second)")
    service.stopService()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--only", choices=("brotli", "small", "big", "gets"))
    args = parser.parse_args()
    text = text_corpus(16 * 1024 * 1024)
    if args.only in (None, "brotli"):
        qualities(text)
        encoding(text, os.urandom(len(text)))
        small_encoding(text)
    with tempfile.TemporaryDirectory(dir=".") as folder:
        if args.only in (None, "big"):
            engine_throughput(Path(folder), args.size_mib * 1024 * 1024)
        if args.only in (None, "small"):
            small_puts(Path(folder))
            group_commit(Path(folder))
        if args.only in (None, "gets"):
            cached_gets(Path(folder))
        if args.only in (None, "big"):
            service_streaming(Path(folder), args.size_mib * 1024 * 1024)


if __name__ == "__main__":
    main()
