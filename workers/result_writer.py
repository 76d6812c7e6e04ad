"""Result documents in S3, written idempotently and never over a newer upload's result.

A task may run twice (acks_late) and events may arrive out of order (an object uploaded twice in a
row). Two rules keep exactly one *current* result per key:

* before work: skip an image whose result already answers this ETag (:func:`is_answered`, the one
  rule of ``vehicle_core.results.contract.is_done``, read from the result's metadata by a HEAD);
* before writing: HEAD the source; if its ETag is no longer the one we processed, a newer upload
  exists and its own task will write the result, so ours is dropped (:func:`decide_write`).

A race remains between the HEAD and the PUT (a newer task finishing in those milliseconds); it
is the same window any last-writer-wins store has, and the newer object's task rewrites anyway
only if it runs after ours.
"""

from __future__ import annotations

import logging

from vehicle_core.config import ResultSettings
from vehicle_core.results.contract import (
    RETRY_MARKER_SUFFIX,
    ImageResult,
    ResultStamp,
    SourceRef,
    is_done,
    result_uri,
)
from vehicle_core.results.listing import read_stamp
from vehicle_core.storage import ObjectInfo, ObjectStore
from workers import metrics

log = logging.getLogger(__name__)

WRITTEN, STALE, GONE = "written", "stale", "source_gone"


def result_location(source: SourceRef, results: ResultSettings) -> str:
    """``s3://`` URI of the result document of ``source``."""
    return result_uri(source, results.bucket, results.prefix)


def is_answered(store: ObjectStore, source: SourceRef, results: ResultSettings) -> bool:
    """True when the stored result already answers this version of ``source`` for good.

    One HEAD: the workers stamp every result with its source ETag, status and error code in S3 user
    metadata. A result without the stamp (written by an older version) is read in full once.
    """
    if source.etag is None:
        return False
    return is_done(read_stamp(store, result_location(source, results)), source.etag)


def decide_write(processed: SourceRef, current: ObjectInfo | None) -> str:
    """WRITTEN when ``processed`` is still the current object, STALE when a newer one replaced it,
    GONE when the object was deleted since (nothing to describe)."""
    if current is None:
        return GONE
    if processed.version_id and current.version_id and processed.version_id != current.version_id:
        return STALE
    if processed.etag is None or current.etag is None:
        return WRITTEN  # nothing to compare: last writer wins
    return WRITTEN if processed.etag == current.etag else STALE


def write_if_current(store: ObjectStore, result: ImageResult, results: ResultSettings) -> str:
    """Write ``result`` (stamped in its metadata) unless its source changed or vanished since; return
    what happened. A HEAD refused with 403 raises: a refusal is not a deletion."""
    source = result.source
    outcome = decide_write(source, store.head(source.uri))
    if outcome != WRITTEN:
        log.info("dropping result for %s etag=%s: %s", source.uri, source.etag, outcome)
        return outcome
    uri = result_location(source, results)
    stamp = ResultStamp.of(result)
    store.put_json(uri, result.to_dict(), metadata=stamp.to_metadata())
    if stamp.retriable:
        # After the result, so the marker is at least as new: listings (which carry no metadata)
        # then tell this error from an answer (vehicle_core/results/listing.py). A later final result
        # is newer than the marker, which makes it stale without a DELETE.
        store.put(uri + RETRY_MARKER_SUFFIX, b"", metadata=stamp.to_metadata())
    log.info("wrote %s (%s)", uri, result.status)
    metrics.observe_result(result)  # every written result, error results of the give-up paths included
    return WRITTEN


def write_error_result(store: ObjectStore, source: SourceRef, exc: Exception, results: ResultSettings) -> str:
    """The give-up path of every task: an ``error`` result for ``source`` so its key is not lost.
    Never raises: when storage is still down, the log lines are all that is left (and ``reconcile``
    finds the key later)."""
    log.error("giving up on %s: %r", source.uri, exc)
    try:
        return write_if_current(store, ImageResult.from_error(source, exc), results)
    except Exception:  # noqa: BLE001 - a failure handler must not raise
        log.exception("could not write the error result for %s", source.uri)
        return "unwritten"
