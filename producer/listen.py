"""``vehicle-producer listen``: long-poll SQS for S3 event notifications and enqueue their images.

Delivery rules:
* an SQS message is deleted only after every image it names was handed to the broker, so a crash
  or a broker outage in between means SQS delivers it again (at-least-once; workers are idempotent);
* a malformed message is logged and *not* deleted: after the queue's ``maxReceiveCount`` receives,
  SQS's redrive policy moves it to the dead-letter queue for a human to look at;
* any other failure with one message (a bug our parser did not foresee) is logged and that message
  left for the DLQ likewise: the others of its batch proceed, and the listener keeps running;
* while the detect queue is deeper than ``producer.max_queue_depth`` the listener stops receiving
  (SQS keeps the events; nothing is lost, Redis memory stays bounded), like backfill. The depth is
  read again only after ``producer.pause_poll_s`` or once this listener's own enqueues since the last
  reading could have crossed the limit (a probe is about 12 Redis commands; one per SQS receive was a
  quarter of the broker's commands per image). Other producers may add up to pause_poll_s of their
  enqueues before a listener notices;
* SIGTERM/SIGINT finish the batch in hand (at most one long poll, ``producer.wait_time_s``) and exit 0.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from producer.events import KeyFilter, MalformedEventError, parse_event_body
from workers.messages import enqueue_images

log = logging.getLogger(__name__)


@dataclass
class ListenStats:
    received: int = 0
    enqueued: int = 0
    deleted: int = 0
    malformed: int = 0
    failed: int = 0
    paused: int = 0


class Listener:
    """One SQS queue -> the detect queue. ``run()`` loops until ``stop`` is set."""

    def __init__(self, *, sqs, queue_url: str, app, keys: KeyFilter, wait_time_s: int = 20, batch: int = 10,
                 depth=None, max_queue_depth: int = 5000, pause_poll_s: float = 2.0,
                 clock: Callable[[], float] = time.monotonic):
        self.sqs = sqs
        self.depth = depth  # () -> messages waiting in the detect queue; None: never pause
        self.max_queue_depth = max_queue_depth
        self.pause_poll_s = pause_poll_s
        self.queue_url = queue_url
        self.app = app
        self.keys = keys
        self.wait_time_s = wait_time_s
        self.batch = batch
        self.stop = threading.Event()
        self.stats = ListenStats()
        self.clock = clock
        self._last_depth: tuple[float, int] | None = None  # (when read, depth then)
        self._enqueued_since_depth = 0

    def run(self) -> ListenStats:
        log.info("listening on %s (long poll %ss)", self.queue_url, self.wait_time_s)
        while not self.stop.is_set():
            self.poll_once()
        log.info("stopped: %s", self.stats)
        return self.stats

    def poll_once(self) -> int:
        """Receive one batch, enqueue its images, delete what was handled; return images enqueued."""
        if self._queue_too_deep():
            self.stop.wait(self.pause_poll_s)  # re-check the depth every pause_poll_s (throttling, not sync)
            return 0
        try:
            reply = self.sqs.receive_message(
                QueueUrl=self.queue_url, MaxNumberOfMessages=self.batch, WaitTimeSeconds=self.wait_time_s
            )
        except Exception as exc:  # SQS unreachable: never crash the loop, SQS keeps the messages
            log.error("receive from %s failed: %r", self.queue_url, exc)
            self.stop.wait(min(5.0, max(1.0, self.wait_time_s)))  # back off instead of spinning
            return 0
        parsed = [(message, self._parse(message)) for message in reply.get("Messages", [])]
        self.stats.received += len(parsed)
        handled = [(message, images) for message, images in parsed if images is not None]
        images = [image for _, batch in handled for image in batch]
        try:
            # One Redis round trip for the whole receive (up to 10 SQS messages).
            task_ids = enqueue_images(self.app, images)
        except Exception as exc:  # broker down: keep the SQS messages, they come back after their visibility timeout
            self.stats.failed += len(handled)
            log.error("enqueue of %d SQS messages failed, they will be redelivered: %r", len(handled), exc)
            return 0
        for image, task_id in zip(images, task_ids, strict=True):
            log.info("enqueued s3://%s/%s etag=%s task=%s", image.bucket, image.key, image.etag, task_id)
        self.stats.enqueued += len(images)
        self._enqueued_since_depth += len(images)
        for message, _ in handled:
            self._delete(message)
        return len(images)

    def _queue_too_deep(self) -> bool:
        if self.depth is None:
            return False
        now = self.clock()
        if self._last_depth is not None:
            read_at, then = self._last_depth
            if now - read_at < self.pause_poll_s and then + self._enqueued_since_depth <= self.max_queue_depth:
                return False  # what this listener added since cannot have crossed the limit: no probe
        try:
            current = self.depth()
        except Exception as exc:  # noqa: BLE001 - the broker's health is the enqueue's business
            log.warning("cannot read the detect queue's depth (%r); receiving anyway", exc)
            return False
        self._last_depth, self._enqueued_since_depth = (now, current), 0
        if current > self.max_queue_depth:
            self.stats.paused += 1
            log.info("detect queue holds %d > %d: not receiving for now", current, self.max_queue_depth)
            return True
        return False

    def _parse(self, message: dict):
        """The images an SQS message names, or None for a malformed one (left for the DLQ)."""
        try:
            parsed = parse_event_body(message.get("Body", ""), self.keys)
        except MalformedEventError as exc:
            # Left in the queue on purpose: the redrive policy moves it to the DLQ.
            self.stats.malformed += 1
            log.warning("malformed SQS message %s left for the DLQ: %s", message.get("MessageId"), exc.message)
            return None
        except Exception:  # noqa: BLE001 - one message must never stop the listener or its batch
            self.stats.failed += 1
            log.exception("SQS message %s could not be handled; left for redelivery and the DLQ",
                          message.get("MessageId") if isinstance(message, dict) else "?")
            return None
        for key, reason in parsed.skipped:
            log.debug("ignored %s: %s", key, reason)
        return parsed.images

    def _delete(self, message: dict) -> None:
        try:
            self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])
            self.stats.deleted += 1
        except Exception as exc:  # redelivered later; the workers' ETag check makes the repeat a no-op
            log.error("delete of SQS message %s failed: %r", message.get("MessageId"), exc)


def stop_on_signals(listener: Listener) -> None:
    """SIGTERM/SIGINT: let the batch in hand finish, then leave the loop."""

    def handler(signum, _frame):
        log.info("signal %d: finishing the current batch, then exiting", signum)
        listener.stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
