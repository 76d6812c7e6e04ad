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
        from training.synthetic.scenes import CLASSES
    except ImportError:  # the generator lands in parallel; its announced class names until then
        return ["bus", "motorcycle", "pickup", "sedan", "suv", "truck"]
    return list(CLASSES)


def write_labelled_images(root: Path, *, per_class: int, size: int = 40, seed: int = 0) -> dict[str, list[Path]]:
    """PNG files in ``root/<label>/``: two easily told apart classes ("red" bar, "blue" disc) on noise.

    Real encoded images (OpenCV), so the reader's real decoding runs; returns the files per label.
    """
    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    out: dict[str, list[Path]] = {}
    for label in ("blue", "red"):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = rng.integers(0, 80, (size, size + 8, 3), dtype=np.uint8)
            if label == "red":
                cv2.rectangle(image, (6, 10), (size, size - 10), (40, 40, 230), -1)  # BGR
            else:
                cv2.circle(image, (size // 2, size // 2), size // 3, (230, 60, 40), -1)
            path = root / label / f"{i:03d}.png"
            cv2.imwrite(str(path), image)
            out.setdefault(label, []).append(path)
    return out


@pytest.fixture(scope="session")
def tiny_image_folder(tmp_path_factory) -> Path:
    """A local dataset in the split/label layout: train (12 per class) and val (4 per class)."""
    root = tmp_path_factory.mktemp("tiny-dataset")
    write_labelled_images(root / "train", per_class=12, seed=1)
    write_labelled_images(root / "val", per_class=4, seed=2)
    return root


def tiny_training(**changes):
    """Training settings small enough for a test: 32 px, batches of 8, one epoch per stage, the top 12
    layers fine-tuned, no ImageNet weights, augmentation on; ``changes`` override any of them."""
    import dataclasses

    from vehicle_core.config import load_settings

    small = {"image_size": 32, "batch_size": 8, "head_epochs": 1, "finetune_epochs": 1, "finetune_layers": 12,
             "imagenet_weights": "none", "augment": True}
    return dataclasses.replace(load_settings(env={}).training, **{**small, **changes})
