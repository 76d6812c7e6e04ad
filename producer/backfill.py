"""``vehicle-producer backfill s3://bucket/prefix``: enqueue images that are already in the bucket.

The listing is paginated (1,000 keys a page) and collected first, so the progress bar knows its
total and shows rate and ETA. Enqueueing pauses while the detect queue holds more than
``producer.max_queue_depth`` messages, so a backfill of millions never floods Redis' memory.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from producer.events import KeyFilter
from vehicle_core.results import ResultStamp, SourceRef, is_done, source_key_of
from vehicle_core.storage import ObjectStore
from workers.messages import enqueue_image

log = logging.getLogger(__name__)


@dataclass
class BackfillOptions:
    bucket: str
    prefix: str = ""
    keys: KeyFilter = field(default_factory=lambda: KeyFilter((".jpg",), "results/"))
    modified_since: dt.datetime | None = None
    skip_done: bool = False
    dry_run: bool = False
    limit: int | None = None
    max_queue_depth: int = 5000
    pause_poll_s: float = 2.0
    results_bucket: str | None = None  # None: the source bucket


@dataclass
class BackfillStats:
    listed: int = 0
    candidates: int = 0
    already_done: int = 0
    enqueued: int = 0
    pauses: int = 0


def done_stamps(store: ObjectStore, bucket: str, results_prefix: str, prefix: str) -> dict[str, ResultStamp | None]:
    """Source key -> what its current result says of itself, for every result under the prefix."""
    out: dict[str, ResultStamp | None] = {}
    for info in store.list(f"s3://{bucket}/{results_prefix}{prefix}"):
        source_key = source_key_of(info.key, results_prefix)
        if source_key is not None:
            out[source_key] = ResultStamp.from_document(store.get_json(info.uri))
    return out


def select(store: ObjectStore, opts: BackfillOptions, stats: BackfillStats) -> list[SourceRef]:
    """The images to enqueue, in listing order, after every filter."""
    done = done_stamps(store, opts.results_bucket or opts.bucket, opts.keys.results_prefix, opts.prefix) if opts.skip_done else {}
    chosen: list[SourceRef] = []
    for info in store.list(f"s3://{opts.bucket}/{opts.prefix}"):
        stats.listed += 1
        key = info.key
        if opts.keys.why_not(key) or (opts.modified_since and info.last_modified < opts.modified_since):
            continue
        if opts.skip_done and is_done(done.get(key), info.etag):
            stats.already_done += 1
            continue
        chosen.append(SourceRef(bucket=opts.bucket, key=key, etag=info.etag, size=info.size))
        if opts.limit is not None and len(chosen) >= opts.limit:
            break
    stats.candidates = len(chosen)
    return chosen


def run_backfill(
    store: ObjectStore, app, opts: BackfillOptions, *, depth: Callable[[], int] | None = None,
    stop: threading.Event | None = None, progress: bool = True,
) -> BackfillStats:
    """Enqueue every selected image once; pause while ``depth()`` exceeds ``opts.max_queue_depth``."""
    from tqdm import tqdm

    stats = BackfillStats()
    stop = stop or threading.Event()
    images = select(store, opts, stats)
    log.info("backfill s3://%s/%s: %d listed, %d to enqueue, %d already done%s", opts.bucket, opts.prefix,
             stats.listed, len(images), stats.already_done, " (dry run)" if opts.dry_run else "")
    if opts.dry_run:
        for image in images:
            print(f"would enqueue s3://{image.bucket}/{image.key} etag={image.etag}")
        return stats
    with tqdm(total=len(images), unit="img", desc="enqueue", disable=not progress) as bar:
        for image in images:
            if stop.is_set():
                break
            _wait_for_room(depth, opts, stats, stop, bar)
            enqueue_image(app, image)
            stats.enqueued += 1
            bar.update(1)
    return stats


def _wait_for_room(depth, opts: BackfillOptions, stats: BackfillStats, stop: threading.Event, bar) -> None:
    if depth is None:
        return
    paused = False
    while not stop.is_set() and (current := depth()) > opts.max_queue_depth:
        if not paused:
            stats.pauses += 1
            paused = True
            bar.set_postfix_str(f"paused: detect queue {current} > {opts.max_queue_depth}")
            log.info("detect queue holds %d > %d: pausing", current, opts.max_queue_depth)
        stop.wait(opts.pause_poll_s)  # re-check the depth every pause_poll_s (throttling, not test sync)
    if paused:
        bar.set_postfix_str("")


