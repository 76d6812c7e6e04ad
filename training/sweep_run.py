"""``vehicle-train sweep``: the trials of a :mod:`training.sweep` spec, trained here or on train workers.

Locally (``--via local``, the default) trials run one after another in this process; start the
command several times on the same ``--out`` folder and the processes split the trials between them.
With ``--via celery`` each trial is a task on the ``train`` queue (:mod:`training.remote_sweep`) and
``--out`` is an ``s3://`` prefix. What both share (:class:`LocalTrials`, :func:`finish_sweep`) lives in
:mod:`training.sweep` and is re-exported here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from training.sweep import LocalTrials, SweepSpec, dataset_roots, expand, finish_sweep, run_sweep
from vehicle_core.config import Settings

__all__ = ["LocalTrials", "finish_sweep", "sweep_command"]


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
