"""The torchvision backend: every arch builds and answers, artifacts load, bad models fail clearly."""

import json

import numpy as np
import pytest
import torch

from training.synthetic.scenes import make_scene
from vehicle_core.config import DetectorSettings, StorageSettings
from vehicle_core.detection.base import build_detector
from vehicle_core.detection.torchvision_backend import ARCHES, COCO_CATEGORIES, build_arch
from vehicle_core.errors import ConfigError, ModelLoadError

HEAVY = {"maskrcnn_resnet101_fpn", "fasterrcnn_resnet101_fpn", "maskrcnn_resnet50_fpn_v2", "fasterrcnn_resnet50_fpn_v2"}


def detector_settings(model, **kw):
    base = dict(backend="torchvision", model=str(model), device="cpu", score_threshold=0.0, min_box_size=0,
                max_vehicles=100, same_vehicle_iou=1.0, vehicle_classes=["car", "motorcycle", "bus", "truck"], batch_size=2)
    base.update(kw)
    return DetectorSettings(**base)


STORAGE = StorageSettings(endpoint_url=None, region="us-east-1", max_attempts=1, connect_timeout_s=1,
                          read_timeout_s=1, cache_dir="/tmp/vehicle-test-cache")


@pytest.mark.parametrize("arch", sorted(a for a in ARCHES if a not in HEAVY))
def test_arch_builds_without_weights_and_returns_well_formed_output(arch):
    torch.manual_seed(0)
    model = build_arch(arch, len(COCO_CATEGORIES), 64, 96)
    with torch.inference_mode():
        (out,) = model([torch.rand(3, 80, 120)])
    n = len(out["boxes"])
    assert out["boxes"].shape == (n, 4) and out["scores"].shape == (n,) and out["labels"].shape == (n,)
    if "mask" in arch:
        assert out["masks"].shape[0] == n and out["masks"].shape[-2:] == (80, 120)


@pytest.mark.slow
@pytest.mark.parametrize("arch", sorted(HEAVY))
def test_heavy_arch_builds_without_weights(arch):
    model = build_arch(arch, len(COCO_CATEGORIES), 64, 96)
    with torch.inference_mode():
        (out,) = model([torch.rand(3, 64, 96)])
    assert out["boxes"].shape[1] == 4


def test_unknown_arch_is_a_config_error():
    with pytest.raises(ConfigError, match="maskrcnn_tiny"):
        build_arch("yolo_v99", 91, 64, 64)


def write_artifact(tmp_path, arch="maskrcnn_tiny", weights=True):
    torch.manual_seed(0)
    model = build_arch(arch, len(COCO_CATEGORIES), 128, 128)
    if weights:
        torch.save(model.state_dict(), tmp_path / "model.pt")
    manifest = {"name": "t", "version": "1", "backend": "torchvision", "arch": arch, "categories": COCO_CATEGORIES,
                "min_size": 128, "max_size": 128, "weights": "model.pt", "metrics": {}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    return tmp_path


def test_artifact_directory_loads_and_detects_a_batch(tmp_path):
    det = build_detector(detector_settings(write_artifact(tmp_path)), STORAGE)
    assert det.info.name == "t" and det.info.version == "1"
    images = [make_scene(np.random.default_rng(i), size=(160, 120)).image for i in range(3)]
    found = det.detect(images)
    assert len(found) == 3
    for image, dets in zip(images, found, strict=True):
        for d in dets:
            assert d.label in {"car", "motorcycle", "bus", "truck"}
            assert 0 <= d.box[0] <= d.box[2] <= 160 and 0 <= d.box[1] <= d.box[3] <= 120
            assert d.mask is not None and d.mask.shape == image.shape[:2] and d.mask.dtype == bool


def test_missing_weights_raise_model_load_error(tmp_path):
    with pytest.raises(ModelLoadError, match="model.pt"):
        build_detector(detector_settings(write_artifact(tmp_path, weights=False)), STORAGE)


def test_missing_directory_raises_model_load_error(tmp_path):
    with pytest.raises(ModelLoadError, match="no such file"):
        build_detector(detector_settings(tmp_path / "absent"), STORAGE)


def test_unknown_arch_in_manifest_is_a_config_error(tmp_path):
    write_artifact(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["arch"] = "nope"
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ConfigError):
        build_detector(detector_settings(tmp_path), STORAGE)


def test_bad_torchvision_uri_is_a_config_error():
    with pytest.raises(ConfigError):
        build_detector(detector_settings("torchvision://maskrcnn_resnet50_fpn_v2/NO_SUCH"), STORAGE)


def test_detector_works_in_a_process_that_imported_tensorflow_first():
    # Triton's LLVM loaded after TensorFlow's segfaults; the backend must keep them apart.
    import subprocess
    import sys

    code = ("import tensorflow, numpy as np\n"
            "from vehicle_core.config import load_settings\n"
            "from vehicle_core.detection import build_detector\n"
            "s = load_settings()\n"
            "d = build_detector(s.detector, s.storage)\n"
            "print(len(d.detect([np.zeros((64, 96, 3), np.uint8)])))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("1")
