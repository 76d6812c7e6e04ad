"""Which deliveries HEAD their result before work (``workers.tasks.may_repeat``): only a message that may
be a repeat. On a real redis-server, through the workers' transport: an S3 event's first delivery is not
flagged; one requeued by a reject (a batch whose process died) or restored when its consumer's connection
closed (a worker stopped or lost) is; a re-sent retry says so in its ``attempt``, and a message that no
event sent (backfill, reconcile) is always checked."""

from __future__ import annotations

import pytest
import redis
from celery_batches import SimpleRequest
from kombu import Connection, Consumer, Exchange, Queue

from vehicle_core.config import ResultSettings
from vehicle_core.results.contract import SourceRef
from workers.broker import TRANSPORT
from workers.tasks import may_repeat

pytestmark = pytest.mark.integration

QUEUE = "redelivered-flag"
RESULTS = ResultSettings(bucket=None, prefix="results/")
EVENT = SourceRef("b", "k.jpg", etag="e1", event_time="2026-12-03T15:00:00.000Z")


@pytest.fixture
def url(redis_server):
    client = redis.Redis(port=redis_server.port)
    client.flushall()
    yield f"redis://127.0.0.1:{redis_server.port}/0"
    client.flushall()


def _request(delivery_info: dict, kwargs: dict | None = None) -> SimpleRequest:
    # as celery-batches builds it from Celery's Request, which copies the message's delivery_info
    return SimpleRequest("id", "detect", [{}], kwargs or {}, dict(delivery_info), "w@h", True, None, None, {})


def _take(url: str) -> tuple[Connection, object]:
    queue = Queue(QUEUE, Exchange(QUEUE, type="direct"), QUEUE)
    conn = Connection(url, transport=TRANSPORT)
    got = []
    with Consumer(conn, [queue], callbacks=[lambda body, message: got.append(message)], accept=["json"]):
        conn.drain_events(timeout=10)
    assert len(got) == 1
    return conn, got[0]


def _publish(url: str) -> None:
    queue = Queue(QUEUE, Exchange(QUEUE, type="direct"), QUEUE)
    with Connection(url) as conn:
        conn.Producer(serializer="json").publish({"n": 1}, exchange=queue.exchange, routing_key=QUEUE,
                                                 declare=[queue])


def test_a_first_delivery_skips_the_check_and_a_requeued_one_makes_it(url):
    _publish(url)
    conn, first = _take(url)
    assert not may_repeat(_request(first.delivery_info), EVENT, RESULTS)
    first.reject(requeue=True)  # what workers/batching.py does with the batch of a dead process
    conn.release()
    conn, again = _take(url)
    assert may_repeat(_request(again.delivery_info), EVENT, RESULTS)
    again.ack()
    conn.release()


def test_a_message_restored_when_its_consumer_went_away_makes_the_check(url):
    _publish(url)
    conn, held = _take(url)
    conn.release()  # closed holding it, unacked: the transport restores it to the queue
    conn, again = _take(url)
    assert again.payload == {"n": 1}
    assert may_repeat(_request(again.delivery_info), EVENT, RESULTS)
    again.ack()
    conn.release()


def test_a_retry_a_backfill_or_conditional_writes_off_make_the_check():
    assert may_repeat(_request({}, {"attempt": 1}), EVENT, RESULTS)
    assert may_repeat(_request({}), EVENT, ResultSettings(bucket=None, prefix="results/", conditional_writes=False))
    assert may_repeat(_request({}), SourceRef("b", "k.jpg", etag="e1"), RESULTS)  # no event: backfill, reconcile
    assert not may_repeat(_request({}), EVENT, RESULTS)


def test_recording_and_acking_a_delivery_cost_two_commands_each_without_multi_exec(url):
    # What the transport pays Redis per message beyond BRPOP (docs/scale.md), counted by redis-server:
    # ZADD + HSET to record the delivery, ZREM + HDEL for its ack; no MULTI/EXEC around either.
    client = redis.Redis.from_url(url)

    def spent() -> dict[str, int]:
        stats = client.info("commandstats")
        return {name.removeprefix("cmdstat_"): v["calls"] for name, v in stats.items()
                if name.startswith("cmdstat_") and not name.startswith(("cmdstat_config", "cmdstat_info"))}

    _publish(url)
    conn, message = _take(url)
    qos = message.channel.qos
    client.config_resetstat()
    qos.append(message, message.delivery_tag)  # what the transport did when it received it (idempotent)
    assert spent() == {"zadd": 1, "hset": 1}
    client.config_resetstat()
    message.ack()
    assert spent() == {"zrem": 1, "hdel": 1}
    assert client.hlen(message.channel.unacked_key) == 0 and client.zcard(message.channel.unacked_index_key) == 0
    conn.release()
