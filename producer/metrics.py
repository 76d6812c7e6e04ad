"""Prometheus metrics of ``vehicle-producer listen``: SQS messages received, malformed, deleted,
failed; images enqueued; pauses for a deep detect queue.

The listener already counts all of these in its :class:`~producer.listen.ListenStats`; a collector
reads them at scrape time, so the listener's loop carries no metrics code of its own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily

log = logging.getLogger(__name__)

#: ListenStats field -> (metric name without _total, help).
COUNTERS = {
    "received": ("vp_producer_messages_received", "SQS messages received"),
    "enqueued": ("vp_producer_images_enqueued", "Images sent to the detect queue"),
    "malformed": ("vp_producer_messages_malformed", "SQS messages that are no event we know (left for the DLQ)"),
    "deleted": ("vp_producer_messages_deleted", "SQS messages deleted once handled"),
    "failed": ("vp_producer_messages_failed", "SQS messages left for redelivery after a failure (a bug)"),
    "paused": ("vp_producer_pauses", "Polls skipped because the detect queue was too deep"),
    "outages": ("vp_producer_broker_outages", "Times the broker was unreachable (the listener stopped receiving)"),
    "held": ("vp_producer_messages_held", "SQS messages held through a broker outage, then enqueued"),
}


class ListenerCollector:
    """Exposes a listener's running counts (``stats()`` returns its ListenStats) as counters."""

    def __init__(self, stats: Callable[[], object]) -> None:
        self.stats = stats

    def collect(self):
        current = self.stats()
        for field, (name, help_text) in COUNTERS.items():
            yield CounterMetricFamily(name, help_text, value=getattr(current, field))


def registry_for(stats: Callable[[], object]) -> CollectorRegistry:
    """A registry holding the listener's counters (what ``/metrics`` serves)."""
    registry = CollectorRegistry()
    registry.register(ListenerCollector(stats))
    return registry


def serve(port: int, stats: Callable[[], object], addr: str = "0.0.0.0") -> None:
    """Serve the listener's counters on ``port`` (no-op for 0); scraped from outside the container."""
    if port:
        start_http_server(port, addr=addr, registry=registry_for(stats))
        log.info("prometheus metrics on :%d/metrics", port)
