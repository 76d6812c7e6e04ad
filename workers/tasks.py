"""The Celery tasks: thin wrappers that decode a message, call vehicle_core and store the result.

Per image: ``chain(detect_crop.s(msg), classify.s())`` (built by ``workers.messages.enqueue_image``):

* ``detect_crop`` (queue ``detect``, PyTorch, a celery-batches task): buffers up to
  ``detector.batch_size`` images, skips those whose result already answers their ETag, fetches and
  decodes the rest concurrently, detects them in one forward pass and hands each
  :class:`CropSet` message on to the next step of its chain;
* ``classify`` (queue ``classify``, TensorFlow, a celery-batches task): buffers up to
  ``worker.batch_flush_every`` CropSets (or ``batch_flush_interval_s``), runs :class:`ClassifyStage`
  over all their crops at once, and writes each ``results/<key>.json`` unless a newer upload
  replaced the source meanwhile. Batch sizes go to the log, to Prometheus (``vp_batch_images``, ``vp_batch_crops``) and,
  per request, to Flower's result column. See workers/batching.py for what celery-batches changes.

``crop_dataset_chunk`` (queue ``detect``) serves ``vehicle-train crop``: training crops cut by the
detector in service (workers/dataset_crops.py).

An image whose result already answers its ETag ends the chain at ``detect_crop`` (nothing is sent to
``classify``). Bad input never retries: it travels as an error CropSet and becomes an ``error``
result. Transient storage errors retry with exponential backoff; once retries are exhausted an error
result is written (``result_writer.write_error_result``) so the key is not silently lost.

Importing this module builds no app and reads no settings: the tasks join the worker's app
(``workers.app.app``, whose ``conf.include`` names this module) when that app is finalized, with
options from its settings (:func:`register`); a worker imports this module, then finalizes its app.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from celery._state import _get_active_apps, connect_on_app_finalize
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_init, worker_process_init
from kombu.exceptions import OperationalError

from vehicle_core import threads
from vehicle_core.config import Settings
from vehicle_core.errors import (
    ConfigError,
    InvalidInputError,
    OutOfMemoryError,
    ProcessingTimeoutError,
    TransientError,
    VehiclePipelineError,
    WorkerCrashedError,
    is_out_of_memory,
)
from vehicle_core.lazy import module_getattr
from vehicle_core.messages import CropSet
from vehicle_core.results.contract import ImageResult, SourceRef
from workers import batching, dead_letters, logs, metrics, result_writer
from workers.broker import along_with_publish
from workers.crash_ledger import Clearing
from workers.holders import Holders
from workers.messages import CLASSIFY_TASK, CROP_CHUNK_TASK, DETECT_TASK

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger(__name__)

#: What the tasks run with, bound by :func:`register` to the first app the tasks join (the worker's,
#: ``workers.app.app``), never at import. Read before that, they build and finalize that app.
settings: Settings
holders: Holders
RETRY_OPTIONS: dict[str, Any]


def retry_options(settings: Settings) -> dict[str, Any]:
    """Celery's retry options of the tasks, from the worker settings."""
    return {
        # Storage blips, and the broker going away while a task hands its result on (kombu OperationalError).
        "autoretry_for": (TransientError, ConnectionError, TimeoutError, OperationalError),
        "dont_autoretry_for": (InvalidInputError,),
        "max_retries": settings.worker.max_retries,
        "retry_backoff": True,  # 1 s, 2 s, 4 s, ... between attempts
        "retry_backoff_max": settings.worker.retry_backoff_max_s,
        "retry_jitter": True,  # spread retries of many tasks failing together
    }


