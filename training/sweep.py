"""Hyperparameter sweeps: a grid or random search over training settings and datasets.

    vehicle-train sweep training/sweeps/demo.yaml --out sweep-out

A spec (YAML) names the datasets, the settings every trial shares (``base``) and the ones it varies
(``space``); the pseudo-setting ``dataset`` picks one of the named datasets, so full images and
detector crops are searched like any other setting::

    search: grid                 # grid (every combination) | random (``trials`` draws, ``seed``)
    metric: val_accuracy         # ranks the trials: accuracy of the kept weights on the validation split
    data:
      full: s3://bucket/scenes   # or `synthetic: {scenes: 240, seed: 3, ground_truth: true}`
      crops: s3://bucket/scenes-crops
    base: {image_size: 48, finetune_epochs: 4}
    space:
      dataset: [full, crops]
      finetune_learning_rate: [0.001, 0.0003]     # random search also takes {log_uniform: [1e-4, 1e-2]}
      dropout: {uniform: [0.0, 0.5]}               # or {uniform: [a, b]}

Each trial trains in ``OUT/trials/<id>/run`` (metrics, TensorBoard logs with the trial's hparams, the
artifact) and writes ``OUT/trials/<id>/result.json`` last. Running the same command again skips the
finished trials and resumes an interrupted one at its last finished epoch (``BackupAndRestore``).
Several processes started on the same ``OUT`` share the trials (a file lock per trial).
At the end: ``OUT/results.md`` and ``OUT/results.csv`` ranked by the metric, the best trial scored
on the test split (``OUT/best.json``), and ``OUT/sweep.png`` (the metric against each varied setting).
"""

from __future__ import annotations

import csv
import dataclasses
import fcntl
import hashlib
import io
import itertools
import json
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from vehicle_core.config import Settings, TrainingSettings

log = logging.getLogger(__name__)

RESULT_FILE = "result.json"


@dataclass(frozen=True)
class Trial:
    """One point of the search: its id (stable across reruns of the same spec) and its settings."""

    id: str
    params: dict[str, Any]


@dataclass
class SweepSpec:
    """A parsed spec file (see the module docstring)."""

    space: dict[str, Any]
    base: dict[str, Any] = dataclasses.field(default_factory=dict)
    data: dict[str, Any] = dataclasses.field(default_factory=dict)
    search: str = "grid"
    trials: int = 8
    seed: int = 0
    metric: str = "val_accuracy"

    @classmethod
    def load(cls, text: str) -> SweepSpec:
        raw = yaml.safe_load(text) or {}
        unknown = set(raw) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"sweep spec: unknown keys {sorted(unknown)}")
        spec = cls(**raw)
        spec.validate()
        return spec

    def validate(self) -> None:
        settable = {f.name for f in dataclasses.fields(TrainingSettings)}
        for where, keys in (("base", self.base), ("space", self.space)):
            bad = set(keys) - settable - {"dataset"}
            if bad:
                raise ValueError(f"sweep spec {where}: {sorted(bad)} are not training settings ({sorted(settable)})")
        if self.search not in ("grid", "random"):
            raise ValueError(f"sweep spec: search must be grid or random, not {self.search!r}")
        if not self.space:
            raise ValueError("sweep spec: space is empty, nothing to vary")
        for key, values in self.space.items():
            if self.search == "grid" and not isinstance(values, list):
                raise ValueError(f"sweep spec space.{key}: a grid needs a list of values")
        names = self.space.get("dataset", [self.base.get("dataset")])
        if isinstance(names, list):
            missing = [n for n in names if n is not None and n not in self.dataset_names()]
            if missing:
                raise ValueError(f"sweep spec: datasets {missing} are not named under data")

    def dataset_names(self) -> list[str]:
        names = [k for k in self.data if k != "synthetic"]
        return names + (["full", "crops"] if "synthetic" in self.data else [])


def expand(spec: SweepSpec) -> list[Trial]:
    """The trials of a spec, in a fixed order: every grid combination, or ``trials`` seeded draws."""
    keys = sorted(spec.space)
    if spec.search == "grid":
        points = [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(spec.space[k] for k in keys))]
    else:
        rng = random.Random(spec.seed)
        points = [{k: _draw(spec.space[k], rng) for k in keys} for _ in range(spec.trials)]
    trials = []
    for i, params in enumerate(points):
        digest = hashlib.sha1(json.dumps({**spec.base, **params}, sort_keys=True).encode()).hexdigest()[:6]
        trials.append(Trial(id=f"t{i:03d}-{digest}", params=params))
    return trials


def _draw(values: Any, rng: random.Random) -> Any:
    if isinstance(values, list):
        return rng.choice(values)
    if isinstance(values, dict) and len(values) == 1:
        (kind, (lo, hi)), = values.items()
        if kind == "uniform":
            return round(rng.uniform(lo, hi), 6)
        if kind == "log_uniform":
            return float(f"{math.exp(rng.uniform(math.log(lo), math.log(hi))):.3g}")
        if kind == "int_uniform":
            return rng.randint(lo, hi)
    raise ValueError(f"sweep spec: cannot draw from {values!r} (a list, or {{uniform|log_uniform|int_uniform: [lo, hi]}})")


