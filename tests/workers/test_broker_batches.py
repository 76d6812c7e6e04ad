"""What the workers' Redis transport (``workers.broker``) pays the broker per message, counted by
redis-server itself (``INFO commandstats``), through kombu's event loop as a Celery worker drives it:

* a pop takes up to a prefetch's worth of messages (``BLMPOP … COUNT n``) and records them all as
  unacked in one round trip (one ZADD, one HSET), in the order they were published; on one list (a
  worker's queue) it waits with a BLMOVE that takes nothing, and the take sent in the same write runs
  the moment it returns, taking and recording in one Lua step (``workers.broker.TAKE_LUA``: one LRANGE,
  LTRIM, ZADD and HSET): one round trip, and the server takes without waiting for the client;
* the acks of one turn of the event loop go out as one ZREM and one HDEL, ahead of the next pop in the
  same write when they freed the prefetch for it (no round trip of their own);
* a publish batch's messages to one queue are one LPUSH, the producer's and the backfill's
  (``workers.messages.enqueue_images``) too;
* a server without BLMPOP (Redis < 7.0) is served one message per BRPOP;
* a text body travels as it is (kombu's default base64 made each message 4/3 its size), readable by
  stock kombu consumers, and base64 bodies from stock senders stay readable;
* a queue consumed without acks (a broadcast's replies: ``celery inspect``, Flower) is never recorded
  as unacked, since nothing would ever forget it.
"""

from __future__ import annotations

import json
import time

import pytest
import redis
from kombu import Connection, Consumer, Exchange, Queue
from kombu.asynchronous import Hub

from devstack.processes import wait_until
from devstack.servers import redis_server as start_redis
from workers.broker import TAKE_LUA, TRANSPORT

pytestmark = pytest.mark.integration

QUEUE = "batches"
# (not EVALSHA: the restore sweep's lock is released by one too; the take script's LRANGE and LTRIM show it)
COUNTED = ("blmpop", "brpop", "blmove", "lrange", "ltrim", "zadd", "hset", "zrem", "hdel", "lpush")
#: The workers' transport options: one priority step, so a worker's queue is one list (workers.messages).
ONE_LIST = {"priority_steps": [0]}


@pytest.fixture
def client(redis_server):
    client = redis.Redis(port=redis_server.port)
    client.flushall()
    yield client
    client.flushall()


def _queue() -> Queue:
    return Queue(QUEUE, Exchange(QUEUE, type="direct"), QUEUE)


