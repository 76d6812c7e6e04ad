"""The SQS listener against real servers: moto's SQS over HTTP and redis-server on loopback."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import redis

from devstack.processes import start_process, stop_process, wait_until
from devstack.servers import free_port
from devstack.servers import redis_server as redis_server_on
from devstack.stack import producer_argv
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


class CountingSQS:
    """A boto3 SQS client that counts the calls made through it (per method name)."""

    def __init__(self, client) -> None:
        self.client, self.calls = client, Counter()

    def __getattr__(self, name):
        attr = getattr(self.client, name)
        if not callable(attr):
            return attr

        def counted(*args, **kwargs):
            self.calls[name] += 1
            return attr(*args, **kwargs)

        return counted


@pytest.fixture
def queue_with_dlq(sqs, request):
    """(queue URL, DLQ URL): visibility 1 s and maxReceiveCount 1, so a second receive of any message
    moves it to the DLQ: a message left to expire during an outage would end there."""
    name = f"outage-{abs(hash(request.node.name))}"
    dlq = sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    url = sqs.create_queue(QueueName=name, Attributes={
        "VisibilityTimeout": "1",
        "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "1"})})["QueueUrl"]
    return url, dlq


class Outage:
    """A redis-server of our own on a fixed port, which a test stops and starts again."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._ctx = None

    def up(self) -> None:
        self._ctx = redis_server_on(port=self.port)
        self._ctx.__enter__()

    def down(self) -> None:
        if self._ctx is not None:
            self._ctx.__exit__(None, None, None)
            self._ctx = None


@pytest.fixture
def outage():
    server = Outage()
    yield server
    server.down()


def _running(listener: Listener) -> threading.Thread:
    thread = threading.Thread(target=listener.run, daemon=True)
    thread.start()
    return thread


def _outage_listener(sqs, url, outage, qname, **kwargs) -> Listener:
    settings = load_settings(env={"VP_BROKER__URL": outage.url, "VP_BROKER__DETECT_QUEUE": qname})
    app = sender_app(settings.broker)
    return Listener(sqs=sqs, queue_url=url, app=app, keys=KEYS, wait_time_s=1, outage_visibility_s=3,
                    outage_backoff_start_s=0.1, outage_backoff_max_s=0.5, **kwargs)


def test_a_broker_outage_holds_the_messages_in_hand_and_receives_nothing_until_redis_is_back(
    sqs, queue_with_dlq, outage
):
    # Given: Redis down, 3 events in SQS, a listener without a depth probe (so it receives them and
    # only finds the broker down when it enqueues)
    url, dlq = queue_with_dlq
    for i in range(3):
        sqs.send_message(QueueUrl=url, MessageBody=_event("cams", f"before-{i}.jpg"))
    counting = CountingSQS(sqs)
    listener = _outage_listener(counting, url, outage, "detect-outage-held")
    thread = _running(listener)
    try:
        # When: it has received the 3, failed to enqueue them, and extended their visibility 3 times
        # (every second: the outage then outlasts the queue's 1 s visibility timeout twice over)
        wait_until(lambda: listener.stats.outages == 1, timeout=60, what="the outage noticed")
        receives_when_down = counting.calls["receive_message"]
        wait_until(lambda: counting.calls["change_message_visibility_batch"] >= 3, timeout=60, what="3 extensions")
        # ... 2 more events arrive during the outage
        for i in range(2):
            sqs.send_message(QueueUrl=url, MessageBody=_event("cams", f"during-{i}.jpg"))
        # Then: no receive while down; the 3 stay received once, in hand (not visible, not dead-lettered)
        assert counting.calls["receive_message"] == receives_when_down
        assert listener.stats.received == 3 and listener.stats.enqueued == 0
        assert _counts(sqs, url) == (2, 3) and sum(_counts(sqs, dlq)) == 0
        # When: Redis comes back on its port
        outage.up()
        wait_until(lambda: listener.stats.enqueued == 5, timeout=60, what="all 5 enqueued")
    finally:
        listener.stop.set()
        thread.join(30)
    # Then: every image waits in the detect queue once, SQS and its DLQ are empty
    client = redis.Redis.from_url(outage.url)
    assert sorted(args[0]["key"] for _, args, _ in queued_tasks(client, "detect-outage-held")) == [
        "before-0.jpg", "before-1.jpg", "before-2.jpg", "during-0.jpg", "during-1.jpg"]
    assert listener.stats.held == 3 and listener.stats.deleted == 5 and listener.stats.failed == 0
    wait_until(lambda: sum(_counts(sqs, url)) == 0, timeout=30, what="the queue empty")
    assert sum(_counts(sqs, dlq)) == 0


