"""Result documents in S3, written idempotently and never over a newer upload's result.

A task may run twice (acks_late, a redelivery, a duplicate S3 event) and events may arrive out of
order (an object uploaded twice in a row). The rules that keep exactly one *current* result per key,
in two S3 requests per image on the common path (the GET of the image and one PUT):

* the result is PUT with ``If-None-Match: *``: where no result exists (the common case) that is all;
* where one exists (S3 answers 412), one HEAD reads its stamp (its source ETag and status, in its
  metadata) and :func:`decide_over` decides: the same ETag already answered for good -> ANSWERED, a
  repeat, nothing written; the same ETag with an error a later attempt may fix -> replaced; another
  ETag -> a HEAD of the source says which upload is current (:func:`decide_write`): ours -> replaced,
  else STALE (a newer upload exists: its own task writes its result) or GONE (deleted since);
* a replacement is a compare-and-swap, PUT with ``If-Match`` on the ETag of the result just read: a
  writer that lost the race reads again and decides again.
* before work, only a message that may be a repeat (not from an S3 event, i.e. backfill or reconcile;
  redelivered; re-sent for a retry: ``workers.tasks.may_repeat``) HEADs its result (:func:`is_answered`),
  so a done image is not run through the models again.

What the order costs: the result describes the bytes the task read (their ETag); an upload that lands
between that GET and the PUT, while no result exists yet, leaves the older upload's result in place
until the newer upload's task replaces it (its PUT finds it, reads its stamp, HEADs the source). A
source deleted after it was read still gets its result; one already gone when read gets none.

``results.conditional_writes: false`` keeps the older order for S3-compatible stores that ignore the
conditional headers: HEAD the result before work, HEAD the source before an unconditional PUT (four
requests per image, and a milliseconds-wide window between that HEAD and the PUT).
"""

from __future__ import annotations

import logging

from vehicle_core.config import ResultSettings
from vehicle_core.errors import SourceNotFoundError, StorageUnavailableError
from vehicle_core.results.contract import (
    RETRY_MARKER_SUFFIX,
    ImageResult,
    ResultStamp,
    SourceRef,
    is_done,
    result_uri,
)
from vehicle_core.results.listing import read_stamp, stamp_of
from vehicle_core.storage import ObjectInfo, ObjectStore, PreconditionFailed
from workers import metrics

log = logging.getLogger(__name__)

WRITTEN, STALE, GONE, ANSWERED = "written", "stale", "source_gone", "answered"
#: Conditional writes lost in a row before giving up for now (a retriable error: the image comes back).
MAX_RACES = 5


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


def decide_over(processed: ImageResult, existing: ResultStamp | None, store: ObjectStore) -> str:
    """What to do with ``processed`` where a result already exists (its ``existing`` stamp; None when
    unreadable): WRITTEN (replace it), ANSWERED (the same upload is already answered for good), STALE
    or GONE (the source changed or vanished since; one HEAD of the source decides)."""
    etag = processed.source.etag  # both ETags bare (SourceRef and ResultStamp normalize them)
    if existing is None:
        return WRITTEN  # an unreadable document answers nothing
    if etag is not None and existing.etag == etag:
        return ANSWERED if is_done(existing, etag) else WRITTEN
    return decide_write(processed.source, store.head(processed.source.uri))


def write_if_current(store: ObjectStore, result: ImageResult, results: ResultSettings) -> str:
    """Write ``result`` (stamped in its metadata) unless it would replace a newer upload's result or
    repeat an answer already given; return what happened (WRITTEN, ANSWERED, STALE, GONE). A HEAD
    refused with 403 raises: a refusal is not a deletion."""
    source = result.source
    if (result.error or {}).get("code") == SourceNotFoundError.code:
        log.info("dropping result for %s etag=%s: the object was gone when read", source.uri, source.etag)
        return GONE
    uri = result_location(source, results)
    stamp = ResultStamp.of(result)
    if results.conditional_writes:
        outcome = _put_conditionally(store, result, uri, stamp)
    else:
        outcome = decide_write(source, store.head(source.uri))
        if outcome == WRITTEN:
            store.put_json(uri, result.to_dict(), metadata=stamp.to_metadata())
    if outcome != WRITTEN:
        log.info("dropping result for %s etag=%s: %s", source.uri, source.etag, outcome)
        return outcome
    if stamp.retriable:
        # After the result, so the marker is at least as new: listings (which carry no metadata)
        # then tell this error from an answer (vehicle_core/results/listing.py). A later final result
        # is newer than the marker, which makes it stale without a DELETE.
        store.put(uri + RETRY_MARKER_SUFFIX, b"", metadata=stamp.to_metadata())
    log.info("wrote %s (%s)", uri, result.status)
    metrics.observe_result(result)  # every written result, error results of the give-up paths included
    return WRITTEN


def _put_conditionally(store: ObjectStore, result: ImageResult, uri: str, stamp: ResultStamp) -> str:
    """PUT If-None-Match: *; where a result exists, decide over it and compare-and-swap (If-Match)."""
    document, metadata = result.to_dict(), stamp.to_metadata()
    over: str | None = None  # the ETag of the result to replace; None: only where there is none
    for _ in range(MAX_RACES):
        try:
            store.put_json(uri, document, metadata=metadata, if_none_match=over is None, if_match=over)
            return WRITTEN
        except PreconditionFailed:
            existing = store.head(uri)
        if existing is None:  # deleted since: write where there is none
            over = None
            continue
        verdict = decide_over(result, stamp_of(store, existing), store)
        if verdict != WRITTEN:
            return verdict
        over = existing.etag
    raise StorageUnavailableError(f"the result {uri} changed under {MAX_RACES} conditional writes in a row; "
                                  "tried again later")


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
