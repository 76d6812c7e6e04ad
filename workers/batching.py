"""What celery-batches leaves to the task: per-request retries, results, events, and the prefetch.

celery-batches 0.11 (read from its source, ``celery_batches/__init__.py`` and ``trace.py``):

* the worker buffers messages and flushes them as one call every ``flush_every`` messages or
  ``flush_interval`` seconds; a buffer can only fill up to the prefetch count, so the worker
  consuming a batching queue must prefetch at least ``flush_every`` (:func:`prefetch_for`);
* with ``acks_late`` every message of a batch is acked when the batch call *returns*, whether it
  raised or not; a SIGKILL before that leaves them unacked, so Redis redelivers them after
  ``visibility_timeout`` (that is the reliability we keep);
* ``autoretry_for``/``self.retry`` do not apply per request, task events (Flower) and result-backend
  states are not sent per request, and an exception in the batch fails every request silently;
* when the pool process dies holding a batch (SIGKILL, OOM, a hard time limit), its requests are
  neither acked nor rejected: no ``error_callback`` is given to the pool. The worker keeps counting
  them against its prefetch limit and stops consuming until restarted (measured: 100 s and more
  with 24 messages waiting), and Redis returns them only after ``visibility_timeout``.

So :class:`RequeueingBatches` hands the pool an error callback that requeues the batch's requests at
once (the crash ledger, workers/crash_ledger.py, then finds the one that killed the process), a time
limit, and acks each request by what the batch returned (a request whose retry could not be
re-published is requeued instead of acked). The batch task catches per request:
:func:`retry_later` re-sends a request with exponential backoff (counting attempts in its kwargs),
writes bad input's final error result, and keeps a fault of the system coming back; :func:`report` sends the ``task-started``/``task-succeeded``
events Flower shows and stores a result when a backend is set.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from celery.utils.time import get_exponential_backoff_interval
from celery_batches import Batches, SimpleRequest
from celery_batches.trace import apply_batches_task

from vehicle_core.config import broker_kind
from vehicle_core.errors import InvalidInputError
from vehicle_core.results.contract import SourceRef
from workers.messages import args_repr
from workers.result_writer import write_error_result

log = logging.getLogger(__name__)


#: Key of the batch task's return value listing request ids to requeue instead of ack.
REQUEUE = "requeue"
#: Key of the batch task's return value saying why the worker should stop consuming for a while (its
#: model cannot load), and the queue to stop.
PAUSE, QUEUE = "pause", "queue"
#: First pause of a worker whose model cannot load; it doubles up to ``worker.model_retry_max_s``.
PAUSE_FIRST_S = 5.0


class RequeueingBatches(Batches):
    """celery-batches' ``Batches`` whose batch never wedges the worker (see the module docstring)."""

    #: seconds a batch may run: soft limit raises inside it, the hard one (30 s later) kills the process.
    time_limit_s: float | None = None
    #: longest pause of consumption while the model cannot load (``worker.model_retry_max_s``).
    pause_max_s: float = 300.0
    _consumer = None
    _load_failures = 0
    _paused = False

    def Strategy(self, task, app, consumer):  # noqa: N802 - celery's name
        self._consumer = consumer
        # Celery builds the strategy again when its consumer restarts (a broker reconnect). celery-batches
        # starts its interval-flush timer only when ``_tref`` is None, so a timer entry left from the old
        # consumer would keep a new partial batch waiting for a size flush (seen once in the chaos test
        # after a Redis restart: one request held until shutdown). Start from no timer.
        if self._tref is not None:
            self._tref.cancel()
            self._tref = None
        return super().Strategy(task, app, consumer)

    def flush(self, requests):
        late = [r for r in requests if r.task.acks_late]
        early = [r for r in requests if not r.task.acks_late]
        serializable = ([_simple(r) for r in requests],)

        def on_accepted(pid: int, time_accepted: float) -> None:
            for req in early:
                req.acknowledge()

        def on_return(result: Any) -> None:
            requeue = set(result.get(REQUEUE, ())) if isinstance(result, dict) else {r.id for r in late}
            if isinstance(result, dict) and result.get(PAUSE):
                self._pause(result.get(QUEUE), result[PAUSE])
            elif isinstance(result, dict):
                self._load_failures = 0
            for req in late:  # None: the batch raised past its own handlers; its requests come back
                if req.id in requeue:
                    req.reject(requeue=True)
                else:
                    req.acknowledge()

        def on_error(exc_info: Any) -> None:
            log.error("the process working on a batch of %d died (%s): requeueing them now", len(late),
                      getattr(exc_info, "exception", exc_info))
            for req in late:
                req.reject(requeue=True)

        limit = self.time_limit_s
        return self._pool.apply_async(apply_batches_task, (self, serializable, 0, None),
                                      accept_callback=on_accepted, callback=on_return, error_callback=on_error,
                                      soft_timeout=limit, timeout=limit + 30 if limit else None)


    def _pause(self, queue: str | None, reason: str) -> None:
        """Stop consuming ``queue`` (the model cannot load): its messages wait for a worker that can
        serve them, or for this one to try again after a backoff (5 s, 10 s, ... ``pause_max_s``)."""
        consumer = self._consumer
        if consumer is None or not queue or self._paused:
            return
        delay = min(PAUSE_FIRST_S * 2 ** self._load_failures, self.pause_max_s)
        self._load_failures += 1
        self._paused = True
        log.error("not consuming queue %s for %.0f s: the model cannot load (%s)", queue, delay, reason)
        # The consumer only, not Celery's ``cancel_task_queue``: that also deselects the queue in the
        # app, and ``add_task_queue`` does not select it back, so a consumer restarted meanwhile (a
        # broker reconnect) would never consume it again.
        consumer.task_consumer.cancel_by_queue(queue)

        def resume() -> None:
            self._paused = False
            log.info("consuming queue %s again: trying to load the model", queue)
            consumer.add_task_queue(queue)

        consumer.timer.call_after(delay, resume)


