"""Worker logs: ``logs.format`` (``VP_LOGS__FORMAT=json``) for Celery's handlers, and every line a
task logs tagged with its task id, and the bucket and key of its image when its argument names one.

Connected to Celery's signals on import (``workers.metrics`` imports this module, and the task
module imports that): ``after_setup_logger`` / ``after_setup_task_logger`` give Celery's handlers
our formatter; ``task_prerun`` / ``task_postrun`` bind and unbind the task's log context.
"""

from __future__ import annotations

from typing import Any

from vehicle_core.logs import apply_format, log_context

_open: dict[str, Any] = {}  # task id -> its entered log_context (exited at task_postrun)


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


def bind_task(task_id: str | None, args: Any) -> None:
    """Enter the task's log context (task_prerun)."""
    context = log_context(**task_fields(task_id, args))
    context.__enter__()
    _open[task_id or ""] = context


def unbind_task(task_id: str | None) -> None:
    """Leave it (task_postrun; also after a failure)."""
    context = _open.pop(task_id or "", None)
    if context is not None:
        context.__exit__(None, None, None)


def _connect() -> None:
    from celery.signals import after_setup_logger, after_setup_task_logger, task_postrun, task_prerun

    def formats(logger=None, **_):
        from vehicle_core.config import load_settings

        if logger is not None:
            apply_format(list(logger.handlers), load_settings().logs.format)

    after_setup_logger.connect(formats, weak=False)
    after_setup_task_logger.connect(formats, weak=False)
    task_prerun.connect(lambda task_id=None, args=None, **_: bind_task(task_id, args), weak=False)
    task_postrun.connect(lambda task_id=None, **_: unbind_task(task_id), weak=False)


_connect()
