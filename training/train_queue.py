"""The ``train`` queue's messages: the sweep-trial task's registered name, its route, and where a
trial's answer lives in S3. Training's own (workers/ and producer/ know nothing of training).

The sender (:mod:`training.remote_sweep`) and the train worker (:mod:`training.trial_worker`) both
read this module; neither imports the other. The task's name is the worker's function's path, as
Celery would name it: ``training.trial_worker.train_trial``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from workers.messages import sender_app

if TYPE_CHECKING:
    from celery import Celery

    from vehicle_core.config import BrokerSettings

#: ``vehicle-train sweep --via celery``: one trial, trained by a train worker (training/trial_worker.py).
TRAIN_TRIAL_TASK = "training.trial_worker.train_trial"

#: A trial's answer in the sweep's ``s3://`` prefix: ``result.json`` when it trained, ``error.json`` when
#: it could not run (a bad setting, a missing dataset).
RESULT, ERROR = "result.json", "error.json"


def trial_uri(out: str, trial_id: str, name: str = "") -> str:
    """Where a trial's files live in the sweep's ``s3://`` prefix."""
    return f"{out.rstrip('/')}/trials/{trial_id}/{name}"


def train_routes(broker: BrokerSettings) -> dict[str, dict[str, str]]:
    """The train task's route: the ``broker.train_queue`` queue."""
    return {TRAIN_TRIAL_TASK: {"queue": broker.train_queue}}


def train_sender_app(broker: BrokerSettings) -> Celery:
    """The project's sending app (:func:`workers.messages.sender_app`) that also routes the train task."""
    app = sender_app(broker)
    app.conf.task_routes = {**app.conf.task_routes, **train_routes(broker)}
    return app
