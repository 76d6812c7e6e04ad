"""Prometheus metrics of the workers: tasks by outcome, batch sizes reached, stage latency.

Exposed on ``worker.metrics_port`` (0 = off) by each pool process; run one process per worker
(``-c 1``, the default in our command lines) or give each worker its own port.
"""

from __future__ import annotations

import logging

from prometheus_client import Counter, Histogram, start_http_server

log = logging.getLogger(__name__)

TASKS = Counter("vp_tasks_total", "Tasks finished, by task and outcome", ["task", "outcome"])
BATCH_SIZE = Histogram(
    "vp_batch_size",
    "Items per model call: images per detector call, crops per classifier call",
    ["stage"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
SECONDS = Histogram("vp_task_seconds", "Wall time of a task", ["task"])

_started = False


def serve(port: int) -> None:
    """Start the /metrics HTTP server once per process (no-op for port 0)."""
    global _started
    if port and not _started:
        start_http_server(port, addr="0.0.0.0")  # scraped from outside the container
        _started = True
        log.info("prometheus metrics on :%d/metrics", port)
