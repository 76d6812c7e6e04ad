"""Batched tasks' log lines about one image carry that image's task_id, bucket and key (issue 20).

celery-batches runs one call for many requests under the batch's own id; workers/logs.py indexes the
batch's images at task_prerun and tags every line that names one of them."""

from __future__ import annotations

import io
import json
import logging
from types import SimpleNamespace

from vehicle_core.logs import apply_format
from workers.logs import add_image_filter, bind_task, unbind_task


def _request(rid: str, bucket: str, key: str, *, crop_set: bool = False) -> SimpleNamespace:
    source = {"bucket": bucket, "key": key, "etag": "e"}
    return SimpleNamespace(id=rid, args=[{"source": source, "crops": []} if crop_set else source], kwargs={})


def _lines(emit) -> list[dict]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    apply_format([handler], "json")
    add_image_filter([handler])
    logger = logging.getLogger("tests.batch-log-fields")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        emit(logger)
    finally:
        logger.removeHandler(handler)
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_each_image_line_of_a_batch_names_its_request_bucket_and_key():
    requests = [_request("r-1", "b", "incoming/a.jpg"), _request("r-2", "b", "incoming/sub/a.jpg"),
                _request("r-3", "other", "x.png", crop_set=True)]
    bind_task("batch-9", ([*requests],))
    try:
        lines = _lines(lambda log: (
            log.info("skip %s etag=%s: result exists", "s3://b/incoming/a.jpg", "e"),
            log.info("wrote %s (%s)", "s3://b/results/incoming/sub/a.jpg.json", "ok"),
            log.error("giving up on %s: %r", "s3://other/x.png", ValueError("bad")),
            log.info("detect batch: %d images", 3),
        ))
    finally:
        unbind_task("batch-9")
    assert [(d["task_id"], d.get("bucket"), d.get("key")) for d in lines] == [
        ("r-1", "b", "incoming/a.jpg"),
        ("r-2", "b", "incoming/sub/a.jpg"),  # the longest key named, not incoming/a.jpg's suffix
        ("r-3", "other", "x.png"),
        ("batch-9", None, None),  # a line about the whole batch keeps the batch's id
    ]
    assert all(d["batch_id"] == "batch-9" for d in lines[:3])
    # after the batch, nothing is tagged any more
    after = _lines(lambda log: log.info("skip %s", "s3://b/incoming/a.jpg"))
    assert "task_id" not in after[0] and "key" not in after[0]


def test_a_plain_task_keeps_its_own_fields():
    bind_task("t-1", ({"bucket": "b", "key": "k.jpg"},))
    try:
        (line,) = _lines(lambda log: log.info("working on s3://b/k.jpg"))
    finally:
        unbind_task("t-1")
    assert (line["task_id"], line["bucket"], line["key"]) == ("t-1", "b", "k.jpg") and "batch_id" not in line
