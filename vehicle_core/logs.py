"""Logs every process writes the same way: text for people, or one JSON object a line for machines.

    configure(level="INFO", fmt="json")              # a command line's --log-format json
    with log_context(task_id=tid, bucket=b, key=k):  # what a task is working on ...
        log.info("classified")                       # ... appears on every line logged inside

The context lives in a :class:`contextvars.ContextVar`, so concurrent threads or asyncio tasks each
carry their own. :class:`ContextFilter` copies it onto every record (``record.context``), and both
formatters print it: JSON as top-level fields, text as ``key=value`` after the message. Both
formatters mask the password of any ``scheme://user:password@host`` in the line (``mask_urls``), so a
broker URL quoted by an exception never reaches a log.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as _dt
import json
import logging
from collections.abc import Iterator
from typing import Any

from vehicle_core.config import mask_urls

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("vp_log_context", default=None)


def current_context() -> dict[str, Any]:
    """The fields bound by the enclosing :func:`log_context` blocks (a copy)."""
    return dict(_context.get() or {})


@contextlib.contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Add ``fields`` (None values dropped) to every log record emitted inside the block."""
    token = _context.set({**current_context(), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


class ContextFilter(logging.Filter):
    """Attaches the current log context to each record as ``record.context`` (never filters out)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "context"):
            record.context = current_context()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (UTC, ISO 8601), level, logger, message, the context, and the
    exception's traceback as one string when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": _dt.datetime.fromtimestamp(record.created, _dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        doc.update(getattr(record, "context", None) or current_context())
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return mask_urls(json.dumps(doc, default=str))


class TextFormatter(logging.Formatter):
    """The project's text line, with ``key=value`` of the context appended."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = getattr(record, "context", None) or current_context()
        if context:
            line += " " + " ".join(f"{k}={v}" for k, v in context.items())
        return mask_urls(line)


def formatter(fmt: str) -> logging.Formatter:
    """The formatter for ``fmt`` (``text`` or ``json``); ValueError for anything else."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown log format {fmt!r}; use text or json")
    return JsonFormatter() if fmt == "json" else TextFormatter()


def apply_format(handlers: list[logging.Handler], fmt: str) -> None:
    """Give ``handlers`` (e.g. the ones Celery set up) our formatter and context filter."""
    for handler in handlers:
        handler.setFormatter(formatter(fmt))
        if not any(isinstance(f, ContextFilter) for f in handler.filters):
            handler.addFilter(ContextFilter())


def configure(level: str = "INFO", fmt: str = "text") -> None:
    """Root logging at ``level`` to stderr in ``fmt``, like ``logging.basicConfig``: a root logger
    that already has handlers someone else installed (a test runner's) keeps them."""
    formatter(fmt)  # refuse an unknown format before changing anything
    root = logging.getLogger()
    root.setLevel(level)
    ours = [h for h in root.handlers if getattr(h, "_vp_handler", False)]
    if len(ours) < len(root.handlers):
        return
    for handler in ours:  # a second call (a new format) replaces our handler
        root.removeHandler(handler)
    handler = logging.StreamHandler()
    handler._vp_handler = True  # type: ignore[attr-defined]
    apply_format([handler], fmt)
    root.addHandler(handler)
