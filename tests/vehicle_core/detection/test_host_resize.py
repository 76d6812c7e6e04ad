"""The CPU detector's input transform resizes uint8 images before normalizing them
(vehicle_core/detection/torchvision_resize.py): same input sizes and pixels as torchvision's own
transform within one uint8 level, the same detections, and original-image coordinates."""

import copy

import numpy as np
import pytest
import torch

from training.synthetic.scenes import make_scene


@pytest.fixture(scope="module")
def zoo_model():
    from vehicle_core.config import load_settings
    from vehicle_core.detection.torchvision_backend import _resolve, load_artifact

    settings = load_settings(env={"VP_DETECTOR__DEVICE": "cpu"})
    model, categories, _ = load_artifact(_resolve(settings.detector.model, settings.storage))
    return model.eval(), categories


@pytest.mark.parametrize("size", [(1280, 960), (333, 517), (200, 150), (4000, 300)])
def test_same_input_sizes_and_pixels_as_torchvisions_transform(zoo_model, size):
    from vehicle_core.detection.torchvision_resize import HostResizeTransform

    model, _ = zoo_model
    rng = np.random.default_rng(5)
    image = make_scene(rng, size=size).image
    chw = torch.from_numpy(image).permute(2, 0, 1)
    want, _ = model.transform([chw.float() / 255])
    got, _ = HostResizeTransform.like(model.transform)([chw])
    assert got.image_sizes == want.image_sizes  # same output size, upscaled or downscaled
    assert got.tensors.shape == want.tensors.shape  # same padding to size_divisible
    h, w = got.image_sizes[0]
    diff = (got.tensors[..., :h, :w] - want.tensors[..., :h, :w]).abs()
    one_level = 1 / 255 / min(model.transform.image_std)
    # uint8 rounding: at most one level, a quarter of one on average
    assert float(diff.max()) <= 1.01 * one_level and float(diff.mean()) < 0.35 * one_level


def test_float_inputs_and_training_keep_torchvisions_path(zoo_model):
    from vehicle_core.detection.torchvision_resize import HostResizeTransform

    model, _ = zoo_model
    transform = HostResizeTransform.like(model.transform)
    assert not transform.training
    with pytest.raises(TypeError, match="floating"):  # training mode: torchvision's own checks apply
        transform.train()([torch.zeros(3, 64, 64, dtype=torch.uint8)])


def test_same_detections_in_original_coordinates(zoo_model):
    from vehicle_core.detection.torchvision_resize import HostResizeTransform

    model, _ = zoo_model
    host = copy.deepcopy(model)
    host.transform = HostResizeTransform.like(model.transform)
    rng = np.random.default_rng(8)
    images = [make_scene(rng, size=(1280, 960)).image for _ in range(4)]
    with torch.inference_mode():
        want = model([torch.from_numpy(im).permute(2, 0, 1).float() / 255 for im in images])
        got = host([torch.from_numpy(im).permute(2, 0, 1) for im in images])
    confident = 0
    for w, g in zip(want, got, strict=True):
        keep_w, keep_g = w["scores"] > 0.5, g["scores"] > 0.5
        assert w["labels"][keep_w].tolist() == g["labels"][keep_g].tolist()
        boxes = g["boxes"][keep_g]
        assert torch.allclose(boxes, w["boxes"][keep_w], atol=3.0)  # pixels of the 1280x960 image
        assert len(boxes) == 0 or float(boxes[:, 2].max()) > 320  # original coordinates, not the 320 px input's
        assert torch.allclose(g["scores"][keep_g], w["scores"][keep_w], atol=0.05)
        assert g["masks"].shape[-2:] == (960, 1280)
        confident += int(keep_w.sum())
    assert confident >= 4, "the scenes should hold vehicles the zoo model is sure of"


def test_tiny_and_extreme_aspect_images_in_one_batch():
    """Sizes the image checks let through (down to 1×1, up to the 20:1 aspect limit) resize to at
    least one pixel a side, and every image of a mixed batch gets its own answer inside its bounds."""
    from vehicle_core.config import load_settings
    from vehicle_core.detection import build_detector

    settings = load_settings(env={"VP_DETECTOR__DEVICE": "cpu"})
    detector = build_detector(settings.detector, settings.storage)
    assert detector.host_resize
    rng = np.random.default_rng(2)
    sizes = [(1, 1), (2, 3), (10, 200), (3000, 150), (960, 1280)]
    images = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in sizes[:-1]]
    images.append(make_scene(rng, size=(1280, 960)).image)
    found = detector.detect(images)
    assert len(found) == len(sizes) and len(found[-1]) >= 1  # the scene's vehicles are still found
    for (h, w), dets in zip(sizes, found, strict=True):
        for d in dets:
            x1, y1, x2, y2 = d.box
            assert -1 <= x1 < x2 <= w + 1 and -1 <= y1 < y2 <= h + 1
