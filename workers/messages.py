"""How work is sent: the tasks' registered names, their queues, and the chain per image (no ML import).

One image travels as ``chain(detect_crop.s(source), classify.s())``: the detect task's argument is a
:class:`~vehicle_core.results.contract.SourceRef` as a dict, the classify task's a
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
    from vehicle_core.results.contract import SourceRef

#: Registered names of the two tasks (workers/tasks.py registers them under these names).
DETECT_TASK = "workers.tasks.detect_crop"
CLASSIFY_TASK = "workers.tasks.classify"
#: ``vehicle-train crop`` on the detect workers: one chunk of a training dataset (workers/dataset_crops.py).
CROP_CHUNK_TASK = "workers.tasks.crop_dataset_chunk"


def args_repr(args, maxsize: int = 1024) -> str | None:
    """What a task message shows as its arguments (its ``argsrepr`` header: Flower's *args* column,
    the worker's log line) when the argument is a CropSet message: the image, its detections and how
    many crops of what size. Celery's default is ``saferepr`` of the whole message, cut at 1,024
    characters: a kilobyte of base64 that told nobody anything and that each classify message carried
    to Redis twice (the queue's LPUSH, the consumer's unacked record). None (Celery's default) for
    anything else."""
    from vehicle_core.errors import MalformedMessageError
    from vehicle_core.results.contract import SourceRef

    try:
        (message,) = args
        crops = message["crops"]
        if not isinstance(crops, list) or not all(isinstance(crop, str) for crop in crops):
            return None
        summary = {"source": SourceRef.from_dict(message["source"]).uri,
                   "detections": [f"{d['label']} {float(d['score']):.2f}" for d in message["detections"]],
                   "crops": f"{len(crops)} JPEG, {sum(len(c) for c in crops)} base64 characters"}
    except (TypeError, ValueError, KeyError, MalformedMessageError):
        return None
    return short_repr((summary,), maxsize)


def short_repr(args: tuple, maxsize: int) -> str:
    """celery's ``saferepr`` of ``args`` (a task's ``argsrepr``), which is plain ``repr`` below its size
    limit, and 50x faster: every message sent pays it."""
    text = repr(args)
    if len(text) <= maxsize:
        return text
    from celery.utils.saferepr import saferepr

    return saferepr(args, maxsize)


#: kombu's Redis transport keeps one list per priority step of a queue (by default four: 0, 3, 6, 9)
#: and names all of them in every BRPOP, queue-depth probe (EXISTS, LLEN) and restore. Nothing here
#: sets a priority, so one step: every message lives in the queue's own key (where priority-0
#: messages always were, so older senders and workers agree), and each of those commands names one
#: key instead of four. Flower reads the same option for its queue lengths.
PRIORITY_STEPS = [0]


#: SQS's longest visibility timeout and long-poll wait (AWS limits; kombu passes them through).
SQS_MAX_VISIBILITY_S = 43200
#: A worker's long poll on an SQS queue. kombu also hides a requeued message (a batch given back on
#: shutdown or after its pool process died) for this long before it can be received again.
SQS_WAIT_S = 10


def transport_options(broker: BrokerSettings) -> dict:
    """The kombu transport options every app of the project shares (senders, workers, Flower)."""
    if broker.kind == "sqs":
        if broker.visibility_timeout_s > SQS_MAX_VISIBILITY_S:
            from vehicle_core.errors import ConfigError

            raise ConfigError(f"broker.visibility_timeout_s={broker.visibility_timeout_s} is over SQS's limit of "
                              f"{SQS_MAX_VISIBILITY_S} s (broker.url is an SQS broker)")
        # kombu creates each queue on first use with this VisibilityTimeout (an existing queue keeps its own).
        # polling_interval 0: after an empty long poll, poll again at once (kombu's default adds 1 s, which
        # held a worker that had just drained its queue for a second: 3.9 img/s instead of ~25 on the bench).
        return {"visibility_timeout": broker.visibility_timeout_s, "region": broker.region,
                "wait_time_seconds": SQS_WAIT_S, "polling_interval": 0}
    return {"visibility_timeout": broker.visibility_timeout_s, "priority_steps": list(PRIORITY_STEPS)}


def task_routes(broker: BrokerSettings) -> dict[str, dict[str, str]]:
    """Which queue each task goes to: detect-side tasks (PyTorch), classify (TensorFlow). (The train
    queue's task and route are training's: training/train_queue.py.)"""
    detect = {"queue": broker.detect_queue}
    return {DETECT_TASK: detect, CROP_CHUNK_TASK: detect, CLASSIFY_TASK: {"queue": broker.classify_queue}}


def sender_app(broker: BrokerSettings) -> Celery:
    """A Celery app that only sends: broker URL and routes, no task modules, no models."""
    from celery import Celery

    app = Celery("vehicle-producer", broker=broker.url, backend=broker.result_backend, set_as_current=False)
    app.conf.task_routes = task_routes(broker)
    app.conf.broker_transport_options = transport_options(broker)
    # Flower shows a task as "sent" (and its args) from the moment the producer enqueues it (Redis: SQS
    # carries no events).
    app.conf.task_send_sent_event = broker.kind == "redis"
    if broker.kind == "sqs":
        from workers import broker_sqs

        broker_sqs.install()
    else:  # the workers' Redis transport: a publish batch's LPUSHes to one queue are one LPUSH
        from workers import broker as redis_transport

        redis_transport.install()
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
    """Send many images down the chain, one Redis round trip for the lot; return the detect tasks' ids.

    Each message is the one :func:`enqueue_image` sends (same headers, properties, body and chained
    classify step; tests/producer/test_backfill_stream.py compares them field by field), built by
    :class:`ChainTemplate` from one message celery made, and published through kombu's publish
    batch (``channel.create_publish_batch``: the LPUSHes go out in one non-transactional pipeline).
    No retry: a broker failure raises at once and the caller decides (the listener keeps its SQS
    messages, a backfill stops with its checkpoint before this batch). What this path leaves out is
    celery's ``task-sent`` event (Flower then shows the task from ``received``, when a worker takes it):
    building it costs more than the message. ``producer``: a kombu producer to reuse across batches.
    """
    if not sources:
        return []
    if producer is None:
        with app.producer_or_acquire() as acquired:
            return enqueue_images(app, sources, producer=acquired)
    template = ChainTemplate.of(app)
    batch = producer.channel.create_publish_batch(max_size=len(sources) + 1)  # one LPUSH per image
    try:
        ids = [template.publish(batch, producer.channel, source) for source in sources]
        batch.flush()
    except BaseException:
        batch.discard()
        raise
    finally:
        batch.close()
    return ids


class ChainTemplate:
    """The detect message of one image chain, made once by celery (``app.amqp.create_task_message``,
    as ``send_task`` calls it) and then filled in per image: task id, root id, correlation id, the
    SourceRef argument and its repr, and the chained classify step's task id."""

    def __init__(self, app: Celery) -> None:
        from kombu.entity import maybe_delivery_mode
        from kombu.utils.uuid import uuid

        self.app = app
        route = app.amqp.router.route({}, DETECT_TASK)["queue"]
        self.queue = route.name
        # What kombu's Producer.publish puts there for celery's default (persistent): 2.
        self.delivery_mode = maybe_delivery_mode(route.exchange.delivery_mode or app.conf.task_default_delivery_mode)
        classify = app.signature(CLASSIFY_TASK)
        classify.freeze()
        self.classify = dict(classify)
        task_id = uuid()
        headers, properties, body, _ = app.amqp.create_task_message(
            task_id, DETECT_TASK, [], {}, reply_to=app.thread_oid, root_id=task_id,
            chain=[self.classify], create_sent_event=False, argsrepr="", kwargsrepr="{}")
        self.headers, self.properties, self.embed = headers, properties, body[2]
        self._uuid = uuid

    @classmethod
    def of(cls, app: Celery) -> ChainTemplate:
        """The app's template, made on first use (its routes and settings do not change afterwards)."""
        template = getattr(app, "_vp_chain_template", None)
        if template is None:
            template = app._vp_chain_template = cls(app)
        return template

    def publish(self, batch, channel, source: SourceRef) -> str:
        """Buffer one image's message in ``batch``; return its detect task id."""
        from kombu.serialization import dumps

        task_id, args = self._uuid(), [source.to_dict()]
        headers = {**self.headers, "id": task_id, "root_id": task_id, "argsrepr": self._argsrepr(args)}
        options = {**self.classify["options"], "task_id": self._uuid()}
        embed = {**self.embed, "chain": [{**self.classify, "options": options}]}
        content_type, encoding, data = dumps((args, {}, embed), serializer="json")
        properties = {**self.properties, "correlation_id": task_id, "delivery_mode": self.delivery_mode}
        message = channel.prepare_message(data, None, content_type, encoding, headers, properties)
        batch.publish(message, exchange="", routing_key=self.queue)
        return task_id

    def _argsrepr(self, args: list) -> str:
        return short_repr(tuple(args), self.app.amqp.argsrepr_maxsize)
