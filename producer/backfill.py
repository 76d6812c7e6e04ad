"""``vehicle-producer backfill s3://bucket/prefix``: enqueue images that are already in the bucket.

Streaming: each shard (the prefix, or its sub-prefixes in parallel, or S3 Inventory data files) is
walked page by page and enqueued while it is listed, ``producer.enqueue_batch`` messages per Redis
round trip; memory is bounded by a page and a batch, not the bucket. ``--skip-done`` decides "done"
from a results listing walked in step (:mod:`vehicle_core.results.listing`): no GET per result.
``--checkpoint`` records each shard's position every ``producer.checkpoint_every`` keys; a rerun
continues there. Enqueueing pauses while the detect queue holds more than
``producer.max_queue_depth`` messages, so a backfill of millions never floods Redis' memory.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field

from producer.checkpoint import Checkpoint
from producer.events import KeyFilter
from producer.progress import Progress
from producer.shards import Shard
from vehicle_core.config import Settings
from vehicle_core.results.contract import SourceRef, results_prefix
from vehicle_core.results.listing import ResultIndex
from vehicle_core.storage import ObjectInfo, ObjectStore
from workers.messages import enqueue_images

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackfillOptions:
    """What to walk and how; the tunables come from settings (:meth:`from_settings`), never repeated here."""

    bucket: str
    prefix: str
    keys: KeyFilter
    results_bucket: str | None  # None: the source bucket
    max_queue_depth: int
    pause_poll_s: float
    enqueue_batch: int
    checkpoint_every: int
    list_concurrency: int
    modified_since: dt.datetime | None = None
    skip_done: bool = False
    dry_run: bool = False
    limit: int | None = None

    @classmethod
    def from_settings(cls, settings: Settings, bucket: str, prefix: str = "", **overrides) -> BackfillOptions:
        p = settings.producer
        base = dict(keys=KeyFilter.from_settings(p, settings.results), results_bucket=settings.results.bucket,
                    max_queue_depth=p.max_queue_depth, pause_poll_s=p.pause_poll_s, enqueue_batch=p.enqueue_batch,
                    checkpoint_every=p.checkpoint_every, list_concurrency=p.list_concurrency)
        return cls(bucket=bucket, prefix=prefix, **{**base, **overrides})


@dataclass
class BackfillStats:
    listed: int = 0
    filtered: int = 0
    already_done: int = 0
    enqueued: int = 0
    pauses: int = 0
    result_heads: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def skipped(self) -> int:
        return self.filtered + self.already_done


@dataclass
class _Walk:
    """One shard's pending work between two flushes."""

    batch: list[SourceRef] = field(default_factory=list)
    position: str | None = None
    handled: int = 0  # keys listed since the last flush
    filtered: int = 0
    done: int = 0


def run_backfill(
    store: ObjectStore, app, opts: BackfillOptions, shards: list[Shard], *, checkpoint: Checkpoint | None = None,
    depth: Callable[[], int] | None = None, stop: threading.Event | None = None, progress: Progress | None = None,
) -> BackfillStats:
    """Walk every shard (``opts.list_concurrency`` at a time), enqueueing what passes the filters."""
    stats = BackfillStats()
    stop = stop or threading.Event()
    checkpoint = checkpoint or Checkpoint(None, store, source="", every=opts.checkpoint_every)
    progress = progress or Progress(None, enabled=False)
    walker = _ShardWalker(store, app, opts, checkpoint, depth, stop, stats, progress)
    with ThreadPoolExecutor(max(1, opts.list_concurrency), thread_name_prefix="backfill") as pool:
        for future in [pool.submit(walker.walk, shard) for shard in shards]:
            future.result()  # re-raises a shard's failure (after the others stop at their next batch)
    checkpoint.save()
    return stats


