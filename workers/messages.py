"""How work is sent: the tasks' registered names, their queues, and the chain per image (no ML import).

One image travels as ``chain(detect_crop.s(source), classify.s())``: the detect task's argument is a
:class:`~vehicle_core.results.SourceRef` as a dict, the classify task's a
:class:`~vehicle_core.messages.CropSet` message (both codecs live in ``vehicle_core.messages``). The
producer imports only this module (plus Celery itself) to enqueue work; it sends by task *name*, so
it never imports ``workers.tasks`` and the model code behind it.
"""

from __future__ import annotations

from collections.abc import Sequence
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


def enqueue_images(app: Celery, sources: Sequence[SourceRef], *, producer=None) -> list[str]:
    """Send many images down the chain in one Redis round trip; return the detect tasks' ids.

    The very messages :func:`enqueue_image` sends (``image_chain(...).apply_async``), published
    through kombu's ``Producer.batch()``: on the Redis transport the LPUSHes (and the sent events
    Flower reads) go out in one non-transactional pipeline when the batch closes. ``retry=False``:
    a broker failure raises at once, so the caller decides (the listener keeps its SQS message, a
    backfill stops and its checkpoint still points before this batch). ``producer``: a kombu producer
    to reuse across batches (``app.producer_pool.acquire()``); by default one is taken from the pool.
    """
    if not sources:
        return []
    if producer is None:
        with app.producer_or_acquire() as acquired:
            return enqueue_images(app, sources, producer=acquired)
    ids = []
    with producer.batch(max_size=2 * len(sources) + 2):  # two Redis commands per image: LPUSH + event
        for source in sources:
            # chain.apply_async() drops a ``producer`` argument (it acquires one from the pool), so the
            # chain is frozen (ids, root id: what chain.run does) and its first task sent with the
            # rest as its ``chain`` option: the same message, through this producer's batch.
            steps = image_chain(app, source)
            steps.freeze()
            detect, *rest = steps.tasks
            detect.apply_async(producer=producer, retry=False, chain=rest[::-1])
            ids.append(detect.id)
    return ids
