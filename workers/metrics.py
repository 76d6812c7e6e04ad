"""Prometheus metrics of the workers, and the one ``/metrics`` endpoint per worker node.

What the tasks record (through the ``observe_*`` functions, so tasks stay free of metric names;
``result_writer.write_if_current`` calls :func:`observe_result` for every result it writes):

* ``vp_stage_seconds{stage}`` — wall time of one model call (a batch): detect, classify;
* ``vp_images_total{stage}`` and ``vp_crops_total{stage}`` — images and vehicle crops, separately
  (``vp_batch_images`` / ``vp_batch_crops``: per model call);
* ``vp_results_total{status, error_code, detector, classifier, classifier_version}`` — result
  documents written, by status and error code, with the models that produced them;
* ``vp_upload_to_result_seconds{classifier_version}`` — from the S3 event's time (carried in
  ``SourceRef.event_time``) to the result; backfilled images carry none and are not counted;
* ``vp_model_info{role, name, version}`` — 1 for the models of the last result each live process
  wrote (so a roll-out shows as the version switching);
* ``vp_queue_depth{queue}`` — messages waiting in the detect and classify queues, read from the
  broker (Redis lists, or SQS's ApproximateNumberOfMessages) at scrape time by the node's exporter.

Multiprocess mode: with ``PROMETHEUS_MULTIPROC_DIR`` set (before the worker starts: prometheus_client
reads it at import), each pool process writes its samples to files there, and the worker's *main*
process serves them all, summed, on ``worker.metrics_port`` (:func:`serve_node`, started by the
``worker_init`` signal, :func:`connect_worker_signals`). Without it, :func:`serve` keeps the old
one-port-per-process mode.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily

from vehicle_core.results.contract import ImageResult, ModelInfo, SourceRef

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
LATENCY_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600)

# Task outcomes and wall time, as the tasks record them (observe_* below: per stage and per result).
TASKS = Counter("vp_tasks_total", "Tasks finished, by task and outcome", ["task", "outcome"])
SECONDS = Histogram("vp_task_seconds", "Wall time of a task", ["task"])

STAGE_SECONDS = Histogram("vp_stage_seconds", "Wall time of one model call (a batch), by stage", ["stage"],
                          buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300))
IMAGES = Counter("vp_images", "Images through a stage", ["stage"])
CROPS = Counter("vp_crops", "Vehicle crops cut (detect) or classified (classify)", ["stage"])
BATCH_IMAGES = Histogram("vp_batch_images", "Images per model call", ["stage"], buckets=SIZE_BUCKETS)
BATCH_CROPS = Histogram("vp_batch_crops", "Crops per model call", ["stage"], buckets=SIZE_BUCKETS)
RESULTS = Counter("vp_results", "Result documents, by status and error code, with the models that produced them",
                  ["status", "error_code", "detector", "classifier", "classifier_version"])
LATENCY = Histogram("vp_upload_to_result_seconds", "From the S3 upload event to the result document",
                    ["classifier_version"], buckets=LATENCY_BUCKETS)
MODEL = Gauge("vp_model_info", "1 for the model of each role in the last result a live worker process wrote",
              ["role", "name", "version"],
              multiprocess_mode="livemax")

MODEL_READY = Gauge("vp_model_ready", "1 when this worker process's model for a stage loaded; 0 while it cannot "
                    "(the worker then stops consuming that queue and retries with backoff)", ["stage"],
                    multiprocess_mode="livemin")
MODEL_RELOAD_FAILURES = Counter("vp_model_reload_failures_total", "New model versions a worker refused or could "
                                "not load (it kept serving the last good one)", ["role"])
DEAD_LETTERED = Counter("vp_dead_lettered_total", "Task messages that could not be parsed, kept in the dead list",
                        ["task"])

_started = False
_serving: dict[str, ModelInfo] = {}


def observe_batch(stage: str, images: int, crops: int, seconds: float) -> None:
    """One model call of ``stage`` (detect or classify) over ``images`` images and ``crops`` crops."""
    STAGE_SECONDS.labels(stage).observe(seconds)
    IMAGES.labels(stage).inc(images)
    CROPS.labels(stage).inc(crops)
    BATCH_IMAGES.labels(stage).observe(images)
    BATCH_CROPS.labels(stage).observe(crops)


def observe_result(result: ImageResult) -> None:
    """A result document written: count it by status, error code and models; its upload latency."""
    models = result.models
    classifier = models.get("classifier")
    error_code = (result.error or {}).get("code", "") if result.error else ""
    RESULTS.labels(result.status, error_code, _name(models.get("detector")), _name(classifier),
                   classifier.version if classifier else "").inc()
    observe_latency(result.source, result.processed_at, classifier.version if classifier else "")
    for role, info in models.items():
        observe_model(role, info)


def observe_latency(source: SourceRef, processed_at: str | None = None, classifier_version: str = "") -> float | None:
    """Record upload -> result seconds when ``source`` carries its event time; return them (or None)."""
    start, end = _parse_time(source.event_time), _parse_time(processed_at) if processed_at else _now()
    if start is None or end is None:
        return None
    seconds = max(0.0, (end - start).total_seconds())  # clocks of S3 and the worker may differ a little
    LATENCY.labels(classifier_version).observe(seconds)
    return seconds


def observe_model(role: str, info: ModelInfo) -> None:
    """This process now serves ``info`` as ``role`` (detector, classifier): the previous one goes to 0."""
    old = _serving.get(role)
    if old == info:
        return
    if old is not None:
        MODEL.labels(role, old.name, old.version).set(0)
    MODEL.labels(role, info.name, info.version).set(1)
    _serving[role] = info


def _name(info: ModelInfo | None) -> str:
    return info.name if info else ""


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.UTC)


def _parse_time(text: str | None) -> _dt.datetime | None:
    if not text:
        return None
    try:
        value = _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=_dt.UTC)


# --- queue depth -------------------------------------------------------------------------------

# kombu's Redis transport splits a queue by priority into lists ``queue`` and ``queue\x06\x16<n>``
# (the same rule as producer/queue_depth.py, which workers may not import).
_PRIORITY_LISTS = ("", "\x06\x163", "\x06\x166", "\x06\x169")


class QueueDepthCollector:
    """``vp_queue_depth{queue}``: messages waiting in each Celery queue, read when scraped:
    ``read()`` returns ``{queue: depth}`` (:func:`redis_depths`, :func:`sqs_depths`)."""

    def __init__(self, read) -> None:
        self.read = read

    def collect(self):
        family = GaugeMetricFamily("vp_queue_depth", "Messages waiting in a Celery queue (not yet reserved)",
                                   labels=["queue"])
        try:
            depths = self.read()
        except Exception as exc:  # noqa: BLE001 - a scrape must not fail because the broker is away
            log.warning("cannot read queue depths: %r", exc)
            return
        for queue, depth in depths.items():
            family.add_metric([queue], float(depth))
        yield family


def redis_depths(redis_client, queues: Iterable[str]):
    """Depths from Redis: the lists of every priority step of each queue, in one round trip."""
    queues = list(queues)

    def read() -> dict[str, int]:
        pipe = redis_client.pipeline()
        for queue in queues:
            for suffix in _PRIORITY_LISTS:
                pipe.llen(queue + suffix)
        lengths = pipe.execute()
        step = len(_PRIORITY_LISTS)
        return {queue: sum(lengths[i * step:(i + 1) * step]) for i, queue in enumerate(queues)}

    return read


def sqs_depths(queues: Iterable[str], region: str):
    """Depths from SQS: each queue's ``ApproximateNumberOfMessages`` (a queue not created yet: 0)."""
    import boto3

    client, queues, urls = boto3.client("sqs", region_name=region), list(queues), {}

    def read() -> dict[str, int]:
        out = {}
        for queue in queues:
            if queue not in urls:
                try:
                    urls[queue] = client.get_queue_url(QueueName=queue)["QueueUrl"]
                except client.exceptions.QueueDoesNotExist:
                    out[queue] = 0
                    continue
            attributes = client.get_queue_attributes(QueueUrl=urls[queue],
                                                     AttributeNames=["ApproximateNumberOfMessages"])
            out[queue] = int(attributes["Attributes"]["ApproximateNumberOfMessages"])
        return out

    return read


