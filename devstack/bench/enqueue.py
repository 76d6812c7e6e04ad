"""Enqueue throughput into Redis: ``python -m devstack.bench enqueue --keys N``.

Sends N synthetic images down the detect -> classify chain into a scratch queue, once one message
per round trip (``enqueue_image``, the old path; at most ``--single-keys`` of them) and once in
batches (``enqueue_images``, ``producer.enqueue_batch`` per round trip), checks that the queue holds
exactly what was sent, and prints a table: wall-clock keys/s, and the producer's own CPU time per key
(keys per CPU-second: what one idle core would give, Redis aside). The last line is ``enqueue <keys/s of the batched path>
keys/s``. ``--start-redis`` runs a throwaway redis-server on a free port (else ``--broker``, default:
the configured broker). It lives in the producer because vehicle_core must not import Celery.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import platform
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

from vehicle_core.config import load_settings
from vehicle_core.results.contract import SourceRef
from workers.messages import enqueue_image, enqueue_images, sender_app


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    settings = load_settings()
    batch = args.batch or settings.producer.enqueue_batch
    with _broker(args) as url:
        import redis

        client = redis.Redis.from_url(url)
        queue = "bench-detect"
        broker = dataclasses.replace(settings.broker, url=url, detect_queue=queue)
        app = sender_app(broker)
        rows = [_time_single(app, client, queue, min(args.single_keys, args.keys)),
                _time_batched(app, client, queue, args.keys, batch)]
    print(f"machine: {platform.processor() or platform.machine()}, Python {platform.python_version()}")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'path':<38} {'keys':>9} {'seconds':>8} {'keys/s':>9} {'CPU µs/key':>11} {'keys/CPU-s':>11}")
    for name, keys, seconds, cpu in rows:
        print(f"{name:<38} {keys:>9} {seconds:>8.2f} {keys / seconds:>9.0f} {1e6 * cpu / keys:>11.0f} {keys / cpu:>11.0f}")
    _, keys, seconds, _ = rows[-1]
    print(f"enqueue {keys / seconds:.0f} keys/s")


def _images(n: int) -> list[SourceRef]:
    return [SourceRef(bucket="bench", key=f"cams/{i // 1000:04d}/img-{i:08d}.jpg", etag=f"{i:032x}", size=123456)
            for i in range(n)]


def _time_single(app, client, queue: str, n: int) -> tuple[str, int, float, float]:
    client.delete(queue)
    images = _images(n)
    t0, c0 = time.perf_counter(), time.process_time()
    for image in images:
        enqueue_image(app, image)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    _check(client, queue, n)
    return "one at a time (enqueue_image)", n, seconds, cpu


def _time_batched(app, client, queue: str, n: int, batch: int) -> tuple[str, int, float, float]:
    client.delete(queue)
    images = _images(n)
    t0, c0 = time.perf_counter(), time.process_time()
    with app.producer_or_acquire() as producer:
        for start in range(0, n, batch):
            enqueue_images(app, images[start:start + batch], producer=producer)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    _check(client, queue, n)
    return f"batched (enqueue_images, {batch}/trip)", n, seconds, cpu


def _check(client, queue: str, n: int) -> None:
    held = client.llen(queue)
    if held != n:
        raise SystemExit(f"the queue holds {held} messages, {n} were sent")
    client.delete(queue)


@contextlib.contextmanager
def _broker(args) -> Iterator[str]:
    if not args.start_redis:
        yield args.broker or load_settings().broker.url
        return
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("--start-redis: no redis-server on PATH")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as workdir:
        proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                                 "no", "--dir", workdir], stdout=subprocess.DEVNULL)
        try:
            _wait_for_redis(port, proc)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait(10)


def _wait_for_redis(port: int, proc: subprocess.Popen, timeout_s: float = 20.0) -> None:
    import redis

    deadline = time.monotonic() + timeout_s
    client = redis.Redis(port=port)
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(redis.ConnectionError):
            if client.ping():
                return
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(0.05)  # returns at once if the server died
    raise SystemExit(f"redis-server on port {port} did not answer")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m devstack.bench enqueue", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=100_000, help="images sent by the batched path")
    parser.add_argument("--single-keys", type=int, default=5_000, help="images sent one at a time (the slow path)")
    parser.add_argument("--batch", type=int, help="messages per round trip (default: producer.enqueue_batch)")
    parser.add_argument("--broker", help="Redis URL (default: broker.url)")
    parser.add_argument("--start-redis", action="store_true", help="run a throwaway redis-server")
    return parser


if __name__ == "__main__":
    main()
