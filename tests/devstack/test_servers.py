"""The loopback servers answer, and bucket notifications deliver real S3 events to SQS."""

from __future__ import annotations

import json
import time
from urllib.parse import unquote_plus

import redis

from devstack.servers import redis_server, wire_bucket_notifications


def test_redis_fixture_answers_on_loopback(redis_server):
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    client = redis.Redis.from_url(redis_server.url)
    client.set("k", "v")
    assert client.get("k") == b"v"


def test_redis_server_stops_on_exit():
    with redis_server() as server:
        assert redis.Redis.from_url(server.url).ping()
    try:
        redis.Redis.from_url(server.url, socket_connect_timeout=1).ping()
    except redis.ConnectionError:
        return
    raise AssertionError("redis-server still answers after the context exited")


def test_object_created_events_reach_the_queue(s3, sqs, bucket):
    queue_url = wire_bucket_notifications(s3, sqs, bucket, f"{bucket}-events")
    s3.put_object(Bucket=bucket, Key="in/a.jpg", Body=b"x")
    keys, deadline = [], time.monotonic() + 10
    while "in/a.jpg" not in keys and time.monotonic() < deadline:
        for msg in sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", []):
            keys += [unquote_plus(r["s3"]["object"]["key"]) for r in json.loads(msg["Body"]).get("Records", [])]
    assert "in/a.jpg" in keys  # S3 (and moto) URL-encode keys in events
    attrs = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["RedrivePolicy"])["Attributes"]
    assert json.loads(attrs["RedrivePolicy"])["maxReceiveCount"] in (3, "3")
