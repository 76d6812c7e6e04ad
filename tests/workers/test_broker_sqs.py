"""The SQS broker (``broker.url: sqs://``) on moto's real HTTP SQS server: which deliveries count as
redelivered (the crash ledger and the result check read that), images enqueued ten per request, and the
settings an SQS broker needs."""

from __future__ import annotations

import base64
import json

import pytest
from celery_batches import SimpleRequest
from kombu import Connection, Consumer, Exchange, Queue
from kombu.exceptions import OperationalError

from vehicle_core.config import ResultSettings, load_settings
from vehicle_core.errors import ConfigError
from vehicle_core.results.contract import SourceRef
from workers import broker_sqs
from workers.messages import DETECT_TASK, enqueue_image, enqueue_images, sender_app, transport_options
from workers.tasks import may_repeat

pytestmark = pytest.mark.integration

RESULTS = ResultSettings(bucket=None, prefix="results/")
EVENT = SourceRef("b", "k.jpg", etag="e1", event_time="2026-12-03T15:00:00.000Z")
# A short long-poll: kombu also hides a requeued message this long.
OPTIONS = {"region": "us-east-1", "wait_time_seconds": 1, "visibility_timeout": 30, "polling_interval": 0}


@pytest.fixture
def queue_name(sqs):
    import uuid

    name = f"q-{uuid.uuid4().hex[:12]}"
    yield name
    try:
        sqs.delete_queue(QueueUrl=sqs.get_queue_url(QueueName=name)["QueueUrl"])
    except sqs.exceptions.QueueDoesNotExist:
        pass


def _envelope(body: str) -> dict:
    """A kombu envelope as the SQS transport sends it (base64 of JSON, kombu's default for SQS)."""
    return json.loads(base64.b64decode(body))


def _request(delivery_info: dict) -> SimpleRequest:
    return SimpleRequest("id", "detect", [{}], {}, dict(delivery_info), "w@h", True, None, None, {})


def _connection() -> Connection:
    return Connection("sqs://", transport=broker_sqs.TRANSPORT, transport_options=OPTIONS)


def _publish(name: str) -> None:
    queue = Queue(name, Exchange(name, type="direct"), name)
    with _connection() as conn:
        conn.Producer(serializer="json").publish({"n": 1}, exchange=queue.exchange, routing_key=name, declare=[queue])


def _take(conn: Connection, name: str, timeout: float = 15):
    queue = Queue(name, Exchange(name, type="direct"), name)
    got = []
    with Consumer(conn, [queue], callbacks=[lambda body, message: got.append(message)], accept=["json"]):
        while not got:
            conn.drain_events(timeout=timeout)
    return got[0]


def test_a_first_delivery_is_not_redelivered_and_a_requeued_one_is(aws_env, queue_name):
    _publish(queue_name)
    with _connection() as conn:
        first = _take(conn, queue_name)
        assert first.delivery_info["redelivered"] is False
        assert not may_repeat(_request(first.delivery_info), EVENT, RESULTS)
        first.reject(requeue=True)  # a batch whose pool process died: workers/batching.py requeues it
    with _connection() as conn:
        again = _take(conn, queue_name)
        assert again.payload == {"n": 1}
        assert again.delivery_info["redelivered"] is True
        assert may_repeat(_request(again.delivery_info), EVENT, RESULTS)
        again.ack()


def test_a_message_another_consumer_received_and_never_deleted_is_redelivered(aws_env, sqs, queue_name):
    _publish(queue_name)
    url = sqs.get_queue_url(QueueName=queue_name)["QueueUrl"]
    # a worker that received it and died: SQS counted that receive; its visibility ends (0 here, at once)
    (lost,) = sqs.receive_message(QueueUrl=url, VisibilityTimeout=0, WaitTimeSeconds=5)["Messages"]
    assert _envelope(lost["Body"])["body"]  # the kombu envelope, still there
    with _connection() as conn:
        again = _take(conn, queue_name)
        assert again.delivery_info["redelivered"] is True
        again.ack()
    assert int(sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])
               ["Attributes"]["ApproximateNumberOfMessages"]) == 0


