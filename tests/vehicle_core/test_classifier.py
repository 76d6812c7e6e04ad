"""The Keras classifier: artifacts round-trip, bad manifests are refused, answers are well formed."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest

from vehicle_core.classifier import (
    VehicleClassifier,
    build_classifier,
    letterbox,
    load_artifact,
    load_classifier,
    save_artifact,
)
from vehicle_core.config import load_settings
from vehicle_core.errors import InvalidInputError, ModelLoadError


def _crops(rng, sizes):
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]


def test_artifact_round_trip_keeps_manifest_and_outputs(classifier_artifact, tmp_path):
    # Given an artifact saved as a .tar.gz
    model, manifest = load_artifact(classifier_artifact)
    archive = save_artifact(model, manifest, tmp_path / "copy.tar.gz")
    # When it is loaded back
    model2, manifest2 = load_artifact(archive)
    # Then the manifest and the model's outputs are the same
    assert manifest2 == manifest
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(model2(x, training=False), model(x, training=False), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda m: m.update(class_names=m["class_names"][:-1]), "classes but the model outputs"),
        (lambda m: m.update(input_size=64), "input_size 64"),
        (lambda m: m.pop("version"), "lacks ['version']"),
        (lambda m: m.update(preprocessing="torch"), "unknown preprocessing"),
    ],
)
def test_tampered_manifest_is_rejected(classifier_artifact, tmp_path, change, message):
    target = tmp_path / "tampered"
    shutil.copytree(classifier_artifact, target)
    manifest = json.loads((target / "manifest.json").read_text())
    change(manifest)
    (target / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelLoadError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_artifact(target)


def test_missing_artifact_is_a_model_load_error(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_artifact(tmp_path / "nowhere")


def test_probabilities_sum_to_one_and_top_k_is_ordered(classifier_artifact):
    clf = VehicleClassifier.from_artifact(classifier_artifact, batch_size=4, top_k=3)
    crops = _crops(np.random.default_rng(1), [(40, 60)] * 5)
    probs = clf.probabilities(crops)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    for answer, row in zip(clf.classify(crops), probs, strict=True):
        confidences = [p for _, p in answer.top_k]
        assert len(answer.top_k) == 3
        assert confidences == sorted(confidences, reverse=True)
        assert answer.label == clf.class_names[int(np.argmax(row))]
        assert answer.confidence == pytest.approx(float(row.max()), abs=1e-6)


def test_batch_of_mixed_size_crops_matches_one_by_one(classifier_artifact):
    # Given crops of different shapes and a batch size that splits them unevenly
    clf = VehicleClassifier.from_artifact(classifier_artifact, batch_size=3, top_k=2)
    crops = _crops(np.random.default_rng(2), [(5, 90), (120, 30), (32, 32), (7, 7), (200, 150)])
    # When classified together and one at a time
    together = clf.probabilities(crops)
    alone = np.concatenate([clf.probabilities([c]) for c in crops])
    # Then each crop gets the same answer whatever its batch
    assert together.shape == (5, len(clf.class_names))
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_letterbox_keeps_aspect_and_pads():
    image = np.full((10, 40, 3), 200, dtype=np.uint8)
    out = letterbox(image, 32)
    assert out.shape == (32, 32, 3)
    assert out[0, 0].tolist() == [0, 0, 0]  # padding above the wide image
    assert out[16, 16].tolist() == [200, 200, 200]
    with pytest.raises(InvalidInputError):
        letterbox(np.zeros((0, 5, 3), np.uint8), 32)


def test_load_classifier_reads_settings_model(classifier_artifact):
    settings = load_settings(env={}).replace(classifier={"model": str(classifier_artifact), "top_k": 2})
    clf = load_classifier(settings.classifier, settings.storage)
    assert clf.info.version == "test-0"
    assert clf.input_size == 32


def test_no_classifier_configured_says_what_to_set(tmp_path):
    settings = load_settings(env={}).replace(storage={"cache_dir": str(tmp_path)})
    with pytest.raises(ModelLoadError, match="classifier.model"):
        load_classifier(settings.classifier, settings.storage)


def test_imagenet_weights_offline_fail_fast_with_clear_error(monkeypatch, tmp_path):
    # Given no cached weights (a fresh KERAS_HOME) and no internet, as on this machine and in CI
    import socket

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    try:
        socket.create_connection(("storage.googleapis.com", 443), timeout=3).close()
        pytest.skip("internet is reachable here; the offline path cannot be exercised")
    except OSError:
        pass
    # When ImageNet weights are asked for
    t0 = time.monotonic()
    with pytest.raises(ModelLoadError, match="local weights file"):
        build_classifier(["a", "b"], input_size=32, weights="imagenet")
    # Then it fails quickly, naming the offline alternatives
    assert time.monotonic() - t0 < 60


def test_missing_local_weights_file_is_named(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        build_classifier(["a", "b"], input_size=32, weights=str(tmp_path / "w.h5"))
