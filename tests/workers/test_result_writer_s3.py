"""Result writes against a real S3 API (moto server): never over a newer upload, never for a deleted
one, stamped so that a HEAD says whether an image is done."""

from __future__ import annotations

import json

import pytest

from vehicle_core.config import ResultSettings, load_settings
from vehicle_core.results.contract import ImageResult, SourceRef
from vehicle_core.storage import ObjectStore
from workers.result_writer import GONE, STALE, WRITTEN, is_answered, write_error_result, write_if_current

pytestmark = pytest.mark.integration
RESULTS = ResultSettings(bucket=None, prefix="results/")


@pytest.fixture
def store(aws_env):
    return ObjectStore(load_settings().storage)


def _result(bucket: str, key: str, etag: str) -> ImageResult:
    return ImageResult.from_vehicles(SourceRef(bucket=bucket, key=key, etag=etag), [])


def test_result_of_the_current_upload_is_written_and_then_counts_as_done(s3, store, bucket):
    etag = s3.put_object(Bucket=bucket, Key="a b.jpg", Body=b"one")["ETag"]
    source = SourceRef(bucket, "a b.jpg", etag=etag)
    assert not is_answered(store, source, RESULTS)
    assert write_if_current(store, _result(bucket, "a b.jpg", etag), RESULTS) == WRITTEN
    doc = store.get_json(f"s3://{bucket}/results/a b.jpg.json")
    assert doc["source"]["etag"] == etag.strip('"') and doc["status"] == "no_vehicle"
    assert is_answered(store, source, RESULTS)


def test_a_result_for_an_overwritten_upload_is_dropped_and_the_newer_result_kept(s3, store, bucket):
    old = s3.put_object(Bucket=bucket, Key="k.jpg", Body=b"first")["ETag"].strip('"')
    new = s3.put_object(Bucket=bucket, Key="k.jpg", Body=b"second")["ETag"].strip('"')
    assert write_if_current(store, _result(bucket, "k.jpg", new), RESULTS) == WRITTEN
    # A slow task for the first upload finishes last: it must not replace the newer result
    assert write_if_current(store, _result(bucket, "k.jpg", old), RESULTS) == STALE
    body = s3.get_object(Bucket=bucket, Key="results/k.jpg.json")["Body"].read()
    assert json.loads(body)["source"]["etag"] == new
    assert not is_answered(store, SourceRef(bucket, "k.jpg", etag=old), RESULTS)


def test_no_result_is_written_for_a_deleted_source(s3, store, bucket):
    etag = s3.put_object(Bucket=bucket, Key="gone.jpg", Body=b"x")["ETag"].strip('"')
    s3.delete_object(Bucket=bucket, Key="gone.jpg")
    assert store.head(f"s3://{bucket}/gone.jpg") is None
    assert write_if_current(store, _result(bucket, "gone.jpg", etag), RESULTS) == GONE
    assert store.get_json(f"s3://{bucket}/results/gone.jpg.json") is None


def test_a_result_a_retry_may_fix_is_written_but_not_done(s3, store, bucket):
    etag = s3.put_object(Bucket=bucket, Key="r.jpg", Body=b"x")["ETag"]
    source = SourceRef(bucket, "r.jpg", etag=etag)
    from vehicle_core.errors import StorageUnavailableError

    assert write_error_result(store, source, StorageUnavailableError("S3 down"), RESULTS) == WRITTEN
    assert store.get_json(f"s3://{bucket}/results/r.jpg.json")["error"]["code"] == "storage_unavailable"
    assert not is_answered(store, source, RESULTS)


def test_a_result_without_a_stamp_is_read_once_to_decide(s3, store, bucket):
    etag = s3.put_object(Bucket=bucket, Key="old.jpg", Body=b"x")["ETag"]
    # Given a result written by an earlier version, without the metadata stamp
    s3.put_object(Bucket=bucket, Key="results/old.jpg.json",
                  Body=json.dumps(_result(bucket, "old.jpg", etag).to_dict()).encode())
    assert is_answered(store, SourceRef(bucket, "old.jpg", etag=etag), RESULTS)


def test_a_retriable_error_leaves_a_retry_marker_that_a_listing_reads(s3, store, bucket):
    # Given: an image whose task gave up on a transient error, then one whose result is final
    from vehicle_core.errors import StorageUnavailableError, UndecodableImageError
    from vehicle_core.results.listing import ResultIndex

    for key in ("t.jpg", "u.jpg"):
        s3.put_object(Bucket=bucket, Key=key, Body=b"x")
    infos = {i.key: i for i in store.list(f"s3://{bucket}/")}
    write_error_result(store, SourceRef(bucket, "t.jpg", etag=infos["t.jpg"].etag), StorageUnavailableError("down"), RESULTS)
    write_error_result(store, SourceRef(bucket, "u.jpg", etag=infos["u.jpg"].etag), UndecodableImageError("bad"), RESULTS)
    # Then: a marker beside the retriable result only, and the listing walk calls it retriable
    keys = [i.key for i in store.list(f"s3://{bucket}/results/")]
    assert keys == ["results/t.jpg.json", "results/t.jpg.json.retry", "results/u.jpg.json"]
    index = ResultIndex(store, store.list(f"s3://{bucket}/results/"), "results/", bucket)
    assert [index.reason(infos[k]) for k in ("t.jpg", "u.jpg")] == ["retriable", None]
