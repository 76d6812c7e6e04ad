"""The train worker: sweep trials as Celery tasks on the ``train`` queue (``vehicle-train sweep --via celery``).

    celery -A training.trial_worker worker -Q train -c 1 -n train@%h      # one per machine (or GPU)

A machine with TensorFlow (the ``tf`` extra) and the broker's and S3's settings runs this; the sweep
command (:mod:`training.remote_sweep`) sends one ``train_trial`` task per unfinished trial and gathers
the answers from S3. A task names the spec (``s3://…/spec.yaml``), the trial id and the sweep's
``s3://`` prefix; the worker trains the trial in a local folder, uploads its run directory to
``OUT/trials/<id>/run/`` and writes ``OUT/trials/<id>/result.json`` last (or ``error.json`` when the
trial cannot run: a bad setting, a missing dataset), so every trial sent gets an answer. The task's
name, its route and the answers' layout are in :mod:`training.train_queue`; the app is built (settings
read, ``train_trial`` registered) on first access to ``app``, never at import.

Reliability, for tasks that run for minutes to hours:

* ``acks_late`` with ``reject_on_worker_lost``: a worker killed mid-trial leaves the message to be
  delivered again; a trial already answered in S3 is skipped, so a second delivery costs nothing;
  a redelivered trial on the same machine resumes at its last finished epoch (the local run folder
  is kept per sweep and trial, and training keeps a ``BackupAndRestore`` backup there).
* This app's Redis transport keeps its unacked messages in keys of its own
  (``unacked_train…``) with ``broker.train_visibility_timeout_s`` (12 h by default): the detect and
  classify workers' restore sweeps, whose timeout is an hour, never hand a running trial to a second
  worker. A trial longer than that timeout is delivered twice (harmless, wasteful): raise it.
* One task per process (``worker_max_tasks_per_child = 1``): each trial starts with a fresh
  TensorFlow (no graph or memory carried over, determinism set up cleanly), prefetch 1.
* Only ``s3://`` URIs are accepted from a message: whoever can send a task must not make a worker
  read or write its local disk.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Any

from celery import Celery

from training.sweep import LocalTrials, SweepSpec, dataset_roots, expand, trial_row
from training.train_queue import ERROR, RESULT, TRAIN_TRIAL_TASK, train_routes, trial_uri
from vehicle_core.config import Settings, load_settings
from vehicle_core.errors import ConfigError, TransientError
from vehicle_core.lazy import module_getattr
from vehicle_core.storage import ObjectStore, is_s3
from workers.app import celery_config
from workers.messages import task_routes

log = logging.getLogger(__name__)

__all__ = ["ERROR", "RESULT", "create_app", "run_trial", "train_app_config", "train_trial", "trial_uri"]


def train_app_config(settings: Settings) -> dict[str, Any]:
    """The project's Celery settings, adjusted for hour-long, one-at-a-time training tasks."""
    conf = celery_config(settings)
    conf.update({
        "broker_transport_options": {
            **conf["broker_transport_options"],
            "visibility_timeout": settings.broker.train_visibility_timeout_s,
            # Unacked trials in keys of their own: the image workers' restore sweeps (shorter timeout)
            # read only the default keys, so they never redeliver a trial that is still training.
            "unacked_key": "unacked_train",
            "unacked_index_key": "unacked_train_index",
            "unacked_mutex_key": "unacked_train_mutex",
        },
        "worker_prefetch_multiplier": 1,
        "worker_max_tasks_per_child": 1,
        "task_routes": {**task_routes(settings.broker), **train_routes(settings.broker)},
        "task_default_queue": settings.broker.train_queue,
    })
    return conf


def create_app(settings: Settings | None = None) -> Celery:
    """The train worker's app, with :func:`train_trial` registered on it."""
    settings = settings or load_settings()
    app = Celery("vehicle-train", set_as_current=False)
    app.config_from_object(train_app_config(settings))
    app.vehicle_settings = settings
    app.task(name=TRAIN_TRIAL_TASK, bind=True, acks_late=True, reject_on_worker_lost=True,
             autoretry_for=(TransientError,), retry_backoff=True, max_retries=5, shared=False)(train_trial)
    return app


