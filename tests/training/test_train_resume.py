"""Training runs end to end on a tiny dataset and resumes an interrupted run where it stopped."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tests.fixtures_models import tiny_training
from training.dataset import index_dataset
from training.train import train_classifier
from vehicle_core.classifier import VehicleClassifier, load_artifact
from vehicle_core.storage import ObjectStore


class Interrupted(Exception):
    """Stands in for a killed process."""


class StopAfterBatches(keras.callbacks.Callback):
    """Raises after ``n`` training batches, like a crash half-way through an epoch."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n, self.seen = n, 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen >= self.n:
            raise Interrupted(f"stopped after {self.seen} batches")


class EpochsSeen(keras.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.epochs: list[int] = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)


_tiny_settings = tiny_training


def test_tiny_run_saves_a_loadable_artifact_with_its_settings(tiny_image_folder, tmp_path):
    reader = ObjectStore()
    index = index_dataset(str(tiny_image_folder), reader)
    result = train_classifier(index, reader, _tiny_settings(), run_dir=tmp_path / "run", version="tiny-1")
    model, manifest = load_artifact(result.artifact)
    assert manifest["version"] == "tiny-1"
    assert manifest["class_names"] == ["blue", "red"]
    assert manifest["training"]["settings"]["image_size"] == 32
    assert set(result.history) >= {"stage1_loss", "stage2_val_accuracy"}
    assert (tmp_path / "run" / "stage2-epochs.csv").is_file()
    clf = VehicleClassifier(model, manifest)
    probs = clf.probabilities([np.zeros((20, 30, 3), np.uint8)])
    assert probs.shape == (1, 2) and np.isfinite(probs).all()


def test_interrupted_run_resumes_from_saved_epoch(tiny_image_folder, tmp_path):
    # Given a run of 3 head epochs (3 batches each: 24 images / 8) killed in its second epoch
    reader = ObjectStore()
    index = index_dataset(str(tiny_image_folder), reader)
    settings = _tiny_settings(head_epochs=3, finetune_epochs=0, augment=False, early_stopping_patience=5)
    run_dir = tmp_path / "run"
    with pytest.raises(Interrupted):
        train_classifier(index, reader, settings, run_dir=run_dir, callbacks=[StopAfterBatches(4)])
    assert not (run_dir / "artifact").exists()
    # When the same run is started again
    seen = EpochsSeen()
    result = train_classifier(index, reader, settings, run_dir=run_dir, callbacks=[seen])
    # Then it continues at epoch 1 (the first finished epoch was restored), not at 0
    assert seen.epochs == [1, 2]
    assert len(result.history["stage1_loss"]) == 2
    assert (result.artifact / "model.keras").is_file()
