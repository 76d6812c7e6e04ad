"""An ack on a channel that closed with its connection (a Redis restart while celery-batches held the
message in a buffered batch) must not end the worker, and must not lose the message.

On a real redis-server: a message is taken through a consumer, its channel is left as a lost
connection leaves it, then the held message is acked, as a batch flushed after the reconnect does. kombu's own transport raises AttributeError there (Celery's "Unrecoverable error": the worker
exits, seen in a 20-restart run); ``workers.broker.Transport`` drops the ack and the message is on its
queue, to run again.
"""

from __future__ import annotations

import pytest
import redis
from kombu import Connection, Consumer, Exchange, Queue

from workers.broker import TRANSPORT

pytestmark = pytest.mark.integration

QUEUE = "closed-channel"


@pytest.fixture
def client(redis_server):
    c = redis.Redis(port=redis_server.port)
    c.flushall()
    yield c
    c.flushall()


def _take_then_lose_transport(port: int, transport: str, client: redis.Redis):
    """Publish one message, take it through a consumer (recorded as unacked), then leave its channel in
    the state a lost connection leaves it in when Celery's consumer reconnects: the transport detached
    from its connection (``Connection._do_close_transport``) and the channel's pools dropped. This is
    the state of the channel in the worker's traceback (``_connparams``: ``conninfo`` is None)."""
    queue = Queue(QUEUE, Exchange(QUEUE, type="direct"), QUEUE)
    with Connection(f"redis://127.0.0.1:{port}/0") as conn:
        conn.Producer(serializer="json").publish({"n": 1}, exchange=queue.exchange, routing_key=QUEUE,
                                                 declare=[queue])
    conn = Connection(f"redis://127.0.0.1:{port}/0", transport=transport)
    got = []
    with Consumer(conn, [queue], callbacks=[lambda body, message: got.append(message)], accept=["json"]):
        conn.drain_events(timeout=10)
    assert len(got) == 1 and got[0].payload == {"n": 1}
    assert client.hlen("unacked") == 1  # taken and recorded
    message = got[0]
    message.channel._disconnect_pools()
    conn._do_close_transport()
    assert message.channel.connection.client is None
    return message


@pytest.mark.parametrize("settle", ["ack", "reject"])
def test_an_ack_or_reject_on_a_lost_channel_is_dropped_and_the_message_is_kept(redis_server, client, settle):
    message = _take_then_lose_transport(redis_server.port, TRANSPORT, client)
    getattr(message, settle)()  # no error: the worker goes on
    # Still recorded as unacked: the visibility timeout (or the close's restore) brings it back to run again.
    assert client.llen(QUEUE) + client.hlen("unacked") == 1


def test_kombus_own_transport_raises_there(redis_server, client):
    message = _take_then_lose_transport(redis_server.port, "kombu.transport.redis:Transport", client)
    with pytest.raises(AttributeError):
        message.ack()
    message.channel.qos.restore_at_shutdown = False  # its exit finalizer would raise the same


def test_the_restore_at_exit_on_a_lost_channel_leaves_the_message_recorded(redis_server, client):
    # kombu registers restore_unacked_once as an exit finalizer; on a lost channel its own QoS raises there
    # (a traceback at the end of a worker's or a test run's output)
    message = _take_then_lose_transport(redis_server.port, TRANSPORT, client)
    message.channel.qos.restore_unacked_once()
    assert client.hlen("unacked") == 1 and client.llen(QUEUE) == 0  # still recorded: the visibility timeout restores it
    client.flushall()
    stock = _take_then_lose_transport(redis_server.port, "kombu.transport.redis:Transport", client)
    with pytest.raises(AttributeError):
        stock.channel.qos.restore_unacked_once()
    stock.channel.qos.restore_at_shutdown = False  # not again at this test run's exit