class _ShardWalker:
    def __init__(self, store, app, opts: BackfillOptions, checkpoint: Checkpoint, depth, stop, stats, progress):
        self.store, self.app, self.opts, self.checkpoint = store, app, opts, checkpoint
        self.depth, self.stop, self.stats, self.progress = depth, stop, stats, progress
        self.results_bucket = opts.results_bucket or opts.bucket

    def walk(self, shard: Shard) -> None:
        if self.checkpoint.is_done(shard.name) or self.stop.is_set():
            return
        after = self.checkpoint.position(shard.name)
        index = self._result_index(shard, after) if self.opts.skip_done else None
        pending = _Walk()
        try:
            with nullcontext() if self.opts.dry_run else self.app.producer_or_acquire() as producer:
                for position, info in shard.items(after):
                    if self.stop.is_set():
                        break
                    if not self._judge(info, index, pending):
                        break
                    pending.position = position
                    if len(pending.batch) >= self.opts.enqueue_batch or pending.handled >= self.opts.checkpoint_every:
                        self._flush(shard, pending, producer)
                        pending = _Walk()
                else:
                    self._flush(shard, pending, producer)
                    if not self.stop.is_set():
                        self.checkpoint.finish(shard.name)
                    return
                self._flush(shard, pending, producer)
        except BaseException:
            self.stop.set()  # the other shards stop at their next key; the checkpoint stays before the failure
            raise
        finally:
            if index is not None:
                with self.stats.lock:
                    self.stats.result_heads += index.heads

    def _result_index(self, shard: Shard, after: str | None) -> ResultIndex:
        where = results_prefix(self.opts.bucket, self.opts.results_bucket, self.opts.keys.results_prefix)
        results = shard.results(self.results_bucket, where, after)
        if results is None:
            raise ValueError(f"{shard.name} is not key-ordered: --skip-done needs a listing")
        return ResultIndex(self.store, results, where, self.results_bucket)

    def _judge(self, info: ObjectInfo, index: ResultIndex | None, pending: _Walk) -> bool:
        """Filter, skip or batch one key; False when ``--limit`` is reached (the key is left for later)."""
        opts = self.opts
        if opts.keys.why_not(info.key) or (opts.modified_since and info.last_modified
                                            and info.last_modified < opts.modified_since):
            pending.filtered += 1
        elif index is not None and index.reason(info) is None:
            pending.done += 1
        elif opts.limit is not None and self.stats.enqueued + len(pending.batch) >= opts.limit:
            self.stop.set()
            return False
        else:
            pending.batch.append(SourceRef(bucket=opts.bucket, key=info.key, etag=info.etag,
                                           version_id=info.version_id, size=info.size))
        pending.handled += 1
        return True

    def _flush(self, shard: Shard, pending: _Walk, producer) -> None:
        """Send the batch, then move the checkpoint past it: never the other way round."""
        if pending.batch:
            if self.opts.dry_run:
                for image in pending.batch:
                    print(f"would enqueue s3://{image.bucket}/{image.key} etag={image.etag}")
            else:
                self._wait_for_room()
                enqueue_images(self.app, pending.batch, producer=producer)
        with self.stats.lock:
            self.stats.listed += pending.handled
            self.stats.filtered += pending.filtered
            self.stats.already_done += pending.done
            self.stats.enqueued += len(pending.batch)
            self.progress.update(self.stats, pending.handled)
        if not self.opts.dry_run:
            self.checkpoint.advance(shard.name, pending.position, pending.handled)

    def _wait_for_room(self) -> None:
        if self.depth is None:
            return
        paused = False
        while not self.stop.is_set() and (current := self.depth()) > self.opts.max_queue_depth:
            if not paused:
                paused = True
                with self.stats.lock:
                    self.stats.pauses += 1
                    self.progress.paused(self.stats, current, self.opts.max_queue_depth)
                log.info("detect queue holds %d > %d: pausing", current, self.opts.max_queue_depth)
            self.stop.wait(self.opts.pause_poll_s)  # re-check every pause_poll_s (throttling, not test sync)
        if paused:
            with self.stats.lock:
                self.progress.update(self.stats, 0)