# --- serving -----------------------------------------------------------------------------------

def multiprocess_dir() -> Path | None:
    """The multiprocess directory when multiprocess mode is on, else None."""
    value = os.environ.get(MULTIPROC_ENV)
    return Path(value) if value else None


def node_registry(read_depths=None) -> CollectorRegistry:
    """What a node's ``/metrics`` serves: every process's samples (multiprocess mode) or this one's,
    plus the queue depths when ``read_depths`` is given (:class:`QueueDepthCollector`)."""
    if multiprocess_dir() is not None:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = CollectorRegistry()
        registry.register(_Forward(REGISTRY))
    if read_depths is not None:
        registry.register(QueueDepthCollector(read_depths))
    return registry


class _Forward:
    """The default registry's metrics, served through another registry (with the queue depths)."""

    def __init__(self, source: CollectorRegistry) -> None:
        self.source = source

    def collect(self):
        return self.source.collect()


def clear_multiprocess_dir() -> None:
    """Remove the sample files of an earlier run (prometheus_client's rule: wipe it at start)."""
    folder = multiprocess_dir()
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("*.db"):
            stale.unlink(missing_ok=True)


def serve_node(port: int, broker_url: str, queues: Iterable[str], addr: str = "0.0.0.0", *,
               region: str = "us-east-1") -> CollectorRegistry | None:
    """The worker node's one ``/metrics`` on ``port`` (0: none), served by the calling (main) process;
    queue depths from the broker at ``broker_url`` (Redis, or SQS in ``region``)."""
    global _started
    if not port or _started:
        return None
    from vehicle_core.config import broker_kind

    if broker_kind(broker_url) == "sqs":
        read = sqs_depths(queues, region)
    else:
        import redis

        read = redis_depths(redis.Redis.from_url(broker_url), queues)
    registry = node_registry(read)
    start_http_server(port, addr=addr, registry=registry)  # scraped from outside the container
    _started = True
    log.info("prometheus metrics of this node on :%d/metrics (multiprocess: %s)", port, multiprocess_dir())
    return registry


