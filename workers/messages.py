"""How work is sent: the tasks' registered names, their queues, and the chain per image (no ML import).

One image travels as ``chain(detect_crop.s(source), classify.s())``: the detect task's argument is a
:class:`~vehicle_core.results.SourceRef` as a dict, the classify task's a
:class:`~vehicle_core.messages.CropSet` message (both codecs live in ``vehicle_core.messages``). The
producer imports only this module (plus Celery itself) to enqueue work; it sends by task *name*, so
it never imports ``workers.tasks`` and the model code behind it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from celery import Celery

    from vehicle_core.config import BrokerSettings
    from vehicle_core.results import SourceRef

#: Registered names of the two tasks (workers/tasks.py registers them under these names).
DETECT_TASK = "workers.tasks.detect_crop"
CLASSIFY_TASK = "workers.tasks.classify"
#: ``vehicle-train crop`` on the detect workers: one chunk of a training dataset (workers/dataset_crops.py).
CROP_CHUNK_TASK = "workers.tasks.crop_dataset_chunk"


def task_routes(broker: BrokerSettings) -> dict[str, dict[str, str]]:
    """Which queue each task goes to: detect-side tasks (PyTorch) and classify (TensorFlow)."""
    detect = {"queue": broker.detect_queue}
    return {DETECT_TASK: detect, CROP_CHUNK_TASK: detect, CLASSIFY_TASK: {"queue": broker.classify_queue}}


def sender_app(broker: BrokerSettings) -> Celery:
    """A Celery app that only sends: broker URL and routes, no task modules, no models."""
    from celery import Celery

    app = Celery("vehicle-producer", broker=broker.url, backend=broker.result_backend, set_as_current=False)
    app.conf.task_routes = task_routes(broker)
    app.conf.broker_transport_options = {"visibility_timeout": broker.visibility_timeout_s}
    # Flower shows a task as "sent" (and its args) from the moment the producer enqueues it.
    app.conf.task_send_sent_event = True
    return app


def image_chain(app: Celery, source: SourceRef):
    """``chain(detect_crop.s(source), classify.s())``, built from task names so no task module is imported."""
    return app.signature(DETECT_TASK, args=[source.to_dict()]) | app.signature(CLASSIFY_TASK)


def enqueue_image(app: Celery, source: SourceRef) -> str:
    """Send one image down the detect -> classify chain; return the detect task's id.

    The queues come from ``app.conf.task_routes`` (detect and classify queues in the broker settings).
    """
    return image_chain(app, source).apply_async().parent.id