def _spent(client: redis.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    return {name: stats[f"cmdstat_{name}"]["calls"] for name in COUNTED if f"cmdstat_{name}" in stats}


def _publish(url: str, bodies: list[dict]) -> None:
    with Connection(url, transport=TRANSPORT) as conn:
        producer = conn.Producer(serializer="json")
        producer.declare = [_queue()]
        _queue()(conn.default_channel).declare()
        with producer.batch(max_size=len(bodies) + 1):
            for body in bodies:
                producer.publish(body, exchange=_queue().exchange, routing_key=QUEUE)


class _Loop:
    """A kombu event loop (``Hub``) consuming one queue with a prefetch limit, as a Celery worker does."""

    def __init__(self, url: str, prefetch: int, no_ack: bool = False, options: dict | None = None) -> None:
        self.hub = Hub()
        self.conn = Connection(url, transport=TRANSPORT, transport_options=options or {})
        self.received: list = []
        self.consumer = Consumer(self.conn, [_queue()], accept=["json"], no_ack=no_ack,
                                 callbacks=[lambda body, message: self.received.append(message)])
        self.consumer.qos(prefetch_count=prefetch)
        self.conn.transport.register_with_event_loop(self.conn.connection, self.hub)
        self.consumer.consume()

    def until(self, done, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not done():
            assert time.monotonic() < deadline, f"not done after {timeout_s} s: {len(self.received)} received"
            self.hub.run_once()

    def turn(self) -> None:
        """The rest of this turn: what was scheduled with ``call_soon`` runs."""
        self.hub.run_once()

    def close(self) -> None:
        self.consumer.cancel()
        self.conn.release()
        self.hub.close()


def test_one_pop_one_record_one_ack_round_and_one_lpush_for_a_batch(redis_server, client):
    url = f"redis://127.0.0.1:{redis_server.port}/0"
    bodies = [{"n": n} for n in range(20)]
    client.config_resetstat()
    _publish(url, bodies)
    assert _spent(client) == {"lpush": 1} and client.llen(QUEUE) == 20  # 20 messages, one command

    client.config_resetstat()
    loop = _Loop(url, prefetch=8)
    try:
        loop.until(lambda: len(loop.received) >= 8)
        assert [m.payload for m in loop.received] == bodies[:8]  # first in, first out
        assert _spent(client) == {"blmpop": 1, "zadd": 1, "hset": 1}  # 8 messages: 3 commands
        assert client.hlen("unacked") == 8 and client.zcard("unacked_index") == 8  # all recorded
        # each record is what kombu's own append writes: [message, exchange, routing key]
        for message in loop.received:
            assert json.loads(client.hget("unacked", message.delivery_tag)) == [message._raw, QUEUE, QUEUE]
        assert client.llen(QUEUE) == 12  # no more than the prefetch taken

        client.config_resetstat()
        first = list(loop.received)
        for message in first:
            message.ack()
        assert client.hlen("unacked") == 8  # forgotten at the end of the loop's turn ...
        loop.until(lambda: not any(client.hexists("unacked", m.delivery_tag) for m in first)
                   and len(loop.received) >= 16)
        spent = _spent(client)
        assert spent["zrem"] == 1 and spent["hdel"] == 1  # ... all 8 at once
        assert [m.payload for m in loop.received] == bodies[:16]
        assert client.hlen("unacked") == 8  # the next 8, recorded
    finally:
        loop.close()
    assert client.llen(QUEUE) == 12 and client.hlen("unacked") == 0  # the 8 unacked at close went back


def test_on_one_list_a_pop_waits_without_taking_then_takes_and_records_in_one_step(redis_server, client):
    url = f"redis://127.0.0.1:{redis_server.port}/0"
    bodies = [{"n": n} for n in range(20)]
    _publish(url, bodies)
    client.config_resetstat()
    loop = _Loop(url, prefetch=8, options=ONE_LIST)
    try:
        loop.until(lambda: len(loop.received) >= 8)
        assert [m.payload for m in loop.received] == bodies[:8]  # first in, first out
        # the BLMOVE, then the script (Redis counts the commands it calls)
        assert _spent(client) == {"blmove": 1, "lrange": 1, "ltrim": 1, "zadd": 1, "hset": 1}
        assert client.hlen("unacked") == 8 and client.zcard("unacked_index") == 8 and client.llen(QUEUE) == 12
        for message in loop.received:  # each record is the message as it was on the queue
            assert client.hget("unacked", message.delivery_tag) == json.dumps(message._raw).encode()
        first = list(loop.received)
        first[0].reject(requeue=True)  # back on its queue (the end of the line, as kombu requeues)
        assert client.llen(QUEUE) == 13 and not client.hexists("unacked", first[0].delivery_tag)
        for message in first[1:]:
            message.ack()
        loop.until(lambda: len(loop.received) >= 16)
        assert [m.payload for m in loop.received[8:]] == bodies[8:16]
        assert not any(client.hexists("unacked", m.delivery_tag) for m in first[1:])
    finally:
        loop.close()
    assert client.llen(QUEUE) == 13 and client.hlen("unacked") == 0  # the 8 unacked at close went back


def _blocked(client: redis.Redis) -> int:
    return client.info("clients")["blocked_clients"]


def test_on_one_list_the_take_runs_when_the_wait_returns_without_the_client(redis_server, client):
    """The take goes in the BLMOVE's write: what arrives while a consumer waits is taken and recorded
    by the server before the consumer reads anything, and handed on once it does."""
    url = f"redis://127.0.0.1:{redis_server.port}/0"
    client.script_load(TAKE_LUA)  # (a server without it: the next test)
    loop = _Loop(url, prefetch=4, options={**ONE_LIST, "polling_interval": 60})  # the wait: no time-out in the test
    try:
        loop.until(lambda: _blocked(client) == 1)  # its BLMOVE waits on the empty queue
        _publish(url, [{"n": n} for n in range(6)])
        # the loop is not run: the server alone takes the prefetch's four and records them
        wait_until(lambda: client.hlen("unacked") == 4, timeout=30, what="the take, done by the server")
        assert client.llen(QUEUE) == 2 and client.zcard("unacked_index") == 4 and not loop.received
        loop.until(lambda: len(loop.received) == 4)
        assert [m.payload for m in loop.received] == [{"n": n} for n in range(4)]
        assert {m.delivery_tag for m in loop.received} == {t.decode() for t in client.hkeys("unacked")}
    finally:
        loop.close()
    assert client.llen(QUEUE) == 6 and client.hlen("unacked") == 0  # the 4 unacked at close went back


def test_on_one_list_a_server_without_the_take_script_loaded_still_serves_it(redis_server, client):
    """A restarted server has no scripts: the EVALSHA after the wait fails (NOSCRIPT) having taken
    nothing, and the consumer loads the script and takes."""
    url = f"redis://127.0.0.1:{redis_server.port}/0"
    loop = _Loop(url, prefetch=8, options={**ONE_LIST, "polling_interval": 60})  # the wait: no time-out in the test
    try:
        _publish(url, [{"n": n} for n in range(3)])
        loop.until(lambda: len(loop.received) == 3)
        for message in loop.received:
            message.ack()
        loop.until(lambda: client.hlen("unacked") == 0 and _blocked(client) == 1)
        client.config_resetstat()
        client.script_flush()  # the take waits behind the BLMOVE: it will not find the script
        _publish(url, [{"n": n} for n in range(3, 6)])
        loop.until(lambda: len(loop.received) == 6)
        assert client.info("errorstats")["errorstat_NOSCRIPT"]["count"] >= 1  # (the restore sweep's lock has a script too)
        assert [m.payload["n"] for m in loop.received] == list(range(6))
        assert client.hlen("unacked") == 3 and client.llen(QUEUE) == 0
    finally:
        loop.close()


def test_a_pop_that_carried_acks_leaves_the_event_loop_free_while_it_waits(redis_server, client):
    """The acks ride ahead of the next pop and their replies come at once; the pop's comes only when a
    message arrives. The loop reads the acks' and goes on (its timers run) instead of waiting there."""
    url = f"redis://127.0.0.1:{redis_server.port}/0"
    loop = _Loop(url, prefetch=2, options={**ONE_LIST, "polling_interval": 60})  # the wait: no time-out in the test
    fired = []
    try:
        _publish(url, [{"n": 0}, {"n": 1}])
        loop.until(lambda: len(loop.received) == 2)  # the prefetch is full: no pop waits
        for message in loop.received:
            message.ack()  # frees it: the next pop carries these acks, then waits on the empty queue
        loop.until(lambda: client.hlen("unacked") == 0 and _blocked(client) == 1)
        loop.hub.call_later(0.2, lambda: fired.append(True))
        loop.until(lambda: fired, timeout_s=20)  # the loop is not held by the waiting pop
        _publish(url, [{"n": 2}])
        loop.until(lambda: len(loop.received) == 3)
    finally:
        loop.close()


def test_on_one_list_a_server_without_blmove_hands_on_what_the_take_took_then_uses_brpop():
    """Redis < 6.2 has no BLMOVE: the take sent after it runs anyway and its messages (recorded) are
    handed on; then BRPOP, one message at a time."""
    with start_redis(extra_args=["--rename-command", "BLMOVE", ""]) as server:
        url = f"redis://127.0.0.1:{server.port}/0"
        client = redis.Redis(port=server.port)
        _publish(url, [{"n": n} for n in range(5)])
        client.script_load(TAKE_LUA)  # (else the take finds no script, and the consumer goes to BRPOP at once)
        client.config_resetstat()
        loop = _Loop(url, prefetch=3, options=ONE_LIST)
        try:
            loop.until(lambda: len(loop.received) == 3)  # the take's three
            assert _spent(client) == {"lrange": 1, "ltrim": 1, "zadd": 1, "hset": 1}
            for message in loop.received:
                message.ack()
            loop.until(lambda: len(loop.received) == 5)
            assert [m.payload["n"] for m in loop.received] == list(range(5))
            assert _spent(client)["brpop"] >= 2
            for message in loop.received[3:]:
                message.ack()
            loop.until(lambda: client.hlen("unacked") == 0)
        finally:
            loop.close()
        assert client.llen(QUEUE) == 0


def test_on_one_list_a_message_that_is_not_kombus_is_set_aside_and_the_queue_flows(redis_server, client, caplog):
    """Something pushed by hand (no delivery tag, not even JSON) ahead of the real messages: the take
    sets it aside for an operator, logs it, and hands the rest on; the queue is not stopped by it."""
    url = f"redis://127.0.0.1:{redis_server.port}/0"
    _publish(url, [{"n": 0}])
    client.lpush(QUEUE, "hello from redis-cli")  # taken after n 0 (the tail is taken first)
    _publish(url, [{"n": n} for n in range(1, 4)])
    loop = _Loop(url, prefetch=2, options=ONE_LIST)
    try:
        loop.until(lambda: len(loop.received) == 4 or (len(loop.received) >= 2 and _ack_all(loop)))
        assert [m.payload["n"] for m in loop.received] == [0, 1, 2, 3]
        assert client.lrange(f"vp:unreadable:{QUEUE}", 0, -1) == [b"hello from redis-cli"]
        assert client.llen(QUEUE) == 0 and "without a delivery tag" in caplog.text
    finally:
        loop.close()


def test_on_one_list_a_message_made_to_look_like_kombus_is_set_aside_and_its_record_removed(redis_server, client,
                                                                                            caplog):
    """A tag the take finds (so it is taken and recorded) in something that is not JSON: set aside with
    its record gone, the rest of its pop handed on, rather than the whole pop failing (and coming back
    with it after every visibility timeout)."""
    url = f"redis://127.0.0.1:{redis_server.port}/0"
    _publish(url, [{"n": 0}])
    fake = '{"properties": {"delivery_tag": "fake-tag"}, "body": "cut sh'
    client.lpush(QUEUE, fake)
    _publish(url, [{"n": 1}])
    loop = _Loop(url, prefetch=4, options=ONE_LIST)
    try:
        loop.until(lambda: len(loop.received) == 2)
        assert [m.payload["n"] for m in loop.received] == [0, 1]
        assert client.lrange(f"vp:unreadable:{QUEUE}", 0, -1) == [fake.encode()]
        assert not client.hexists("unacked", "fake-tag") and client.zscore("unacked_index", "fake-tag") is None
        assert client.hlen("unacked") == 2 and "not kombu messages" in caplog.text
    finally:
        loop.close()


def _ack_all(loop) -> bool:
    for message in loop.received:
        if not message.acknowledged:
            message.ack()
    return False


def test_either_form_of_record_goes_back_to_its_queue_at_a_sweep(redis_server, client, caplog):
    """kombu's record (``[message, exchange, routing_key]``: kombu, ``QoS.record_many``, an older worker)
    and the take step's (the message alone) are both restored by the sweep once past the visibility
    timeout; one whose exchange has no binding left goes to the queue its routing key names."""
    url = f"redis://127.0.0.1:{redis_server.port}/0"
    _publish(url, [{"n": n} for n in range(3)])
    raws = client.lrange(QUEUE, 0, -1)
    client.delete(QUEUE)
    kombus, alone, unbound = (json.loads(raw) for raw in raws)
    unbound["properties"]["delivery_info"]["exchange"] = "no-such-exchange"
    records = {kombus["properties"]["delivery_tag"]: json.dumps([kombus, QUEUE, QUEUE]),
               alone["properties"]["delivery_tag"]: json.dumps(alone),
               unbound["properties"]["delivery_tag"]: json.dumps(unbound)}
    client.hset("unacked", mapping=records)
    client.zadd("unacked_index", {tag: time.time() - 2 * 3600 for tag in records})  # past the visibility timeout
    with Connection(url, transport=TRANSPORT) as conn:
        conn.default_channel.qos.restore_visible()
    assert client.hlen("unacked") == 0 and client.zcard("unacked_index") == 0
    back = [json.loads(raw) for raw in client.lrange(QUEUE, 0, -1)]
    assert sorted(m["properties"]["delivery_tag"] for m in back) == sorted(records)
    assert all(m["properties"]["delivery_info"]["redelivered"] for m in back)
    assert "no binding" in caplog.text


def test_an_ack_just_before_the_close_is_forgotten_not_restored(redis_server, client):
    url = f"redis://127.0.0.1:{redis_server.port}/0"
    _publish(url, [{"n": n} for n in range(3)])
    loop = _Loop(url, prefetch=3)
    try:
        loop.until(lambda: len(loop.received) == 3)
        loop.received[0].ack()  # the loop's turn never ends before the close
    finally:
        loop.close()
    assert client.hlen("unacked") == 0
    assert client.llen(QUEUE) == 2  # the two unacked came back; the acked one did not
    loop = _Loop(url, prefetch=3)
    try:
        loop.until(lambda: len(loop.received) == 2)
        assert sorted(m.payload["n"] for m in loop.received) == [1, 2]
    finally:
        loop.close()


def test_a_server_without_blmpop_is_served_by_brpop():
    with start_redis(extra_args=["--rename-command", "BLMPOP", ""]) as server:
        url = f"redis://127.0.0.1:{server.port}/0"
        client = redis.Redis(port=server.port)
        _publish(url, [{"n": n} for n in range(3)])
        client.config_resetstat()
        loop = _Loop(url, prefetch=3)
        try:
            loop.until(lambda: len(loop.received) == 3)
            assert [m.payload for m in loop.received] == [{"n": 0}, {"n": 1}, {"n": 2}]
            assert _spent(client)["brpop"] == 3 and "blmpop" not in _spent(client)
            for message in loop.received:
                message.ack()
            loop.until(lambda: client.hlen("unacked") == 0)
        finally:
            loop.close()
        assert client.llen(QUEUE) == 0


def test_a_queue_consumed_without_acks_is_never_recorded_as_unacked(redis_server, client):
    """A broadcast's replies (``celery inspect``, Flower every few seconds) are consumed with ``no_ack``:
    recorded as unacked they would stay there until the visibility timeout pushed them back onto a reply
    queue nobody reads, a few more every poll."""
    url = f"redis://127.0.0.1:{redis_server.port}/0"
    _publish(url, [{"n": n} for n in range(5)])
    client.config_resetstat()
    loop = _Loop(url, prefetch=0, no_ack=True)
    try:
        loop.until(lambda: len(loop.received) == 5)
        loop.turn()
        assert [m.payload["n"] for m in loop.received] == [0, 1, 2, 3, 4]
        assert client.hlen("unacked") == 0 and client.zcard("unacked_index") == 0
        assert "zadd" not in _spent(client) and "hset" not in _spent(client) and client.llen(QUEUE) == 0
        assert not loop.conn.default_channel.qos._recorded  # nothing held in memory for them either
    finally:
        loop.close()

    # The same queue consumed again with acks is recorded again (the channel forgets the earlier no_ack).
    _publish(url, [{"n": 5}])
    loop = _Loop(url, prefetch=4)
    try:
        loop.until(lambda: len(loop.received) == 1)
        assert client.hlen("unacked") == 1
        loop.received[0].ack()
        loop.until(lambda: client.hlen("unacked") == 0)
    finally:
        loop.close()


def test_the_producer_enqueues_a_batch_of_images_in_one_lpush(redis_server, client):
    """The listener and the backfill send through ``sender_app``: a batch of images is one LPUSH too."""
    import dataclasses

    from vehicle_core.config import load_settings
    from vehicle_core.results.contract import SourceRef
    from workers.messages import enqueue_images, sender_app

    settings = load_settings(env={})
    broker = dataclasses.replace(settings.broker, url=f"redis://127.0.0.1:{redis_server.port}/0")
    app = sender_app(broker)
    sources = [SourceRef("bucket", f"in/{n}.jpg") for n in range(10)]
    client.config_resetstat()
    ids = enqueue_images(app, sources)
    assert _spent(client) == {"lpush": 1}
    assert client.llen(broker.detect_queue) == 10 and len(set(ids)) == 10
    first = json.loads(client.lindex(broker.detect_queue, -1))  # popped first: the first image
    assert first["headers"]["id"] == ids[0]


STOCK = "kombu.transport.redis:Transport"


def _send(url: str, transport: str, payload: dict) -> None:
    with Connection(url, transport=transport) as conn:
        _queue()(conn.default_channel).declare()
        conn.Producer(serializer="json").publish(payload, exchange=_queue().exchange, routing_key=QUEUE)


def _take(url: str, transport: str) -> dict:
    with Connection(url, transport=transport) as conn:
        message = _queue()(conn.default_channel).get(no_ack=True)
        assert message is not None
        return message.decode()


def test_a_text_body_travels_as_it_is_and_either_encoding_is_read_by_either_side(redis_server, client):
    from workers.broker import envelope_body

    url = f"redis://127.0.0.1:{redis_server.port}/0"
    crops = {"crops": ["A" * 10_000], "key": 'in/"quoted" ü.jpg'}
    _send(url, TRANSPORT, crops)
    raw = client.lindex(QUEUE, 0)
    envelope = json.loads(raw)
    assert "body_encoding" not in envelope["properties"] or envelope["properties"]["body_encoding"] is None
    assert json.loads(envelope_body(envelope)) == crops
    assert len(raw) < 10_000 * 1.1  # base64 would have made it over 13,300 bytes
    assert _take(url, STOCK) == crops  # a stock kombu consumer (an older worker) reads it

    _send(url, STOCK, crops)  # an older sender: base64
    envelope = json.loads(client.lindex(QUEUE, 0))
    assert envelope["properties"]["body_encoding"] == "base64" and json.loads(envelope_body(envelope)) == crops
    assert _take(url, TRANSPORT) == crops


def test_the_acks_that_free_the_prefetch_ride_ahead_of_the_next_pop(redis_server, client):
    """The batch's acks free the prefetch; the next pop's write carries their ZREM + HDEL before its
    BLMPOP, on the same connection, in that order (MONITOR shows every command with its client)."""
    url = f"redis://127.0.0.1:{redis_server.port}/0"
    _publish(url, [{"n": n} for n in range(8)])
    loop = _Loop(url, prefetch=4)
    seen: list[tuple[str, str]] = []
    try:
        loop.until(lambda: len(loop.received) == 4)
        with client.monitor() as monitor:
            first = list(loop.received)
            for message in first:
                message.ack()
            loop.until(lambda: len(loop.received) == 8)
            while len(seen) < 3 or seen[-1][1].split()[0].upper() != "BLMPOP":
                item = monitor.next_command()
                if item["command"].split()[0].upper() in ("ZREM", "HDEL", "BLMPOP"):
                    seen.append((item["client_address"] + ":" + str(item["client_port"]), item["command"]))
        assert [command.split()[0].upper() for _, command in seen[:3]] == ["ZREM", "HDEL", "BLMPOP"], seen
        assert len({addr for addr, _ in seen[:3]}) == 1, seen  # one connection: the pop's
        assert all(m.delivery_tag in seen[0][1] for m in first)  # the four acks, in one ZREM
        assert not any(client.hexists("unacked", m.delivery_tag) for m in first)
    finally:
        loop.close()