def _simple(request) -> SimpleRequest:
    """celery-batches' picklable request, keeping what it drops: the message's embed (the rest of the
    chain, callbacks), so a batched step can hand its result on (:func:`hand_on`)."""
    simple = SimpleRequest.from_request(request)
    _, _, embed = request._payload
    simple.request_dict = {**(request.request_dict or {}), **(embed or {})}
    return simple


def prefetch_for(queue: str, settings) -> int:
    """The ``--prefetch-multiplier`` a worker consuming ``queue`` needs: at least a full batch
    (``worker.batch_flush_every`` on the classify queue, ``detector.batch_size`` on the detect queue).
    On an SQS broker a detect worker takes two batches: it receives the next while one runs (a receive
    is an HTTP round trip, a Redis BRPOP is not; bench, fake models: 14.0 -> 22.6 img/s, docs/scale.md).
    Cost: that many messages wait for ``visibility_timeout`` if this worker dies."""
    base = settings.worker.prefetch_multiplier
    if queue == settings.broker.classify_queue:
        return max(base, settings.worker.batch_flush_every)
    if queue == settings.broker.detect_queue:
        return max(base, settings.detector.batch_size * (2 if settings.broker.kind == "sqs" else 1))
    return base


def redelivered(request) -> bool:
    """Whether the broker gave this message back after an earlier delivery (a requeue, a restore after
    a lost worker or connection, the visibility timeout): kombu's Redis transport marks each one, and
    Celery's request (and celery-batches' copy of it) carries the mark in ``delivery_info``."""
    info = getattr(request, "delivery_info", None) or (getattr(request, "request_dict", None) or {}).get("delivery_info")
    return bool((info or {}).get("redelivered"))


def attempt_of(request) -> int:
    """How many times this request was already re-sent by :func:`retry_later`."""
    return int((request.kwargs or {}).get("attempt", 0))


