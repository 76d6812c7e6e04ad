"""The SQS listener against real servers: moto's SQS over HTTP and redis-server on loopback."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from devstack.demo import producer_argv, start_process, stop_process, wait_until
from producer.events import KeyFilter
from producer.listen import Listener
from tests.integration.stack import queued_tasks, redis_url
from vehicle_core.config import load_settings
from workers.messages import CLASSIFY_TASK, DETECT_TASK, sender_app

pytestmark = pytest.mark.integration
KEYS = KeyFilter(image_suffixes=(".jpg", ".png"), results_prefix="results/")


@pytest.fixture
def detect_queue(redis_server, request):
    """A fresh detect queue name per test, so tests sharing the session's Redis do not mix."""
    name = f"detect-{request.node.name[:40]}"
    client = redis.Redis.from_url(redis_url(redis_server))
    client.delete(name)
    return client, name


@pytest.fixture
def queue(sqs, request):
    """An SQS queue whose messages become visible again 1 s after a receive that did not delete them."""
    url = sqs.create_queue(QueueName=f"events-{abs(hash(request.node.name))}", Attributes={"VisibilityTimeout": "1"})
    return url["QueueUrl"]


def _app(redis_server, detect_queue_name):
    settings = load_settings(env={"VP_BROKER__URL": redis_url(redis_server), "VP_BROKER__DETECT_QUEUE": detect_queue_name})
    return sender_app(settings.broker)


def _event(bucket: str, *keys: str) -> str:
    return json.dumps({"Records": [
        {"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": bucket}, "object": {"key": k, "eTag": "e", "size": 3}}}
        for k in keys
    ]})


def _counts(sqs, url) -> tuple[int, int]:
    attrs = sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]), int(attrs["ApproximateNumberOfMessagesNotVisible"])


def test_valid_events_are_enqueued_as_chains_and_deleted_malformed_ones_stay_for_the_dlq(
    sqs, queue, redis_server, detect_queue
):
    # Given: two events (one with an encoded key, one for a result) and a malformed body
    client, qname = detect_queue
    sqs.send_message(QueueUrl=queue, MessageBody=_event("cams", "a+b%C3%A9.jpg", "results/a.jpg.json"))
    sqs.send_message(QueueUrl=queue, MessageBody=_event("cams", "c.png"))
    sqs.send_message(QueueUrl=queue, MessageBody="{not json")
    listener = Listener(sqs=sqs, queue_url=queue, app=_app(redis_server, qname), keys=KEYS, wait_time_s=1)
    # When: the listener polls until it has seen all three
    wait_until(lambda: listener.poll_once() is not None and listener.stats.received >= 3, timeout=30, what="3 receives")
    # Then: the two images wait in the detect queue, each carrying its classify step
    tasks = queued_tasks(client, qname)
    assert sorted(args[0]["key"] for _, args, _ in tasks) == ["a bé.jpg", "c.png"]
    # ... each a detect task carrying its classify step (the chain travels with the message)
    assert {(name, tuple(chained)) for name, _, chained in tasks} == {(DETECT_TASK, (CLASSIFY_TASK,))}
    # ... the handled messages are gone, the malformed one is still in SQS (so the redrive policy can act)
    assert listener.stats.deleted == 2 and listener.stats.malformed == 1
    assert sum(_counts(sqs, queue)) == 1


def test_a_broker_outage_keeps_the_sqs_message_for_redelivery(sqs, queue):
    # Given: a broker URL where nothing listens
    settings = load_settings(env={"VP_BROKER__URL": "redis://127.0.0.1:1/0"})
    app = sender_app(settings.broker)
    app.conf.broker_connection_max_retries = 0
    app.conf.broker_connection_timeout = 1
    sqs.send_message(QueueUrl=queue, MessageBody=_event("cams", "x.jpg"))
    listener = Listener(sqs=sqs, queue_url=queue, app=app, keys=KEYS, wait_time_s=1)
    # When
    wait_until(lambda: listener.poll_once() is not None and listener.stats.received >= 1, timeout=60, what="a receive")
    # Then: nothing enqueued, nothing deleted, the message is still in SQS
    assert listener.stats.failed == 1 and listener.stats.deleted == 0
    assert sum(_counts(sqs, queue)) == 1


def test_listen_command_exits_0_on_sigterm(tmp_path: Path, aws_env, sqs, queue, redis_server):
    from devstack.demo import stack_env

    env = stack_env(broker_url=redis_url(redis_server), aws=aws_env, extra={"VP_PRODUCER__WAIT_TIME_S": "1"})
    proc = start_process("producer", producer_argv(queue), env, tmp_path, cwd=Path(__file__).resolve().parents[2])
    try:
        wait_until(lambda: "listening on" in proc.log_path.read_text() or not proc.alive(), timeout=60, what="listening")
        assert proc.alive(), proc.log_tail()
        proc.popen.send_signal(signal.SIGTERM)
        assert proc.popen.wait(30) == 0, proc.log_tail()
        assert "stopped" in proc.log_path.read_text()
    finally:
        stop_process(proc)