TrialRunner = Callable[[Trial, Path], dict[str, Any]]


def run_sweep(spec: SweepSpec, out: Path, run_trial: TrialRunner) -> list[dict[str, Any]]:
    """Run every trial not finished yet (``run_trial(trial, trial_dir) -> metrics``); finished results, ranked.

    Several processes may run the same sweep on one ``out`` folder: each trial is claimed with a file
    lock, so a process skips the trials another one is training (the lock dies with its process).
    """
    out.mkdir(parents=True, exist_ok=True)
    trials = expand(spec)
    for n, trial in enumerate(trials, 1):
        tdir = out / "trials" / trial.id
        tdir.mkdir(parents=True, exist_ok=True)
        with open(tdir / ".lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("trial %s is running in another process", trial.id)
                continue
            if (tdir / RESULT_FILE).is_file():
                log.info("trial %s already done (%d/%d)", trial.id, n, len(trials))
                continue
            log.info("trial %s (%d/%d): %s", trial.id, n, len(trials), trial.params)
            _run_one(trial, tdir, run_trial)
    done = [out / "trials" / t.id / RESULT_FILE for t in trials]
    if not all(p.is_file() for p in done):
        log.warning("%d of %d trials still running elsewhere; rerun to gather them", sum(not p.is_file() for p in done),
                    len(trials))
    return ranked([json.loads(p.read_text()) for p in done if p.is_file()], spec.metric)


def _run_one(trial: Trial, tdir: Path, run_trial: TrialRunner) -> None:
    (tdir / "params.json").write_text(json.dumps(trial.params, indent=2))
    t0 = time.monotonic()
    row = trial_row(trial, run_trial(trial, tdir), time.monotonic() - t0)
    tmp = tdir / (RESULT_FILE + ".tmp")
    tmp.write_text(json.dumps(row, indent=2))
    tmp.rename(tdir / RESULT_FILE)  # last, and atomic: a trial counts as done only once this exists


def trial_row(trial: Trial, metrics: dict[str, Any], seconds: float, **extra: Any) -> dict[str, Any]:
    """A finished trial's row of the results table (what ``result.json`` holds)."""
    return {"trial": trial.id, **trial.params, **metrics, "seconds": round(seconds, 1), **extra}


def ranked(rows: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """Rows sorted best first (a loss ranks low-is-better, anything else high-is-better)."""
    lower_better = "loss" in metric
    return sorted(rows, key=lambda r: (r.get(metric) is None, r.get(metric, 0) * (1 if lower_better else -1)))


def write_tables(rows: list[dict[str, Any]], spec: SweepSpec, out: Path, best_test: dict[str, Any] | None) -> str:
    """``results.csv`` (every column) and ``results.md`` (the varied settings and the scores); the Markdown."""
    varied = sorted(spec.space)
    columns = ["trial", *varied, spec.metric, "val_loss", "epochs", "seconds"]
    extra = sorted({k for r in rows for k in r} - set(columns))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["rank", *columns, *extra])
    writer.writeheader()
    for i, r in enumerate(rows, 1):
        writer.writerow({"rank": i, **r})
    (out / "results.csv").write_text(buf.getvalue())
    lines = ["| rank | " + " | ".join(columns) + " |", "|" + " --- |" * (len(columns) + 1)]
    for i, r in enumerate(rows, 1):
        lines.append(f"| {i} | " + " | ".join(_cell(r.get(c)) for c in columns) + " |")
    if best_test:
        lines.append("")
        lines.append(f"Best by {spec.metric}: `{best_test['trial']}`, test accuracy **{best_test['test_accuracy']:.3f}** "
                     f"on {best_test['test_images']} test images of its dataset.")
    md = "\n".join(lines) + "\n"
    (out / "results.md").write_text(md)
    return md


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) >= 0.01 or v == 0 else f"{v:.2g}"
    return "" if v is None else str(v)


