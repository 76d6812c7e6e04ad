"""``vehicle-producer listen``: long-poll SQS for S3 event notifications and enqueue their images.

Delivery rules:
* an SQS message is deleted only after every image it names was handed to the broker, so a crash
  in between means SQS delivers it again (at-least-once; workers are idempotent);
* a broker outage costs time, not messages: when an enqueue or the depth read fails, the listener
  stops receiving (SQS counts a receive towards ``maxReceiveCount`` whatever happens next, so
  receiving while the broker is down would walk every new event into the dead-letter queue), extends
  the visibility of the messages in hand to ``producer.outage_visibility_s`` (again before each
  lapses), and probes the broker with exponential backoff (1 s doubling to
  ``producer.outage_backoff_max_s``, interruptible by SIGTERM). Once the broker answers it enqueues
  the messages in hand, deletes them, and receives again;
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
from producer.queue_depth import broker_probe
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
    outages: int = 0  # times the broker was found unreachable (the listener then stopped receiving)
    held: int = 0  # SQS messages kept (visibility extended) through an outage, then enqueued


class Listener:
    """One SQS queue -> the detect queue. ``run()`` loops until ``stop`` is set."""

    def __init__(self, *, sqs, queue_url: str, app, keys: KeyFilter, wait_time_s: int = 20, batch: int = 10,
                 depth=None, max_queue_depth: int = 5000, pause_poll_s: float = 2.0, probe=None,
                 outage_visibility_s: int = 300, outage_backoff_max_s: float = 30.0,
                 outage_backoff_start_s: float = 1.0, clock: Callable[[], float] = time.monotonic):
        self.sqs = sqs
        self.depth = depth  # () -> messages waiting in the detect queue; None: never pause
        # () -> None, raising while the broker is unreachable (fails fast: one connection attempt).
        self.probe = probe if probe is not None else broker_probe(app)
        self.outage_visibility_s = outage_visibility_s
        self.outage_backoff_max_s = outage_backoff_max_s
        self.outage_backoff_start_s = outage_backoff_start_s
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
        """Receive one batch, enqueue its images, delete what was handled; return images enqueued.

        While the broker is unreachable this call does not receive: it waits (backing off) until the
        broker answers or ``stop`` is set, holding the messages it had in hand."""
        try:
            too_deep = self._queue_too_deep()
        except Exception as exc:  # noqa: BLE001 - the depth read failing means the broker is down
            self._ride_out_outage([], [], exc)
            return 0
        if too_deep:
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
        except Exception as exc:  # noqa: BLE001 - broker down: hold the messages, stop receiving, wait for it
            return self._ride_out_outage([message for message, _ in handled], images, exc)
        return self._enqueued(handled_messages=[message for message, _ in handled], images=images, task_ids=task_ids)

    def _enqueued(self, *, handled_messages: list[dict], images: list, task_ids: list[str]) -> int:
        for image, task_id in zip(images, task_ids, strict=True):
            log.info("enqueued s3://%s/%s etag=%s task=%s", image.bucket, image.key, image.etag, task_id)
        self.stats.enqueued += len(images)
        self._enqueued_since_depth += len(images)
        self._delete_batch(handled_messages)
        return len(images)

    def _ride_out_outage(self, messages: list[dict], images: list, exc: BaseException) -> int:
        """The broker is unreachable: receive nothing, keep ``messages`` invisible in SQS, probe the
        broker with exponential backoff; once it answers, enqueue ``images`` and delete ``messages``.
        Returns the images enqueued (0 when ``stop`` was set first: the messages are then released
        to SQS at once, for whoever listens next)."""
        self.stats.outages += 1
        started = time.monotonic()
        log.error("broker unreachable (%r): not receiving until it answers; holding %d SQS messages (%d images)",
                  exc, len(messages), len(images))
        extended_at = self._extend(messages, self.outage_visibility_s)
        delay = self.outage_backoff_start_s
        while not self.stop.wait(delay):
            delay = min(delay * 2, self.outage_backoff_max_s)
            # Extend again well before the last extension lapses: a third of the way is a margin of
            # two thirds for one backoff wait plus one probe.
            if messages and time.monotonic() - extended_at >= self.outage_visibility_s / 3:
                extended_at = self._extend(messages, self.outage_visibility_s)
            try:
                self.probe()
                task_ids = enqueue_images(self.app, images)
            except Exception as again:  # noqa: BLE001 - still down: wait longer
                log.warning("broker still unreachable after %.0f s (%r); next try in %.0f s",
                            time.monotonic() - started, again, delay)
                continue
            log.info("broker back after %.0f s: enqueuing the %d held images, receiving again",
                     time.monotonic() - started, len(images))
            self.stats.held += len(messages)
            return self._enqueued(handled_messages=messages, images=images, task_ids=task_ids)
        # Stopping: hand the messages back to SQS now rather than when the extension lapses.
        self._extend(messages, 0)
        return 0

    def _extend(self, messages: list[dict], timeout_s: int) -> float:
        """Set the visibility timeout of ``messages`` (in batches of 10, SQS's limit); return when."""
        for start in range(0, len(messages), 10):
            chunk = messages[start:start + 10]
            try:
                reply = self.sqs.change_message_visibility_batch(QueueUrl=self.queue_url, Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": timeout_s}
                    for i, m in enumerate(chunk)])
            except Exception as exc:  # noqa: BLE001 - SQS unreachable too: the messages come back, nothing lost
                log.error("visibility change of %d SQS messages failed: %r", len(chunk), exc)
                continue
            for failure in reply.get("Failed", []):
                log.error("visibility change of SQS message %s failed: %s", chunk[int(failure["Id"])].get("MessageId"),
                          failure.get("Message") or failure.get("Code"))
        return time.monotonic()

    def _queue_too_deep(self) -> bool:
        """True while the detect queue is deeper than the limit; raises when the depth cannot be read
        (the broker is down)."""
        if self.depth is None:
            return False
        now = self.clock()
        if self._last_depth is not None:
            read_at, then = self._last_depth
            if now - read_at < self.pause_poll_s and then + self._enqueued_since_depth <= self.max_queue_depth:
                return False  # what this listener added since cannot have crossed the limit: no probe
        current = self.depth()  # raises while the broker is down: the caller rides the outage out
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

    def _delete_batch(self, messages: list[dict]) -> None:
        """Delete handled messages, 10 per request; a failed delete is redelivered later and the
        workers' ETag check makes the repeat a no-op."""
        for start in range(0, len(messages), 10):
            chunk = messages[start:start + 10]
            try:
                reply = self.sqs.delete_message_batch(QueueUrl=self.queue_url, Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(chunk)])
            except Exception as exc:  # noqa: BLE001
                log.error("delete of %d SQS messages failed: %r", len(chunk), exc)
                continue
            self.stats.deleted += len(reply.get("Successful", []))
            for failure in reply.get("Failed", []):
                log.error("delete of SQS message %s failed: %s", chunk[int(failure["Id"])].get("MessageId"),
                          failure.get("Message") or failure.get("Code"))


def stop_on_signals(listener: Listener) -> None:
    """SIGTERM/SIGINT: let the batch in hand finish, then leave the loop."""

    def handler(signum, _frame):
        log.info("signal %d: finishing the current batch, then exiting", signum)
        listener.stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
