"""Worker logs: ``logs.format`` (``VP_LOGS__FORMAT=json``) for Celery's handlers, and every line a
task logs tagged with its task id, and the bucket and key of its image when its argument names one.

Batched tasks (celery-batches: detect, classify) run one call for many requests under the batch's own
id, whose argument names no image. For them :func:`bind_task` also indexes the batch's images, and
:class:`ImageFilter` gives a line that names one of them (its ``s3://`` URI, or its key, as in the
result's URI) that image's request id as ``task_id``, its ``bucket`` and ``key``, and the batch id as
``batch_id``: every line about one image can be found by its key or its task id.

Connected to Celery's signals by :func:`connect_worker_signals` (``workers.tasks.register`` calls
it when the tasks join the worker's app, before the worker sets up its logging; nothing is connected
at import): ``after_setup_logger`` / ``after_setup_task_logger`` give Celery's handlers our formatter;
``task_prerun`` / ``task_postrun`` bind and unbind the task's log context.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from vehicle_core.logs import apply_format, log_context

if TYPE_CHECKING:
    from vehicle_core.config import Settings

_open: dict[str, Any] = {}  # task id -> its entered log_context (exited at task_postrun)
# batch id -> {(bucket, key): request id} of the batch this process runs (celery-batches' requests)
_batches: dict[str, dict[tuple[str, str], str]] = {}


def task_fields(task_id: str | None, args: Any) -> dict[str, Any]:
    """Log fields of a task: its id, and bucket/key when its first argument is an image reference
    (detect) or a crop set (classify, one request)."""
    fields: dict[str, Any] = {"task_id": task_id}
    first = args[0] if isinstance(args, list | tuple) and args else None
    if isinstance(first, dict):
        source = first.get("source") if isinstance(first.get("source"), dict) else first
        if isinstance(source.get("bucket"), str) and isinstance(source.get("key"), str):
            fields.update(bucket=source["bucket"], key=source["key"])
    return fields


def batch_images(args: Any) -> dict[tuple[str, str], str]:
    """``{(bucket, key): request id}`` of a celery-batches call's requests (its one argument is the list
    of SimpleRequests); empty for any other task."""
    first = args[0] if isinstance(args, list | tuple) and args else None
    if not isinstance(first, list | tuple):
        return {}
    images = {}
    for request in first:
        fields = task_fields(getattr(request, "id", None), getattr(request, "args", None))
        if "key" in fields and fields["task_id"]:
            images[(fields["bucket"], fields["key"])] = fields["task_id"]
    return images


def bind_task(task_id: str | None, args: Any) -> None:
    """Enter the task's log context (task_prerun)."""
    context = log_context(**task_fields(task_id, args))
    context.__enter__()
    _open[task_id or ""] = context
    images = batch_images(args)
    if images:
        _batches[task_id or ""] = images


def unbind_task(task_id: str | None) -> None:
    """Leave it (task_postrun; also after a failure)."""
    _batches.pop(task_id or "", None)
    context = _open.pop(task_id or "", None)
    if context is not None:
        context.__exit__(None, None, None)


def image_fields(message: str, batch_id: str, images: dict[tuple[str, str], str]) -> dict[str, Any]:
    """The fields of the batch's image that ``message`` names: its URI first, else its key (the longest
    that matches, so ``a/b.jpg`` is not taken for ``b.jpg``); {} when it names none."""
    for (bucket, key), request_id in images.items():
        if f"s3://{bucket}/{key}" in message:
            return {"task_id": request_id, "bucket": bucket, "key": key, "batch_id": batch_id}
    named = [(len(key), bucket, key, rid) for (bucket, key), rid in images.items() if key in message]
    if named:
        _, bucket, key, request_id = max(named)
        return {"task_id": request_id, "bucket": bucket, "key": key, "batch_id": batch_id}
    return {}


class ImageFilter(logging.Filter):
    """Inside a batched task, tags a line about one image with that image's fields (see the module
    docstring). Runs after vehicle_core.logs.ContextFilter on the same handler; never filters out."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = getattr(record, "context", None)
        batch_id = (context or {}).get("task_id")
        images = _batches.get(batch_id or "")
        if images:
            try:
                fields = image_fields(record.getMessage(), batch_id, images)
            except Exception:  # noqa: BLE001 - a log line that cannot be formatted is logging's to report
                fields = {}
            if fields:
                record.context = {**context, **fields}
        return True


def add_image_filter(handlers: list[logging.Handler]) -> None:
    for handler in handlers:
        if not any(isinstance(f, ImageFilter) for f in handler.filters):
            handler.addFilter(ImageFilter())


def connect_worker_signals(settings: Settings) -> None:
    """Connect the hooks above to Celery's signals (once per process): ``settings.logs.format``."""
    from celery.signals import after_setup_logger, after_setup_task_logger, task_postrun, task_prerun

    def formats(logger=None, **_):
        if logger is not None:
            apply_format(list(logger.handlers), settings.logs.format)
            add_image_filter(list(logger.handlers))

    after_setup_logger.connect(formats, weak=False, dispatch_uid="workers.logs.formats")
    after_setup_task_logger.connect(formats, weak=False, dispatch_uid="workers.logs.task_formats")
    task_prerun.connect(lambda task_id=None, args=None, **_: bind_task(task_id, args), weak=False,
                        dispatch_uid="workers.logs.bind_task")
    task_postrun.connect(lambda task_id=None, **_: unbind_task(task_id), weak=False,
                         dispatch_uid="workers.logs.unbind_task")
