"""``python -m devstack.bench broker``: what one Redis broker pays per image at a chosen rate, up to its ceiling.

``bench pipeline`` measures the broker under the whole stack, which on a 2-core machine runs at ~30
images/s (the models, moto and the workers take the CPU), so its ``broker ceiling`` row (1 s over the
CPU per image) is an extrapolation from a mostly idle Redis. This bench drives only the broker's part
of each image, with the workers' own code for it, at rates a fleet reaches (on the 2-core machine the
cost per image barely fell with the rate: it is per round trip and per byte; docs/scale.md):

* a producer process enqueues images with ``workers.messages.enqueue_images`` (the listener's and the
  backfill's path), ``--producer-batch`` images per call (an SQS receive at load holds 10);
* a detect consumer takes them through ``workers.broker.Transport`` (batched pops, records, acks) in a
  kombu event loop with the detect worker's prefetch (``workers.batching.prefetch_for``), works on
  ``detector.batch_size`` at a time under ``workers.crash_ledger.CrashLedger.in_flight`` (an HSET
  + EXPIREAT to mark a batch, an HDEL + DEL to clear it), hands each image on to the classify queue
  in one publish batch (a CropSet message of ``--crop-set-bytes``, the size of three crops) whose write
  carries the marks' clearing (``workers.broker.along_with_publish``, as the detect worker), and acks;
* a classify consumer does the same with ``worker.batch_flush_every`` and the classify prefetch (its
  clearing a write of its own, as the classify worker's), and acks.

No Celery worker, no model, no S3: the commands Redis sees per image are the workers' (``by command``:
compare with ``bench pipeline --fake-models``), so redis-server's ``INFO cpu`` per image at a rate is
what a fleet's broker pays at that rate. ``--rates 20,500,max`` runs one window per rate (``max``: as
fast as the producer and consumers go on this machine) and prints one table: images/s reached, Redis
commands, round trips (``INFO stats`` ``total_reads_processed``) and CPU-µs per image, Redis's share of
a core, and the ceiling (images/s per Redis core at that cost). The idle stack's rate (pop time-outs,
its cron) is measured first and left out, as in ``bench pipeline``.

    python -m devstack.bench broker                          # rates 20, 200, 1000 and max, 2,000 images each
    python -m devstack.bench broker --rates max --images 20000
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import multiprocessing as mp
import os
import platform
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from devstack.bench import figures as figs

#: a CropSet message's crops, as bytes on the broker (docs/scale.md: ~10.5 KB with three crops)
CROP_SET_BYTES = 10_500


def _settings(url: str):
    from vehicle_core.config import load_settings

    settings = load_settings()
    return dataclasses.replace(settings, broker=dataclasses.replace(settings.broker, url=url))


def _producer(url: str, images: int, rate: float, batch: int, sent) -> None:
    """Enqueue ``images`` down the detect -> classify chain at ``rate`` images/s (0: as fast as it goes)."""
    from vehicle_core.results.contract import SourceRef
    from workers.messages import enqueue_images, sender_app

    app = sender_app(_settings(url).broker)
    start = time.monotonic()
    with app.producer_or_acquire() as producer:
        while sent.value < images:
            n = min(batch, images - sent.value)
            if rate > 0:  # pace: the n-th image leaves no earlier than n / rate after the start
                delay = start + (sent.value + n) / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            enqueue_images(app, [SourceRef("bench", f"in/{sent.value + i:08d}.jpg") for i in range(n)],
                           producer=producer)
            with sent.get_lock():
                sent.value += n


def _consumer(url: str, stage: str, done, stop, crop_set_bytes: int = CROP_SET_BYTES) -> None:
    """One stage's broker work per image, with the workers' transport and crash ledger (module docstring)."""
    import redis
    from kombu import Connection, Consumer, Exchange, Queue
    from kombu.asynchronous import Hub

    from workers.batching import prefetch_for
    from workers.broker import TRANSPORT, along_with_publish
    from workers.crash_ledger import CrashLedger
    from workers.messages import transport_options

    settings = _settings(url)
    queue_name = settings.broker.detect_queue if stage == "detect" else settings.broker.classify_queue
    batch = settings.detector.batch_size if stage == "detect" else settings.worker.batch_flush_every
    ledger = CrashLedger(redis.Redis.from_url(url), max_deliveries=settings.worker.max_deliveries, ttl_s=600)
    next_queue = Queue(settings.broker.classify_queue, Exchange(settings.broker.classify_queue, type="direct"),
                       settings.broker.classify_queue)
    crop_set = {"crops": "x" * crop_set_bytes}
    hub, held = Hub(), []
    # The workers' transport options (one priority step: a queue is one list), as workers.app sets them.
    conn = Connection(url, transport=TRANSPORT, transport_options=transport_options(settings.broker))
    producer = conn.Producer(serializer="json")

    def work() -> None:
        taken, held[:] = list(held), []
        ids = [m.headers.get("id") or m.delivery_tag for m in taken]
        with ledger.in_flight(ids) as clearing:
            if stage == "detect":
                publish = producer.channel.create_publish_batch(max_size=len(taken) + 1)
                try:
                    for _ in taken:
                        publish.publish(producer.channel.prepare_message(
                            json.dumps(crop_set), 0, "application/json", "utf-8", {}),
                            exchange="", routing_key=next_queue.name)  # as the workers' routes: no binding lookup
                    with along_with_publish(clearing):  # the marks' clearing in the hand-on's write, as the worker
                        publish.flush()
                finally:
                    publish.close()
        for message in taken:
            message.ack()
        with done.get_lock():
            done.value += len(taken)

    def on_message(_body, message) -> None:
        message.vp_held_at = time.monotonic()
        held.append(message)
        if len(held) >= batch:
            work()

    consumer = Consumer(conn, [Queue(queue_name, Exchange(queue_name, type="direct"), queue_name)],
                        accept=["json", "application/json"], callbacks=[on_message])
    consumer.qos(prefetch_count=prefetch_for(queue_name, settings))
    next_queue(conn.default_channel).declare()
    conn.transport.register_with_event_loop(conn.connection, hub)
    consumer.consume()
    interval = settings.worker.batch_flush_interval_s
    try:
        while not stop.is_set():
            hub.run_once()
            # celery-batches runs a partial batch once ``batch_flush_interval_s`` passed since its first request
            if held and time.monotonic() - held[0].vp_held_at >= interval:
                work()
    finally:
        consumer.cancel()
        conn.release()
        hub.close()


@contextlib.contextmanager
def _broker(args: argparse.Namespace) -> Iterator[str]:
    if args.broker_url:
        yield args.broker_url
        return
    from devstack.servers import redis_server

    with redis_server() as server:
        yield server.url


def _window(url: str, images: int, rate: float, batch: int, timeout_s: float,
            crop_set_bytes: int = CROP_SET_BYTES) -> dict[str, Any]:
    """One rate: consumers up, the idle stack measured, ``images`` enqueued at ``rate``; the figures."""
    ctx = mp.get_context("spawn")
    sent, detected, classified = ctx.Value("q", 0), ctx.Value("q", 0), ctx.Value("q", 0)
    stop = ctx.Event()
    consumers = [ctx.Process(target=_consumer, args=(url, "detect", detected, stop, crop_set_bytes), daemon=True),
                 ctx.Process(target=_consumer, args=(url, "classify", classified, stop, crop_set_bytes), daemon=True)]
    for proc in consumers:
        proc.start()
    try:
        time.sleep(3.0)  # consumers connected and polling: the idle stack this window leaves out
        idle_start, t0 = figs.redis_stats(url), time.monotonic()
        time.sleep(2.0)
        idle = figs.redis_rate(idle_start, figs.redis_stats(url), time.monotonic() - t0)

        producer = ctx.Process(target=_producer, args=(url, images, rate, batch, sent), daemon=True)
        start, w0 = figs.redis_stats(url), time.monotonic()
        producer.start()
        deadline = w0 + timeout_s
        while classified.value < images:
            if time.monotonic() > deadline or not all(p.is_alive() for p in consumers):
                raise RuntimeError(f"{sent.value} images enqueued, {detected.value} through detect, {classified.value} "
                                   f"of {images} through classify after {time.monotonic() - w0:.0f} s (consumers alive: "
                                   f"{[p.is_alive() for p in consumers]})")
            time.sleep(0.05)  # the bench's own progress poll; shared memory, no Redis command
        w1 = time.monotonic()
        end = figs.redis_stats(url)
        producer.join(10)
    finally:
        stop.set()
        for proc in consumers:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
    seconds = w1 - w0
    per = figs.redis_per_image(start, end, images, idle=idle, seconds=seconds)
    return {"rate": rate, "images": images, "seconds": seconds, "images_per_s": images / seconds,
            "redis": per, "round_trips_per_image": per["round_trips"],
            "redis_core_share": (end["cpu_s"] - start["cpu_s"]) / seconds}


def rows(result: dict[str, Any]) -> list[list[str]]:
    out = []
    for w in result["windows"]:
        red = w["redis"]
        out.append([("max" if w["rate"] <= 0 else f"{w['rate']:.0f}"), f"{w['images_per_s']:.0f}",
                    f"{red['commands']:.1f}", f"{w['round_trips_per_image']:.2f}", f"{red['cpu_us']:.0f}",
                    f"{100 * w['redis_core_share']:.0f}%",
                    f"{red['ceiling_images_per_s']:.0f}" if red["ceiling_images_per_s"] else "n/a"])
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m devstack.bench broker", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rates", default="20,200,1000,max",
                   help="images/s per window, comma-separated; 'max' as fast as it goes (default 20,200,1000,max)")
    p.add_argument("--images", type=int, default=2000, help="images per window (default 2000; fewer at low rates: "
                   "at most 30 s of images)")
    p.add_argument("--producer-batch", type=int, default=10, help="images per enqueue call (default 10: an SQS receive)")
    p.add_argument("--crop-set-bytes", type=int, default=CROP_SET_BYTES,
                   help=f"bytes of crops in each classify message (default {CROP_SET_BYTES:,}: three crops)")
    p.add_argument("--broker-url", help="attach to this Redis (a scratch one: it is written to) instead of starting one")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per window at most")
    p.add_argument("--json", help="write every figure to this JSON file")
    args = p.parse_args(argv)
    rates = [0.0 if r.strip() == "max" else float(r) for r in args.rates.split(",") if r.strip()]
    result: dict[str, Any] = {"windows": []}
    with _broker(args) as url:
        import redis

        for rate in rates:
            redis.Redis.from_url(url).flushall()
            images = args.images if rate <= 0 else max(args.producer_batch, min(args.images, int(rate * 30)))
            result["windows"].append(_window(url, images, rate, args.producer_batch, args.timeout, args.crop_set_bytes))
    print(f"machine: {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
          f"load average {os.getloadavg()[0]:.1f} at the end, Python {platform.python_version()}")
    header = ["rate asked (img/s)", "images/s", "redis commands per image", "redis round trips per image",
              "redis CPU-µs per image", "redis core busy", "broker ceiling (images/s per Redis core)"]
    print("| " + " | ".join(header) + " |")
    print("| " + " | ".join("---:" for _ in header) + " |")
    for row in rows(result):
        print("| " + " | ".join(row) + " |")
    for w in result["windows"]:
        print(f"by command at {'max' if w['rate'] <= 0 else int(w['rate'])}: " + ", ".join(
            f"{k} {v:.2f}" for k, v in list(w["redis"]["by_command"].items())[:12]))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
