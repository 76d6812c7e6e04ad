"""``vehicle-producer reconcile s3://bucket/prefix``: which images have no current result?

The operator's question after an outage, and the proof that the system lost nothing. The source
prefix and the results prefix are listed in step (:class:`vehicle_core.results.listing.ResultIndex`):
each image is ``missing`` (no result), ``stale`` (a result for an earlier upload) or ``retriable``
(an error result a later attempt may fix), or done. Cost: the two listings (one request per 1,000
keys each), plus one HEAD per result written in the same second as its source (LastModified has a
1-second granularity), or per result with ``--verify`` (which trusts no timestamp). ``--enqueue``
sends what it found, ``producer.enqueue_batch`` per Redis round trip.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from producer.events import KeyFilter
from producer.shards import ListingShard
from vehicle_core.results.contract import SourceRef, results_prefix
from vehicle_core.results.listing import ResultIndex
from vehicle_core.storage import ObjectInfo, ObjectStore
from workers.messages import enqueue_images

log = logging.getLogger(__name__)


@dataclass
class ReconcileReport:
    images: int = 0  # image keys under the prefix (after the key filter)
    reasons: Counter[str] = field(default_factory=Counter)  # reason -> images without a current result
    enqueued: int = 0
    result_heads: int = 0

    @property
    def not_done(self) -> int:
        return sum(self.reasons.values())


def reconcile(store: ObjectStore, bucket: str, prefix: str, keys: KeyFilter, *, results_bucket: str | None = None,
              verify: bool = False, found: Callable[[str, ObjectInfo], None] | None = None,
              app=None, enqueue_batch: int = 1) -> ReconcileReport:
    """Walk ``s3://bucket/prefix``; call ``found(reason, info)`` for each image without a current result,
    and enqueue it when ``app`` is given (``enqueue_batch`` per round trip: ``producer.enqueue_batch``)."""
    report = ReconcileReport()
    shard = ListingShard(store, bucket, prefix)
    where = results_prefix(bucket, results_bucket, keys.results_prefix)
    results_bucket = results_bucket or bucket
    index = ResultIndex(store, shard.results(results_bucket, where, None), where, results_bucket, verify=verify)
    batch: list[SourceRef] = []
    for _, info in shard.items(None):
        if keys.why_not(info.key):
            continue
        report.images += 1
        reason = index.reason(info)
        if reason is None:
            continue
        report.reasons[reason] += 1
        if found is not None:
            found(reason, info)
        if app is not None:
            batch.append(SourceRef(bucket=bucket, key=info.key, etag=info.etag, version_id=info.version_id,
                                   size=info.size))
            if len(batch) >= enqueue_batch:
                report.enqueued += len(enqueue_images(app, batch))
                batch = []
    if app is not None and batch:
        report.enqueued += len(enqueue_images(app, batch))
    report.result_heads = index.heads
    return report