#: The app, built on first access (``celery -A training.trial_worker`` reads it), never at import.
app: Celery
__getattr__ = module_getattr(__name__, globals(), {"app": create_app})


def train_trial(self, spec_uri: str, trial_id: str, out: str) -> dict[str, Any]:
    """Train one trial of the sweep at ``out``; its answer is ``result.json`` or ``error.json`` in S3.
    The ``train_trial`` task of the app (:func:`create_app` registers it under ``TRAIN_TRIAL_TASK``)."""
    return run_trial(spec_uri, trial_id, out, settings=self.app.vehicle_settings,
                     worker=self.request.hostname or "train")


def run_trial(spec_uri: str, trial_id: str, out: str, *, settings: Settings, worker: str,
              work_dir: Path | None = None) -> dict[str, Any]:
    """The worker's side of one trial (see the module docstring); returns what it wrote."""
    for uri in (spec_uri, out):
        if not is_s3(uri):
            raise ConfigError(f"a train task may name s3:// URIs only, not {uri!r}")
    store = ObjectStore(settings.storage)
    if store.head(trial_uri(out, trial_id, RESULT)) is not None:
        log.info("trial %s already answered in %s: nothing to do", trial_id, out)
        return {"trial": trial_id, "skipped": "done"}
    t0 = time.monotonic()
    try:
        metrics, trial = _train(spec_uri, trial_id, out, settings, store, work_dir)
    except TransientError:
        raise  # storage blips: Celery retries the task (autoretry_for)
    except Exception as exc:  # noqa: BLE001 - any other failure is this trial's answer, not a lost task
        log.exception("trial %s failed", trial_id)
        doc = {"trial": trial_id, "error": f"{type(exc).__name__}: {exc}", "worker": worker}
        store.put_json(trial_uri(out, trial_id, ERROR), doc)
        return doc
    row = trial_row(trial, metrics, time.monotonic() - t0, worker=worker)
    store.put_json(trial_uri(out, trial_id, RESULT), row)  # last: the trial counts as done from here
    store.delete(trial_uri(out, trial_id, ERROR))  # an earlier failed attempt's answer, now superseded
    return row


def _train(spec_uri: str, trial_id: str, out: str, settings: Settings, store: ObjectStore,
           work_dir: Path | None) -> tuple[dict[str, Any], Any]:
    spec = SweepSpec.load(store.read(spec_uri).decode())
    trial = {t.id: t for t in expand(spec)}.get(trial_id)
    if trial is None:
        raise ConfigError(f"trial {trial_id!r} is not one of {spec_uri}'s trials (was the spec changed?)")
    roots = dataset_roots(spec, settings, out, create=False)
    local = [root for root in roots.values() if not is_s3(root)]
    if local:
        raise ConfigError(f"datasets {local} are local paths: trials on train workers read s3:// datasets only")
    # Kept per sweep and trial, so a redelivery to this machine resumes at the last finished epoch.
    work_dir = work_dir or Path(settings.storage.cache_dir).expanduser() / "sweep-trials" / (
        hashlib.sha1(out.encode()).hexdigest()[:12])
    tdir = work_dir / trial_id
    metrics = LocalTrials(spec, settings, roots)(trial, tdir)
    _upload_run(store, tdir / "run", trial_uri(out, trial_id, "run/"))
    return metrics, trial


#: What of a run directory is worth keeping in S3: the artifact, TensorBoard logs, epoch CSVs and history
#: (not the checkpoints and the resume backup, several times the artifact's size and useless once done).
KEPT = ("artifact", "logs")


def _upload_run(store: ObjectStore, run_dir: Path, uri: str) -> None:
    for name in KEPT:
        if (run_dir / name).is_dir():
            store.upload_tree(run_dir / name, f"{uri}{name}")
    for path in sorted(run_dir.glob("*")):
        if path.is_file() and path.suffix in (".csv", ".json"):
            store.upload_file(path, f"{uri}{path.name}")
