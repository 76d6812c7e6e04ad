"""Sweep specs expand to trials, finished trials are skipped on a rerun, and results come out ranked."""

from __future__ import annotations

import csv
import json

import pytest

from training.sweep import SweepSpec, expand, plot, run_sweep, trial_settings, write_tables
from vehicle_core.config import load_settings

GRID = """
search: grid
data: {full: /data/full, crops: /data/crops}
base: {image_size: 32, finetune_epochs: 1}
space:
  dataset: [full, crops]
  finetune_learning_rate: [0.001, 0.0003]
  dropout: [0.0, 0.5]
"""


class KilledMidSweep(Exception):
    """Stands in for a killed sweep process."""


def fake_trainer(calls, *, die_on=None):
    """A trial runner whose 'validation accuracy' is a known function of the settings."""

    def run(trial, trial_dir):
        calls.append(trial.id)
        if trial.id == die_on:
            raise KilledMidSweep(trial.id)
        p = trial.params
        score = (0.5 if p["dataset"] == "crops" else 0.2) + p["finetune_learning_rate"] * 100 - p["dropout"] / 10
        return {"val_accuracy": round(score, 4), "val_loss": 1 - score, "epochs": 1}

    return run


def test_grid_spec_expands_to_every_combination_with_stable_ids():
    spec = SweepSpec.load(GRID)
    trials = expand(spec)
    assert len(trials) == 8
    assert len({t.id for t in trials}) == 8
    assert {(t.params["dataset"], t.params["dropout"]) for t in trials} == {
        ("full", 0.0), ("full", 0.5), ("crops", 0.0), ("crops", 0.5)}
    assert [t.id for t in expand(SweepSpec.load(GRID))] == [t.id for t in trials]


def test_random_spec_draws_the_same_trials_for_the_same_seed():
    text = """
search: random
trials: 5
seed: 4
space:
  finetune_learning_rate: {log_uniform: [0.0001, 0.01]}
  dropout: {uniform: [0.0, 0.5]}
  augment: [true, false]
"""
    a, b = expand(SweepSpec.load(text)), expand(SweepSpec.load(text))
    assert [t.params for t in a] == [t.params for t in b]
    assert len(a) == 5
    assert all(1e-4 <= t.params["finetune_learning_rate"] <= 1e-2 for t in a)
    assert all(0.0 <= t.params["dropout"] <= 0.5 for t in a)


@pytest.mark.parametrize(
    "text, complaint",
    [
        ("space: {learning_rat: [0.1]}", "not training settings"),
        ("space: {dataset: [full, nope]}\ndata: {full: /x}", "not named under data"),
        ("search: grid\nspace: {dropout: {uniform: [0, 1]}}", "needs a list"),
        ("space: {}", "nothing to vary"),
    ],
)
def test_bad_spec_is_refused_with_the_reason(text, complaint):
    with pytest.raises(ValueError, match=complaint):
        SweepSpec.load(text)


def test_trial_settings_apply_base_then_trial_and_leave_dataset_out():
    spec = SweepSpec.load(GRID)
    trial = expand(spec)[-1]
    settings = trial_settings(spec, trial, load_settings(env={}).training)
    assert settings.image_size == 32 and settings.finetune_epochs == 1
    assert settings.dropout == trial.params["dropout"]
    assert settings.finetune_learning_rate == trial.params["finetune_learning_rate"]


def test_rerun_after_a_kill_trains_only_the_unfinished_trials(tmp_path):
    spec = SweepSpec.load(GRID)
    trials = expand(spec)
    first = []
    with pytest.raises(KilledMidSweep):
        run_sweep(spec, tmp_path, fake_trainer(first, die_on=trials[3].id))
    assert first == [t.id for t in trials[:4]]
    second = []
    rows = run_sweep(spec, tmp_path, fake_trainer(second))
    assert second == [t.id for t in trials[3:]]  # the killed trial again, then the rest
    assert len(rows) == 8
    assert all((tmp_path / "trials" / t.id / "result.json").is_file() for t in trials)


def test_results_are_ranked_by_the_validation_metric_in_markdown_csv_and_plot(tmp_path):
    spec = SweepSpec.load(GRID)
    rows = run_sweep(spec, tmp_path, fake_trainer([]))
    scores = [r["val_accuracy"] for r in rows]
    assert scores == sorted(scores, reverse=True)
    assert rows[0]["dataset"] == "crops" and rows[0]["finetune_learning_rate"] == 0.001 and rows[0]["dropout"] == 0.0
    best = {"trial": rows[0]["trial"], "test_accuracy": 0.75, "test_images": 40}
    md = write_tables(rows, spec, tmp_path, best)
    assert md.splitlines()[2].startswith(f"| 1 | {rows[0]['trial']} |")
    assert "test accuracy **0.750** on 40" in md
    with open(tmp_path / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["trial"] for r in table] == [r["trial"] for r in rows]
    assert {"dataset", "dropout", "finetune_learning_rate", "val_accuracy"} <= set(table[0])
    png = plot(rows, spec, tmp_path / "sweep.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "trials" / rows[0]["trial"] / "params.json").read_text())["dropout"] == 0.0


def test_trial_hparams_and_metrics_read_back_from_tensorboard_events(tmp_path):
    import tensorflow as tf
    from tensorboard.plugins.hparams import plugin_data_pb2

    from training.tensorboard_logs import write_hparams

    assert write_hparams(tmp_path, {"dataset": "crops", "dropout": 0.5, "augment": True}, {"val_accuracy": 0.8}, "t001")
    tags, hparams = {}, {}
    for path in tmp_path.glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                tags[value.tag] = value
                if value.tag == "_hparams_/session_start_info":
                    data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
                    hparams = {k: v for k, v in data.session_start_info.hparams.items()}
                    assert data.session_start_info.group_name == "t001"
    assert hparams["dataset"].string_value == "crops"
    assert hparams["dropout"].number_value == 0.5 and hparams["augment"].bool_value is True
    assert tf.make_ndarray(tags["val_accuracy"].tensor) == pytest.approx(0.8)


def test_a_trial_locked_by_another_process_is_left_to_it(tmp_path):
    import fcntl

    spec = SweepSpec.load(GRID)
    trials = expand(spec)
    busy = tmp_path / "trials" / trials[0].id
    busy.mkdir(parents=True)
    calls = []
    with open(busy / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another sweep process training this trial
        rows = run_sweep(spec, tmp_path, fake_trainer(calls))
    assert calls == [t.id for t in trials[1:]]
    assert len(rows) == 7
    assert len(run_sweep(spec, tmp_path, fake_trainer(calls))) == 8  # lock gone: the rerun trains it


def test_the_shipped_specs_parse_and_name_real_settings():
    from pathlib import Path

    specs = sorted((Path(__file__).resolve().parents[2] / "training" / "sweeps").glob("*.yaml"))
    assert {p.name for p in specs} >= {"card.yaml", "demo.yaml"}
    base = load_settings(env={}).training
    for path in specs:
        spec = SweepSpec.load(path.read_text())
        trials = expand(spec)
        assert len(trials) >= 8, path
        for trial in trials:
            trial_settings(spec, trial, base)  # every base and space key is a real training setting
