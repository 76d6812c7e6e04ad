"""The SQS transport, telling a redelivered message from a first delivery as kombu's Redis transport does.

With ``broker.url: sqs://`` the task messages live in Amazon SQS queues (one per Celery queue, created by
kombu on first use with ``broker.visibility_timeout_s``): no single server carries the fleet's messages,
and a standard queue has no practical throughput limit. What the workers need from a broker, and how
SQS gives it:

- **At-least-once, acks after the work.** A received message is invisible for the visibility timeout
  and deleted when its task is acked; a worker that dies leaves it to come back when the timeout ends
  (as Redis's unacked sweep does). A batch given back (a pool process died, a warm shutdown) is made
  visible again by kombu after ``workers.messages.SQS_WAIT_S``.
- **"Was this delivered before?"** The crash ledger and the result check look only at messages the
  broker says were redelivered (``workers.batching.redelivered``). kombu's Redis transport sets
  ``delivery_info["redelivered"]``; its SQS transport does not, so :class:`Channel` sets it from
  SQS's own count: ``ApproximateReceiveCount > 1`` (kombu asks for that attribute on every receive).
  SQS calls the count approximate. Read too high, a first delivery costs one ledger lookup more; read
  too low, a redelivery is not looked up and the death it follows is counted at the next one (the mark
  is set again): a poison image then takes one more death to be given up. Nothing is lost either way.
- **The crash ledger and the dead list** stay in a Redis (``broker.state_url``): about 2.5 commands per
  image (docs/scale.md), so one small Redis serves a fleet whose messages go through SQS.

Two faults of kombu 5.7's asynchronous HTTP client (``kombu/asynchronous/http/curl.py``), through which
a worker receives SQS messages, are mended by :func:`install`, and two of its SQS channel by :class:`Channel`:

- **A one-second stall per poll.** libcurl asks for a timer in *milliseconds* (``M_TIMERFUNCTION``);
  ``CurlClient._set_timeout`` hands the number to ``hub.call_later``, which takes *seconds*, so a
  transfer waiting on a 1 ms timer finished only at the client's own 1-second sweep. Measured on the
  bench (fake models): detect batches exactly 1.05 s apart and 3.9–6.2 images/s, against ~25 on Redis.
- **A poll that never ends.** No ``TIMEOUT`` is set on the curl handles (celery/kombu#2488): a
  connection that stays open but stops answering (a partition, a proxy restart) hangs the receive
  forever, and the worker, alive and healthy to a liveness probe, never consumes again. Every request
  now gives up after its own ``request_timeout`` (kombu's 30 s; longer than the 10-second long poll),
  and kombu's error path polls again.
- **A receive answered 5xx ends consumption.** kombu turns it into an empty list and then reads it as
  a dict; the error breaks the chain that schedules the next poll (:meth:`Channel._on_messages_ready`).
  Found by the chaos test's SQS outage: both workers stopped receiving for good.
- **A requeue during an SQS outage ends the worker.** Giving a batch back is a ChangeMessageVisibility;
  its error reached Celery's consumer as unrecoverable (:class:`QoS`). Found the same way.

Installed by ``workers.app.create_app`` (:func:`install`) for ``sqs://`` URLs.
"""

from __future__ import annotations

import logging

from kombu.exceptions import OperationalError
from kombu.transport import SQS as kombu_sqs
from kombu.transport import virtual
from kombu.utils.json import dumps

from workers.broker import _task_id

log = logging.getLogger(__name__)

#: SQS's most messages in one SendMessageBatch.
SEND_BATCH = 10
#: After a receive that failed (SQS answered 5xx, timed out), the next poll waits this long.
RECEIVE_RETRY_S = 1.0


#: SQS's largest message body (standard queues; 1 MiB since August 2025, the loopback server's limit too).
MAX_MESSAGE_BYTES = 1_048_576
#: Celery's headers and kombu's envelope around a task's arguments: a CropSet message's are ~1.5 KB.
ENVELOPE_BYTES = 8_192
#: JPEG qualities a CropSet's crops are encoded again at, in turn, until its message fits.
SHRINK_QUALITIES = (75, 50, 30)


