"""The same seed gives the same run, and a run leaves TensorBoard events that read back."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures_models import tiny_training
from training.dataset import index_dataset
from training.train import train_classifier
from vehicle_core.storage import ObjectStore


def _tiny_settings(**changes):
    # Two fine-tuning epochs and the schedule and determinism spelled out: this test is about them.
    return tiny_training(**{"finetune_epochs": 2, "lr_schedule": "cosine", "deterministic": True,
                            "early_stopping_patience": 5, **changes})


@pytest.fixture(scope="module")
def two_runs(tiny_image_folder, module_tmp_path):
    """Two runs of the same settings and seed, in separate run directories."""
    reader = ObjectStore()
    index = index_dataset(str(tiny_image_folder), reader)
    root = module_tmp_path
    return [train_classifier(index, reader, _tiny_settings(), run_dir=root / f"run{i}") for i in (1, 2)]


def _events(log_dir: Path) -> dict[str, list]:
    """tag -> [(step, summary value)] over every event file under ``log_dir``."""
    import tensorflow as tf

    found: dict[str, list] = {}
    for path in sorted(log_dir.rglob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                found.setdefault(value.tag, []).append((event.step, value))
    return found


@pytest.mark.slow
def test_same_seed_twice_gives_identical_metrics(two_runs):
    first, second = two_runs
    assert first.history == second.history
    assert first.manifest["metrics"] == second.manifest["metrics"]
    assert len(first.history["stage2_val_accuracy"]) == 2


@pytest.mark.slow
def test_run_writes_epoch_scalars_per_stage_and_the_confusion_image(two_runs):
    logs = two_runs[0].run_dir / "logs"
    stage1, stage2 = _events(logs / "stage1"), _events(logs / "stage2")
    assert [step for step, _ in stage1["epoch_loss"]] == [0, 0]  # one epoch: train and validation
    assert sorted(step for step, _ in stage2["epoch_accuracy"]) == [0, 0, 1, 1]
    image = _events(logs / "val")["confusion_matrix"][0][1]
    png = image.tensor.string_val[2]  # width, height, then the encoded image
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_kept_weights_are_scored_on_validation(two_runs):
    metrics = two_runs[0].manifest["metrics"]
    assert 0.0 <= metrics["val_accuracy"] <= 1.0
    assert metrics["val_loss"] > 0
