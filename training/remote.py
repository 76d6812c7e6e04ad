"""What the training commands share when their work runs on Celery workers: who is listening on a
queue, and waiting for answers that come back through S3 (the app keeps no result backend)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from vehicle_core.config import Settings, mask_secret
from vehicle_core.errors import TransientError
from workers.messages import sender_app

log = logging.getLogger(__name__)


def find_workers(settings: Settings, queue: str, *, timeout_s: float = 2.0) -> list[str]:
    """Names of the workers consuming ``queue`` now; empty when none answers or Redis is down."""
    from kombu.exceptions import OperationalError

    app = sender_app(settings.broker)
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, timeout=timeout_s)
            replies = app.control.inspect(timeout=timeout_s, connection=conn).active_queues() or {}
    except (OperationalError, ConnectionError, OSError) as exc:
        log.info("no broker at %s (%s)", mask_secret(settings.broker.url), exc)
        return []
    return sorted(name for name, queues in replies.items() if any(q.get("name") == queue for q in queues or []))


def wait_for(expected: set[str], found: Callable[[], set[str]], *, stall_timeout_s: float, poll_s: float,
             what: str, hint: str) -> None:
    """Poll ``found()`` until it covers ``expected``; give up after ``stall_timeout_s`` without progress
    (not after a total: a long job that keeps answering is fine). ``what`` names the answers in logs."""
    seen: set[str] = set()
    last_progress = time.monotonic()
    while True:
        now = found() & expected
        if len(now) > len(seen):
            last_progress = time.monotonic()
            log.info("%s: %d/%d", what, len(now), len(expected))
        seen = now
        if len(seen) == len(expected):
            return
        if time.monotonic() - last_progress > stall_timeout_s:
            raise TransientError(f"{len(expected) - len(seen)} of {len(expected)} {what} unanswered for "
                                 f"{stall_timeout_s:.0f} s: {hint}")
        time.sleep(poll_s)  # S3 is the only channel back; a request per poll is cheap