def test_listen_without_a_queue_url_fails_with_a_config_error(redis_server):
    out = subprocess.run([sys.executable, "-m", "producer.cli", "listen"], capture_output=True, text=True, timeout=120,
                         env={"PATH": "/usr/bin:/bin", "VP_BROKER__URL": redis_url(redis_server)})
    assert out.returncode == 2 and out.stderr.strip() == (
        "vehicle-producer: no SQS queue: pass --queue-url or set producer.queue_url (VP_PRODUCER__QUEUE_URL)")


@pytest.mark.parametrize(
    "body",
    [
        json.dumps({"Records": [{"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "cams"}, "object": {"key": 7}}}]}),
        json.dumps({"Records": [{"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": ["x"]}, "object": {"key": "a.jpg"}}}]}),
        json.dumps({"Records": [{"eventName": "ObjectCreated:Put", "s3": None}]}),
        "[" * 100000 + "]" * 100000,
        json.dumps({"Type": "Notification", "Message": 5}),
        "null",
        json.dumps({"Records": [None, 3, "x"]}),
    ],
    ids=["key-not-a-string", "bucket-not-a-string", "s3-null", "deeply-nested", "sns-odd", "json-null", "odd-records"],
)
def test_any_message_leaves_only_itself_for_the_dlq_and_the_batch_proceeds(sqs, queue, redis_server, detect_queue, body):
    # Given: a hostile message between two good ones
    client, qname = detect_queue
    sqs.send_message(QueueUrl=queue, MessageBody=_event("cams", "before.jpg"))
    sqs.send_message(QueueUrl=queue, MessageBody=body)
    sqs.send_message(QueueUrl=queue, MessageBody=_event("cams", "after.jpg"))
    listener = Listener(sqs=sqs, queue_url=queue, app=_app(redis_server, qname), keys=KEYS, wait_time_s=1)
    # When
    wait_until(lambda: listener.poll_once() is not None and listener.stats.received >= 3, timeout=30, what="3 receives")
    # Then: both good images are enqueued and deleted; the hostile one stays in SQS
    assert sorted(args[0]["key"] for _, args, _ in queued_tasks(client, qname)) == ["after.jpg", "before.jpg"]
    assert listener.stats.deleted == 2 and listener.stats.malformed + listener.stats.failed == 1
    assert sum(_counts(sqs, queue)) == 1


def test_the_listener_stops_receiving_while_the_detect_queue_is_too_deep(sqs, queue, redis_server, detect_queue):
    from producer.queue_depth import depth_probe

    # Given: a detect queue holding 3 messages, a limit of 2, and one event waiting in SQS
    client, qname = detect_queue
    client.rpush(qname, b"a", b"b", b"c")
    sqs.send_message(QueueUrl=queue, MessageBody=_event("cams", "waits.jpg"))
    app = _app(redis_server, qname)
    listener = Listener(sqs=sqs, queue_url=queue, app=app, keys=KEYS, wait_time_s=1,
                        depth=depth_probe(app, qname), max_queue_depth=2, pause_poll_s=0.05)
    # When: it polls while the queue is too deep, nothing is received
    assert listener.poll_once() == 0 and listener.stats.received == 0 and listener.stats.paused == 1
    # Then: once the queue drains, the event is received and enqueued
    client.delete(qname)
    wait_until(lambda: listener.poll_once() is not None and listener.stats.enqueued == 1, timeout=30, what="enqueued")


def test_the_depth_is_read_again_only_after_pause_poll_s_or_when_own_enqueues_could_cross_the_limit(
        sqs, queue, redis_server, detect_queue):
    """One depth probe per SQS receive was ~12 Redis commands; now the listener re-reads it every
    pause_poll_s, or sooner once what it enqueued since the last reading could reach the limit."""
    _, qname = detect_queue
    reads, depth, clock = [], [0], [100.0]

    def probe() -> int:
        reads.append(clock[0])
        return depth[0]

    listener = Listener(sqs=sqs, queue_url=queue, app=_app(redis_server, qname), keys=KEYS, wait_time_s=0,
                        depth=probe, max_queue_depth=5, pause_poll_s=0.05, clock=lambda: clock[0])
    for i in range(3):  # 3 images, well below the limit of 5: one reading
        sqs.send_message(QueueUrl=queue, MessageBody=_event("cams", f"a{i}.jpg"))
        wait_until(lambda: listener.poll_once() == 1, timeout=30, what="one image enqueued")
    assert reads == [100.0] and listener.stats.enqueued == 3
    sqs.send_message(QueueUrl=queue, MessageBody=_event("cams", "b0.jpg", "b1.jpg", "b2.jpg"))
    wait_until(lambda: listener.poll_once() == 3, timeout=30, what="three images enqueued")  # 0 + 3 <= 5: no read
    assert reads == [100.0]
    depth[0] = 6  # 0 + 6 enqueued since > 5: the next poll reads the depth, finds it too deep and pauses
    assert listener.poll_once() == 0 and reads == [100.0, 100.0] and listener.stats.paused == 1
    depth[0] = 0
    clock[0] += 0.1  # past pause_poll_s: read again, and receive
    assert listener.poll_once() == 0 and reads == [100.0, 100.0, 100.1] and listener.stats.paused == 1
