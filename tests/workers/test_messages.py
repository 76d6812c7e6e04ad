"""The image message and the result-key mapping (workers/messages.py, no ML import)."""

from __future__ import annotations

import pytest

from workers.messages import ImageMessage, MalformedMessageError, is_result_key, normalize_etag, result_key


def test_message_round_trips_through_a_dict():
    msg = ImageMessage(bucket="b", key="dir/ä b.jpg", etag='"e1"', version_id="v", size=10)
    assert ImageMessage.from_dict(msg.to_dict()) == msg
    assert msg.to_dict() == {"bucket": "b", "key": "dir/ä b.jpg", "etag": "e1", "version_id": "v", "size": 10}


@pytest.mark.parametrize(
    "data",
    [None, [], {"key": "a.jpg"}, {"bucket": "b"}, {"bucket": "b", "key": ""}, {"bucket": "b", "key": "k", "size": -1},
     {"bucket": "b", "key": "k", "size": "12"}, {"bucket": "b", "key": "k", "etag": 5}],
)
def test_bad_messages_raise_malformed_message(data):
    with pytest.raises(MalformedMessageError) as info:
        ImageMessage.from_dict(data)
    assert info.value.code == "malformed_message"


def test_result_key_appends_json_under_the_prefix_and_keeps_the_source_key():
    assert result_key("cams/1 2+3.jpg", "results/") == "results/cams/1 2+3.jpg.json"
    assert is_result_key(result_key("a.jpg", "results/"), "results/")
    assert not is_result_key("resultsX/a.jpg", "results/")


def test_etags_compare_without_quotes():
    assert normalize_etag('"abc"') == normalize_etag("abc") == "abc"
    assert normalize_etag(None) is None and normalize_etag('""') is None
