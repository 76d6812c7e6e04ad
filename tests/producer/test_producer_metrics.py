"""The listener's /metrics (moto SQS over HTTP, real Redis): received, enqueued, malformed, deleted
counters, served over HTTP by producer.metrics.serve."""

from __future__ import annotations

import json
import urllib.request

import pytest
import redis

from devstack.processes import wait_until
from producer import metrics
from producer.events import KeyFilter
from producer.listen import Listener
from tests.integration.stack import free_port, redis_url
from vehicle_core.config import load_settings
from workers.messages import sender_app

pytestmark = pytest.mark.integration


def test_listener_counters_on_its_metrics_port(sqs, redis_server):
    queue = sqs.create_queue(QueueName="producer-metrics")["QueueUrl"]
    redis.Redis.from_url(redis_url(redis_server)).delete("detect-producer-metrics")
    settings = load_settings(env={"VP_BROKER__URL": redis_url(redis_server),
                                  "VP_BROKER__DETECT_QUEUE": "detect-producer-metrics"})
    body = {"Records": [{"eventName": "ObjectCreated:Put", "eventTime": "2026-11-26T08:00:00.000Z",
                         "s3": {"bucket": {"name": "cams"}, "object": {"key": k, "eTag": "e", "size": 3}}}
                        for k in ("a.jpg", "b.jpg")]}
    sqs.send_message(QueueUrl=queue, MessageBody=json.dumps(body))
    sqs.send_message(QueueUrl=queue, MessageBody="{not json")
    listener = Listener(sqs=sqs, queue_url=queue, app=sender_app(settings.broker),
                        keys=KeyFilter(image_suffixes=(".jpg",), results_prefix="results/"), wait_time_s=1)
    port = free_port()
    metrics.serve(port, lambda: listener.stats, addr="127.0.0.1")
    wait_until(lambda: listener.poll_once() is not None and listener.stats.received >= 2, timeout=30,
               what="2 receives")
    lines = set(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode().splitlines())
    assert {"vp_producer_messages_received_total 2.0", "vp_producer_images_enqueued_total 2.0",
            "vp_producer_messages_malformed_total 1.0", "vp_producer_messages_deleted_total 1.0"} <= lines
