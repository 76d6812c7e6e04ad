"""Parse S3 event notifications delivered through SQS into :class:`~vehicle_core.results.contract.SourceRef` objects.

An SQS body is either an S3 notification (``{"Records": [...]}``), S3's one-off ``s3:TestEvent``
sent when notifications are configured, an EventBridge ``Object Created`` event (``source`` aws.s3,
a ``detail`` with bucket and object; keys there are *not* URL-encoded), or an SNS envelope around
one of those. The time S3 gives the event travels on as ``SourceRef.event_time`` (upload -> result
latency). Only object
*creations* of image keys under an input prefix become work; everything else is ignored on purpose,
so that writing ``results/…json`` never triggers processing again (no feedback loop).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_plus

from vehicle_core.config import ProducerSettings, ResultSettings
from vehicle_core.errors import InvalidInputError, MalformedMessageError
from vehicle_core.results.contract import SourceRef, is_result_key

log = logging.getLogger(__name__)


class MalformedEventError(InvalidInputError):
    """An SQS body that is not JSON, or not a shape of S3 notification we know."""

    code = "malformed_event"


@dataclass(frozen=True)
class KeyFilter:
    """Which keys are inputs: image suffix, under an input prefix, never under the results prefix."""

    image_suffixes: tuple[str, ...]
    results_prefix: str
    input_prefixes: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, producer: ProducerSettings, results: ResultSettings) -> KeyFilter:
        return cls(
            image_suffixes=tuple(s.lower() for s in producer.image_suffixes),
            results_prefix=results.prefix,
            input_prefixes=tuple(producer.input_prefixes),
        )

    def why_not(self, key: str) -> str | None:
        """``None`` when ``key`` is an input image, else the reason it is skipped."""
        if is_result_key(key, self.results_prefix):
            return "under the results prefix"
        if self.input_prefixes and not key.startswith(self.input_prefixes):
            return "outside the input prefixes"
        if not key.lower().endswith(self.image_suffixes):
            return "not an image suffix"
        return None


@dataclass
class ParsedEvent:
    """What one SQS message asks for: images to enqueue, and what was skipped (for the logs)."""

    images: list[SourceRef] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (key or event, reason)


def parse_event_body(body: str, keys: KeyFilter) -> ParsedEvent:
    """Parse one SQS message body; raise :class:`MalformedEventError` for anything unreadable."""
    try:
        doc = json.loads(body)
    except (TypeError, ValueError, RecursionError) as exc:  # RecursionError: absurdly nested JSON
        raise MalformedEventError(f"SQS body is not JSON we can read: {type(exc).__name__}") from None
    if isinstance(doc, dict) and doc.get("Type") == "Notification" and isinstance(doc.get("Message"), str):
        return parse_event_body(doc["Message"], keys)  # an SNS envelope (bucket -> SNS -> SQS)
    if not isinstance(doc, dict):
        raise MalformedEventError("SQS body is not a JSON object")
    parsed = ParsedEvent()
    if doc.get("source") == "aws.s3" and "detail-type" in doc:
        _parse_eventbridge(doc, keys, parsed)
        return parsed
    if doc.get("Event") == "s3:TestEvent":
        parsed.skipped.append(("s3:TestEvent", "test event"))
        return parsed
    records = doc.get("Records")
    if not isinstance(records, list):
        raise MalformedEventError("SQS body has no 'Records' list and is not an s3:TestEvent")
    for record in records:
        _parse_record(record, keys, parsed)
    return parsed


def _parse_record(record: Any, keys: KeyFilter, parsed: ParsedEvent) -> None:
    if not isinstance(record, dict):
        raise MalformedEventError("an event record is not an object")
    name = record.get("eventName")
    if not isinstance(name, str):
        raise MalformedEventError("an event record has no eventName")
    if not name.startswith("ObjectCreated:"):
        parsed.skipped.append((name, "not an object creation"))
        return
    try:
        bucket = record["s3"]["bucket"]["name"]
        obj = record["s3"]["object"]
        # Keys arrive form-encoded: '+' is a space, '%2B' a plus, non-ASCII as UTF-8 %XX.
        key = unquote_plus(obj["key"]) if isinstance(obj["key"], str) else None
        if not isinstance(bucket, str) or key is None:
            raise TypeError("bucket name and object key must be strings")
    except (KeyError, TypeError) as exc:
        raise MalformedEventError(f"an ObjectCreated record lacks s3.bucket.name or s3.object.key ({exc})") from None
    _add_image(parsed, keys, bucket, key, etag=obj.get("eTag") or obj.get("etag"), version_id=obj.get("versionId"),
               size=obj.get("size"), event_time=record.get("eventTime"))


def _parse_eventbridge(doc: dict, keys: KeyFilter, parsed: ParsedEvent) -> None:
    """One EventBridge event from S3: ``Object Created`` becomes work, other detail types are skipped."""
    kind = doc.get("detail-type")
    if kind != "Object Created":
        parsed.skipped.append((str(kind), "not an object creation"))
        return
    try:
        bucket = doc["detail"]["bucket"]["name"]
        obj = doc["detail"]["object"]
        key = obj["key"]  # EventBridge sends keys as they are: no form decoding ('+' stays a plus)
        if not isinstance(bucket, str) or not isinstance(key, str):
            raise TypeError("bucket name and object key must be strings")
    except (KeyError, TypeError) as exc:
        raise MalformedEventError(f"an Object Created event lacks detail.bucket.name or detail.object.key ({exc})") from None
    _add_image(parsed, keys, bucket, key, etag=obj.get("etag"), version_id=obj.get("version-id"),
               size=obj.get("size"), event_time=doc.get("time"))


def _add_image(parsed: ParsedEvent, keys: KeyFilter, bucket: str, key: str, *, etag: Any, version_id: Any,
               size: Any, event_time: Any) -> None:
    reason = keys.why_not(key)
    if reason:
        parsed.skipped.append((key, reason))
        return
    try:
        msg = SourceRef.from_dict(
            {
                "bucket": bucket,
                "key": key,
                "etag": etag,
                "version_id": version_id,
                "size": size if isinstance(size, int) and not isinstance(size, bool) else None,
                # A malformed time must not cost the image: it only feeds a latency metric.
                "event_time": event_time if isinstance(event_time, str) else None,
            }
        )
    except MalformedMessageError as exc:
        raise MalformedEventError(f"an object creation event is not usable: {exc.message}") from None
    parsed.images.append(msg)
