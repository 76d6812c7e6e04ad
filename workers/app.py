"""The Celery application: Redis (or SQS) broker, two queues, reliability options, events for Flower.

Run the two kinds of worker (each with its own model framework, so each its own process pool):

    celery -A workers.app worker -Q detect   -c 1 -n detect@%h    # PyTorch: fetch, decode, detect, crop
    celery -A workers.app worker -Q classify -c 1 -n classify@%h --prefetch-multiplier=16
                                                                  # TensorFlow: classify, write the result

The classify worker batches (celery-batches): its prefetch must reach ``worker.batch_flush_every``
or no batch grows past the prefetch count (``workers.batching.prefetch_for``). It has to be given on
the command line: Celery reads the CLI default before any signal could raise it.

and Flower beside them: ``celery -A workers.app flower --basic-auth=user:password``.
Every option comes from ``vehicle_core`` settings (broker and worker sections, ``VP_*`` variables).

Importing this module builds nothing and reads no settings: ``app`` is built by :func:`create_app` on
first access (``workers.app.app``, ``from workers.app import app``, or Celery's ``-A workers.app``,
which reads the module's ``app`` attribute), then kept. The tasks join it when it is finalized
(``workers.tasks``, which ``conf.include`` names: the worker imports it at start).
"""

from __future__ import annotations

from celery import Celery

from vehicle_core.config import Settings, load_settings
from vehicle_core.lazy import module_getattr
from workers import broker as redis_transport
from workers.messages import task_routes, transport_options


def celery_config(settings: Settings) -> dict:
    """Celery's settings, derived from ours; each reliability choice says what it costs."""
    broker, worker = settings.broker, settings.worker
    return {
        "broker_url": broker.url,
        "result_backend": broker.result_backend,  # None: results are documents in S3, not Redis keys
        "task_ignore_result": broker.result_backend is None,
        "task_serializer": "json",
        "accept_content": ["json"],
        # Ack a message only after its task returned. A worker that dies mid-task leaves the message
        # unacked, so it is delivered again: a task may run twice, hence idempotent result writes.
        "task_acks_late": True,
        # With acks_late, a task whose pool process was killed (OOM, SIGKILL) is requeued instead of
        # being acked as failed. An image that always kills the process would come back forever:
        # the crash ledger (workers/crash_ledger.py) gives it a worker_crashed result after
        # worker.max_deliveries deaths.
        "task_reject_on_worker_lost": True,
        # Messages reserved per process beyond the one running. 1 keeps long GPU tasks from piling up
        # on one worker while others idle; a larger value hides broker latency but delays redelivery
        # of everything reserved when that worker dies (after visibility_timeout).
        "worker_prefetch_multiplier": worker.prefetch_multiplier,
        # A pool process that grew past this is replaced once its task is done (Celery checks after
        # each task; a runaway allocation inside one is the decoder's byte budget's job, images.py).
        "worker_max_memory_per_child": worker.max_memory_per_child_mb * 1024 or None,  # KiB
        # SQS: acks are deletes; a dead worker's messages come back when their visibility timeout ends
        # (no restore sweep to tune); one queue per Celery queue (workers/broker_sqs.py).
        "broker_transport_options": transport_options(broker) if broker.kind == "sqs" else {
            # Redis has no acks: a reserved, unacked message is restored to its queue after this many
            # seconds (visibility_timeout). Too short and a slow task runs twice; too long and a crashed
            # worker's tasks wait. One priority step per queue (workers.messages.PRIORITY_STEPS).
            **transport_options(broker),
            # Workers sweep for such expired messages every restore_interval_s (throttle 1: every sweep
            # scans). This is what brings back the tasks of a worker that was SIGKILLed or lost power.
            "unacked_restore_interval": broker.restore_interval_s,
            "unacked_restore_throttle": 1,
        },
        "broker_connection_retry_on_startup": True,
        "task_routes": task_routes(broker),
        "task_default_queue": broker.detect_queue,
        # Flower's task list (and `celery events`) needs task events; "sent" events show tasks still
        # queued. They cost about 5 Redis PUBLISHes per image (docs/scale.md), so they are off unless
        # worker.task_events: Flower still lists the workers (heartbeats are sent either way) and the
        # queue lengths (it asks the broker), and vehicle-flower keeps Flower from switching them on.
        "worker_send_task_events": worker.task_events and broker.kind == "redis",
        "task_send_sent_event": worker.task_events and broker.kind == "redis",
        # Remote control (ping, inspect, Flower's worker pages) needs a fanout exchange, which kombu's SQS
        # transport has not: on SQS a worker would only poll a pidbox queue of its own for nothing.
        "worker_enable_remote_control": broker.kind == "redis",
        # Flower shows args and results; crops travel as base64, so keep the reprs short.
        "task_compression": None,
        "worker_hijack_root_logger": False,
    }


def create_app(settings: Settings | None = None) -> Celery:
    """Build the app; ``workers.tasks`` (``conf.include``) registers its tasks on it when it is finalized."""
    settings = settings or load_settings()
    if settings.broker.kind == "sqs":
        from workers import broker_sqs

        settings.broker.state_redis_url  # noqa: B018 - refuse to start without the crash ledger's Redis
        broker_sqs.install()  # SQS's receive count says which messages were delivered before
    else:
        # Redis: kombu's transport with its loss window closed (a message taken off its queue by BRPOP
        # is held and recorded once the broker is back, never dropped; workers/broker.py).
        redis_transport.install()
    app = Celery("vehicle-pipeline", set_as_current=True)
    app.config_from_object(celery_config(settings))
    app.conf.include = ["workers.tasks"]
    app.vehicle_settings = settings  # read by workers.tasks (and its holders, workers.holders)
    return app


#: The app, built on first access (PEP 562 ``__getattr__`` below), never at import.
app: Celery
__getattr__ = module_getattr(__name__, globals(), {"app": create_app})