def plot(rows: list[dict[str, Any]], spec: SweepSpec, path: Path) -> Path:
    """One panel per varied setting: the metric of every trial against that setting's value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted(spec.space)
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3), squeeze=False, sharey=True)
    for ax, key in zip(axes[0], keys, strict=True):
        values = [r.get(key) for r in rows]
        numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
        if numeric:
            ax.scatter(values, [r.get(spec.metric) for r in rows])
            if min(values) > 0 and max(values) / min(values) >= 10:
                ax.set_xscale("log")  # learning rates and weight decays span decades
        else:
            labels = sorted({str(v) for v in values})
            ax.scatter([labels.index(str(v)) for v in values], [r.get(spec.metric) for r in rows])
            ax.set_xticks(range(len(labels)), labels)
        ax.set_xlabel(key)
    axes[0][0].set_ylabel(spec.metric)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def trial_settings(spec: SweepSpec, trial: Trial, base: TrainingSettings) -> TrainingSettings:
    """``base`` with the spec's shared settings and the trial's own applied (``dataset`` left out)."""
    changes = {k: v for k, v in {**spec.base, **trial.params}.items() if k != "dataset"}
    return dataclasses.replace(base, **changes)


def dataset_roots(spec: SweepSpec, settings: Settings, out: str | Path, *, create: bool = True) -> dict[str, str]:
    """Name -> dataset root; a ``synthetic`` entry writes scenes and their crops under ``OUT/data`` once
    (``OUT`` a local folder or an ``s3://`` prefix). ``create=False`` (a train worker): only find them."""
    roots = {k: str(v) for k, v in spec.data.items() if k != "synthetic"}
    synth = spec.data.get("synthetic")
    if synth:
        from vehicle_core.storage import ObjectStore

        base = str(out).rstrip("/") + "/data"
        scenes, crops, done = f"{base}/scenes", f"{base}/crops", f"{base}/done.json"
        store = ObjectStore(settings.storage)
        if store.get_json(done) is None:  # written last: an interrupted data step is redone from scratch
            if not create:
                raise ValueError(f"the sweep's synthetic data is not written yet ({done} missing): "
                                 "the sweep command writes it before sending trials")
            from training.crops import crop_dataset
            from training.synthetic.datasets import write_scene_dataset

            write_scene_dataset(scenes, store, n=int(synth.get("scenes", 240)), seed=int(synth.get("seed", 3)))
            rows = crop_dataset(scenes, crops, settings, use_ground_truth=bool(synth.get("ground_truth")))
            store.put_json(done, {"crops": sum("key" in r for r in rows)})
        roots.update(full=scenes, crops=crops)
    return roots


class LocalTrials:
    """Trains a trial with :func:`training.train.train_classifier` and records its hparams for TensorBoard."""

    def __init__(self, spec: SweepSpec, settings: Settings, roots: dict[str, str]) -> None:
        from vehicle_core.storage import ObjectStore

        self.spec, self.settings, self.roots = spec, settings, roots
        self.store = ObjectStore(settings.storage)
        self._indexes: dict[str, Any] = {}

    def index(self, name: str):
        from training.dataset import index_dataset

        if name not in self._indexes:
            self._indexes[name] = index_dataset(self.roots[name], self.store)
        return self._indexes[name]

    def dataset_of(self, trial: Trial) -> str:
        return trial.params.get("dataset") or self.spec.base.get("dataset") or next(iter(self.roots))

    def __call__(self, trial: Trial, trial_dir: Path) -> dict[str, Any]:
        from training.tensorboard_logs import write_hparams
        from training.train import train_classifier

        training = trial_settings(self.spec, trial, self.settings.training)
        result = train_classifier(self.index(self.dataset_of(trial)), self.store, training, run_dir=trial_dir / "run",
                                  version=trial.id, storage=self.settings.storage)
        m = result.manifest["metrics"]
        metrics = {
            "val_accuracy": m.get("val_accuracy"),
            "val_loss": m.get("val_loss"),
            "epochs": sum(len(v) for k, v in result.history.items() if k.endswith("_loss") and "val" not in k),
        }
        write_hparams(trial_dir / "run" / "logs" / "hparams", {**trial.params, "dataset": self.dataset_of(trial)},
                      {k: v for k, v in metrics.items() if v is not None}, trial.id)
        return metrics

    def test_score(self, best: dict[str, Any], artifact: str | Path) -> dict[str, Any]:
        """The best trial's artifact scored on its dataset's test split."""
        from training.evaluate import evaluate_artifact

        trial = Trial(id=best["trial"], params={k: best[k] for k in self.spec.space})
        index = self.index(self.dataset_of(trial))
        evaluation, _ = evaluate_artifact(artifact, index, index.split("test"), self.store, split="test")
        return {"trial": trial.id, "dataset": self.dataset_of(trial), "test_accuracy": evaluation.accuracy,
                "test_images": evaluation.n_images}


def finish_sweep(spec: SweepSpec, rows: list[dict[str, Any]], out_dir: Path, test_score) -> dict[str, Any]:
    """The best trial's test score (computed once, kept in ``best.json``), ``results.md``/``.csv`` and
    ``sweep.png`` in ``out_dir``. ``rows`` ranked best first; ``test_score(best_row) -> dict``."""
    best = out_dir / "best.json"
    best_test = json.loads(best.read_text()) if best.is_file() else None
    if not best_test or best_test["trial"] != rows[0]["trial"]:
        best_test = test_score(rows[0])
        best.write_text(json.dumps(best_test, indent=2))
    table = write_tables(rows, spec, out_dir, best_test)
    plot(rows, spec, out_dir / "sweep.png")
    return {"trials": len(rows), "best": best_test, "table": str(out_dir / "results.md"),
            "plot": str(out_dir / "sweep.png"), "markdown": table}