def serve(port: int) -> None:
    """Per pool process: start a /metrics server (no-op for port 0, and in multiprocess mode, where
    the main process serves the node's one endpoint)."""
    global _started
    if port and not _started and multiprocess_dir() is None:
        start_http_server(port, addr="0.0.0.0")  # scraped from outside the container
        _started = True
        log.info("prometheus metrics on :%d/metrics", port)


def on_worker_init(settings) -> None:
    """Main worker process, before the pool forks: in multiprocess mode, wipe old samples and serve."""
    if multiprocess_dir() is None:
        return
    clear_multiprocess_dir()
    broker = settings.broker
    serve_node(settings.worker.metrics_port, broker.url, (broker.detect_queue, broker.classify_queue),
               region=broker.region)


def on_process_exit(pid: int) -> None:
    """A pool process ended: its live gauges (vp_model_info) stop counting."""
    if multiprocess_dir() is not None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


def connect_worker_signals() -> None:
    """Connect the node exporter (``worker_init``) and the live-gauge cleanup (``worker_process_shutdown``)
    to Celery's signals, once per process: ``workers.tasks.register`` calls it when the tasks join the
    worker's app, before ``worker_init`` is sent (nothing is connected at import)."""
    from celery.signals import worker_init, worker_process_shutdown

    def _node(sender=None, **_):
        on_worker_init(sender.app.vehicle_settings)

    def _dead(pid=None, **_):
        on_process_exit(pid or os.getpid())

    worker_init.connect(_node, weak=False, dispatch_uid="workers.metrics.node")
    worker_process_shutdown.connect(_dead, weak=False, dispatch_uid="workers.metrics.dead")
