"""``vehicle-train sweep --via celery``: each trial a task on the ``train`` queue, answers through S3.

    celery -A training.trial_worker worker -Q train -c 1 -n train@%h        # on each training machine
    vehicle-train sweep s3://b/sweeps/demo.yaml --out s3://b/sweeps/demo-1 --via celery

The command writes the spec to ``OUT/spec.yaml`` and the synthetic data (if the spec asks for it)
under ``OUT/data/``, sends one ``train_trial`` task per trial without a ``result.json``, and waits
until every trial has answered (``result.json``, or ``error.json`` for a trial that could not run).
Then, as a local sweep does, it ranks the trials, scores the best one's artifact on its test split,
and writes ``results.md``, ``results.csv``, ``sweep.png`` and ``best.json`` to ``OUT``.

Killed, or stopped by a stall, the command is rerun as is: answered trials are not sent again,
unanswered ones are (a copy still queued is skipped by the worker once the first one answered).
Trials with an ``error.json`` are retried by a rerun. Flower shows the ``train`` queue.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from training.remote import find_workers, wait_for
from training.sweep import LocalTrials, SweepSpec, dataset_roots, expand, finish_sweep, ranked
from training.train_queue import ERROR, RESULT, TRAIN_TRIAL_TASK, train_sender_app, trial_uri
from vehicle_core.config import Settings, mask_secret
from vehicle_core.errors import SourceNotFoundError
from vehicle_core.storage import ObjectStore, is_s3

log = logging.getLogger(__name__)

#: Files of the finished sweep, written locally first and then copied to ``OUT``.
OUTPUTS = ("results.md", "results.csv", "sweep.png", "best.json")


def sweep_on_train_workers(spec: SweepSpec, text: str, out: str, settings: Settings, *,
                           poll_s: float = 5.0, stall_timeout_s: float | None = None) -> dict[str, Any]:
    """Run (or resume) the sweep on the train workers; the same summary as a local sweep, plus errors."""
    out = out.rstrip("/")
    if not is_s3(out):
        raise ValueError("--via celery: the train workers write to S3, give --out s3://bucket/prefix")
    queue = settings.broker.train_queue
    if settings.broker.kind != "redis":  # finding the train workers is a broadcast, which SQS cannot carry
        raise ValueError("--via celery needs a Redis broker (broker.url redis://...): the sweep finds its train "
                         "workers by a broadcast, which an SQS broker does not carry")
    workers = find_workers(settings, queue)
    if not workers:
        raise ValueError(f"--via celery: no worker consumes queue {queue!r} at {mask_secret(settings.broker.url)}; "
                         f"start one with: celery -A training.trial_worker worker -Q {queue} -c 1")
    store = ObjectStore(settings.storage)
    spec_uri = f"{out}/spec.yaml"
    _claim(store, spec_uri, text)
    roots = dataset_roots(spec, settings, out)  # a synthetic data set is written to S3 here, once
    local = [root for root in roots.values() if not is_s3(root)]
    if local:
        raise ValueError(f"--via celery: datasets {local} are local paths; the train workers read s3:// only")

    trials = expand(spec)
    pending = [t for t in trials if store.head(trial_uri(out, t.id, RESULT)) is None]
    app = train_sender_app(settings.broker)
    for trial in pending:
        store.delete(trial_uri(out, trial.id, ERROR))  # a failed attempt of an earlier run: try again
        app.send_task(TRAIN_TRIAL_TASK, args=[spec_uri, trial.id, out])  # routed to the train queue
    log.info("sent %d of %d trials to queue %r (workers: %s)", len(pending), len(trials), queue, ", ".join(workers))

    seen: set[str] = set()

    def answered() -> set[str]:  # HEADs only for trials not answered yet: an answer stays
        seen.update(t.id for t in pending if t.id not in seen and (
            store.head(trial_uri(out, t.id, RESULT)) is not None or store.head(trial_uri(out, t.id, ERROR)) is not None))
        return seen

    wait_for({t.id for t in pending}, answered, poll_s=poll_s, what="trials answered",
             stall_timeout_s=stall_timeout_s or settings.broker.train_visibility_timeout_s,
             hint=f"are the train workers up? (Flower shows queue {queue!r}); rerun the command to resume")
    rows = [doc for t in trials if (doc := store.get_json(trial_uri(out, t.id, RESULT))) is not None]
    errors = [doc for t in trials if (doc := store.get_json(trial_uri(out, t.id, ERROR))) is not None]
    if not rows:
        raise ValueError(f"every trial failed; first: {errors[0]['error'] if errors else 'no answer'}")
    summary = _finish(spec, ranked(rows, spec.metric), out, roots, settings, store)
    return {**summary, "errors": errors, "workers": workers}


def _claim(store: ObjectStore, spec_uri: str, text: str) -> None:
    """Write the spec, or check that the one already there is the same (one sweep per prefix)."""
    try:
        existing = store.read(spec_uri).decode()
    except SourceNotFoundError:
        existing = None
    if existing is not None and existing != text:
        raise ValueError(f"{spec_uri} holds another spec: give this sweep its own --out (or reuse the same spec)")
    if existing is None:
        store.put(spec_uri, text.encode(), content_type="application/yaml")


def _finish(spec: SweepSpec, rows: list[dict[str, Any]], out: str, roots: dict[str, str], settings: Settings,
            store: ObjectStore) -> dict[str, Any]:
    """The local sweep's finish (best trial's test score, tables, plot), then copied to ``out``."""
    from vehicle_core.storage.artifacts import resolve_local

    trials = LocalTrials(spec, settings, roots)
    with tempfile.TemporaryDirectory(prefix="sweep-") as tmp:
        local = Path(tmp)
        best = store.get_json(f"{out}/best.json")
        if best:
            (local / "best.json").write_text(json.dumps(best, indent=2))
        summary = finish_sweep(spec, rows, local, lambda row: trials.test_score(
            row, resolve_local(trial_uri(out, row["trial"], "run/artifact/"), settings.storage)))
        for name in OUTPUTS:
            store.upload_file(local / name, f"{out}/{name}")
    return {**summary, "table": f"{out}/results.md", "plot": f"{out}/sweep.png"}
