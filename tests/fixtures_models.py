"""Session fixtures that build small real models for tests (a pytest plugin listed in conftest).

``classifier_artifact``: a real ResNet50 classifier artifact, UNTRAINED (random weights, 32 px input),
whose class names are the synthetic generator's. Its answers are meaningless; use it to exercise
loading, batching and the result contract, never to check labels.
"""

from __future__ import annotations

from pathlib import Path

import pytest

CLASSIFIER_TEST_INPUT = 32


@pytest.fixture(scope="session")
def classifier_artifact(tmp_path_factory) -> Path:
    """Directory of an untrained ResNet50 classifier artifact (model.keras + manifest.json)."""
    from vehicle_core.classifier import build_classifier, make_manifest, save_artifact
    names = sorted(_synthetic_class_names())
    model = build_classifier(names, input_size=CLASSIFIER_TEST_INPUT, weights=None, dropout=0.0)
    manifest = make_manifest(
        name="vehicle-resnet50-untrained", version="test-0", class_names=names, input_size=CLASSIFIER_TEST_INPUT
    )
    return save_artifact(model, manifest, tmp_path_factory.mktemp("classifier") / "untrained")


def _synthetic_class_names() -> list[str]:
    try:
        from vehicle_core.synthetic import CLASSES
    except ImportError:  # the generator lands in parallel; its announced class names until then
        return ["bus", "motorcycle", "pickup", "sedan", "suv", "truck"]
    return list(CLASSES)
