"""Both models load from s3:// URIs on moto's real HTTP server and then work on a real image."""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from training.synthetic.scenes import make_scene
from vehicle_core.classifier import load_classifier
from vehicle_core.config import load_settings
from vehicle_core.detection import build_detector
from vehicle_core.detection.torchvision_backend import COCO_CATEGORIES, build_arch


def _detector_artifact(directory: Path) -> Path:
    """An untrained tiny Mask R-CNN artifact (manifest.json + model.pt): loading is what is tested."""
    directory.mkdir(parents=True)
    torch.manual_seed(0)
    model = build_arch("maskrcnn_tiny", len(COCO_CATEGORIES), 128, 128)
    torch.save(model.state_dict(), directory / "model.pt")
    (directory / "manifest.json").write_text(json.dumps({
        "name": "s3-tiny", "version": "7", "backend": "torchvision", "arch": "maskrcnn_tiny",
        "categories": COCO_CATEGORIES, "min_size": 128, "max_size": 128, "weights": "model.pt"}))
    return directory


def _tar_gz(directory: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path in sorted(directory.iterdir()):
            tar.add(path, arcname=path.name)
    return buf.getvalue()


def test_detector_weights_and_classifier_artifact_load_from_s3(aws_env, s3, bucket, tmp_path, classifier_artifact):
    # Given: a detector artifact uploaded as a prefix of files, a classifier artifact as one .tar.gz
    detector_dir = _detector_artifact(tmp_path / "detector")
    for path in detector_dir.iterdir():
        s3.put_object(Bucket=bucket, Key=f"models/detector/v7/{path.name}", Body=path.read_bytes())
    s3.put_object(Bucket=bucket, Key="models/classifier.tar.gz", Body=_tar_gz(classifier_artifact))
    base = load_settings()
    storage = replace(base.storage, cache_dir=str(tmp_path / "cache"))
    detector_settings = replace(base.detector, model=f"s3://{bucket}/models/detector/v7/", device="cpu",
                                score_threshold=0.0, min_box_size=0)
    classifier_settings = replace(base.classifier, model=f"s3://{bucket}/models/classifier.tar.gz")

    # When: both are built from their s3:// URIs
    detector = build_detector(detector_settings, storage)
    classifier = load_classifier(classifier_settings, storage)

    # Then: the weights came from S3 (cached locally), and both models answer
    assert (detector.info.name, detector.info.version) == ("s3-tiny", "7")
    assert classifier.info.version == "test-0"
    cached = {p.name for p in (tmp_path / "cache").rglob("*") if p.is_file()}
    assert {"model.pt", "classifier.tar.gz", "model.keras"} <= cached
    scene = make_scene(np.random.default_rng(0), size=(160, 128))
    (found,) = detector.detect([scene.image])
    assert all(d.label in {"car", "motorcycle", "bus", "truck"} for d in found)
    (answer,) = classifier.classify([scene.image])
    assert answer.label in classifier.class_names and 0.0 <= answer.confidence <= 1.0
