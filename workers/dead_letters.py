"""Task messages that cannot be parsed: kept where an operator can read them, never looped.

A message whose argument is not what its task takes (a hand-written message, a sender of another
version, a bug) would fail the same way on every delivery. The batched tasks acknowledge it, keep it
in the Redis list ``vp:dead`` (newest first, the last :data:`KEEP` messages), and go on with its
batch-mates. Read the list with ``redis-cli LRANGE vp:dead 0 9`` (or :func:`read`); each
entry is JSON: ``{"at", "task", "task_id", "error", "args", "kwargs"}``.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
from typing import Any

log = logging.getLogger(__name__)

DEAD_LIST = "vp:dead"
#: Entries kept; older ones are dropped (the log keeps a line for every one).
KEEP = 10_000


def keep(client, *, task: str, request, error: BaseException) -> None:
    """Log ``request`` with its task id and push it onto the dead list (never raises: when Redis is
    down too, the log line is what is left)."""
    entry = {
        "at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "task": task,
        "task_id": getattr(request, "id", None),
        "error": f"{type(error).__name__}: {error}"[:500],
        "args": _jsonable(getattr(request, "args", None)),
        "kwargs": _jsonable(getattr(request, "kwargs", None)),
    }
    log.error("dead-lettered message %s of %s: %s", entry["task_id"], task, entry["error"])
    try:
        client.pipeline().lpush(DEAD_LIST, json.dumps(entry)).ltrim(DEAD_LIST, 0, KEEP - 1).execute()
    except Exception:  # noqa: BLE001 - a failure handler must not raise
        log.exception("could not keep dead-lettered message %s in %s", entry["task_id"], DEAD_LIST)


def read(client, count: int = 20) -> list[dict[str, Any]]:
    """The newest ``count`` dead-lettered messages."""
    if count <= 0:
        return []
    return [json.loads(raw) for raw in client.lrange(DEAD_LIST, 0, count - 1)]


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return repr(value)[:2000]
