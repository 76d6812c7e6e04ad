"""S3 event notifications -> image messages: what is enqueued and what is ignored."""

from __future__ import annotations

import json
from urllib.parse import quote_plus

import pytest

from producer.events import KeyFilter, MalformedEventError, parse_event_body

KEYS = KeyFilter(image_suffixes=(".jpg", ".jpeg", ".png"), results_prefix="results/")


def _record(key: str, *, event: str = "ObjectCreated:Put", bucket: str = "cams", etag: str = "abc123", size=1234):
    return {
        "eventName": event,
        "s3": {
            "bucket": {"name": bucket},
            "object": {"key": quote_plus(key, safe="/"), "eTag": etag, "size": size, "versionId": "v1"},
        },
    }


def _body(*records) -> str:
    return json.dumps({"Records": list(records)})


def test_object_created_yields_one_message_with_all_fields():
    parsed = parse_event_body(_body(_record("street/a.jpg")), KEYS)
    assert [m.to_dict() for m in parsed.images] == [
        {"bucket": "cams", "key": "street/a.jpg", "etag": "abc123", "version_id": "v1", "size": 1234}
    ]


@pytest.mark.parametrize("key", ["with space.jpg", "plus+sign.png", "unicodé/Straße 1.jpeg", "100%.jpg"])
def test_url_encoded_keys_are_decoded_with_unquote_plus(key):
    parsed = parse_event_body(_body(_record(key)), KEYS)
    assert [m.key for m in parsed.images] == [key]


def test_test_event_is_ignored_not_an_error():
    body = json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "cams"})
    parsed = parse_event_body(body, KEYS)
    assert parsed.images == [] and parsed.skipped == [("s3:TestEvent", "test event")]


def test_removals_are_ignored():
    parsed = parse_event_body(_body(_record("a.jpg", event="ObjectRemoved:Delete")), KEYS)
    assert parsed.images == [] and parsed.skipped[0][1] == "not an object creation"


def test_results_prefix_and_non_images_are_ignored_so_results_never_feed_back():
    parsed = parse_event_body(_body(_record("results/a.jpg.json"), _record("results/b.jpg"), _record("notes.txt")), KEYS)
    assert parsed.images == []
    assert [reason for _, reason in parsed.skipped] == [
        "under the results prefix",
        "under the results prefix",
        "not an image suffix",
    ]


def test_suffix_match_is_case_insensitive():
    assert [m.key for m in parse_event_body(_body(_record("CAM/IMG_1.JPG")), KEYS).images] == ["CAM/IMG_1.JPG"]


def test_keys_outside_input_prefixes_are_ignored():
    keys = KeyFilter(image_suffixes=(".jpg",), results_prefix="results/", input_prefixes=("incoming/",))
    parsed = parse_event_body(_body(_record("incoming/a.jpg"), _record("archive/b.jpg")), keys)
    assert [m.key for m in parsed.images] == ["incoming/a.jpg"]
    assert parsed.skipped == [("archive/b.jpg", "outside the input prefixes")]


def test_sns_envelope_is_unwrapped():
    body = json.dumps({"Type": "Notification", "Message": _body(_record("x.png"))})
    assert [m.key for m in parse_event_body(body, KEYS).images] == ["x.png"]


def test_several_records_keep_their_order_and_quoted_etags_are_normalised():
    parsed = parse_event_body(_body(_record("1.jpg", etag='"q1"'), _record("2.jpg")), KEYS)
    assert [(m.key, m.etag) for m in parsed.images] == [("1.jpg", "q1"), ("2.jpg", "abc123")]


@pytest.mark.parametrize(
    "body",
    [
        "not json {",
        "[1, 2]",
        json.dumps({"hello": "world"}),
        json.dumps({"Records": "nope"}),
        json.dumps({"Records": [42]}),
        json.dumps({"Records": [{"s3": {}}]}),
        json.dumps({"Records": [{"eventName": "ObjectCreated:Put", "s3": {"bucket": {}}}]}),
        json.dumps({"Records": [{"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": ""}, "object": {"key": "a.jpg"}}}]}),
    ],
)
def test_malformed_bodies_raise_a_typed_error_with_a_stable_code(body):
    with pytest.raises(MalformedEventError) as info:
        parse_event_body(body, KEYS)
    assert info.value.code == "malformed_event"
