"""EventBridge "Object Created" events -> the same SourceRef as S3 notifications (keys not encoded)."""

from __future__ import annotations

import json

import pytest

from producer.events import KeyFilter, MalformedEventError, parse_event_body
from vehicle_core.results.contract import SourceRef

KEYS = KeyFilter(image_suffixes=(".jpg", ".png"), results_prefix="results/")


def _event(key: str, *, kind: str = "Object Created", bucket: str = "cams", time: str = "2026-11-26T08:00:00Z"):
    return json.dumps({
        "version": "0", "id": "17793124-05d4-b198-2fde-7ededc63b103", "detail-type": kind, "source": "aws.s3",
        "account": "123456789012", "time": time, "region": "us-east-1", "resources": [f"arn:aws:s3:::{bucket}"],
        "detail": {"version": "0", "bucket": {"name": bucket},
                   "object": {"key": key, "size": 5, "etag": "b1946ac92492d2347c6235b4d2611184",
                              "version-id": "IYV3p45BT0ac8hjHg1houSdS1a.Mro8e", "sequencer": "00617F08299329D189"},
                   "request-id": "N4N7GDK58NMKJ12R", "requester": "123456789012", "reason": "PutObject"},
    })


def test_object_created_event_becomes_the_same_source_ref_as_a_notification():
    parsed = parse_event_body(_event("street/a.jpg"), KEYS)
    assert parsed.images == [SourceRef(bucket="cams", key="street/a.jpg", etag="b1946ac92492d2347c6235b4d2611184",
                                       version_id="IYV3p45BT0ac8hjHg1houSdS1a.Mro8e", size=5)]
    assert parsed.images[0].event_time == "2026-11-26T08:00:00Z"


@pytest.mark.parametrize("key", ["plus+sign.jpg", "with space.png", "100%25.jpg", "unicodé/Straße 1.jpg"])
def test_eventbridge_keys_are_taken_as_they_are_not_url_decoded(key):
    assert [m.key for m in parse_event_body(_event(key), KEYS).images] == [key]


def test_other_detail_types_are_skipped_and_results_never_feed_back():
    assert parse_event_body(_event("a.jpg", kind="Object Deleted"), KEYS).skipped == [
        ("Object Deleted", "not an object creation")]
    parsed = parse_event_body(_event("results/a.jpg.json"), KEYS)
    assert parsed.images == [] and parsed.skipped[0][0] == "results/a.jpg.json"


def test_event_without_object_key_is_malformed():
    doc = json.loads(_event("a.jpg"))
    del doc["detail"]["object"]["key"]
    with pytest.raises(MalformedEventError, match="detail.object.key"):
        parse_event_body(json.dumps(doc), KEYS)


def test_event_time_travels_in_the_message_and_back():
    (ref,) = parse_event_body(_event("a.jpg"), KEYS).images
    again = SourceRef.from_dict(ref.to_dict())
    assert again.event_time == "2026-11-26T08:00:00Z" and again == ref
    assert "event_time" not in SourceRef(bucket="b", key="k").to_dict()  # backfill: the old message shape