def retry_later(task, request, source: SourceRef, exc: Exception, *, max_retries: int, backoff_max: int,
                store, results) -> str:
    """Bad input (the image's own fault): write its final error result, never retry. Anything else
    (a fault of the system) is re-sent after an exponential, jittered delay; past ``max_retries`` a
    result with the retriable code is written once (operators and ``reconcile`` see it, it never counts
    as done) and the request keeps coming back every ``backoff_max`` until the fault is gone: it is
    never an image's final result. A final result that cannot be written is re-sent likewise (never
    acked with nothing written). Returns "retry", "gave_up" (a final result written), or "requeue"
    when the re-send itself failed (broker down): the request must then be requeued, not acked."""
    attempt = attempt_of(request) + 1
    if isinstance(exc, InvalidInputError):
        if write_error_result(store, source, exc, results) != "unwritten":
            return "gave_up"
        countdown, attempt = backoff_max, attempt_of(request)  # S3 down: write it later
    elif attempt <= max_retries:
        # Full jitter may draw 0: keep at least a second so a failing store is not hammered at once.
        countdown = max(1, get_exponential_backoff_interval(factor=1, retries=attempt, maximum=backoff_max,
                                                            full_jitter=True))
    else:
        if attempt == max_retries + 1:
            log.error("%s still failing after %d attempts (%r): its retriable error result is written, and it "
                      "is tried again every %s s until the fault is gone", source.uri, attempt, exc, backoff_max)
            write_error_result(store, source, exc, results)
        countdown = backoff_max
    try:
        # The rest of the chain travels with the re-sent request, as it did with the first.
        task.apply_async(args=request.args, kwargs={"attempt": attempt}, countdown=countdown,
                         chain=rest_of_chain(request) or None, argsrepr=args_repr(request.args))
    except Exception as publish_error:  # noqa: BLE001 - kombu raises many kinds; all mean "not sent"
        log.error("could not re-send %s for a retry (%r): requeueing the message", source.uri, publish_error)
        return REQUEUE
    log.warning("retry %d/%d of s3://%s/%s in %ss: %r", attempt, max_retries, source.bucket, source.key, countdown, exc)
    return "retry"


def rest_of_chain(request) -> list:
    """The signatures still to run after ``request`` (Celery keeps them, last first, in the message)."""
    return list((getattr(request, "request_dict", None) or {}).get("chain") or [])


def hand_on(app, request, value: Any, *, producer=None) -> bool:
    """Send the next step of ``request``'s chain with ``value``, as Celery does after a task returns
    (celery-batches does not: its requests' chains would end here). False when nothing follows."""
    from celery import signature

    chain = rest_of_chain(request)
    if not chain:
        return False
    step = signature(chain.pop(), app=app)
    root_id = (request.request_dict or {}).get("root_id") or request.id
    step.apply_async((value,), chain=chain or None, parent_id=request.id, root_id=root_id, producer=producer,
                     argsrepr=args_repr((value,)))
    return True


#: Next steps sent per request on an SQS broker (SendMessageBatch's limit).
HAND_ON_BATCH = 10


def hand_on_all(app, items: list[tuple[Any, Any]]) -> dict[str, Exception]:
    """:func:`hand_on` for each ``(request, value)`` of a batch, published together; returns
    ``{request id: error}`` for the requests whose next step the broker refused (the caller requeues them).

    Redis: one pipeline, whose LPUSHes to one queue are one LPUSH (``workers.broker.PublishBatch``):
    every step is sent or none. SQS: ten per SendMessageBatch (``workers.broker_sqs.PublishBatch``)
    instead of one SendMessage each. A refusal fails every request of the batch; on SQS those already
    sent then run twice (the result writes absorb it)."""
    if not items:
        return {}
    size = HAND_ON_BATCH if broker_kind(str(app.conf.broker_url or "")) == "sqs" else len(items) + 1
    try:
        with app.producer_or_acquire() as producer, producer.batch(max_size=size):
            for request, value in items:
                hand_on(app, request, value, producer=producer)
    except Exception as exc:  # noqa: BLE001 - the broker refused the batch: the caller requeues every request
        return {request.id: exc for request, _ in items}
    return {}


def report(task, requests_and_results: list[tuple[Any, dict]], *, runtime: float) -> None:
    """Per-request ``task-succeeded`` events (Flower's task list and its result column) and, when a
    result backend is configured, per-request results."""
    if not requests_and_results:
        return
    if task.app.conf.result_backend:
        for request, summary in requests_and_results:
            task.backend.mark_as_done(request.id, summary, request=None)
    if not task.app.conf.worker_send_task_events:
        return
    hostname = requests_and_results[0][0].hostname
    try:
        with task.app.events.default_dispatcher(hostname=hostname) as events:
            now = time.time()
            for request, summary in requests_and_results:
                events.send("task-started", uuid=request.id, timestamp=now - runtime)
                events.send("task-succeeded", uuid=request.id, result=repr(summary), runtime=runtime, timestamp=now)
    except Exception:  # monitoring must never fail the work
        log.exception("could not send task events for a batch")
