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

The server has a window of its own. redis-server stopped (SIGTERM; a crash after its AOF write is the
same) keeps in its AOF the commands of its last event-loop turn and exits without sending their replies:
a BLMPOP or BRPOP in that turn has taken its messages, persisted, and no consumer ever gets them. A
consumer popping while the server stops loses one that way about every other stop (the probe in
``tests/workers/test_take_atomic.py``; found as images without a result in the Redis-restart tests,
reproduced with a redis-server whose fsync took 20 ms). So on one list (every worker's queue)
:class:`Channel` waits with ``BLMOVE q q RIGHT RIGHT``, which takes nothing, and then takes and records
in one Lua step (:data:`TAKE_LUA`), sent in the BLMOVE's write and run by the server the moment the wait
returns: a message is on its queue or recorded as unacked, never only in a reply. A consumer of several lists keeps BLMPOP, and that window.

A second fault of the same family: a batch that celery-batches buffered across a reconnect is acked
on the channel it came from, which closed with the old connection. kombu's ``QoS.ack`` then asks a
closed channel for a client (``AttributeError: 'NoneType' object has no attribute 'hostname'``),
which Celery treats as unrecoverable: the worker process exits. Nothing is lost by that (closing the
channel put its unacked messages back on their queue, or the visibility timeout does), but a worker
that dies on every Redis restart is a fault of its own. :class:`QoS` drops an ack or reject on a
closed channel instead: the message runs again (one duplicate, absorbed by the idempotent result
writes). ``tests/workers/test_broker_closed_channel.py`` shows both.

What the broker pays per message is batched (docs/scale.md): a pop takes up to a prefetch's worth of
messages (the take step on one list; ``BLMPOP … COUNT n`` on several; BRPOP where the server has
neither, Redis < 6.2), recorded together in one ZADD + one HSET (in the take step, or
:meth:`QoS.record_many`, held and retried like one; never for a queue consumed without acks, such as a
broadcast's replies); the acks of one turn of the worker's event loop are one
ZREM + one HDEL, sent ahead of the next pop in its write when they freed the prefetch for it, else on
their own (:meth:`QoS.flush_acks`; acks pending at a close are forgotten before the close restores the
rest); a publish batch's LPUSHes to one queue are one LPUSH (:class:`PublishBatch`; the producer's and
the backfill's too); a text body travels without kombu's base64 (:meth:`Channel.encode_body`); a
pipeline of large messages goes in one write, not in redis-py's pieces (:class:`OneWrite`). An ack
lost to a connection error before it reached Redis leaves the message recorded: it runs again after
the visibility timeout, which the idempotent result writes absorb.
``tests/workers/test_broker_batches.py`` counts the commands on a real redis-server.

Installed by ``workers.app.create_app`` for ``redis://`` and ``rediss://`` broker URLs (:func:`install`).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import re
import threading
import time
from queue import Empty
from time import monotonic

import redis
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads

from vehicle_core.config import broker_kind

log = logging.getLogger(__name__)

#: Longest pause between two attempts to record a message the broker took but did not record.
RECORD_BACKOFF_MAX_S = 5.0
#: Most messages one pop takes (fewer when the prefetch allows fewer).
POP_MAX = 100
#: Most acks held for one ZREM + HDEL before they go out without waiting for the end of the loop's turn.
ACK_BATCH_MAX = 500
#: Largest command or pipeline sent in one write (:class:`OneWrite`); a larger one goes in redis-py's pieces.
ONE_WRITE_MAX = 1 << 20
#: Longest a restore sweep's lock (kombu's ``unacked_mutex``) outlives a sweep that could not release it
#: (:attr:`Channel.unacked_mutex_expire`).
RESTORE_MUTEX_S = 10


def _terminating() -> bool:
    try:
        from celery.worker import state
    except ImportError:  # pragma: no cover - kombu used without Celery
        return False
    return bool(state.should_terminate)


class QoS(kombu_redis.QoS):
    """kombu's Redis QoS whose records survive a broker that vanished right after a pop, recorded and
    forgotten a batch at a time."""

    #: woken early by a test, or by a shutdown; never used to synchronise anything.
    _wake = threading.Event()

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._recorded: set[str] = set()  # recorded by the channel's pop (:meth:`record_many`), not yet appended
        self._forget: list[str] = []  # acked here, their records not yet removed from Redis (:meth:`flush_acks`)
        self._flush_due = False

    def _until_recorded(self, record, tag, message, count: int = 1):
        """Run ``record`` until the broker answers (see the module docstring)."""
        delay, attempts = 0.1, 0
        while True:
            try:
                return record()
            except self.channel.connection_errors as exc:
                attempts += 1
                if _terminating():
                    log.error("broker unreachable at shutdown: %d message(s) (first %s, task %s) not recorded; "
                              "their images have no result, which `vehicle-producer reconcile` finds and sends "
                              "again", count, tag, _task_id(message))
                    raise
                if attempts == 1 or attempts % 20 == 0:
                    log.warning("broker unreachable while recording %d message(s) (first %s, task %s), taken "
                                "off their queue: holding them and retrying (%r)", count, tag, _task_id(message), exc)
                self._wake.wait(delay)
                delay = min(delay * 2, RECORD_BACKOFF_MAX_S)

    def append(self, message, delivery_tag):
        if delivery_tag in self._recorded:  # recorded with the rest of its pop: only the in-memory part
            self._recorded.discard(delivery_tag)
            return virtual.QoS.append(self, message, delivery_tag)
        return self._until_recorded(lambda: super(QoS, self).append(message, delivery_tag), delivery_tag, message)

    def record_many(self, payloads: list[dict]) -> None:
        """Record the messages of one pop as unacked, in one round trip (ZADD with every tag, HSET with
        every message), before any is handed on; held until the broker answers."""
        now, index, messages = time.time(), {}, {}
        for payload in payloads:
            properties = payload["properties"]
            tag, info = properties["delivery_tag"], properties["delivery_info"]
            index[tag] = now
            messages[tag] = dumps([payload, info["exchange"], info["routing_key"]])

        def record():
            with self.pipe_or_acquire() as pipe:
                pipe.zadd(self.unacked_index_key, index).hset(self.unacked_key, mapping=messages).execute()

        first = _Raw(payloads[0])
        self._until_recorded(record, first.tag, first, len(payloads))
        self.mark_recorded(index)

    def mark_recorded(self, tags) -> None:
        """Tags that the server recorded as unacked with their pop (``Channel._take``): appended in memory only."""
        self._recorded.update(tags)

    def forget_recorded(self, tags) -> None:
        """Drop what :meth:`record_many` kept in memory for tags that were not appended."""
        self._recorded.difference_update(tags)

    @contextlib.contextmanager
    def pipe_or_acquire(self, pipe=None, client=None):
        """kombu's QoS records a delivery (ZADD + HSET) and forgets an ack (ZREM + HDEL) in a MULTI/EXEC
        pipeline. Here without MULTI/EXEC, still one round trip. What atomicity bought is kept otherwise:
        a record cut short by a lost connection is sent again whole by :meth:`_until_recorded` (both
        commands are idempotent), and Redis applies (and its AOF keeps) a pipeline's commands in order,
        so the one partial state left by a server dying between two commands is harmless: an index entry
        without its message (the restore sweep finds nothing to restore and drops it) or, for an ack, a
        message without its index entry (never restored: it was acked). The restore itself
        (``restore_by_tag``) passes its own WATCH/MULTI pipeline and keeps its transaction."""
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

    def _loop(self):
        return getattr(getattr(self.channel, "connection", None), "vp_loop", None)

    def ack(self, delivery_tag):
        if self._channel_closed():
            log.info("ack of message %s on a channel closed by a lost connection: dropped (closing the "
                     "channel returned the message to its queue; it runs again)", delivery_tag)
            self._quick_ack(delivery_tag)
            return
        self._forget_later(delivery_tag)

    def reject(self, delivery_tag, requeue=False):
        if self._channel_closed():
            log.info("reject of message %s on a channel closed by a lost connection: dropped (the message "
                     "is back on its queue already)", delivery_tag)
            self._quick_ack(delivery_tag)
            return
        if requeue:
            super().reject(delivery_tag, requeue=True)
        else:
            self._forget_later(delivery_tag)

    def _forget_later(self, delivery_tag) -> None:
        """The ack frees its prefetch slot at once; its ZREM + HDEL wait for the rest of this turn of the
        worker's event loop (a batch's acks come in one turn) and go out with the others as one ZREM and
        one HDEL: ahead of the next pop, in its write, when the freed prefetch starts one at the next
        turn's poll (:meth:`take_pending_acks`), else on their own at the turn after (kombu's hub runs
        ``call_soon`` callbacks before it starts the pops, so the flush is scheduled twice over). Without
        an event loop (a plain consumer) at once, as kombu does."""
        loop = self._loop()
        self._forget.append(delivery_tag)
        self._quick_ack(delivery_tag)
        if loop is None or len(self._forget) >= ACK_BATCH_MAX:
            self.flush_acks()
        elif not self._flush_due:
            self._flush_due = True
            loop.call_soon(loop.call_soon, self.flush_acks)

    def take_pending_acks(self) -> list[str]:
        """The acks whose records are not yet removed, handed to the channel's next pop, which sends their
        ZREM + HDEL ahead of its BLMPOP in one write (:meth:`Channel._brpop_start`): no round trip of their own."""
        if self._channel_closed():
            return []
        tags, self._forget = self._forget, []
        return tags

    def give_back_acks(self, tags: list[str]) -> None:
        """Acks a pop could not send (its connection failed first): the next flush or pop sends them."""
        self._forget[:0] = tags

    def flush_acks(self) -> None:
        """Remove the records of every pending ack from Redis. A connection error leaves them recorded:
        they come back after ``broker.visibility_timeout_s`` and run again (the result writes absorb it)."""
        self._flush_due = False
        tags, self._forget = self._forget, []
        if not tags:
            return
        if self._channel_closed():
            log.info("%d ack(s) on a channel closed by a lost connection: dropped (the messages come back and run "
                     "again)", len(tags))
            return
        try:
            with self.pipe_or_acquire() as pipe:
                pipe.zrem(self.unacked_index_key, *tags).hdel(self.unacked_key, *tags).execute()
        except self.channel.connection_errors as exc:
            log.warning("could not forget %d acked message(s) (%r): they come back after the visibility timeout "
                        "and run again", len(tags), exc)

    def restore_by_tag(self, tag, client=None, leftmost=False):
        """kombu's, reading either form of record (:func:`unacked_record`)."""
        _restore_recorded(self.channel, tag, client, leftmost, lambda pipe: self._remove_from_indices(tag, pipe))

    def restore_unacked_once(self, stderr=None):
        # At exit (a multiprocessing finalizer) or on close: with the connection gone there is nothing to
        # restore through; the messages stay recorded as unacked, and come back after the visibility timeout.
        if self._connection_lost():  # (a channel closing normally is marked closed first, then restores)
            log.info("%d unacked message(s) not restored on a channel closed by a lost connection: they stay "
                     "recorded and come back after broker.visibility_timeout_s", len(self._delivered))
            return None
        tags, self._forget = self._forget, []  # acked before the close: forgotten, not restored
        if tags:
            with contextlib.suppress(*self.channel.connection_errors), self.pipe_or_acquire() as pipe:
                pipe.zrem(self.unacked_index_key, *tags).hdel(self.unacked_key, *tags).execute()
        return super().restore_unacked_once(stderr)


def unacked_record(raw) -> tuple[dict, str, str]:
    """A record of the unacked hash as ``(message, exchange, routing_key)``: kombu's own record (the list
    ``[message, exchange, routing_key]``, written by kombu and :meth:`QoS.record_many`), or the message
    alone (the take step's, :data:`TAKE_LUA`), which goes back where it was published to (its
    ``delivery_info``), as kombu restores its own."""
    record = loads(bytes_to_str(raw))
    if isinstance(record, dict):
        info = (record.get("properties") or {}).get("delivery_info") or {}
        return record, info.get("exchange") or "", info.get("routing_key") or ""
    message, exchange, routing_key = record
    return message, exchange, routing_key


def _restore_recorded(channel, tag: str, client, leftmost: bool, forget) -> None:
    """Put the message recorded under ``tag`` back on its queue and ``forget(pipe)`` its record, in one
    WATCH/MULTI transaction (kombu's restore, reading either record: :func:`unacked_record`). A message
    whose exchange has no binding left goes to the queue its routing key names, not nowhere."""

    def restore_transaction(pipe):
        raw = pipe.hget(channel.unacked_key, tag)
        pipe.multi()
        forget(pipe)
        if raw:
            message, exchange, routing_key = unacked_record(raw)
            if exchange and not channel._lookup(exchange, routing_key):
                log.warning("message %s: exchange %r has no binding for %r left; restored to queue %r",
                            tag, exchange, routing_key, routing_key)
                exchange = ""
            channel._do_restore_message(message, exchange, routing_key, pipe, leftmost)

    with channel.conn_or_acquire(client) as acquired:
        acquired.transaction(restore_transaction, channel.unacked_key)


class _Raw:
    """A raw payload seen as a message, for :func:`_task_id` and logs."""

    def __init__(self, payload: dict) -> None:
        self.headers = payload.get("headers")
        self.tag = payload["properties"]["delivery_tag"]


def envelope_body(envelope: dict) -> bytes:
    """The task body inside a kombu Redis envelope (a queue's or the unacked hash's JSON), decoded as
    its ``properties.body_encoding`` says (base64 from kombu's own senders, none from these)."""
    body = envelope["body"]
    if (envelope.get("properties") or {}).get("body_encoding") == "base64":
        return base64.b64decode(body)
    return body.encode() if isinstance(body, str) else body


def _task_id(message) -> str | None:
    try:
        return (message.headers or {}).get("id")
    except Exception:  # noqa: BLE001 - only for a log line
        return None


class OneWrite:
    """A redis-py connection (mixed in before its class) that sends a packed command or pipeline in one
    write. redis-py packs any value over 6,000 bytes as a piece of its own and sends each piece with a
    ``sendall`` of its own; with ``TCP_NODELAY`` each is a segment of its own, and redis-server, woken by
    the first, reads the rest in reads (event-loop turns) of their own. A classify message is ~8-11 KB,
    so a detect batch's hand-on (one LPUSH of four) or a pop's record (one HSET of several) went in
    nine pieces: `bench broker` counted 4.6 reads per image where the workers send ~2 pipelines, and
    Redis pays per read (docs/scale.md). Joined, a pipeline is one write: a copy of some tens of KB
    against the system calls. Above :data:`ONE_WRITE_MAX` redis-py's pieces go as they are."""

    def send_packed_command(self, command, check_health=True):
        if not isinstance(command, (str, bytes)) and len(command) > 1 \
                and sum(len(piece) for piece in command) <= ONE_WRITE_MAX:
            command = [b"".join(command)]
        return super().send_packed_command(command, check_health)


def one_write(connection_class: type) -> type:
    """``connection_class`` with :class:`OneWrite` mixed in (itself if it has it already)."""
    if issubclass(connection_class, OneWrite):
        return connection_class
    return type(f"OneWrite{connection_class.__name__}", (OneWrite, connection_class), {})


#: Takes up to ARGV[1] messages off the queue KEYS[3] (named ARGV[3]) and records them as unacked (KEYS[1] the index, score ARGV[2]; KEYS[2] the hash, each record the message itself, restored
#: where it was published to: :func:`unacked_record`) in one atomic step: a message is on its queue or
#: recorded, never only in a reply (:meth:`Channel._take`). A payload's tag is the last
#: ``"delivery_tag": "…"`` in its JSON's last KB (kombu's envelope ends with its properties; inside the
#: body every quote is escaped, so the body cannot hold that text), else cjson's. A payload with none is
#: not a kombu message (pushed by hand, or by something else): it goes to the list KEYS[4]
#: (:data:`UNREADABLE`) in the same step, where it waits for an operator, and the rest are taken; it
#: would otherwise stay at the queue's tail and stop every take. Returns ``{messages, unreadable count}``,
#: or nil for an empty queue. Every string the script makes costs Redis a hash of each of
#: its bytes (a CropSet message is ~10.5 KB): the record is the LRANGE's string as it is, not kombu's
#: ``[message, exchange, routing_key]`` built around it (docs/scale.md).
TAKE_LUA = """
local tail = redis.call('LRANGE', KEYS[3], -tonumber(ARGV[1]), -1)
if #tail == 0 then return false end
local items, scores, records, unreadable = {}, {}, {}, {}
for i = #tail, 1, -1 do  -- the tail's last first, as RPOP takes them
  local payload = tail[i]
  local tag, at = nil, math.max(1, #payload - 1024)  -- the properties close the envelope: search its end
  while true do
    local s, e = string.find(payload, '"delivery_tag": "', at, true)
    if not s then break end
    local close = string.find(payload, '"', e + 1, true)
    if not close then break end
    tag, at = string.sub(payload, e + 1, close - 1), close + 1
  end
  if not tag then
    local ok, message = pcall(cjson.decode, payload)
    tag = ok and type(message) == 'table' and type(message['properties']) == 'table'
      and message['properties']['delivery_tag'] or nil
  end
  if type(tag) == 'string' then
    items[#items + 1] = payload
    scores[#scores + 1] = ARGV[2]
    scores[#scores + 1] = tag
    records[#records + 1] = tag
    records[#records + 1] = payload
  else
    unreadable[#unreadable + 1] = payload
  end
end
redis.call('LTRIM', KEYS[3], 0, -(#tail + 1))
if #items > 0 then
  redis.call('ZADD', KEYS[1], unpack(scores))
  redis.call('HSET', KEYS[2], unpack(records))
end
if #unreadable > 0 then redis.call('LPUSH', KEYS[4], unpack(unreadable)) end
return {items, #unreadable}
"""

#: Where the take step puts a message of a queue that has no delivery tag (not a kombu message), for an operator.
UNREADABLE = "vp:unreadable:{queue}"

#: A delivery tag as :data:`TAKE_LUA` finds it (the last in a message's last KB).
_TAG = re.compile(rb'"delivery_tag": "([^"]*)"')

#: The SHA1 that EVALSHA names :data:`TAKE_LUA` by.
TAKE_SHA = hashlib.sha1(TAKE_LUA.encode()).hexdigest()


class Channel(kombu_redis.Channel):
    """kombu's Redis channel taking up to a prefetch's worth of messages per pop (on one list: a BLMOVE
    that takes nothing, then the take step, :data:`TAKE_LUA`, in one write; on several: ``BLMPOP … COUNT n``, Redis ≥
    7.0; BRPOP where the server lacks them), publishing one LPUSH per queue per batch, each pipeline in
    one write (:class:`OneWrite`)."""

    QoS = QoS
    #: The restore sweep's lock (a key with an expiry, kombu's ``Mutex``) keeps the workers from sweeping at
    #: once; it is held for the milliseconds of one sweep. A sweep that a broker restart cuts short cannot
    #: release it, and the restarted broker still has it (AOF): with kombu's 300 s no worker sweeps for five
    #: minutes after such a restart, and a message that was in flight then waits that long on top of its
    #: visibility timeout (the chaos test's Redis-restart phase gives its images 300 s in all). Two sweeps
    #: at once are harmless (each message is restored in a WATCH/MULTI transaction: once), so the lock
    #: only has to outlive a normal sweep.
    unacked_mutex_expire = RESTORE_MUTEX_S
    _blmpop = True  # until the server says it does not know the command
    _blmpop_sent = False
    _acks_sent: list[str] | tuple = ()  # acks sent ahead of the pending BLMPOP (their replies come first)

    def __init__(self, *args, **kwargs):
        #: queues consumed with ``no_ack`` (a broadcast's replies, read by ``celery inspect`` and Flower):
        #: their messages are never acked, so they are never recorded as unacked either, as in kombu.
        self._no_ack_queues: set[str] = set()
        super().__init__(*args, **kwargs)

    def _connparams(self, asynchronous=False):
        # Whatever class kombu chose (TCP, TLS, a unix socket; its own subclass for the event loop's pool).
        params = super()._connparams(asynchronous=asynchronous)
        params["connection_class"] = one_write(params["connection_class"])
        return params

    def basic_consume(self, queue, no_ack=False, *args, **kwargs):
        (self._no_ack_queues.add if no_ack else self._no_ack_queues.discard)(queue)
        return super().basic_consume(queue, no_ack, *args, **kwargs)

    def _take_command(self, queue: str) -> tuple:
        """The take step (:data:`TAKE_LUA`) for up to a prefetch's worth of ``queue``'s messages, as an
        EVALSHA to send after the BLMOVE that waits (:meth:`_brpop_start`). Its score (the time the
        restore sweep counts ``broker.visibility_timeout_s`` from) is the send's, up to the BLMOVE's
        timeout (``brpop_timeout``, 1 s) before the take."""
        return ("EVALSHA", TAKE_SHA, 4, self.unacked_index_key, self.unacked_key, queue,
                UNREADABLE.format(queue=queue), self._pop_count(), time.time(), queue)

    def _take(self, queue: str):
        """Up to a prefetch's worth of ``queue``'s messages, taken and recorded as unacked in one atomic
        step (:data:`TAKE_LUA`), the script loaded first if the server lacks it (a restarted server's
        cache is empty): ``(queue, [payload, ...])``, or None when the queue is empty."""
        if self._take_script is None:
            Channel._take_script = self.client.register_script(TAKE_LUA)
        reply = self._take_script(keys=[self.unacked_index_key, self.unacked_key, queue, UNREADABLE.format(queue=queue)],
                                  args=[self._pop_count(), time.time(), queue], client=self.client)
        return self._taken(queue, reply)

    @staticmethod
    def _taken(queue: str, reply):
        """``(queue, [payload, ...])`` from the take step's reply, or None when it took nothing to hand on;
        the messages it set aside as unreadable are logged."""
        if not reply:
            return None
        items, unreadable = reply
        if unreadable:
            key = UNREADABLE.format(queue=queue)
            log.error("%d message(s) on queue %s without a delivery tag (not kombu messages: pushed by hand or by "
                      "another client?) moved to the Redis list %s for an operator (redis-cli LRANGE %s 0 -1); the "
                      "rest are taken", unreadable, queue, key, key)
        return (queue, items) if items else None

    def _read_take(self, queue: str, **options):
        """The replies of the BLMOVE and the take sent after it: ``(queue, [payload, ...])`` or None.
        Whatever the BLMOVE answered, the take ran after it: its messages are taken and recorded, so
        they are delivered before any error of the BLMOVE is raised."""
        client, connection = self.client, self.client.connection
        wait_error = items = None
        try:
            client.parse_response(connection, "BLMOVE", **options)
        except redis.ResponseError as exc:  # an unknown command (Redis < 6.2), a key of another type
            wait_error = exc
        try:
            reply = self._taken(queue, client.parse_response(connection, "EVALSHA", **options))
        except redis.exceptions.NoScriptError:  # a restarted server: it took nothing; load it and take
            reply = self._take(queue) if wait_error is None else None
        items = reply[1] if reply else None
        if wait_error is not None and not items:
            raise wait_error
        if wait_error is not None:  # the BLMOVE failed but the take took: hand these on
            log.warning("the wait before a take failed (%s); the take took %d message(s)", wait_error, len(items))
            if "unknown command" in str(wait_error).lower():
                self._blmpop = False
                log.warning("the Redis broker lacks BLMOVE (Redis < 6.2): taking one message per BRPOP")
        return (queue, items) if items else None

    _take_queue: str | None = None
    _take_script = None

    def _restore(self, message, leftmost=False):
        """kombu's (a message put back on its queue when its channel closes), reading either form of
        record (:func:`unacked_record`)."""
        if not self.ack_emulation:
            return super()._restore(message)
        tag = message.delivery_tag
        return _restore_recorded(self, tag, None, leftmost, lambda pipe: pipe.hdel(self.unacked_key, tag))

    def _readable(self, items: list, dest: str, *, recorded: bool) -> list[dict]:
        """A pop's messages as kombu envelopes. One that is not (not JSON, or no ``properties`` with a
        ``delivery_tag``: made by hand to look like one) is set aside to :data:`UNREADABLE` with its
        unacked record (``recorded``: the take step found a tag in it) removed, and logged; the rest are
        handed on. Otherwise one such message would fail its whole pop, which would come back with it
        after the visibility timeout, again and again."""
        payloads, unreadable = [], []
        for item in items:
            try:
                payload = loads(bytes_to_str(item))
                if not isinstance(payload["properties"]["delivery_tag"], str):
                    raise TypeError("delivery_tag is not a string")
            except Exception:  # noqa: BLE001 - whatever it is, it is no message of ours
                unreadable.append(item)
                continue
            payloads.append(payload)
        if unreadable:
            key = UNREADABLE.format(queue=dest)
            raws = [raw if isinstance(raw, bytes) else raw.encode() for raw in unreadable]
            tags = [found[-1].decode() for found in (_TAG.findall(raw[-1025:]) for raw in raws) if found]
            with self.conn_or_acquire() as client:
                pipe = client.pipeline(transaction=False).lpush(key, *unreadable)
                if recorded and tags:
                    pipe.zrem(self.unacked_index_key, *tags).hdel(self.unacked_key, *tags)
                pipe.execute()
            log.error("%d message(s) on queue %s that are not kombu messages (not JSON, or no delivery tag in their "
                      "properties) moved to the Redis list %s for an operator; the rest are handed on",
                      len(unreadable), dest, key)
        return payloads

    def _deliver_all(self, payloads: list[dict], dest: str, *, recorded: bool = False) -> None:
        """Record one pop's messages (unless their queue is consumed without acks, or ``recorded``: taken
        and recorded in one step), then hand each on. A delivery that raises does not keep the rest of the
        pop from theirs; the first error is raised after (each is recorded, so none is lost either way)."""
        tags = []
        if dest not in self._no_ack_queues:
            tags = [payload["properties"]["delivery_tag"] for payload in payloads]
            if recorded:
                self.qos.mark_recorded(tags)
            else:
                self.qos.record_many(payloads)
        error = None
        try:
            for payload in payloads:
                try:
                    self.connection._deliver(payload, dest)
                except Exception as exc:  # noqa: BLE001 - raised below, after the rest are delivered
                    error = error or exc
        finally:
            # A delivery's append (synchronous, before its callback) already took its tag; one that went
            # nowhere (its queue's consumer cancelled meanwhile: kombu requeues it) must not stay here.
            self.qos.forget_recorded(tags)
        if error is not None:
            raise error

    def encode_body(self, body, encoding=None):
        """A text body (Celery's JSON: every task message here) travels as it is, not base64-encoded:
        kombu's default ``body_encoding`` makes every message 4/3 its size, and a CropSet's crops are
        base64 already. Each message says its own encoding (``properties.body_encoding``, now absent),
        so stock kombu consumers read these, and these consumers read base64 ones from older senders.
        A bytes body (a binary serializer) keeps kombu's base64."""
        if isinstance(body, str) and encoding == "base64":
            return body, None
        return super().encode_body(body, encoding)

    def _pop_count(self) -> int:
        estimate = self.qos.can_consume_max_estimate()
        return max(1, min(estimate if estimate is not None else POP_MAX, POP_MAX))

    def _brpop_start(self, timeout=None):
        self._blmpop_sent = False
        if not self._blmpop:
            return super()._brpop_start(timeout)
        if timeout is None:
            timeout = self.brpop_timeout
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        keys = [self.global_keyprefix + self._q_for_pri(queue, pri) for pri in self.priority_steps
                for queue in queues]
        connection = self._in_poll = self.client.connection
        self._brpop_sent_at = monotonic()
        # One queue (every worker here): wait without taking (BLMOVE from the list's tail to itself leaves
        # it as it was), then take and record in one atomic step (:data:`TAKE_LUA`), sent in the same write:
        # redis-server runs a client's next command as soon as its blocking one returns, so the take runs
        # the moment something is there, with no round trip between. BLMPOP takes for good: a server
        # stopped right after executing it keeps the pop (AOF) and never sends the reply, and the message is
        # gone (tests/workers/test_take_atomic.py). Several queues: BLMPOP, with that window.
        self._take_queue = queues[0] if len(keys) == 1 and not self.global_keyprefix \
            and queues[0] not in self._no_ack_queues else None
        if self._take_queue is not None:
            pop = [("BLMOVE", keys[0], keys[0], "RIGHT", "RIGHT", timeout or 0),
                   self._take_command(self._take_queue)]
        else:
            pop = [("BLMPOP", timeout or 0, len(keys), *keys, "RIGHT", "COUNT", self._pop_count())]
        # The acks of the batch that freed the prefetch for this pop go ahead of it, in the same write.
        acks = self._acks_sent = self.qos.take_pending_acks()
        if acks:
            prefix = self.global_keyprefix
            pop[:0] = [("ZREM", prefix + self.unacked_index_key, *acks), ("HDEL", prefix + self.unacked_key, *acks)]
        try:
            if len(pop) > 1:
                connection.send_packed_command(connection.pack_commands(pop))
            else:
                connection.send_command(*pop[0])
        except BaseException:
            self._acks_sent = []
            self.qos.give_back_acks(acks)
            raise
        self._blmpop_sent = True

    def _brpop_read(self, **options):
        if not self._blmpop_sent:
            return super()._brpop_read(**options)
        acks, self._acks_sent = self._acks_sent, []
        waiting = False
        try:
            try:
                for command in ("ZREM", "HDEL") if acks else ():
                    try:
                        self.client.parse_response(self.client.connection, command, **options)
                    except redis.ResponseError as exc:  # the pop's reply still follows: read it
                        log.warning("could not forget %d acked message(s) (%r): they come back after the "
                                    "visibility timeout and run again", len(acks), exc)
                # The acks' replies came at once; the pop's comes when something is there (or at its time-out).
                # Reading it now would hold the worker's event loop until then: the poll goes on instead, and
                # this runs again when its reply makes the socket readable.
                if acks and not self.client.connection.can_read(timeout=0):
                    waiting = True
                    raise Empty()
                self._blmpop_sent = False
                if self._take_queue is None:
                    reply = self.client.parse_response(self.client.connection, "BLMPOP", **options)
                else:  # the take that followed the BLMOVE (recorded by the same step)
                    reply = self._read_take(self._take_queue, **options)
            except self.connection_errors:
                self.client.connection.disconnect()  # the next poll reconnects, as kombu does
                raise
            except redis.ResponseError as exc:
                if "unknown command" not in str(exc).lower():
                    raise
                self._blmpop = False
                log.warning("the Redis broker lacks BLMOVE or BLMPOP (Redis < 6.2, < 7.0): taking one message per "
                            "BRPOP (%s)", exc)
                raise Empty() from exc
            if not reply:
                raise Empty()
            key, items = reply
            dest = bytes_to_str(key)[len(self.global_keyprefix):].rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(dest)
            payloads = self._readable(items, dest, recorded=self._take_queue is not None)
            self._deliver_all(payloads, dest, recorded=self._take_queue is not None)
            return True
        finally:
            if not waiting:
                self._blmpop_sent = False
                self._in_poll = None
                self._flush_brpop_reauth()

    def create_publish_batch(self, max_size):
        return PublishBatch(self, max_size)


_riders = threading.local()


@contextlib.contextmanager
def along_with_publish(rider):
    """While the block runs, the first publish batch this thread flushes to the Redis server of
    ``rider.client`` carries ``rider.commands`` (redis-py method name, arguments) in its write, after its
    messages, and sets ``rider.sent``; one to another server (or none at all) leaves ``sent`` false, for
    the caller to send them itself. The crash ledger's clearing of a detect batch's marks rides on its
    hand-on this way (``workers.crash_ledger.Clearing``): a round trip per batch less (docs/scale.md).
    If the write fails, neither went: the publish raises as ever and ``sent`` stays false."""
    previous = getattr(_riders, "current", None)
    _riders.current = rider
    try:
        yield rider
    finally:
        _riders.current = previous


def _server(pool) -> tuple:
    kwargs = pool.connection_kwargs
    return tuple(kwargs.get(name) for name in ("host", "port", "path", "db"))


class PublishBatch(kombu_redis.PublishBatch):
    """kombu's publish batch (one non-transactional pipeline) whose LPUSHes to one list in a row go out
    as one LPUSH with every message: ``LPUSH q a b c`` leaves the list as three LPUSHes would (``a``
    popped first), in one command instead of three; with a rider's commands when one is waiting
    (:func:`along_with_publish`)."""

    def __init__(self, channel, max_size):
        super().__init__(channel, max_size)
        self.pipeline = _CoalescingPipeline(self.pipeline)

    def flush(self):
        rider = getattr(_riders, "current", None)
        if rider is None or rider.sent or not self._buffered or \
                _server(self.pipeline.connection_pool) != _server(rider.client.connection_pool):
            return super().flush()
        for name, args in rider.commands:
            getattr(self.pipeline, name)(*args)
        super().flush()
        rider.sent = True
        return None


class _CoalescingPipeline:
    """A redis-py pipeline whose consecutive ``lpush`` calls to one key become one; every other command
    keeps its place."""

    def __init__(self, pipeline) -> None:
        self._pipeline = pipeline
        self._key, self._values = None, []

    def lpush(self, key, *values):
        if key != self._key:
            self._emit()
            self._key = key
        self._values.extend(values)
        return self

    def _emit(self) -> None:
        if self._values:
            self._pipeline.lpush(self._key, *self._values)
        self._key, self._values = None, []

    def execute(self, *args, **kwargs):
        self._emit()
        return self._pipeline.execute(*args, **kwargs)

    def reset(self):
        self._key, self._values = None, []
        return self._pipeline.reset()

    def __getattr__(self, name):
        attribute = getattr(self._pipeline, name)
        if not callable(attribute):
            return attribute

        def in_order(*args, **kwargs):
            self._emit()
            return attribute(*args, **kwargs)

        return in_order


class Transport(kombu_redis.Transport):
    Channel = Channel
    #: the worker's event loop, once registered: acks wait for the end of its turn (:meth:`QoS.ack`).
    vp_loop = None

    def register_with_event_loop(self, connection, loop):
        self.vp_loop = loop
        return super().register_with_event_loop(connection, loop)


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
