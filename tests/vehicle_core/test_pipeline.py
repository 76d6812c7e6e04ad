"""The one-call library path: bytes -> ImageResult, with the shipped detector and a real ResNet50.

The classifier here is untrained (labels are arbitrary); what is checked is what the detector, the
decoder and the contract guarantee: statuses, boxes in upright-image pixels, schema validity.
"""

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from training.synthetic.scenes import make_scene
from vehicle_core.config import load_settings
from vehicle_core.pipeline import CropSet, VehiclePipeline
from vehicle_core.results.contract import SourceRef, validate_result


def iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


@pytest.fixture(scope="module")
def pipeline(classifier_artifact):
    settings = load_settings().replace(classifier={"model": str(classifier_artifact)})
    return VehiclePipeline.from_settings(settings)


@pytest.fixture(scope="module")
def scene():
    # One large vehicle, so that the expected box is unambiguous.
    return make_scene(np.random.default_rng(7), size=(320, 240), n_vehicles=(1, 1), scale=(0.5, 0.6))


def assert_finds(result, scene):
    doc = result.to_dict()
    validate_result(doc)
    assert doc["status"] == "ok", doc
    assert doc["image"] == {"width": 320, "height": 240}
    truth = scene.objects[0].box
    best = max(iou(v["box"], truth) for v in doc["vehicles"])
    assert best >= 0.5, (doc["vehicles"], truth)


def jpeg_with_orientation(upright: np.ndarray, orientation: int) -> bytes:
    """Store ``upright`` rotated the way a camera would, with the EXIF tag that undoes it."""
    stored = {
        3: lambda im: im.transpose(Image.Transpose.ROTATE_180),
        6: lambda im: im.transpose(Image.Transpose.ROTATE_90),  # viewer rotates 90° clockwise to show it
        8: lambda im: im.transpose(Image.Transpose.ROTATE_270),
    }[orientation](Image.fromarray(upright))
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    stored.save(buf, format="JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


def test_jpeg_scene_yields_ok_result_with_the_true_box(pipeline, scene):
    data = cv2.imencode(".jpg", cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR))[1].tobytes()
    assert_finds(pipeline.process(data, SourceRef(bucket="b", key="scene.jpg")), scene)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_rotated_jpeg_gives_boxes_in_upright_pixels(pipeline, scene, orientation):
    assert_finds(pipeline.process(jpeg_with_orientation(scene.image, orientation)), scene)


def test_16_bit_png_gives_boxes_in_upright_pixels(pipeline, scene):
    deep = scene.image.astype(np.uint16) * 257  # full 16-bit range
    data = cv2.imencode(".png", cv2.cvtColor(deep, cv2.COLOR_RGB2BGR))[1].tobytes()
    assert_finds(pipeline.process(data), scene)


def test_cmyk_jpeg_gives_boxes_in_upright_pixels(pipeline, scene):
    buf = io.BytesIO()
    Image.fromarray(scene.image).convert("CMYK").save(buf, format="JPEG", quality=95)
    assert_finds(pipeline.process(buf.getvalue()), scene)


def test_empty_background_yields_no_vehicle(pipeline):
    plain = np.full((240, 320, 3), 128, np.uint8)
    doc = pipeline.process(cv2.imencode(".png", plain)[1].tobytes()).to_dict()
    validate_result(doc)
    assert doc["status"] == "no_vehicle"


def test_corrupt_image_in_a_batch_does_not_spoil_the_others(pipeline, scene):
    good = cv2.imencode(".jpg", cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR))[1].tobytes()
    results = pipeline.process_many(
        [(good, SourceRef("b", "good.jpg")), (good[:200], SourceRef("b", "cut.jpg")), (b"", SourceRef("b", "e.jpg"))]
    )
    assert [r.status for r in results] == ["ok", "error", "error"]
    assert [r.error["code"] for r in results[1:]] == ["undecodable", "empty"]
    for r in results:
        validate_result(r.to_dict())


def test_crop_set_survives_the_message_round_trip(pipeline, scene):
    data = cv2.imencode(".jpg", cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR))[1].tobytes()
    (crop_set,) = pipeline.detect_stage.run([(data, SourceRef("b", "k.jpg", etag='"e"'))])
    again = CropSet.from_message(crop_set.to_message())
    assert again.source == crop_set.source
    assert [d.box for d in again.detections] == [d.box for d in crop_set.detections]
    assert again.crops == crop_set.crops and len(again.crops) >= 1
    direct = pipeline.classify_stage.run([crop_set])[0].to_dict()
    relayed = pipeline.classify_stage.run([again])[0].to_dict()
    assert [v["label"] for v in direct["vehicles"]] == [v["label"] for v in relayed["vehicles"]]


@pytest.mark.parametrize(("fmt", "orientation"), [(".jpg", None), (".png", None), (".jpg", 6)])
def test_an_image_larger_than_max_side_is_downscaled_and_its_boxes_come_back_in_original_pixels(
    classifier_artifact, scene, fmt, orientation
):
    # Given: the scene 8 times larger (2560 x 1920) and a detect stage that works at 320 px at most
    settings = load_settings().replace(classifier={"model": str(classifier_artifact)}, images={"max_side": 320})
    pipeline = VehiclePipeline.from_settings(settings)
    big = cv2.resize(scene.image, (2560, 1920), interpolation=cv2.INTER_NEAREST)
    if orientation:
        data = jpeg_with_orientation(big, orientation)
    else:
        data = cv2.imencode(fmt, cv2.cvtColor(big, cv2.COLOR_RGB2BGR))[1].tobytes()
    # When
    doc = pipeline.process(data, SourceRef(bucket="b", key=f"big{fmt}")).to_dict()
    # Then: the document describes the original image, and the box lies on the vehicle in its pixels
    validate_result(doc)
    assert doc["status"] == "ok" and doc["image"] == {"width": 2560, "height": 1920}
    truth = [8 * v for v in scene.objects[0].box]
    assert max(iou(v["box"], truth) for v in doc["vehicles"]) >= 0.5, (doc["vehicles"], truth)
