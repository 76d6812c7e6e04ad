"""How many messages wait in a Celery queue, asked through kombu's public API.

``channel.queue_declare(queue, passive=True).message_count`` is AMQP's own question; kombu's Redis
transport answers it by summing the lists of every priority step of the queue (its ``_size``), so
no key naming of kombu's is repeated here. A queue that was never declared or is empty has no Redis
key: kombu then raises ``ChannelError`` (404) for a passive declare, which means 0.
"""

from __future__ import annotations

from kombu.exceptions import ChannelError


def queue_depth(connection, queue: str) -> int:
    """Messages waiting in ``queue`` (not counting those reserved by workers)."""
    try:
        return int(connection.default_channel.queue_declare(queue=queue, passive=True).message_count)
    except ChannelError:
        return 0


def depth_probe(app, queue: str):
    """A zero-argument callable returning the current depth of ``queue`` on ``app``'s broker.
    One connection, opened on first use and kept (kombu reconnects it when Redis restarts)."""
    connection = app.connection_for_write()

    def depth() -> int:
        return queue_depth(connection, queue)

    return depth


def broker_probe(app, *, timeout_s: float = 2.0):
    """A zero-argument callable that returns when ``app``'s broker answers and raises (kombu's
    ``OperationalError``) when it does not, after one connection attempt: what the listener asks
    while it waits out an outage (the pooled connections retry for seconds before giving up)."""

    def probe() -> None:
        with app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, interval_start=0, timeout=timeout_s)

    return probe
