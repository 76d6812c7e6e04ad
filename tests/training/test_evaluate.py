"""Evaluation reports: scores, the report folder, and comparing runs through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.fixtures_models import write_labelled_images
from training.cli import main
from training.dataset import index_dataset
from training.evaluate import evaluate_artifact, scores, write_report
from vehicle_core.classifier import load_artifact, save_artifact
from vehicle_core.storage import ObjectStore


def test_scores_match_hand_counted_confusion():
    # true:  a a a b b c      predicted: a a b b c c
    y_true = np.array([0, 0, 0, 1, 1, 2])
    y_pred = np.array([0, 0, 1, 1, 2, 2])
    accuracy, per_class, confusion = scores(y_true, y_pred, ["a", "b", "c"])
    assert accuracy == pytest.approx(4 / 6)
    assert confusion.tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert per_class["a"] == {"precision": 1.0, "recall": pytest.approx(2 / 3), "f1": pytest.approx(0.8), "support": 3}
    assert per_class["b"]["precision"] == pytest.approx(0.5)
    assert per_class["c"]["recall"] == 1.0


def test_report_folder_and_run_comparison(classifier_artifact, tmp_path, capsys):
    # Given a test split labelled with two of the model's classes and two model versions
    model, manifest = load_artifact(classifier_artifact)
    labels = manifest["class_names"][:2]
    files = write_labelled_images(tmp_path / "raw", per_class=3, seed=9)
    for label, paths in zip(labels, files.values(), strict=True):
        (tmp_path / "data" / "test" / label).mkdir(parents=True)
        for p in paths:
            p.rename(tmp_path / "data" / "test" / label / p.name)
    reader = ObjectStore()
    index = index_dataset(str(tmp_path / "data"), reader)
    # When each is evaluated and reported
    for version in ("a", "b"):
        artifact = save_artifact(model, {**manifest, "version": version}, tmp_path / f"art-{version}")
        evaluation, images = evaluate_artifact(artifact, index, index.split("test"), reader)
        out = write_report(evaluation, images, tmp_path / f"rep-{version}")
    # Then the report holds the scores, a confusion matrix image and the mistakes it lists
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_images"] == 6 and sum(map(sum, metrics["confusion"])) == 6
    assert (out / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    assert len(list((out / "misclassified").glob("*.png"))) == min(8, len(metrics["misclassified"]))
    assert "accuracy" in (out / "report.md").read_text() and (out / "report.html").is_file()
    # And the CLI compares the two runs in one table
    assert main(["compare", str(tmp_path / "rep-a"), str(tmp_path / "rep-b")]) == 0
    table = capsys.readouterr().out
    assert "| model |" in table and " a |" in table and " b |" in table