def register(app: Celery) -> None:
    """Register the three tasks on ``app``, their options from its settings (``app.vehicle_settings``).

    Called for every app whose ``conf.include`` names this module when that app is finalized (a
    worker imports the included modules, then finalizes its app, then sends ``worker_init``), and
    for such an app already finalized when this module is imported. The first such app also binds
    this module's ``settings`` and ``holders`` and connects the worker's signal hooks (threads,
    per-process reset, the metrics node, log formats).
    """
    global settings, holders, RETRY_OPTIONS
    if __name__ not in (app.conf.include or ()) or DETECT_TASK in app.tasks:
        return
    s: Settings = app.vehicle_settings
    if "settings" not in globals():
        settings, holders, RETRY_OPTIONS = s, Holders(s), retry_options(s)
        worker_init.connect(_threads, weak=False, dispatch_uid="workers.tasks._threads")
        worker_process_init.connect(_after_fork, weak=False, dispatch_uid="workers.tasks._after_fork")
        metrics.connect_worker_signals()
        logs.connect_worker_signals(settings)
    batches = {"bind": True, "base": batching.RequeueingBatches, "acks_late": True, "shared": False,
               "flush_interval": s.worker.batch_flush_interval_s, "time_limit_s": s.worker.task_time_limit_s,
               "pause_max_s": s.worker.model_retry_max_s}
    app.task(name=DETECT_TASK, flush_every=s.detector.batch_size, **batches)(detect_crop)
    app.task(bind=True, name=CROP_CHUNK_TASK, shared=False, **retry_options(s))(crop_dataset_chunk)
    app.task(name=CLASSIFY_TASK, flush_every=s.worker.batch_flush_every, **batches)(classify)


def _worker_app_attribute(name: str):
    def build() -> Any:
        from workers.app import app  # the app does not import this module: it names it in conf.include

        app.finalize(auto=True)  # registers the tasks (and binds ``name``), see register()
        register(app)  # in case the app was finalized before this module was imported
        return globals()[name]

    return build


__getattr__ = module_getattr(__name__, globals(), {name: _worker_app_attribute(name)
                                                   for name in ("settings", "holders", "RETRY_OPTIONS")})


def _threads(sender=None, **_: Any) -> None:
    # worker_init, in the parent before forking: each pool process sizes its frameworks' thread pools so
    # that several processes on the same cores do not oversubscribe them (vehicle_core/threads.py).
    threads.configure(settings.worker, processes=getattr(sender, "concurrency", 1) or 1)


def _after_fork(**_: Any) -> None:
    # worker_process_init: a forked child must not reuse the parent's sockets (S3 connection pool) or models.
    holders.reset()
    metrics.serve(settings.worker.metrics_port)
    threads.apply_loaded()


def detect_crop(self, requests) -> dict[str, Any]:
    """Fetch, decode, detect and crop a batch of images (one forward pass); hand each CropSet on.

    Up to ``detector.batch_size`` queued images share a forward pass; their S3 reads (and decoding)
    run concurrently. Each request keeps its own outcome: an answered image ends its chain, a bad one
    travels on as an error CropSet, a transient failure retries that image only. Requests whose
    process died before run alone (workers/crash_ledger.py), and are given up after
    ``worker.max_deliveries`` crashes.
    """
    return _run_batch(self, requests, "detect", SourceRef.from_dict, lambda source: source, _detect_group,
                      load=holders.detect.get)


def _detect_group(task, group: list, done: list, requeue: list[str], clearing: Clearing) -> None:
    stage = holders.detect.get()
    prepared, waiting = [], []
    for (request, source), outcome in zip(group, holders.fetchers.get().map(_fetch, group), strict=True):
        if outcome == "answered":
            log.info("skip %s etag=%s: result exists", source.uri, source.etag)
            metrics.TASKS.labels(task.name, "skipped").inc()
            done.append((request, {"skipped": "done", "key": source.key}))
        elif isinstance(outcome, Exception):  # the system's fault: this image alone comes back later
            if _retry(task, request, source, outcome) == batching.REQUEUE:
                requeue.append(request.id)
        else:
            prepared.append(outcome)
            waiting.append(request)
    if not prepared:
        return
    started = time.perf_counter()
    try:
        crop_sets = stage.detect(prepared)
    except Exception as exc:  # noqa: BLE001 - out of memory, a time limit, a bug: the system's fault, not these images'
        exc = system_fault(exc, "detecting the batch")
        log.error("detect batch of %d failed (%s): each image is retried later", len(prepared), exc.message)
        for request, (crop_set, _) in zip(waiting, prepared, strict=True):
            if _retry(task, request, crop_set.source, exc) == batching.REQUEUE:
                requeue.append(request.id)
        return
    metrics.observe_batch("detect", images=len(prepared), crops=sum(len(cs.crops) for cs in crop_sets),
                          seconds=time.perf_counter() - started)
    log.info("detect batch: %d images", len(prepared))
    messages, sending = {}, []
    for request, crop_set in zip(waiting, crop_sets, strict=True):
        message = _fit_to_broker(crop_set)
        if message is None:  # too large for the broker even with smaller crops: a setting's fault, it waits
            exc = ConfigError(f"the crops of {crop_set.source.uri} do not fit in one SQS message: lower "
                              "detector.max_vehicles or crop.size")
            log.error("%s", exc.message)
            if _retry(task, request, crop_set.source, exc) == batching.REQUEUE:
                requeue.append(request.id)
            continue
        messages[request.id] = message
        sending.append((request, crop_set))
    # The batch's in-flight marks are cleared in the hand-on's write when the ledger is the broker's Redis:
    # nothing after it can die of these images (workers/crash_ledger.py; a round trip per batch less).
    with along_with_publish(clearing):
        refused = batching.hand_on_all(task.app, [(request, messages[request.id]) for request, _ in sending])
    for request, crop_set in sending:
        metrics.TASKS.labels(task.name, "error" if crop_set.error else "ok").inc()
        if request.id in refused:  # the broker refused the next step: do it all again later
            log.error("could not hand %s on to classify (%r): requeueing it", crop_set.source.uri, refused[request.id])
            requeue.append(request.id)
            continue
        done.append((request, {"key": crop_set.source.key, "vehicles": len(crop_set.crops),
                               "error": crop_set.error, "batch_images": len(prepared)}))