def wire_bytes(arguments: dict) -> int:
    """Bytes SQS receives for a task message carrying ``arguments``: kombu base64-encodes the task body
    inside its envelope, then the whole envelope (``sqs_base64_encoding``): 4/3 twice."""
    body = len(dumps(arguments).encode())
    return (body * 4 // 3 + ENVELOPE_BYTES) * 4 // 3


def fit_crop_set(crop_set, limit: int = MAX_MESSAGE_BYTES):
    """The CropSet's message once it fits in one SQS message: as it is (a typical image's is ~14 KB on the
    wire; the worst the defaults allow, 20 crops of 160 px of noise at quality 92, 1.2 MB), else with its
    crops encoded again at lower JPEG qualities; None when it does not fit even then
    (``detector.max_vehicles`` or ``crop.size`` set too large for SQS)."""
    message = crop_set.to_message()
    if wire_bytes(message) <= limit:
        return message
    from vehicle_core.crop import reencode_crop

    for quality in SHRINK_QUALITIES:
        crop_set.crops = [reencode_crop(crop, quality) for crop in crop_set.crops]
        message = crop_set.to_message()
        if wire_bytes(message) <= limit:
            log.warning("crops of %s encoded again at JPEG quality %d to fit one SQS message (%d bytes)",
                        crop_set.source.uri, quality, wire_bytes(message))
            return message
    return None


def receive_count(message: dict) -> int:
    """SQS's ``ApproximateReceiveCount`` of a received message (0 when SQS did not say)."""
    try:
        return int((message.get("Attributes") or {}).get("ApproximateReceiveCount", 0))
    except (TypeError, ValueError):
        return 0


class QoS(kombu_sqs.QoS):
    def reject(self, delivery_tag, requeue=False):
        """A requeue is a ChangeMessageVisibility; with SQS unreachable kombu raised it into the
        consumer, which Celery takes as unrecoverable: the worker exited (found by the chaos test's SQS
        outage). Here the message is let go: still invisible, it comes back when its visibility timeout
        ends, and its prefetch slot is freed."""
        try:
            super().reject(delivery_tag, requeue=requeue)
        except Exception as exc:  # noqa: BLE001 - SQS unreachable: the visibility timeout gives it back
            log.warning("could not give message %s back to SQS (%r): it comes back when its visibility "
                        "timeout ends", _task_id(self._delivered.get(delivery_tag)), exc)
            self._quick_ack(delivery_tag)


class Channel(kombu_sqs.Channel):
    """kombu's SQS channel; marks redeliveries, deletes acked messages ten per request, publishes in
    batches, and keeps consuming through an SQS outage."""

    QoS = QoS

    def basic_reject(self, delivery_tag, requeue=False):
        try:
            super().basic_reject(delivery_tag, requeue=requeue)
        except Exception as exc:  # noqa: BLE001 - the delete of a dropped message failed: SQS gives it back
            log.warning("could not delete rejected message %s from SQS (%r): it comes back when its visibility "
                        "timeout ends", delivery_tag, exc)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._deletes: dict[tuple[str | None, str], list[str]] = {}  # (queue, queue URL) -> receipt handles
        self._flush_due = False

    def basic_ack(self, delivery_tag, multiple=False):
        """An ack frees its prefetch slot at once; the DeleteMessage waits for the rest of this turn of
        the worker's event loop (a batch's acks come in one turn) and goes out with up to nine others
        in one DeleteMessageBatch. Without an event loop (a plain consumer) kombu deletes at once. A
        delete that fails leaves the message to come back after its visibility timeout: it runs again,
        which the result writes absorb (at least once, as before)."""
        try:
            info = self.qos.get(delivery_tag).delivery_info
        except KeyError:
            info = {}
        if self.hub is None or "sqs_message" not in info or "sqs_queue" not in info:
            return super().basic_ack(delivery_tag, multiple)
        queue = self.canonical_queue_name(info["routing_key"]) if info.get("routing_key") else None
        pending = self._deletes.setdefault((queue, info["sqs_queue"]), [])
        pending.append(info["sqs_message"]["ReceiptHandle"])
        virtual.Channel.basic_ack(self, delivery_tag)  # the QoS slot (kombu frees it after its own delete)
        if len(pending) >= SEND_BATCH:
            self.flush_deletes()
        elif not self._flush_due:
            self._flush_due = True
            self.hub.call_soon(self.flush_deletes)

    def flush_deletes(self) -> None:
        """Send every pending delete (never raises: what is not deleted comes back, and runs again)."""
        self._flush_due = False
        deletes, self._deletes = self._deletes, {}
        for (queue, queue_url), handles in deletes.items():
            for start in range(0, len(handles), SEND_BATCH):
                chunk = handles[start:start + SEND_BATCH]
                try:
                    reply = self.sqs(queue=queue).delete_message_batch(
                        QueueUrl=queue_url, Entries=[{"Id": str(i), "ReceiptHandle": h} for i, h in enumerate(chunk)])
                except Exception as exc:  # noqa: BLE001 - an ack must not take the worker down
                    log.warning("could not delete %d acked message(s) from %s (%r): they come back after the "
                                "visibility timeout and run again", len(chunk), queue, exc)
                    continue
                for failed in reply.get("Failed") or []:
                    log.warning("SQS did not delete an acked message from %s (%s %s): it comes back after the "
                                "visibility timeout and runs again", queue, failed.get("Code"), failed.get("Message"))

    def close(self):
        self.flush_deletes()
        super().close()

    def _on_messages_ready(self, queue, qname, messages):
        """kombu answers a receive that got a 5xx or timed out with an empty *list*, then reads it as a
        dict (``AttributeError``); any error here broke the promise chain that schedules the next poll,
        and the worker, alive, never received again. Here a failed receive counts as an empty one and
        the next poll waits :data:`RECEIVE_RETRY_S` (:meth:`_loop1`)."""
        if not isinstance(messages, dict):
            self._receive_failed = True
            return 0
        try:
            return super()._on_messages_ready(queue, qname, messages)
        except Exception:  # noqa: BLE001 - one bad answer must not end consumption
            log.exception("receiving from %s failed; polling again in %.0f s", qname, RECEIVE_RETRY_S)
            self._receive_failed = True
            return 0

    def _loop1(self, queue, messages_fetched=None):
        if getattr(self, "_receive_failed", False):
            self._receive_failed = False
            self.hub.call_later(RECEIVE_RETRY_S, self._schedule_queue, queue)
            return
        super()._loop1(queue, messages_fetched)

    def _envelope_payload(self, payload, raw_text, message, q_url):
        payload = super()._envelope_payload(payload, raw_text, message, q_url)
        payload["properties"]["delivery_info"]["redelivered"] = receive_count(message) > 1
        return payload

    def create_publish_batch(self, max_size: int) -> PublishBatch:
        """What ``workers.messages.enqueue_images`` publishes through (kombu's Redis channel has one too)."""
        return PublishBatch(self)


class PublishBatch:
    """Messages to standard queues sent :data:`SEND_BATCH` per ``SendMessageBatch`` request instead of
    one ``SendMessage`` each. A failed entry raises (kombu's ``OperationalError``) after the rest of
    the batch was sent: the caller sends the whole batch again, as after a Redis failure, and the
    result writes absorb the repeats."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.pending: dict[str, list[dict]] = {}  # queue name -> SendMessageBatch entries

    def publish(self, message: dict, exchange: str = "", routing_key: str = "", **_kwargs) -> None:
        """Buffer ``message`` for the queue it routes to: ``routing_key`` itself with the default
        exchange (enqueue_images), or the queues a direct exchange binds it to (Celery's task routes)."""
        channel = self.channel
        if exchange and channel.typeof(exchange).type != "direct" or routing_key.endswith(".fifo"):
            channel.basic_publish(message, exchange, routing_key)  # fanout, topic, FIFO: kombu's own path
            return
        queues = list(channel._lookup(exchange, routing_key)) if exchange else [routing_key]
        channel._inplace_augment_message(message, exchange, routing_key)
        body = dumps(message)
        if channel.sqs_base64_encoding:
            body = kombu_sqs.AsyncMessage().encode(body)
        for queue in queues:
            entries = self.pending.setdefault(queue, [])
            entries.append({"Id": str(len(entries)), "MessageBody": body})
            if len(entries) >= SEND_BATCH:
                self._send(queue)

    def _send(self, queue: str) -> None:
        entries = self.pending.pop(queue, [])
        if not entries:
            return
        client = self.channel.sqs(queue=self.channel.canonical_queue_name(queue))
        reply = client.send_message_batch(QueueUrl=self.channel._new_queue(queue), Entries=entries)
        failed = reply.get("Failed") or []
        if failed:
            raise OperationalError(f"SQS refused {len(failed)} of {len(entries)} messages to {queue}: "
                                   f"{failed[0].get('Code')} {failed[0].get('Message')}")

    def flush(self) -> None:
        for queue in list(self.pending):
            self._send(queue)

    def discard(self) -> None:
        self.pending.clear()

    def close(self) -> None:
        self.pending.clear()


class Transport(kombu_sqs.Transport):
    Channel = Channel


#: The class path of :class:`Transport`.
TRANSPORT = f"{__name__}:Transport"


def install() -> None:
    """Make ``sqs://`` URLs use :class:`Transport` in this process (the URL keeps its scheme), and mend
    kombu's asynchronous HTTP client (module docstring)."""
    from kombu.transport import TRANSPORT_ALIASES

    TRANSPORT_ALIASES["sqs"] = TRANSPORT
    load_pycurl()
    mend_curl_client()


def load_pycurl() -> bool:
    """Import pycurl now, before anything loads TensorFlow: TensorFlow bundles an older libcurl, and a
    pycurl imported after it refuses to load ("libcurl link-time version is older than compile-time"),
    so a classify worker could not receive. ``create_app`` runs this before the tasks import any model
    framework. False (and an error logged) when pycurl cannot be imported."""
    try:
        import pycurl  # noqa: F401 - loaded for its libcurl, used by kombu's SQS transport
    except ImportError as exc:
        log.error("the SQS broker needs pycurl (pip install pycurl), imported before TensorFlow: %s", exc)
        return False
    return True


def mend_curl_client() -> None:
    """libcurl's timer in milliseconds, not seconds; a timeout on every transfer (idempotent)."""
    try:
        from kombu.asynchronous.http import curl
    except ImportError:  # pragma: no cover - pycurl missing: kombu says so when the SQS transport starts
        return
    client = curl.CurlClient
    if getattr(client, "_vp_mended", False):
        return

    def _set_timeout(self, msecs):
        if msecs >= 0:  # -1: libcurl deletes its timer; the client's 1-second sweep stays as a safety net
            self.hub.call_later(msecs / 1000.0, self._timeout_check)

    setup_request = client._setup_request

    def _setup_request(self, curl_handle, request, buffer, headers, *args, **kwargs):
        setup_request(self, curl_handle, request, buffer, headers, *args, **kwargs)
        curl_handle.setopt(curl.pycurl.CONNECTTIMEOUT_MS, int(request.connect_timeout * 1000))
        curl_handle.setopt(curl.pycurl.TIMEOUT_MS, int(request.request_timeout * 1000))

    client._set_timeout = _set_timeout
    client._setup_request = _setup_request
    client._vp_mended = True
