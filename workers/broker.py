"""The Redis transport with its one loss window closed: a message is never held only in memory.

kombu 5.7's Redis transport (``kombu/transport/redis.py``) delivers a message in two round trips:
``BRPOP`` takes it off the queue's list, and only afterwards ``QoS.append`` records it in the
``unacked`` hash (ZADD + HSET) from which a restart or the visibility timeout restores it. When the
broker goes away between the two (a restart, a failover, a network cut), the pipeline raises, the
message is in neither place, and ``Restoring N unacknowledged message(s)`` has nothing to restore:
the image is lost. ``tests/workers/test_broker_window.py`` reproduces it with a proxy that cuts
the connection right after a BRPOP reply: the stock transport loses the message, this one keeps it.

:class:`QoS` records the message again and again (backoff, capped at ``RECORD_BACKOFF_MAX_S``) until
the broker answers, and only then hands it to the worker. While it waits, the broker is down anyway:
the consumer could not do anything else. A cold shutdown (``should_terminate``) ends the wait; that
one message is then found by ``vehicle-producer reconcile`` (no result: ``missing``).

A second fault of the same family: a batch that celery-batches buffered across a reconnect is acked
on the channel it came from, which closed with the old connection. kombu's ``QoS.ack`` then asks a
closed channel for a client (``AttributeError: 'NoneType' object has no attribute 'hostname'``),
which Celery treats as unrecoverable: the worker process exits. Nothing is lost by that (closing the
channel put its unacked messages back on their queue, or the visibility timeout does), but a worker
that dies on every Redis restart is a fault of its own. :class:`QoS` drops an ack or reject on a
closed channel instead: the message runs again (one duplicate, absorbed by the idempotent result
writes). ``tests/workers/test_broker_closed_channel.py`` shows both.

Installed by ``workers.app.create_app`` for ``redis://`` and ``rediss://`` broker URLs (:func:`install`).
"""

from __future__ import annotations

import contextlib
import logging
import threading

from kombu.transport import redis as kombu_redis

from vehicle_core.config import broker_kind

log = logging.getLogger(__name__)

#: Longest pause between two attempts to record a message the broker took but did not record.
RECORD_BACKOFF_MAX_S = 5.0


def _terminating() -> bool:
    try:
        from celery.worker import state
    except ImportError:  # pragma: no cover - kombu used without Celery
        return False
    return bool(state.should_terminate)


class QoS(kombu_redis.QoS):
    """kombu's Redis QoS whose ``append`` survives a broker that vanished right after BRPOP."""

    #: woken early by a test, or by a shutdown; never used to synchronise anything.
    _wake = threading.Event()

    def append(self, message, delivery_tag):
        delay, attempts = 0.1, 0
        while True:
            try:
                return super().append(message, delivery_tag)
            except self.channel.connection_errors as exc:
                attempts += 1
                if _terminating():
                    log.error("broker unreachable at shutdown: message %s (task %s) not recorded; its image has "
                              "no result, which `vehicle-producer reconcile` finds and sends again",
                              delivery_tag, _task_id(message))
                    raise
                if attempts == 1 or attempts % 20 == 0:
                    log.warning("broker unreachable while recording message %s (task %s), taken off its queue: "
                                "holding it and retrying (%r)", delivery_tag, _task_id(message), exc)
                self._wake.wait(delay)
                delay = min(delay * 2, RECORD_BACKOFF_MAX_S)
            else:  # pragma: no cover - the return above leaves the loop
                break

    @contextlib.contextmanager
    def pipe_or_acquire(self, pipe=None, client=None):
        """kombu's QoS records a delivery (ZADD + HSET) and forgets an ack (ZREM + HDEL) in a MULTI/EXEC
        pipeline: 4 commands where 2 do, twice per message, 8 of the broker's 22.4 commands per image
        (14.5 without: docs/scale.md). Here without MULTI/EXEC, still one round trip. What atomicity bought is kept otherwise: a record
        cut short by a lost connection is sent again whole by :meth:`append` (both commands are
        idempotent), and Redis applies (and its AOF keeps) a pipeline's commands in order, so the one
        partial state left by a server dying between two commands is harmless: an index entry without
        its message (the restore sweep finds nothing to restore and drops it) or, for an ack, a message
        without its index entry (never restored: it was acked). The restore itself (``restore_by_tag``)
        passes its own WATCH/MULTI pipeline and keeps its transaction."""
        if pipe is not None:
            yield pipe
            return
        with self.channel.conn_or_acquire(client) as acquired:
            yield acquired.pipeline(transaction=False)

    def _connection_lost(self) -> bool:
        connection = getattr(self.channel, "connection", None)
        return connection is None or connection.client is None

    def _channel_closed(self) -> bool:
        return bool(getattr(self.channel, "closed", False)) or self._connection_lost()

    def ack(self, delivery_tag):
        if self._channel_closed():
            log.info("ack of message %s on a channel closed by a lost connection: dropped (closing the "
                     "channel returned the message to its queue; it runs again)", delivery_tag)
            self._quick_ack(delivery_tag)
            return
        super().ack(delivery_tag)

    def restore_unacked_once(self, stderr=None):
        # At exit (a multiprocessing finalizer) or on close: with the connection gone there is nothing to
        # restore through; the messages stay recorded as unacked, and come back after the visibility timeout.
        if self._connection_lost():  # (a channel closing normally is marked closed first, then restores)
            log.info("%d unacked message(s) not restored on a channel closed by a lost connection: they stay "
                     "recorded and come back after broker.visibility_timeout_s", len(self._delivered))
            return None
        return super().restore_unacked_once(stderr)

    def reject(self, delivery_tag, requeue=False):
        if self._channel_closed():
            log.info("reject of message %s on a channel closed by a lost connection: dropped (the message "
                     "is back on its queue already)", delivery_tag)
            self._quick_ack(delivery_tag)
            return
        super().reject(delivery_tag, requeue=requeue)


def _task_id(message) -> str | None:
    try:
        return (message.headers or {}).get("id")
    except Exception:  # noqa: BLE001 - only for a log line
        return None


class Channel(kombu_redis.Channel):
    QoS = QoS


class Transport(kombu_redis.Transport):
    Channel = Channel


#: The class path of :class:`Transport`.
TRANSPORT = f"{__name__}:Transport"


def install() -> None:
    """Make ``redis://`` and ``rediss://`` URLs use :class:`Transport` in this process. Registered as
    the schemes' transport (not as Celery's ``broker_transport``) so that URLs keep their scheme:
    Flower picks its broker client (queue lengths) by the scheme of ``connection.as_uri()``."""
    from kombu.transport import TRANSPORT_ALIASES

    for scheme in ("redis", "rediss"):
        TRANSPORT_ALIASES[scheme] = TRANSPORT


def transport_for(url: str) -> str | None:
    """The transport class used for a broker URL once :func:`install` ran: :data:`TRANSPORT` for
    Redis, None (kombu's own choice from the URL) otherwise."""
    return TRANSPORT if broker_kind(url) == "redis" else None
