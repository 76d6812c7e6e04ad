"""Source keys whose plain result key would pass S3's 1,024 bytes: the hashed form, end to end on moto."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest

from vehicle_core.config import load_settings
from vehicle_core.results.contract import ImageResult, SourceRef, result_key, retry_marker_key, source_key_of
from vehicle_core.results.listing import ResultIndex
from vehicle_core.storage import ObjectStore
from workers.result_writer import is_answered, write_if_current

LONG = "cams/" + "a" * 1006 + ".jpg"  # 1,015 bytes: results/ + key + .json would be 1,028


def test_a_long_source_key_gets_the_hashed_result_key_and_its_marker_fits():
    assert len(LONG.encode()) == 1015
    digest = hashlib.sha256(LONG.encode()).hexdigest()
    assert result_key(LONG, "results/") == f"results/_long/{digest}.json"
    assert len(retry_marker_key(LONG, "results/").encode()) <= 1024
    assert source_key_of(result_key(LONG, "results/"), "results/") is None  # only the document names it
    # a key that fits keeps the plain form, byte for byte
    assert result_key("cams/a.jpg", "results/") == "results/cams/a.jpg.json"
    edge = "k" * (1024 - len("results/.json.retry"))
    assert result_key(edge, "results/") == f"results/{edge}.json"
    assert result_key(edge + "k", "results/").startswith("results/_long/")


@pytest.mark.integration
def test_the_worker_writes_a_long_keys_result_and_the_listing_finds_it(aws_env, s3, bucket):
    settings = load_settings()
    store = ObjectStore(settings.storage)
    results = replace(settings.results, bucket=None, prefix="results/")
    # Given: a 1,015-byte source key in the bucket
    etag = s3.put_object(Bucket=bucket, Key=LONG, Body=b"img")["ETag"]
    source = SourceRef(bucket, LONG, etag=etag)
    # When: the worker's writer stores its result
    write_if_current(store, ImageResult.from_vehicles(source, []), results)
    # Then: under results/_long/, naming its source inside; the worker's own "answered?" check finds it
    key = result_key(LONG, "results/")
    assert key.startswith("results/_long/")
    assert store.get_json(f"s3://{bucket}/{key}")["source"]["key"] == LONG
    assert is_answered(store, source, results)
    # ... and the listing walk (backfill --skip-done, reconcile) says done, by one HEAD
    listed = {info.key: info for info in store.list(f"s3://{bucket}/cams/")}
    index = ResultIndex(store, store.list(f"s3://{bucket}/results/cams/"), "results/", bucket)
    assert index.reason(listed[LONG]) is None and index.heads == 1
