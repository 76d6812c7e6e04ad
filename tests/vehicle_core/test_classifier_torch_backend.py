"""The classifier artifact serves under Keras's torch backend with the TensorFlow backend's answers,
in a process that never imports TensorFlow (one CUDA framework per GPU host)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from vehicle_core.config import load_settings
from vehicle_core.errors import ConfigError

# Runs in a fresh process with KERAS_BACKEND=torch: the settings path a classify worker takes.
TORCH_SIDE = """
import json, sys
import numpy as np
from vehicle_core.classifier import load_classifier
from vehicle_core.config import load_settings
settings = load_settings(env={"VP_CLASSIFIER__BACKEND": "torch", "VP_CLASSIFIER__MODEL": sys.argv[1],
                              "VP_CLASSIFIER__DEVICE": "cpu"})
clf = load_classifier(settings.classifier, settings.storage)
crops = list(np.load(sys.argv[2]))
probs = clf.probabilities(crops)
json.dump({"backend": clf.backend, "probs": probs.tolist(), "tensorflow": "tensorflow" in sys.modules,
           "labels": [c.label for c in clf.classify(crops)]}, open(sys.argv[3], "w"))
"""


def _crops(n: int = 32) -> np.ndarray:
    rng = np.random.default_rng(3)
    return rng.integers(0, 256, (n, 40, 56, 3), dtype=np.uint8)  # not square: letterboxing runs too


def test_torch_backend_gives_the_tensorflow_predictions_without_tensorflow(classifier_artifact, tmp_path):
    from vehicle_core.classifier import VehicleClassifier

    crops = _crops()
    np.save(tmp_path / "crops.npy", crops)
    tf_clf = VehicleClassifier.from_artifact(classifier_artifact, device="cpu")
    assert tf_clf.backend == "tensorflow"
    expected = tf_clf.probabilities(list(crops))

    env = {**os.environ, "KERAS_BACKEND": "torch", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-c", TORCH_SIDE, str(classifier_artifact), str(tmp_path / "crops.npy"),
                           str(tmp_path / "out.json")], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["backend"] == "torch"
    assert out["tensorflow"] is False, "the torch-backend process imported TensorFlow"
    got = np.array(out["probs"], dtype=np.float32)
    assert got.shape == expected.shape == (32, len(tf_clf.class_names))
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert out["labels"] == [c.label for c in tf_clf.classify(list(crops))]


def test_backend_setting_is_checked():
    with pytest.raises(ConfigError, match="classifier.backend"):
        load_settings(env={"VP_CLASSIFIER__BACKEND": "jax"})
    assert load_settings(env={}).classifier.backend == "tensorflow"


def test_a_backend_other_than_the_one_keras_runs_on_fails_loudly(monkeypatch):
    import keras  # this test process runs Keras on TensorFlow

    from vehicle_core.classifier import use_backend

    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    assert keras.backend.backend() == "tensorflow"
    use_backend("tensorflow")  # agrees: nothing to do
    with pytest.raises(ConfigError, match="KERAS_BACKEND=torch"):
        use_backend("torch")
    monkeypatch.setenv("KERAS_BACKEND", "torch")
    with pytest.raises(ConfigError, match="KERAS_BACKEND='torch'"):
        use_backend("tensorflow")
