"""What celery-batches leaves to the task: per-request retries, results, events, and the prefetch.

celery-batches 0.11 (read from its source, ``celery_batches/__init__.py`` and ``trace.py``):

* the worker buffers messages and flushes them as one call every ``flush_every`` messages or
  ``flush_interval`` seconds; a buffer can only fill up to the prefetch count, so the worker
  consuming a batching queue must prefetch at least ``flush_every`` (:func:`prefetch_for`);
* with ``acks_late`` every message of a batch is acked when the batch call *returns*, whether it
  raised or not; a SIGKILL before that leaves them unacked, so Redis redelivers them after
  ``visibility_timeout`` (that is the reliability we keep);
* ``autoretry_for``/``self.retry`` do not apply per request, task events (Flower) and result-backend
  states are not sent per request, and an exception in the batch fails every request silently.

So the batch task catches per request: :func:`retry_later` re-sends a request with exponential
backoff (counting attempts in its kwargs) and gives up into an error result; :func:`report` sends the
``task-started``/``task-succeeded`` events Flower shows and stores a result when a backend is set.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from celery.utils.time import get_exponential_backoff_interval

from vehicle_core.errors import InvalidInputError
from vehicle_core.results import SourceRef
from workers.result_writer import write_error_result

log = logging.getLogger(__name__)


def prefetch_for(queue: str, settings) -> int:
    """The ``--prefetch-multiplier`` a worker consuming ``queue`` needs: at least a full batch
    (``worker.batch_flush_every``) on the batching classify queue. Cost: that many messages wait for
    ``visibility_timeout`` if this worker dies."""
    base = settings.worker.prefetch_multiplier
    if queue == settings.broker.classify_queue:
        return max(base, settings.worker.batch_flush_every)
    return base


def attempt_of(request) -> int:
    """How many times this request was already re-sent by :func:`retry_later`."""
    return int((request.kwargs or {}).get("attempt", 0))


def retry_later(task, request, source: SourceRef, exc: Exception, *, max_retries: int, backoff_max: int,
                store, results) -> str:
    """Re-send ``request`` after an exponential, jittered delay; past ``max_retries`` (or for bad
    input) write an error result instead so the key is not lost. Returns "retry" or "gave_up"."""
    attempt = attempt_of(request) + 1
    if attempt <= max_retries and not isinstance(exc, InvalidInputError):
        # Full jitter may draw 0: keep at least a second so a failing store is not hammered at once.
        countdown = max(1, get_exponential_backoff_interval(factor=1, retries=attempt, maximum=backoff_max,
                                                            full_jitter=True))
        task.apply_async(args=request.args, kwargs={"attempt": attempt}, countdown=countdown)
        log.warning("retry %d/%d of s3://%s/%s in %ss: %r", attempt, max_retries, source.bucket, source.key, countdown, exc)
        return "retry"
    log.error("%s failed after %d attempts", source.uri, attempt)
    write_error_result(store, source, exc, results)
    return "gave_up"


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
