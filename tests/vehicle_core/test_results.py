"""The result contract: documents built by ImageResult follow docs' JSON Schema, and the schema bites."""

import copy
import json

import jsonschema
import pytest

from vehicle_core.errors import UndecodableImageError, error_classes
from vehicle_core.results.contract import (
    Classification,
    Detection,
    ImageResult,
    ModelInfo,
    SourceRef,
    VehicleResult,
    result_schema,
    validate_result,
)

SOURCE = SourceRef(bucket="photos", key="street/a b é.jpg", etag='"abc"', version_id=None, size=1234)
MODELS = {"detector": ModelInfo("tiny", "1"), "classifier": ModelInfo("resnet50", "2026-11-24")}


def vehicle(box, label="sedan", confidence=0.9):
    det = Detection(box=box, score=0.8, label="car")
    clf = Classification(label=label, confidence=confidence, top_k=((label, confidence), ("suv", 0.05)))
    return VehicleResult.combine(det, clf)


def test_ok_result_names_the_largest_vehicle_as_primary():
    # Given a small bus and a large sedan
    small = vehicle((0, 0, 10, 10), label="bus", confidence=0.99)
    large = vehicle((10, 10, 200, 120), label="sedan", confidence=0.7)
    # When the result is built
    doc = ImageResult.from_vehicles(SOURCE, [small, large], models=MODELS, image_size=(640, 480)).to_dict()
    # Then the primary label is the large one's, and the document follows the schema
    assert doc["status"] == "ok"
    assert (doc["label"], doc["confidence"]) == ("sedan", 0.7)
    assert [v["label"] for v in doc["vehicles"]] == ["bus", "sedan"]
    validate_result(doc)


def test_no_vehicle_result_has_null_label():
    doc = ImageResult.from_vehicles(SOURCE, [], models=MODELS).to_dict()
    assert doc["status"] == "no_vehicle" and doc["label"] is None and doc["vehicles"] == []
    validate_result(doc)


def test_error_result_carries_the_stable_code():
    doc = ImageResult.from_error(SOURCE, UndecodableImageError("truncated JPEG"), models=MODELS).to_dict()
    assert doc["status"] == "error"
    assert doc["error"] == {"code": "undecodable", "message": "truncated JPEG"}
    validate_result(doc)


def test_document_is_json_with_unicode_keys_kept():
    text = ImageResult.from_vehicles(SOURCE, [vehicle((1, 2, 30, 40))], models=MODELS).to_json()
    assert json.loads(text)["source"]["key"] == "street/a b é.jpg"


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.update(status="maybe"),
        lambda d: d.update(confidence=1.5),
        lambda d: d["vehicles"][0].update(box=[1, 2, 3]),
        lambda d: d.update(vehicles=[]),  # ok without vehicles
        lambda d: d.update(error={"code": "made_up", "message": "x"}),
        lambda d: d.pop("schema_version"),
        lambda d: d["source"].pop("key"),
    ],
)
def test_schema_rejects_malformed_documents(mutate):
    doc = ImageResult.from_vehicles(SOURCE, [vehicle((1, 2, 30, 40))], models=MODELS).to_dict()
    bad = copy.deepcopy(doc)
    mutate(bad)
    with pytest.raises(jsonschema.ValidationError):
        validate_result(bad)


def test_schema_lists_every_error_code_the_project_defines():
    import producer.events  # noqa: F401 - defines MalformedEventError
    import workers.messages  # noqa: F401

    listed = set(result_schema()["properties"]["error"]["properties"]["code"]["enum"])
    codes = {cls.code for cls in error_classes()}
    assert len(codes) >= 15 and codes <= listed, codes - listed


def test_two_source_buckets_never_share_a_result_in_a_results_bucket():
    from vehicle_core.results.contract import result_uri

    a, b = SourceRef("a", "x.jpg", etag="e"), SourceRef("b", "x.jpg", etag="e")
    assert result_uri(a, None, "results/") == "s3://a/results/x.jpg.json"  # beside the source: as before
    assert result_uri(a, "a", "results/") == "s3://a/results/x.jpg.json"
    assert result_uri(a, "out", "results/") == "s3://out/results/a/x.jpg.json"
    assert result_uri(b, "out", "results/") == "s3://out/results/b/x.jpg.json"
