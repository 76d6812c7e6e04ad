"""Backfill at bucket scale, on a few hundred keys: batched enqueue, streaming, cheap skip-done,
checkpoint/resume after SIGKILL, the queue depth (real redis-server, moto over HTTP)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from devstack.processes import wait_until
from devstack.stack import stack_env
from producer.backfill import BackfillOptions, run_backfill
from producer.events import KeyFilter
from producer.queue_depth import depth_probe
from producer.shards import listing_shards
from tests.integration.stack import queued_tasks, redis_url
from tests.producer.test_backfill import _put_many, _write_result
from vehicle_core.results.contract import SourceRef
from vehicle_core.storage import ObjectStore
from workers.broker import envelope_body
from workers.messages import CLASSIFY_TASK, DETECT_TASK, enqueue_image, enqueue_images, sender_app

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
KEYS = KeyFilter(image_suffixes=(".jpg",), results_prefix="results/")


def _etags(s3, bucket: str, prefix: str = "") -> dict[str, str]:
    return {o["Key"]: o["ETag"].strip('"') for p in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for o in p.get("Contents", [])}


def test_a_batched_message_is_the_message_a_worker_consumes(detect):
    # Given: one image sent the old way (celery's chain.apply_async) and three through the batched path
    client, qname, settings = detect
    app = sender_app(settings.broker)
    images = [SourceRef(bucket="b", key=f"k{i}.jpg", etag=f"e{i}", size=i) for i in range(4)]
    enqueue_image(app, images[0])
    ids = enqueue_images(app, images[1:])
    # Then: celery's protocol decodes each as detect_crop(SourceRef) with classify chained behind it
    tasks = queued_tasks(client, qname)
    assert [args for _, args, _ in tasks] == [[image.to_dict()] for image in images]
    assert {(name, tuple(chained)) for name, _, chained in tasks} == {(DETECT_TASK, (CLASSIFY_TASK,))}
    # ... and, ids and the argument aside, the messages are identical field by field
    raw = [json.loads(m) for m in reversed(client.lrange(qname, 0, -1))]
    assert [m["headers"]["id"] for m in raw[1:]] == ids
    masked = [_masked(m) for m in raw]
    assert masked[1] == masked[0], (masked[1], masked[0])
    assert masked[2] == masked[3] == masked[1]


def _masked(envelope: dict) -> dict:
    """A kombu Redis envelope with its per-message values (ids, tags, the image) replaced by names."""
    body = json.loads(envelope_body(envelope))
    task_id = envelope["headers"]["id"]
    text = json.dumps({**envelope, "body": body})
    for value, name in [(task_id, "ID"), (body[2]["chain"][0]["options"]["task_id"], "CLASSIFY_ID"),
                        (envelope["properties"]["delivery_tag"], "TAG")]:
        text = text.replace(value, name)
    out = json.loads(text)
    out["body"][0] = "ARGS"
    out["headers"]["argsrepr"] = "ARGSREPR" if out["headers"]["argsrepr"] == repr(tuple(body[0])) else "?"
    return out


def test_queue_depth_counts_every_message_whatever_its_priority(detect):
    client, qname, settings = detect
    app = sender_app(settings.broker)
    depth = depth_probe(app, qname)
    assert depth() == 0  # a queue that does not exist yet is empty, not an error
    for i in range(3):
        enqueue_image(app, SourceRef(bucket="b", key=f"{i}.jpg"))
    for i in range(2):  # one priority step (workers.messages.PRIORITY_STEPS): the same Redis list
        app.send_task(DETECT_TASK, args=[{"bucket": "b", "key": f"p{i}.jpg"}], priority=9)
    assert client.llen(qname) == 5
    assert depth() == 5


def test_enqueueing_starts_before_the_listing_ends(s3, bucket, detect):
    # Given: 300 images, listed 100 a page, enqueued 50 a batch
    client, qname, settings = detect
    _put_many(s3, bucket, [f"s/{i:03d}.jpg" for i in range(300)])
    store = ObjectStore(client=s3)
    queued_at_page: list[int] = []
    s3.meta.events.register("before-call.s3.ListObjectsV2", lambda **_: queued_at_page.append(client.llen(qname)))
    opts = BackfillOptions.from_settings(settings, bucket, keys=KEYS, enqueue_batch=50)
    # When
    stats = run_backfill(store, sender_app(settings.broker), opts, listing_shards(store, bucket, "s/", 1, page_size=100))
    # Then: the first page was in Redis before the last page was asked for
    assert stats.enqueued == 300 and len(queued_at_page) == 3
    assert queued_at_page[0] == 0 and queued_at_page[2] >= 100


def test_skip_done_reads_no_result_document(s3, bucket, detect):
    # Given: 200 images: 100 with current results, 20 replaced after their result, 20 with a retriable
    # error result, 10 with a permanent error result, 50 without any
    client, qname, settings = detect
    images = [f"d/{i:03d}.jpg" for i in range(200)]
    _put_many(s3, bucket, images)
    etags = _etags(s3, bucket, "d/")
    for key in images[:100]:
        _write_result(s3, bucket, key, etags[key])
    for key in images[100:120]:
        _write_result(s3, bucket, key, etags[key])
        s3.put_object(Bucket=bucket, Key=key, Body=b"newer")
    for key in images[120:140]:
        _write_result(s3, bucket, key, etags[key], "error", "storage_unavailable")
    for key in images[140:150]:
        _write_result(s3, bucket, key, etags[key], "error", "undecodable")
    store = ObjectStore(client=s3)
    opts = BackfillOptions.from_settings(settings, bucket, keys=KEYS, skip_done=True)
    # When
    stats = run_backfill(store, sender_app(settings.broker), opts, listing_shards(store, bucket, "d/", 1))
    # Then: exactly the stale, retriable and missing ones, and not one GET
    assert sorted(a[0]["key"] for _, a, _ in queued_tasks(client, qname)) == images[100:140] + images[150:]
    assert stats.already_done == 110
    assert store.requests["GetObject"] == 0
    assert store.requests["HeadObject"] == stats.result_heads <= 150  # only same-second results


def test_parallel_sub_prefix_listing_enqueues_each_key_once(s3, bucket, detect):
    client, qname, settings = detect
    images = [f"{cam}/{i:02d}.jpg" for cam in ("c1", "c2", "c3") for i in range(40)] + ["top.jpg"]
    _put_many(s3, bucket, images + ["results/c1/00.jpg.json"])
    store = ObjectStore(client=s3)
    opts = BackfillOptions.from_settings(settings, bucket, keys=KEYS, list_concurrency=3, enqueue_batch=7)
    shards = listing_shards(store, bucket, "", 3, exclude="results/")
    stats = run_backfill(store, sender_app(settings.broker), opts, shards)
    assert len(shards) == 4  # the top level, c1/, c2/, c3/ (results/ is not listed)
    assert sorted(a[0]["key"] for _, a, _ in queued_tasks(client, qname)) == sorted(images)
    assert stats.enqueued == len(images)


def test_a_killed_backfill_resumes_from_its_checkpoint(tmp_path, s3, bucket, aws_env, redis_server, detect):
    # Given: 400 images; a backfill that checkpoints every 50 keys and pauses above 200 queued
    client, qname, _ = detect
    images = [f"k/{i:03d}.jpg" for i in range(400)]
    _put_many(s3, bucket, images)
    checkpoint = tmp_path / "bf.json"
    env = stack_env(broker_url=redis_url(redis_server), aws=aws_env, extra={
        "VP_BROKER__DETECT_QUEUE": qname, "VP_PRODUCER__CHECKPOINT_EVERY": "50", "VP_PRODUCER__ENQUEUE_BATCH": "10",
        "VP_PRODUCER__MAX_QUEUE_DEPTH": "200", "VP_PRODUCER__PAUSE_POLL_S": "0.05"})
    argv = [sys.executable, "-m", "producer.cli", "backfill", f"s3://{bucket}/k/", "--checkpoint", str(checkpoint),
            "--no-progress"]
    first = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        # When: it is paused about half way, and killed without a chance to save anything
        wait_until(lambda: client.llen(qname) > 200 or first.poll() is not None, timeout=120, what="half way")
        assert first.poll() is None, first.stdout.read().decode()
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    finally:
        if first.poll() is None:
            first.kill()
    assert checkpoint.is_file()
    # ... and run again with the same checkpoint (and room in the queue)
    second = subprocess.run(argv, env={**env, "VP_PRODUCER__MAX_QUEUE_DEPTH": "100000"}, cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert "resuming from" in second.stdout
    # Then: every image is queued, and at most one checkpoint window (50 keys) twice
    counts = Counter(a[0]["key"] for _, a, _ in queued_tasks(client, qname))
    assert set(counts) == set(images)
    assert sum(n - 1 for n in counts.values()) <= 50
    # ... and a third run with the finished checkpoint sends nothing
    third = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert "enqueued 0" in third.stdout, third.stdout + third.stderr