def _fit_to_broker(crop_set) -> dict | None:
    """The CropSet's message; on an SQS broker, one that fits in an SQS message (workers/broker_sqs.py),
    or None when none does."""
    if settings.broker.kind != "sqs":
        return crop_set.to_message()
    from workers.broker_sqs import fit_crop_set

    return fit_crop_set(crop_set)


def _fetch(item: tuple[Any, SourceRef]):
    """In a fetcher thread: "answered", a transient exception, or ``(CropSet, Decoded | None)``.

    Only a message that may be a repeat HEADs its result first (with conditional writes, a first
    delivery learns that at its PUT: workers/result_writer.py)."""
    request, source = item
    store = holders.store.get()
    try:
        answered = may_repeat(request, source, settings.results) and \
            result_writer.is_answered(store, source, settings.results)
    except InvalidInputError as exc:  # the *result* refused or rejected: a setting or a policy, never the image
        return ConfigError(f"cannot read the result of {source.uri} ({exc.code}: {exc.message}); the workers "
                           "need s3:GetObject on the results (docs/iam.md)")
    except (TransientError, ConnectionError, TimeoutError) as exc:
        return exc
    if answered:
        return "answered"
    try:
        data, info = store.get(source.uri, max_bytes=settings.images.max_bytes)
    except InvalidInputError as exc:  # gone, too large, refused: permanent, becomes an error result
        return CropSet(source=source, error=exc.to_dict(), models={"detector": holders.detect.get().detector.info}), None
    except (VehiclePipelineError, ConnectionError, TimeoutError) as exc:  # storage down, or a bug of ours
        return exc
    # Describe the bytes actually read: if the object changed since the event, its ETag tells.
    read = replace(source, etag=info.etag or source.etag, version_id=info.version_id or source.version_id,
                   size=info.size)
    return holders.detect.get().prepare(data, read)


def may_repeat(request, source: SourceRef, results) -> bool:
    """Whether to HEAD the result before work: False only for the first delivery of the first attempt
    of an S3 event's message (a new upload; a duplicate event learns it at its conditional PUT). A
    message not from an event (backfill, reconcile: they may name images already answered), one
    redelivered by the broker (a process or connection lost, a requeue) or re-sent for a retry is
    checked; so is every message when conditional writes are off."""
    return not results.conditional_writes or source.event_time is None or bool(batching.attempt_of(request)) \
        or batching.redelivered(request)


def crop_dataset_chunk(self, examples: list[dict[str, str]], dst_root: str, ground_truth: dict | None,
                       part_uri: str) -> dict[str, Any]:
    """One chunk of ``vehicle-train crop`` (see workers/dataset_crops.py), cut with this worker's detector."""
    from workers.dataset_crops import run_chunk

    stage = holders.detect.get() if ground_truth is None else None
    with metrics.SECONDS.labels(self.name).time():
        summary = run_chunk(examples, dst_root, ground_truth, part_uri, settings=settings, stage=stage,
                            worker=self.request.hostname)
    metrics.TASKS.labels(self.name, "ok").inc()
    return summary


