"""Per-request retries of the batched classify task: re-sent with backoff, then an error result."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import redis

from tests.integration.stack import redis_url
from vehicle_core.config import ResultSettings, load_settings
from vehicle_core.errors import StorageUnavailableError, UndecodableImageError
from vehicle_core.results.contract import SourceRef
from workers.batching import retry_later
from workers.broker import envelope_body
from workers.messages import CLASSIFY_TASK, sender_app

pytestmark = pytest.mark.integration
RESULTS = ResultSettings(bucket=None, prefix="results/")


@pytest.fixture
def classify_queue(redis_server):
    client = redis.Redis.from_url(redis_url(redis_server))
    client.delete("classify-retry-test")
    settings = load_settings(env={"VP_BROKER__URL": redis_url(redis_server), "VP_BROKER__CLASSIFY_QUEUE": "classify-retry-test"})
    return client, sender_app(settings.broker).signature(CLASSIFY_TASK)


def _request(attempt: int | None = None):
    kwargs = {"attempt": attempt} if attempt is not None else {}
    return SimpleNamespace(id="r1", args=({"source": {"bucket": "b", "key": "k"}},), kwargs=kwargs)


def _sent(client) -> list[tuple[dict, str | None]]:
    out = []
    for raw in client.lrange("classify-retry-test", 0, -1):
        envelope = json.loads(raw)
        _args, kwargs, _embed = json.loads(envelope_body(envelope))
        out.append((kwargs, envelope["headers"].get("eta")))
    return out


@pytest.fixture
def store(aws_env):
    from vehicle_core.storage import ObjectStore

    return ObjectStore(load_settings().storage)


def test_a_transient_failure_is_resent_later_with_the_attempt_counted(classify_queue, store, bucket):
    client, task = classify_queue
    outcome = retry_later(task, _request(), SourceRef(bucket, "k.jpg"), StorageUnavailableError("503"),
                          max_retries=3, backoff_max=60, store=store, results=RESULTS)
    assert outcome == "retry"
    ((kwargs, eta),) = _sent(client)
    assert kwargs == {"attempt": 1} and eta is not None


def test_after_the_last_retry_a_retriable_result_is_written_and_the_image_keeps_coming_back(
        classify_queue, store, s3, bucket):
    client, task = classify_queue
    etag = s3.put_object(Bucket=bucket, Key="k.jpg", Body=b"x")["ETag"].strip('"')
    outcome = retry_later(task, _request(attempt=3), SourceRef(bucket, "k.jpg", etag=etag),
                          StorageUnavailableError("still 503"), max_retries=3, backoff_max=60, store=store,
                          results=RESULTS)
    assert outcome == "retry"
    ((kwargs, eta),) = _sent(client)
    assert kwargs == {"attempt": 4} and eta is not None  # again, after the longest backoff
    doc = json.loads(s3.get_object(Bucket=bucket, Key="results/k.jpg.json")["Body"].read())
    assert doc["status"] == "error" and doc["error"]["code"] == "storage_unavailable"  # seen, never done
    # Later attempts write nothing more (the result above stays until the image is answered)
    s3.delete_object(Bucket=bucket, Key="results/k.jpg.json")
    assert retry_later(task, _request(attempt=4), SourceRef(bucket, "k.jpg", etag=etag), StorageUnavailableError("503"),
                       max_retries=3, backoff_max=60, store=store, results=RESULTS) == "retry"
    listed = s3.list_objects_v2(Bucket=bucket, Prefix="results/k.jpg.json").get("Contents", [])
    assert [o["Key"] for o in listed] == ["results/k.jpg.json.retry"]  # the first attempt's retry marker only


def test_a_final_result_that_cannot_be_written_is_sent_again_not_acked(classify_queue, store, monkeypatch):
    from workers import batching

    client, task = classify_queue
    monkeypatch.setattr(batching, "write_error_result", lambda *a, **k: "unwritten")
    outcome = retry_later(task, _request(), SourceRef("b", "bad.jpg", etag="e"), UndecodableImageError("broken"),
                          max_retries=3, backoff_max=60, store=store, results=RESULTS)
    assert outcome == "retry" and len(_sent(client)) == 1


def test_bad_input_is_never_retried(classify_queue, store, s3, bucket):
    client, task = classify_queue
    etag = s3.put_object(Bucket=bucket, Key="bad.jpg", Body=b"x")["ETag"].strip('"')
    outcome = retry_later(task, _request(), SourceRef(bucket, "bad.jpg", etag=etag), UndecodableImageError("broken"),
                          max_retries=3, backoff_max=60, store=store, results=RESULTS)
    assert outcome == "gave_up" and _sent(client) == []
    doc = json.loads(s3.get_object(Bucket=bucket, Key="results/bad.jpg.json")["Body"].read())
    assert doc["error"]["code"] == "undecodable"
