"""``vehicle-train sweep``: the trials of a :mod:`training.sweep` spec, trained here or on train workers.

Locally (``--via local``, the default) trials run one after another in this process; start the
command several times on the same ``--out`` folder and the processes split the trials between them.
With ``--via celery`` each trial is a task on the ``train`` queue (:mod:`training.remote_sweep`) and
``--out`` is an ``s3://`` prefix.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from training.sweep import (
    SweepSpec,
    Trial,
    dataset_roots,
    expand,
    plot,
    run_sweep,
    trial_settings,
    write_tables,
)
from vehicle_core.config import Settings

log = logging.getLogger(__name__)


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


def sweep_command(spec_path: str, out: str, settings: Settings, *, via: str = "local") -> dict[str, Any]:
    """Run (or resume) a sweep; write the tables, the plot and the best trial's test score."""
    from vehicle_core.storage import ObjectStore

    text = ObjectStore(settings.storage).read(spec_path).decode()
    spec = SweepSpec.load(text)
    if via == "celery":
        from training.remote_sweep import sweep_on_train_workers  # the one place a sweep needs Celery

        return sweep_on_train_workers(spec, text, out, settings)
    if out.startswith("s3://"):
        raise ValueError("a local sweep writes to a local folder; --out s3://... needs --via celery")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "spec.yaml").write_text(text)
    trials = LocalTrials(spec, settings, dataset_roots(spec, settings, out_dir))
    rows = run_sweep(spec, out_dir, trials)
    if len(rows) < len(expand(spec)):
        return {"finished": len(rows), "trials": len(expand(spec)), "note": "others still running; rerun to gather"}
    return finish_sweep(spec, rows, out_dir, lambda best: trials.test_score(
        best, out_dir / "trials" / best["trial"] / "run" / "artifact"))


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
