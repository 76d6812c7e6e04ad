"""Backfill over a real S3 listing (moto server) into a real Redis queue."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import redis

from devstack.processes import wait_until
from devstack.stack import stack_env
from producer.backfill import BackfillOptions, run_backfill
from producer.events import KeyFilter
from producer.queue_depth import depth_probe
from producer.shards import listing_shards
from tests.integration.stack import queued_tasks, redis_url
from vehicle_core.config import load_settings
from vehicle_core.results.contract import ResultStamp, retry_marker_key
from vehicle_core.storage import ObjectStore
from workers.messages import sender_app

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
KEYS = KeyFilter(image_suffixes=(".jpg",), results_prefix="results/")


def _put_many(s3, bucket: str, keys: list[str]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:  # I/O bound; moto's server answers concurrently
        list(pool.map(lambda k: s3.put_object(Bucket=bucket, Key=k, Body=k.encode()), keys))


def _write_result(s3, bucket: str, key: str, etag: str, status: str = "ok", code: str | None = None) -> None:
    """A result as the workers write it: the document, its metadata stamp, and the retry marker
    after a retriable error (workers/result_writer.py)."""
    stamp = ResultStamp(etag, status, code)
    doc = {"source": {"bucket": bucket, "key": key, "etag": etag}, "status": status,
           "error": {"code": code, "message": "m"} if code else None}
    s3.put_object(Bucket=bucket, Key=f"results/{key}.json", Body=json.dumps(doc).encode(), Metadata=stamp.to_metadata())
    if stamp.retriable:
        s3.put_object(Bucket=bucket, Key=retry_marker_key(key, "results/"), Body=b"", Metadata=stamp.to_metadata())


@pytest.fixture
def detect(redis_server, request):
    client = redis.Redis.from_url(redis_url(redis_server))
    name = f"detect-bf-{request.node.name[:30]}"
    client.delete(name)
    return client, name


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "producer.cli", *args, "--no-progress"], capture_output=True,
                          text=True, timeout=300, env=env, cwd=ROOT)


def test_backfill_of_1000_keys_enqueues_each_once_then_skip_done_only_the_missing(
    s3, bucket, aws_env, redis_server, detect
):
    # Given: 1,000 images across 3 listing pages, 5 non-images, and results for 600 of them
    client, qname = detect
    images = [f"cams/{i // 100:02d}/img {i:04d}.jpg" for i in range(1000)]
    _put_many(s3, bucket, images + [f"cams/notes-{i}.txt" for i in range(5)])
    env = stack_env(broker_url=redis_url(redis_server), aws=aws_env, extra={"VP_BROKER__DETECT_QUEUE": qname})
    # When: a first backfill
    first = _cli(["backfill", f"s3://{bucket}/cams/"], env)
    # Then: every image exactly once, nothing else
    assert first.returncode == 0, first.stderr
    keys = [args[0]["key"] for _, args, _ in queued_tasks(client, qname)]
    assert sorted(keys) == sorted(images)
    # Given: 600 current results, 50 results for an older upload (other ETag)
    etags = {o["Key"]: o["ETag"].strip('"') for p in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="cams/")
             for o in p.get("Contents", [])}
    for key in images[:600]:
        _write_result(s3, bucket, key, etags[key])
    for key in images[600:650]:  # results of an earlier upload: the object was replaced after them
        _write_result(s3, bucket, key, etags[key])
        s3.put_object(Bucket=bucket, Key=key, Body=b"a newer upload")
    client.delete(qname)
    # When: backfill --skip-done
    second = _cli(["backfill", f"s3://{bucket}/cams/", "--skip-done"], env)
    # Then: only the 400 without a current result
    assert second.returncode == 0, second.stderr
    again = sorted(args[0]["key"] for _, args, _ in queued_tasks(client, qname))
    assert again == sorted(images[600:])
    assert "already done 600" in second.stdout
    assert "GetObject" not in second.stdout  # "done" came from listings (and HEADs), no result was read


def test_dry_run_limit_suffix_and_modified_since(s3, bucket, aws_env, redis_server, detect):
    client, qname = detect
    _put_many(s3, bucket, [f"a{i}.jpg" for i in range(5)] + ["b.png", "c.PNG"])
    env = stack_env(broker_url=redis_url(redis_server), aws=aws_env, extra={"VP_BROKER__DETECT_QUEUE": qname})
    dry = _cli(["backfill", f"s3://{bucket}", "--dry-run", "--limit", "3"], env)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.count("would enqueue s3://") == 3 and client.llen(qname) == 0
    png = _cli(["backfill", f"s3://{bucket}", "--suffix", ".png"], env)
    assert png.returncode == 0, png.stderr
    assert sorted(a[0]["key"] for _, a, _ in queued_tasks(client, qname)) == ["b.png", "c.PNG"]
    future = _cli(["backfill", f"s3://{bucket}", "--modified-since", "2999-01-01T00:00:00"], env)
    assert "enqueued 0" in future.stdout


def test_backfill_pauses_while_the_detect_queue_is_deeper_than_the_limit(s3, bucket, redis_server, detect):
    # Given: 30 images and a queue limit of 10
    client, qname = detect
    _put_many(s3, bucket, [f"p{i:02d}.jpg" for i in range(30)])
    settings = load_settings(env={"VP_BROKER__URL": redis_url(redis_server), "VP_BROKER__DETECT_QUEUE": qname})
    opts = BackfillOptions.from_settings(settings, bucket, keys=KEYS, max_queue_depth=10, pause_poll_s=0.05,
                                         enqueue_batch=1)
    stop = threading.Event()
    box = {}
    store = ObjectStore(client=s3)
    app = sender_app(settings.broker)
    depth = depth_probe(app, qname)
    worker = threading.Thread(target=lambda: box.update(stats=run_backfill(
        store, app, opts, listing_shards(store, bucket, "", 1), depth=depth, stop=stop)))
    # When: it runs with nobody consuming
    worker.start()
    try:
        # Then: it stops at 11 (enqueues while depth <= 10) and waits
        wait_until(lambda: depth() == 11, timeout=30, what="11 queued")
        assert worker.is_alive()
        # When: a consumer drains the queue, it goes on to the end
        wait_until(lambda: client.delete(qname) >= 0 and not worker.is_alive(), timeout=60, what="backfill to finish")
    finally:
        stop.set()
        worker.join(30)
    assert box["stats"].enqueued == 30 and box["stats"].pauses >= 2
