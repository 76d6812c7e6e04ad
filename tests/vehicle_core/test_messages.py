"""The two hops' messages (vehicle_core/messages.py): the image reference and the CropSet."""

from __future__ import annotations

import pytest

from vehicle_core.errors import MalformedMessageError
from vehicle_core.messages import CropSet
from vehicle_core.results.contract import (
    Detection,
    ModelInfo,
    SourceRef,
    is_result_key,
    result_key,
    source_key_of,
)
from vehicle_core.storage import normalize_etag


def test_image_reference_round_trips_through_a_dict_with_a_bare_etag():
    ref = SourceRef(bucket="b", key="dir/ä b.jpg", etag='"e1"', version_id="v", size=10)
    assert SourceRef.from_dict(ref.to_dict()) == ref
    assert ref.to_dict() == {"bucket": "b", "key": "dir/ä b.jpg", "etag": "e1", "version_id": "v", "size": 10}


@pytest.mark.parametrize(
    "data",
    [None, [], "b/k.jpg", {"key": "a.jpg"}, {"bucket": "b"}, {"bucket": "b", "key": ""}, {"bucket": 5, "key": "k"},
     {"bucket": "b", "key": ["k"]}, {"bucket": "b", "key": "k", "size": -1}, {"bucket": "b", "key": "k", "size": "12"},
     {"bucket": "b", "key": "k", "size": True}, {"bucket": "b", "key": "k", "etag": 5}],
)
def test_bad_image_references_raise_malformed_message(data):
    with pytest.raises(MalformedMessageError) as info:
        SourceRef.from_dict(data)
    assert info.value.code == "malformed_message"


def test_crop_set_round_trips_through_its_message():
    crop_set = CropSet(source=SourceRef("b", "k.jpg", etag="e"),
                       detections=[Detection(box=(1.0, 2.0, 30.0, 40.0), score=0.9, label="car")],
                       crops=[b"\xff\xd8jpeg"], image_size=(64, 48),
                       models={"detector": ModelInfo("d", "1")}, timings_ms={"detect": 3.5})
    back = CropSet.from_message(crop_set.to_message())
    assert back.source == crop_set.source and back.crops == crop_set.crops
    assert back.detections == crop_set.detections and back.image_size == (64, 48)
    assert back.models == crop_set.models and back.timings_ms == {"detect": 3.5}


@pytest.mark.parametrize(
    "message",
    [None, {"skipped": "done", "message": {}}, {"source": {"bucket": "b", "key": "k"}},
     {"source": {"bucket": "b", "key": "k"}, "detections": [{"box": [1, 2, 3, 4], "score": 1, "label": "car"}],
      "crops": []},
     {"source": {"bucket": "b", "key": "k"}, "detections": [], "crops": ["not base64!"]},
     {"source": {"bucket": "b", "key": "k"}, "detections": [{"box": [1, 2], "score": 1, "label": "car"}],
      "crops": ["AA=="]}],
)
def test_anything_but_a_crop_set_is_a_malformed_message(message):
    with pytest.raises(MalformedMessageError):
        CropSet.from_message(message)


def test_result_key_appends_json_under_the_prefix_and_keeps_the_source_key():
    assert result_key("cams/1 2+3.jpg", "results/") == "results/cams/1 2+3.jpg.json"
    assert is_result_key(result_key("a.jpg", "results/"), "results/")
    assert not is_result_key("resultsX/a.jpg", "results/")
    assert source_key_of("results/cams/1 2+3.jpg.json", "results/") == "cams/1 2+3.jpg"
    assert source_key_of("results/a.txt", "results/") is None


def test_etags_compare_without_quotes():
    assert normalize_etag('"abc"') == normalize_etag("abc") == "abc"
    assert normalize_etag(None) is None and normalize_etag('""') is None