def test_receive_count_reads_sqs_attributes_and_defaults_to_zero():
    assert broker_sqs.receive_count({"Attributes": {"ApproximateReceiveCount": "3"}}) == 3
    assert broker_sqs.receive_count({}) == 0
    assert broker_sqs.receive_count({"Attributes": {"ApproximateReceiveCount": "x"}}) == 0


def _sqs_broker(queue_name: str):
    return load_settings(env={"VP_BROKER__URL": "sqs://", "VP_BROKER__STATE_URL": "redis://127.0.0.1:1/0",
                              "VP_BROKER__DETECT_QUEUE": queue_name}).broker


def test_enqueued_images_go_ten_per_request_as_the_message_one_image_sends(aws_env, sqs, queue_name, monkeypatch):
    broker = _sqs_broker(queue_name)
    app = sender_app(broker)
    sources = [SourceRef("b", f"img-{i}.jpg", etag=f"e{i}") for i in range(23)]
    calls = []
    original = broker_sqs.PublishBatch._send

    def counting(self, queue):
        calls.append(len(self.pending.get(queue, [])))
        return original(self, queue)

    monkeypatch.setattr(broker_sqs.PublishBatch, "_send", counting)
    enqueue_image(app, SourceRef("b", "single.jpg", etag="e"))
    ids = enqueue_images(app, sources)
    assert calls == [10, 10, 3]  # SendMessageBatch requests, not one SendMessage per image
    url = sqs.get_queue_url(QueueName=queue_name)["QueueUrl"]
    bodies = []
    while len(bodies) < 24:
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", [])
        assert got, f"only {len(bodies)} of 24 messages arrived"
        bodies += [_envelope(m["Body"]) for m in got]
    assert len(bodies) == 24
    by_id = {b["headers"]["id"]: b for b in bodies}
    assert set(ids) <= set(by_id)
    single = next(b for b in bodies if b["headers"]["id"] not in ids)
    for task_id in ids:
        # same envelope as the one-image path: headers and properties keys, task, routing
        assert by_id[task_id]["headers"]["task"] == DETECT_TASK == single["headers"]["task"]
        assert set(by_id[task_id]["headers"]) == set(single["headers"])
        assert set(by_id[task_id]["properties"]) == set(single["properties"])
        assert by_id[task_id]["properties"]["delivery_info"]["routing_key"] == queue_name


def test_a_message_sqs_refuses_raises_so_the_caller_sends_the_batch_again(aws_env, queue_name, monkeypatch):
    app = sender_app(_sqs_broker(queue_name))

    class Refusing:  # SQS's client, refusing the first entry of every SendMessageBatch
        def __init__(self, client):
            self.client = client

        def __getattr__(self, name):
            return getattr(self.client, name)

        def send_message_batch(self, QueueUrl, Entries):  # noqa: N803 - boto3's names
            self.client.send_message_batch(QueueUrl=QueueUrl, Entries=Entries[1:])
            return {"Successful": [{"Id": e["Id"]} for e in Entries[1:]],
                    "Failed": [{"Id": Entries[0]["Id"], "Code": "InternalError", "Message": "try again"}]}

    real = broker_sqs.Channel.sqs
    monkeypatch.setattr(broker_sqs.Channel, "sqs", lambda self, queue=None: Refusing(real(self, queue=queue)))
    with pytest.raises(OperationalError, match="SQS refused 1 of 3 messages"):
        enqueue_images(app, [SourceRef("b", f"k{i}.jpg", etag="e") for i in range(3)])