def classify(self, requests) -> dict[str, Any]:
    """Classify the crops of a batch of images in shared forward passes; write each image's result.

    Each request carries one CropSet message (chained from ``detect_crop``). Writes are idempotent
    and never replace a newer upload's result (see workers/result_writer.py). Requests whose process
    died before are classified one at a time (workers/crash_ledger.py), and given up after
    ``worker.max_deliveries`` crashes. Returns which requests to requeue instead of ack.
    """
    return _run_batch(self, requests, "classify", CropSet.from_message, lambda crop_set: crop_set.source,
                      _classify_group, load=holders.classify.get)


def _run_batch(task, requests, stage: str, parse, source_of, run_group, *, load) -> dict[str, Any]:
    """What both batched tasks do around their work: parse each request, give up on those that
    killed ``worker.max_deliveries`` processes, run the rest in crash-aware groups (marked in flight
    as ``<stage>:<id>``), report per request, and say which requests to requeue."""
    started = time.perf_counter()
    todo, done = _parse_requests(task, requests, parse)
    requeue: list[str] = []
    try:
        # The model first, outside the in-flight window: a model that cannot load (or kills the process
        # loading it) is the system's fault, never counted against these images.
        load()
    except Exception as exc:  # noqa: BLE001 - any failure to load: the messages wait for a working model
        metrics.MODEL_READY.labels(stage).set(0)
        fault = system_fault(exc, f"loading the {stage} model")
        log.error("%s model unavailable, %d messages go back to the queue and this worker stops consuming it "
                  "for a while: %s", stage, len(todo), fault.message)
        queue = settings.broker.detect_queue if stage == "detect" else settings.broker.classify_queue
        return {batching.REQUEUE: [request.id for request, _ in todo], batching.PAUSE: fault.message,
                batching.QUEUE: queue, "results": [summary for _, summary in done]}
    metrics.MODEL_READY.labels(stage).set(1)
    ledger, store = holders.ledger.get(), holders.store.get()
    given_up, groups = ledger.triage(todo, key=lambda item: f"{stage}:{item[0].id}",
                                     redelivered=lambda item: batching.redelivered(item[0]))
    for (request, item), crashes in given_up:
        done.append((request, _give_up_crashed(store, source_of(item), crashes)))
        ledger.forget([f"{stage}:{request.id}"])
    for group in groups:
        with ledger.in_flight([f"{stage}:{request.id}" for request, _ in group]) as clearing:
            try:
                run_group(task, group, done, requeue, clearing)
            except Exception as exc:  # noqa: BLE001 - past the group's own handlers (S3, broker, a bug): the
                # system's fault. Caught inside the window, so the marks clear: not a death of these images.
                fault = system_fault(exc, f"the {stage} batch")
                log.error("%s batch of %d failed (%s): retrying each later", stage, len(group), fault.message)
                answered = {request.id for request, _ in done}
                for request, item in group:
                    if request.id not in answered and request.id not in requeue and \
                            _retry(task, request, source_of(item), fault) == batching.REQUEUE:
                        requeue.append(request.id)
    runtime = time.perf_counter() - started
    metrics.SECONDS.labels(task.name).observe(runtime)
    batching.report(task, done, runtime=runtime)
    return {batching.REQUEUE: requeue, "results": [summary for _, summary in done]}


def system_fault(exc: BaseException, doing: str) -> VehiclePipelineError:
    """``exc`` as one of the project's retriable errors (none of them is ever an image's final result)."""
    if isinstance(exc, VehiclePipelineError) and not exc.final:
        return exc
    if isinstance(exc, SoftTimeLimitExceeded):
        return ProcessingTimeoutError(f"{doing} outlasted worker.task_time_limit_s")
    if is_out_of_memory(exc):
        return OutOfMemoryError(f"out of memory while {doing}: {exc!s:.200}")
    if isinstance(exc, ConnectionError | TimeoutError):
        return TransientError(f"{doing}: {exc!r:.200}")
    return VehiclePipelineError(f"{doing} failed: {type(exc).__name__}: {exc!s:.200}")  # code "internal"


