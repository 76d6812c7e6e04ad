"""The cause of the message lost in the chaos test's Redis restart, reproduced and closed.

kombu's Redis transport takes a message off its queue with BRPOP and records it in the ``unacked``
hash in a second round trip. A proxy between the consumer and a real redis-server cuts every
connection right after a BRPOP reply (the broker restarting in that instant):

* with kombu's own transport the message is then in neither place: lost for good;
* with ``workers.broker.Transport`` the consumer holds it, records it once the broker answers
  again, and delivers it: nothing lost.
"""

from __future__ import annotations

import threading

import pytest
import redis
from kombu import Connection, Consumer, Exchange, Queue

from devstack.tcp_proxy import tcp_proxy
from workers.broker import TRANSPORT, transport_for

pytestmark = pytest.mark.integration

QUEUE = "window"
REFUSALS = 6


def _publish(port: int, body: dict) -> None:
    with Connection(f"redis://127.0.0.1:{port}/0") as conn:
        exchange = Exchange(QUEUE, type="direct")
        producer = conn.Producer(serializer="json")
        producer.publish(body, exchange=exchange, routing_key=QUEUE, declare=[Queue(QUEUE, exchange, QUEUE)])


def _where(client: redis.Redis) -> tuple[int, int]:
    """(messages on the queue's list, messages in the unacked hash)."""
    return client.llen(QUEUE), client.hlen("unacked")


@pytest.fixture
def broker(redis_server):
    client = redis.Redis(port=redis_server.port)
    client.flushall()
    yield redis_server, client
    client.flushall()


def _consume_through_cut(port: int, transport: str | None, client: redis.Redis):
    """Consume one message through a proxy that cuts right after the BRPOP reply; return what the
    consumer received, the error it raised, and where the message was while the broker was away."""
    received, errors, seen_during_cut = [], [], {}
    with tcp_proxy(port) as proxy:
        proxy.cut_after_pop()
        conn = Connection(f"redis://127.0.0.1:{proxy.port}/0", transport=transport,
                          transport_options={"visibility_timeout": 3600})
        queue = Queue(QUEUE, Exchange(QUEUE, type="direct"), QUEUE)

        def consume():
            try:
                with Consumer(conn, [queue], callbacks=[lambda body, message: received.append(body)],
                              accept=["json"]):
                    conn.drain_events(timeout=30)
            except Exception as exc:  # noqa: BLE001 - what the stock transport raises is the point
                errors.append(exc)

        worker = threading.Thread(target=consume, daemon=True)
        worker.start()
        assert proxy.cut.wait(30), "the consumer never took the message"
        # Away for longer than the stock transport waits (it gives up within a second): a restart.
        assert proxy.wait_refused(REFUSALS, timeout=120, give_up=lambda: not worker.is_alive())
        seen_during_cut["queue_and_unacked"] = _where(client)
        proxy.resume()  # the broker is back
        worker.join(60)
        assert not worker.is_alive()
        seen_during_cut["after"] = _where(client)
        conn.release()  # closing without an ack: kombu restores what it recorded
    return received, errors, seen_during_cut["queue_and_unacked"], seen_during_cut["after"]


def test_kombu_redis_transport_loses_a_message_taken_just_before_the_broker_went_away(broker):
    server, client = broker
    _publish(server.port, {"image": "img-1152.jpg"})
    # kombu's own class by name: workers.broker.install() (the workers' app, the producer's) may have
    # made it the redis:// scheme's transport in this process already
    received, errors, during, _ = _consume_through_cut(server.port, "kombu.transport.redis:Transport", client)
    assert during == (0, 0)  # off the list, not yet recorded
    assert received == [] and errors  # the consumer raised a connection error ...
    assert _where(client) == (0, 0)  # ... and the message is nowhere: lost


@pytest.mark.parametrize("count", [1, 3])
def test_the_project_transport_records_it_once_the_broker_is_back(broker, count):
    # With 3 waiting, the one pop (BLMPOP ... COUNT n) takes them all: all 3 were only in the consumer.
    server, client = broker
    bodies = [{"image": f"img-{1152 + n}.jpg"} for n in range(count)]
    for body in bodies:
        _publish(server.port, body)
    received, errors, during, after = _consume_through_cut(server.port, TRANSPORT, client)
    assert during == (0, 0)  # the same instant: only the consumer holds them
    assert errors == []
    assert received == bodies
    assert after == (0, count)  # recorded: a restart or the visibility timeout restores them
    assert _where(client) == (count, 0)  # and the consumer closing unacked put them back on their queue


def test_transport_for_picks_redis_urls_only():
    assert transport_for("redis://:pw@host:6379/0") == TRANSPORT
    assert transport_for("rediss://host:6380/0") == TRANSPORT
    assert transport_for("sqs://") is None
    assert transport_for("sentinel://host:26379") is None
