"""Result documents in S3, written idempotently and never over a newer upload's result.

A task may run twice (acks_late) and events may arrive out of order (an object uploaded twice in a
row). Two rules keep exactly one *current* result per key:

* before work: skip an image whose result already describes this ETag (:func:`already_done`);
* before writing: HEAD the source; if its ETag is no longer the one we processed, a newer upload
  exists and its own task will write the result, so ours is dropped (:func:`decide_write`).

A race remains between the HEAD and the PUT (a newer task finishing in those milliseconds); it
is the same window any last-writer-wins store has, and the newer object's task rewrites anyway
only if it runs after ours.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from vehicle_core.config import ResultSettings
from vehicle_core.errors import StorageUnavailableError, TransientError
from vehicle_core.results import ImageResult, SourceRef
from workers.messages import normalize_etag, result_key  # noqa: F401 (normalize_etag re-exported)

log = logging.getLogger(__name__)

WRITTEN, STALE, GONE = "written", "stale", "source_gone"


@dataclass(frozen=True)
class ObjectState:
    """What HEAD says about the source object now."""

    etag: str | None
    last_modified: str | None
    version_id: str | None = None


def result_location(source: SourceRef, results: ResultSettings) -> tuple[str, str]:
    """(bucket, key) of the result document of ``source``."""
    return results.bucket or source.bucket, result_key(source.key, results.prefix)


def already_done(existing: dict[str, Any] | None, etag: str | None) -> bool:
    """True when ``existing`` (a result document) already answers this ETag for good.

    An error result left by exhausted transient retries (``storage_unavailable``) does not count:
    the image deserves another try.
    """
    if not existing or etag is None:
        return False
    source = existing.get("source") or {}
    if normalize_etag(source.get("etag")) != normalize_etag(etag):
        return False
    error = existing.get("error") or {}
    return error.get("code") not in _TRANSIENT_CODES


_TRANSIENT_CODES = {TransientError.code, StorageUnavailableError.code}


def decide_write(processed: SourceRef, current: ObjectState | None) -> str:
    """WRITTEN when ``processed`` is still the current object, STALE when a newer one replaced it,
    GONE when the object was deleted since (nothing to describe)."""
    if current is None:
        return GONE
    if processed.version_id and current.version_id and processed.version_id != current.version_id:
        return STALE
    if processed.etag is None or current.etag is None:
        return WRITTEN  # nothing to compare: last writer wins
    return WRITTEN if normalize_etag(processed.etag) == normalize_etag(current.etag) else STALE


def head_source(client, bucket: str, key: str) -> ObjectState | None:
    """The source's current ETag/Last-Modified, or None when it does not exist."""
    try:
        head = client.head_object(Bucket=bucket, Key=key)
    except Exception as exc:  # botocore raises ClientError for 404 and for everything else alike
        if _status(exc) in (404, 403) or _code(exc) in ("404", "NoSuchKey", "NotFound"):
            return None
        raise StorageUnavailableError(f"HEAD s3://{bucket}/{key} failed: {exc}") from exc
    modified = head.get("LastModified")
    return ObjectState(
        etag=normalize_etag(head.get("ETag")),
        last_modified=modified.isoformat() if modified else None,
        version_id=head.get("VersionId"),
    )


def read_result(client, bucket: str, key: str) -> dict[str, Any] | None:
    """The result document at ``bucket/key``, or None when there is none (or it is unreadable)."""
    try:
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except Exception as exc:
        if _status(exc) == 404 or _code(exc) in ("NoSuchKey", "404"):
            return None
        raise StorageUnavailableError(f"GET s3://{bucket}/{key} failed: {exc}") from exc
    try:
        doc = json.loads(body)
    except ValueError:
        log.warning("result s3://%s/%s is not JSON; it will be rewritten", bucket, key)
        return None
    return doc if isinstance(doc, dict) else None


def write_if_current(client, result: ImageResult, results: ResultSettings) -> str:
    """Write ``result`` unless its source changed or vanished since; return what happened."""
    source = result.source
    outcome = decide_write(source, head_source(client, source.bucket, source.key))
    bucket, key = result_location(source, results)
    if outcome != WRITTEN:
        log.info("dropping result for s3://%s/%s etag=%s: %s", source.bucket, source.key, source.etag, outcome)
        return outcome
    from vehicle_core.storage import put_json

    put_json(client, bucket, key, result.to_dict())
    log.info("wrote s3://%s/%s (%s)", bucket, key, result.status)
    return WRITTEN


def _status(exc: Exception) -> int | None:
    return getattr(exc, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode")


def _code(exc: Exception) -> str | None:
    return getattr(exc, "response", {}).get("Error", {}).get("Code")