def _classify_group(task, group: list, done: list, requeue: list[str], _clearing: Clearing) -> None:
    started = time.perf_counter()
    try:
        results = holders.classify.get().run([crop_set for _, crop_set in group])
    except Exception as exc:  # noqa: BLE001 - the whole group failed: re-send each (model, timeout, memory, bug)
        exc = system_fault(exc, "classifying the batch")
        for request, crop_set in group:
            if _retry(task, request, crop_set.source, exc) == batching.REQUEUE:
                requeue.append(request.id)
        return
    crops = sum(len(cs.crops) for _, cs in group)
    metrics.observe_batch("classify", images=len(group), crops=crops, seconds=time.perf_counter() - started)
    log.info("classify batch: %d images, %d crops, %.0f ms", len(group), crops, 1000 * (time.perf_counter() - started))
    for (request, _), result in zip(group, results, strict=True):
        summary = _write(task, request, result, requeue)
        if summary:  # Flower's result column shows the batch each image was classified in
            done.append((request, {**summary, "batch_images": len(group), "batch_crops": crops}))


def _give_up_crashed(store, source: SourceRef, crashes: int) -> dict[str, Any]:
    error = WorkerCrashedError(f"worker processes died {crashes} times while working on this image "
                               f"(worker.max_deliveries = {settings.worker.max_deliveries}); not tried again")
    outcome = result_writer.write_error_result(store, source, error, settings.results)
    metrics.TASKS.labels("worker_crashed", outcome).inc()
    return {"key": source.key, "status": "error", "error": error.to_dict(), "outcome": outcome}


def _parse_requests(task, requests, parse) -> tuple[list, list]:
    """``[(request, parse(its argument))]`` and, for the messages that cannot be parsed (whatever the
    parser raised), ``[(request, summary)]``: each is kept in the dead list (workers/dead_letters.py)
    and acked, and its batch-mates proceed."""
    todo, done = [], []
    for request in requests:
        try:
            args = request.args
            if not isinstance(args, list | tuple) or len(args) != 1:
                raise TypeError(f"expected one positional argument, got {type(args).__name__} {args!r:.100}")
            todo.append((request, parse(args[0])))
        except Exception as exc:  # noqa: BLE001 - a bad message must never take its batch-mates down
            dead_letters.keep(holders.ledger.get().client, task=task.name, request=request, error=exc)
            metrics.DEAD_LETTERED.labels(task.name).inc()
            done.append((request, {"skipped": "dead_lettered", "key": None, "error": repr(exc)[:200]}))
    return todo, done


def _write(task, request, result: ImageResult, requeue: list[str]) -> dict[str, Any] | None:
    try:
        outcome = result_writer.write_if_current(holders.store.get(), result, settings.results)
    except (VehiclePipelineError, ConnectionError, TimeoutError) as exc:  # S3 down, or the results refused
        fault = exc if isinstance(exc, TransientError) else ConfigError(
            f"cannot write the result of {result.source.uri} ({getattr(exc, 'code', type(exc).__name__)}: "
            f"{getattr(exc, 'message', exc)}); check results.bucket and the workers' policy (docs/iam.md)")
        if _retry(task, request, result.source, fault) == batching.REQUEUE:
            requeue.append(request.id)
        return None
    metrics.TASKS.labels(task.name, outcome if outcome != result_writer.WRITTEN else result.status).inc()
    doc = result.to_dict()
    return {"key": result.source.key, "etag": result.source.etag, "status": result.status, "label": doc["label"],
            "confidence": doc["confidence"], "vehicles": len(result.vehicles), "outcome": outcome, "error": result.error}


def _retry(task, request, source: SourceRef, exc: Exception) -> str:
    outcome = batching.retry_later(task, request, source, exc, max_retries=settings.worker.max_retries,
                                   backoff_max=settings.worker.retry_backoff_max_s, store=holders.store.get(),
                                   results=settings.results)
    metrics.TASKS.labels(task.name, outcome).inc()
    return outcome


# Join each app that includes this module when it is finalized (as Celery's shared_task does), and
# those already finalized: registrations, no app built and no settings read here.
connect_on_app_finalize(register)
for _app in _get_active_apps():
    if _app.finalized:
        register(_app)