def test_an_sqs_broker_needs_a_state_redis_and_a_visibility_timeout_sqs_allows():
    with pytest.raises(ConfigError, match="broker.state_url"):
        load_settings(env={"VP_BROKER__URL": "sqs://"}).broker.state_redis_url  # noqa: B018
    broker = load_settings(env={"VP_BROKER__URL": "sqs://", "VP_BROKER__STATE_URL": "redis://h:6379/1"}).broker
    assert broker.kind == "sqs" and broker.state_redis_url == "redis://h:6379/1"
    assert transport_options(broker)["visibility_timeout"] == broker.visibility_timeout_s
    too_long = load_settings(env={"VP_BROKER__URL": "sqs://", "VP_BROKER__VISIBILITY_TIMEOUT_S": "43201"}).broker
    with pytest.raises(ConfigError, match="43200"):
        transport_options(too_long)
    redis_broker = load_settings(env={}).broker
    assert redis_broker.kind == "redis" and redis_broker.state_redis_url == redis_broker.url
    for bad in ("amqp://guest@h//", "sqs-nope", "memory://"):
        with pytest.raises(ConfigError, match="broker.url"):
            load_settings(env={"VP_BROKER__URL": bad})
    with pytest.raises(ConfigError, match="broker.state_url"):
        load_settings(env={"VP_BROKER__STATE_URL": "sqs://"})


def test_a_worker_app_on_sqs_refuses_to_start_without_the_state_redis():
    from workers.app import create_app

    with pytest.raises(ConfigError, match="broker.state_url"):
        create_app(load_settings(env={"VP_BROKER__URL": "sqs://"}))
    app = create_app(load_settings(env={"VP_BROKER__URL": "sqs://", "VP_BROKER__STATE_URL": "redis://h/0"}))
    assert app.conf.worker_enable_remote_control is False and app.conf.worker_send_task_events is False


MEND_CHECK = """
import io
from workers import broker_sqs
broker_sqs.install()
broker_sqs.install()  # idempotent: the wrappers are not stacked
from kombu.asynchronous import Hub
from kombu.asynchronous.http import Request
from kombu.asynchronous.http.curl import CurlClient, pycurl

hub, later = Hub(), []
hub.call_later = lambda seconds, fun, *args: later.append(seconds)  # what the client schedules
client = CurlClient(hub=hub)
later.clear()  # (the client's own start-up asks for a timer too)
client._set_timeout(1)  # libcurl asks for 1 ms: not 1 s
client._set_timeout(250)
client._set_timeout(-1)  # libcurl deletes its timer: nothing scheduled
assert later == [0.001, 0.25], later
seen = {}

class Handle:
    def setopt(self, option, value):
        seen[option] = value

    def unsetopt(self, option):
        seen.pop(option, None)

request = Request("http://127.0.0.1:1/", request_timeout=12.5, connect_timeout=3)
client._setup_request(Handle(), request, io.BytesIO(), client.Headers())
assert seen[pycurl.TIMEOUT_MS] == 12500 and seen[pycurl.CONNECTTIMEOUT_MS] == 3000, seen
client.close()
hub.close()
print("mended")
"""


def test_kombus_http_client_is_mended_libcurls_milliseconds_and_a_timeout_on_every_transfer():
    # In a fresh interpreter, as a worker loads it: this test process may have loaded TensorFlow already,
    # whose older libcurl keeps pycurl from loading after it (workers.broker_sqs.load_pycurl).
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", MEND_CHECK], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "mended", out.stderr[-2000:]


