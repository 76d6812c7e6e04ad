"""A message taken off its queue is recorded in the same atomic step: a Redis stopped right after a
pop cannot lose it.

redis-server, stopped (SIGTERM) while a consumer pops, keeps in its AOF the commands of its last
event-loop turn and exits without sending their replies. A BLMPOP (or kombu's BRPOP) in that turn has
taken its messages for good, and no consumer ever sees them: the message is in neither the queue nor
the unacked hash. With a consumer popping in a loop about half of such stops lost one
(/tmp-style probe in the PR's note: 25 of 40 and 22 of 40 stops). The workers' transport waits with
a BLMOVE that takes nothing and then takes and records in one Lua step (``workers.broker.TAKE_LUA``),
so whatever a stop cuts off is on its queue or in the unacked hash, where the restore sweep finds it.
Here: rounds of a pusher and a consumer on a real redis-server (AOF on), stopped at a random moment;
every message the server kept is afterwards on the queue, in the unacked hash or delivered.
"""

from __future__ import annotations

import glob
import random
import re
import threading

import pytest
import redis
from kombu import Connection, Consumer, Exchange, Queue

from devstack.processes import wait_until
from devstack.servers import free_port, redis_server
from workers.broker import TRANSPORT

pytestmark = pytest.mark.integration

QUEUE = "take"
ROUNDS = 10


def _kept_by_server(data_dir) -> set[int]:
    """The message numbers whose LPUSH the server wrote to its AOF (it kept them, reply or not)."""
    aof = b"".join(open(f, "rb").read() for f in glob.glob(f"{data_dir}/appendonlydir/*.incr.aof"))
    return {int(n) for n in re.findall(rb'\\"n\\": (\d+)', aof)}


def _round(tmp_path, rng: random.Random) -> tuple[set[int], set[int]]:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    options = {"priority_steps": [0]}  # the workers' (workers.messages.PRIORITY_STEPS)
    queue = Queue(QUEUE, Exchange(QUEUE, type="direct"), QUEUE)
    server = redis_server(port, data_dir=tmp_path)
    server.__enter__()
    delivered: set[int] = set()
    pushing = threading.Event()

    def push() -> None:
        with Connection(url, transport=TRANSPORT, transport_options=options) as conn:
            producer = conn.Producer(serializer="json")
            n = 0
            try:
                while True:
                    producer.publish({"n": n}, exchange=queue.exchange, routing_key=QUEUE, declare=[queue],
                                     retry=False)
                    n += 1
                    pushing.set()
            except Exception:  # noqa: BLE001 - the server went away: the round's end
                return

    def consume() -> None:
        conn = Connection(url, transport=TRANSPORT, transport_options=options)

        def on_message(body, message) -> None:
            delivered.add(body["n"])
            message.ack()

        try:
            with Consumer(conn, [queue], callbacks=[on_message], accept=["json"], prefetch_count=4):
                while True:
                    try:
                        conn.drain_events(timeout=1)
                    except TimeoutError:
                        continue
        except Exception:  # noqa: BLE001 - the server went away: the round's end
            return

    threads = [threading.Thread(target=push, daemon=True), threading.Thread(target=consume, daemon=True)]
    for t in threads:
        t.start()
    wait_until(pushing.is_set, timeout=30, what="the first push")
    threading.Event().wait(rng.uniform(0.05, 0.3))  # a random moment of the traffic, not a synchronisation
    server.__exit__(None, None, None)
    for t in threads:
        t.join(timeout=30)
    server = redis_server(port, data_dir=tmp_path)
    server.__enter__()
    try:
        client = redis.Redis(port=port)
        kept = _kept_by_server(tmp_path)
        found = set(delivered)
        for raw in client.lrange(QUEUE, 0, -1) + client.hvals("unacked"):
            found.update(int(n) for n in re.findall(rb'\\"n\\": (\d+)', raw))
        return kept, found
    finally:
        server.__exit__(None, None, None)


def test_a_server_stopped_mid_pop_keeps_every_message_it_kept(tmp_path):
    rng = random.Random(20261207)
    lost = []
    for i in range(ROUNDS):
        (tmp_path / f"round{i}").mkdir()
        kept, found = _round(tmp_path / f"round{i}", rng)
        assert kept, "the round pushed nothing"
        lost += sorted(kept - found)
    assert lost == [], f"messages the server kept but nobody has: {lost}"


def test_the_take_script_finds_a_tag_anywhere_and_sets_aside_a_message_with_none(redis_server):
    from workers.broker import TAKE_LUA

    client = redis.Redis(port=redis_server.port)
    client.flushall()
    take = client.register_script(TAKE_LUA)
    keys = ["idx", "un", "q", "unreadable"]
    far = '{"properties": {"delivery_tag": "far"}, "pad": "' + "x" * 5000 + '"}'  # not in the last KB: cjson
    near = '{"body": "{\\"delivery_tag\\": \\"body\\"}", "properties": {"delivery_tag": "near"}}'
    client.lpush("q", far, near)  # far is taken first (the tail)
    assert take(keys=keys, args=[10, 1.5, "q"]) == [[far.encode(), near.encode()], 0]
    assert sorted(client.hkeys("un")) == [b"far", b"near"] and client.zscore("idx", "near") == 1.5
    assert client.hget("un", "near") == near.encode()  # the message itself, as it was on the queue
    client.delete("un", "idx")
    # not kombu messages: set aside in the same step, the rest taken; the queue is not stopped by them
    client.lpush("q", '{"properties": {}}', near, "not json", far)
    assert take(keys=keys, args=[10, 2.0, "q"]) == [[near.encode(), far.encode()], 2]
    assert client.llen("q") == 0 and sorted(client.hkeys("un")) == [b"far", b"near"]
    assert client.lrange("unreadable", 0, -1) == [b"not json", b'{"properties": {}}']
    assert take(keys=keys, args=[10, 3.0, "q"]) is None  # an empty queue
    client.flushall()