def test_while_the_depth_read_fails_the_listener_does_not_receive_and_backs_off(sqs, queue_with_dlq, outage):
    from producer.queue_depth import broker_probe, depth_probe

    # Given: Redis down, 4 events in SQS, a listener with the depth probe (as `listen` runs it)
    url, dlq = queue_with_dlq
    for i in range(4):
        sqs.send_message(QueueUrl=url, MessageBody=_event("cams", f"waits-{i}.jpg"))
    settings = load_settings(env={"VP_BROKER__URL": outage.url, "VP_BROKER__DETECT_QUEUE": "detect-outage-depth"})
    app = sender_app(settings.broker)
    probes: list[float] = []
    real_probe = broker_probe(app)

    def probe():
        probes.append(time.monotonic())
        real_probe()

    counting = CountingSQS(sqs)
    listener = Listener(sqs=counting, queue_url=url, app=app, keys=KEYS, wait_time_s=1,
                        depth=depth_probe(app, "detect-outage-depth"), probe=probe,
                        outage_backoff_start_s=0.1, outage_backoff_max_s=0.8)
    thread = _running(listener)
    try:
        # When: it has probed the broker 6 times
        wait_until(lambda: len(probes) >= 6, timeout=60, what="6 probes")
        # Then: not one receive; the probes back off (doubling, capped), no busy loop
        assert counting.calls["receive_message"] == 0 and listener.stats.received == 0
        gaps = [b - a for a, b in zip(probes, probes[1:], strict=False)]
        assert gaps[0] >= 0.2 and all(gap >= 0.75 for gap in gaps[3:5]), gaps
        assert _counts(sqs, url) == (4, 0)
        outage.up()
        wait_until(lambda: listener.stats.enqueued == 4, timeout=60, what="all 4 enqueued")
    finally:
        listener.stop.set()
        thread.join(30)
    client = redis.Redis.from_url(outage.url)
    assert len(queued_tasks(client, "detect-outage-depth")) == 4
    assert sum(_counts(sqs, dlq)) == 0


def test_stopping_during_an_outage_hands_the_messages_back_at_once(sqs, queue_with_dlq, outage):
    url, dlq = queue_with_dlq
    sqs.send_message(QueueUrl=url, MessageBody=_event("cams", "x.jpg"))
    counting = CountingSQS(sqs)
    listener = _outage_listener(counting, url, outage, "detect-outage-stop")
    thread = _running(listener)
    wait_until(lambda: counting.calls["change_message_visibility_batch"] >= 1, timeout=60, what="the hold")
    listener.stop.set()
    thread.join(30)
    assert not thread.is_alive()
    # The message is visible again (visibility 0), received once, not deleted, not dead-lettered
    assert listener.stats.deleted == 0 and _counts(sqs, url) == (1, 0) and sum(_counts(sqs, dlq)) == 0


def test_redrive_dry_run_changes_nothing_and_apply_moves_every_message_back(aws_env, sqs, queue_with_dlq, capsys):
    from producer.cli import main

    # Given: 13 dead-lettered events (more than one batch of 10) and an empty source queue
    url, dlq = queue_with_dlq
    for i in range(13):
        sqs.send_message(QueueUrl=dlq, MessageBody=_event("cams", f"dead-{i:02d}.jpg"))
    # When: a dry run
    assert main(["redrive", "--queue-url", url]) == 0
    out = capsys.readouterr().out
    # Then: the count and a sample of keys, and nothing moved (all 13 still visible in the DLQ)
    assert out.splitlines()[0] == f"13 messages in {dlq} (dry run: nothing moved; --apply moves them back to {url})"
    assert "  s3://cams/dead-" in out
    assert _counts(sqs, dlq) == (13, 0) and sum(_counts(sqs, url)) == 0
    # When: --apply, twice
    assert main(["redrive", "--queue-url", url, "--apply"]) == 0
    assert capsys.readouterr().out.strip() == f"moved 13 messages from {dlq} back to {url}"
    assert main(["redrive", "--queue-url", url, "--apply"]) == 0
    assert capsys.readouterr().out.strip() == f"moved 0 messages from {dlq} back to {url}"
    # Then: the source queue holds each event once, the DLQ none
    bodies = []
    while True:
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1,
                                  VisibilityTimeout=30).get("Messages", [])
        if not got:
            break
        bodies += [json.loads(m["Body"])["Records"][0]["s3"]["object"]["key"] for m in got]
    assert sorted(bodies) == [f"dead-{i:02d}.jpg" for i in range(13)]
    assert sum(_counts(sqs, dlq)) == 0


def test_redrive_of_a_queue_without_a_redrive_policy_is_a_one_line_error(aws_env, sqs, queue, capsys):
    from producer.cli import main

    assert main(["redrive", "--queue-url", queue]) == 2
    assert capsys.readouterr().err.strip() == (
        f"vehicle-producer: {queue} has no redrive policy: name the dead-letter queue with --dlq-url")


def test_listen_command_exits_0_on_sigterm(tmp_path: Path, aws_env, sqs, queue, redis_server):
    from devstack.stack import stack_env

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
