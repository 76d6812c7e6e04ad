"""The vehicle filter inside the torchvision model gives the unfiltered model's vehicles, with masks
pasted at box resolution (the zoo detector on synthetic scenes)."""

import numpy as np
import pytest

from training.synthetic.scenes import make_scene
from vehicle_core.config import load_settings
from vehicle_core.crop import crop_vehicles


@pytest.fixture(scope="module")
def detectors():
    from vehicle_core.detection.torchvision_backend import TorchvisionDetector, _resolve, load_artifact

    settings = load_settings(env={"VP_DETECTOR__DEVICE": "cpu"})
    built = []
    for in_model in (True, False):
        model, categories, info = load_artifact(_resolve(settings.detector.model, settings.storage))
        built.append(TorchvisionDetector(model, categories, info, settings.detector, in_model_filter=in_model))
    return settings, built[0], built[1]


def _scenes(n: int = 6):
    rng = np.random.default_rng(21)
    return [make_scene(rng, size=(480, 360)).image for _ in range(n)]


def test_model_keeps_only_vehicle_classes_above_the_threshold(detectors):
    settings, filtered, _ = detectors
    heads = filtered.model.roi_heads
    assert heads.score_thresh >= settings.detector.score_threshold
    names = {filtered.categories[i] for i in heads.vehicle_columns.tolist()}
    assert names and names <= set(settings.detector.vehicle_classes)
    import torch

    with torch.inference_mode():
        raw = filtered.model([torch.from_numpy(im).permute(2, 0, 1).float() / 255 for im in _scenes(2)])
    for r in raw:  # straight out of the model: vehicles only, none under the threshold, masks unpasted
        assert {filtered.categories[i] for i in r["labels"].tolist()} <= names
        assert bool((r["scores"] >= settings.detector.score_threshold).all())
        assert r["masks"].shape[-1] < 100


def test_same_vehicles_and_masks_as_the_unfiltered_model(detectors):
    settings, filtered, reference = detectors
    images = _scenes()
    got, want = filtered.detect(images), reference.detect(images)
    assert sum(len(d) for d in want) > 0, "the scenes should hold vehicles"
    for image, dets, refs in zip(images, got, want, strict=True):
        assert [d.label for d in dets] == [r.label for r in refs]
        np.testing.assert_allclose([d.box for d in dets], [r.box for r in refs], atol=1e-3)
        np.testing.assert_allclose([d.score for d in dets], [r.score for r in refs], atol=1e-5)
        h, w = image.shape[:2]
        for d, r in zip(dets, refs, strict=True):
            assert r.mask.shape == (h, w)  # the reference pastes into the whole image ...
            x1, y1, x2, y2 = d.box  # ... the in-model filter into the box (grown by torchvision's border)
            mh, mw = d.mask.shape
            assert mh < h and mw < w
            assert abs(mw - (x2 - x1)) <= 0.2 * (x2 - x1) + 3 and abs(mh - (y2 - y1)) <= 0.2 * (y2 - y1) + 3
            np.testing.assert_array_equal(d.full_mask(h, w), r.mask)
        # Crops blank the background alike with either kind of mask.
        for a, b in zip(crop_vehicles(image, dets, settings.crop), crop_vehicles(image, refs, settings.crop),
                        strict=True):
            np.testing.assert_array_equal(a, b)