def test_pycurl_loads_before_tensorflow_and_not_after_it():
    # Why install() imports pycurl at once: a classify worker's process loads TensorFlow later.
    import subprocess
    import sys

    before = "from workers import broker_sqs; assert broker_sqs.load_pycurl(); import tensorflow; print('ok')"
    out = subprocess.run([sys.executable, "-c", before], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


def test_a_receive_answered_5xx_is_an_empty_poll_and_the_next_one_waits_a_second(aws_env):
    # kombu turns a 5xx into [] and then reads it as a dict: the AttributeError ended consumption for good
    # (found by the chaos test's SQS outage). Now: an empty poll, and the next poll is scheduled, later.
    scheduled = []

    class Hub:
        def call_later(self, seconds, fun, *args):
            scheduled.append(("later", seconds, args))

        def call_soon(self, fun, *args):
            scheduled.append(("soon", 0, args))

    with _connection() as conn:
        channel = conn.default_channel
        channel.hub = Hub()
        assert channel._on_messages_ready("q", "q", []) == 0
        channel._loop1("q", 0)
        assert scheduled == [("later", broker_sqs.RECEIVE_RETRY_S, ("q",))]
        channel._loop1("q", 3)  # the next poll after a good one: at once, as kombu does
        assert scheduled[-1] == ("soon", 0, ("q",))
        assert channel._on_messages_ready("q", "q", {"Messages": []}) == 0  # an empty answer: kombu's own path
        channel._loop1("q", 0)
        assert scheduled[-1] == ("soon", 0, ("q",))  # polling_interval 0 (workers.messages): at once


def test_a_requeue_sqs_refuses_lets_the_message_go_instead_of_ending_the_worker(aws_env, queue_name, monkeypatch):
    # Giving a batch back during an SQS outage raised into Celery's consumer, which exited the worker
    # (found by the chaos test). Now the message stays invisible until its visibility timeout and its
    # prefetch slot is freed; nothing is raised.
    from botocore.exceptions import EndpointConnectionError

    _publish(queue_name)
    with _connection() as conn:
        message = _take(conn, queue_name)
        channel = message.channel

        def unreachable(*_args, **_kwargs):
            raise EndpointConnectionError(endpoint_url="http://sqs.invalid")

        monkeypatch.setattr(channel, "_restore", unreachable)
        message.reject(requeue=True)  # raised EndpointConnectionError before
        assert message.delivery_tag in channel.qos._dirty  # its slot is given back (flushed on the next poll)
        monkeypatch.setattr(channel, "_delete_rejected_message", unreachable)
        _publish(queue_name)
        dropped = _take(conn, queue_name)
        dropped.channel.basic_reject(dropped.delivery_tag, requeue=False)  # and so did a failed delete


def _noisy_crop_set(n: int):
    import numpy as np

    from vehicle_core.config import CropSettings
    from vehicle_core.crop import encode_crop
    from vehicle_core.messages import CropSet
    from vehicle_core.results.contract import Detection

    rng = np.random.default_rng(5)
    crops = [encode_crop(rng.integers(0, 256, (160, 160, 3), dtype=np.uint8), CropSettings(jpeg_quality=100))
             for _ in range(n)]
    boxes = [Detection(box=(0.0, 0.0, 160.0, 160.0), score=0.9, label="car") for _ in crops]
    return CropSet(source=SourceRef("b", "busy-street.jpg", etag="e"), detections=boxes, crops=crops)


def test_wire_bytes_bounds_what_sqs_receives_for_a_crop_set(aws_env, sqs, queue_name):
    from workers.messages import CLASSIFY_TASK

    message = _noisy_crop_set(3).to_message()
    app = sender_app(_sqs_broker(queue_name))
    app.send_task(CLASSIFY_TASK, args=[message], queue=queue_name)
    url = sqs.get_queue_url(QueueName=queue_name)["QueueUrl"]
    (received,) = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=5)["Messages"]
    actual = len(received["Body"].encode())
    assert actual <= broker_sqs.wire_bytes(message) <= actual * 1.1, (actual, broker_sqs.wire_bytes(message))


def test_a_crop_set_too_large_for_one_sqs_message_is_sent_with_smaller_crops_or_not_at_all():
    from vehicle_core.crop import decode_crop
    from vehicle_core.messages import CropSet

    crop_set = _noisy_crop_set(20)  # 20 crops of noise at JPEG quality 100: over 1 MiB on the wire
    assert broker_sqs.wire_bytes(crop_set.to_message()) > broker_sqs.MAX_MESSAGE_BYTES
    message = broker_sqs.fit_crop_set(crop_set)
    assert message is not None and broker_sqs.wire_bytes(message) <= broker_sqs.MAX_MESSAGE_BYTES
    again = CropSet.from_message(message)
    assert len(again.crops) == 20 and all(decode_crop(c).shape == (160, 160, 3) for c in again.crops)
    small = _noisy_crop_set(2)
    assert broker_sqs.fit_crop_set(small) == small.to_message()  # what fits travels as it is
    assert broker_sqs.fit_crop_set(_noisy_crop_set(20), limit=50_000) is None  # no quality makes it fit
