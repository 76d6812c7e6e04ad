"""Result writes against a real S3 API (moto server): never over a newer upload, never for a deleted one."""

from __future__ import annotations

import json

import pytest

from vehicle_core.config import ResultSettings
from vehicle_core.results import ImageResult, SourceRef
from workers.store import GONE, STALE, WRITTEN, already_done, head_source, read_result, write_if_current

pytestmark = pytest.mark.integration
RESULTS = ResultSettings(bucket=None, prefix="results/")


def _result(bucket: str, key: str, etag: str) -> ImageResult:
    return ImageResult.from_vehicles(SourceRef(bucket=bucket, key=key, etag=etag), [])


def test_result_of_the_current_upload_is_written_and_then_counts_as_done(s3, bucket):
    etag = s3.put_object(Bucket=bucket, Key="a b.jpg", Body=b"one")["ETag"]
    assert write_if_current(s3, _result(bucket, "a b.jpg", etag.strip('"')), RESULTS) == WRITTEN
    doc = read_result(s3, bucket, "results/a b.jpg.json")
    assert doc["source"]["etag"] == etag.strip('"') and doc["status"] == "no_vehicle"
    assert already_done(doc, etag)


def test_a_result_for_an_overwritten_upload_is_dropped_and_the_newer_result_kept(s3, bucket):
    old = s3.put_object(Bucket=bucket, Key="k.jpg", Body=b"first")["ETag"].strip('"')
    new = s3.put_object(Bucket=bucket, Key="k.jpg", Body=b"second")["ETag"].strip('"')
    assert write_if_current(s3, _result(bucket, "k.jpg", new), RESULTS) == WRITTEN
    # A slow task for the first upload finishes last: it must not replace the newer result
    assert write_if_current(s3, _result(bucket, "k.jpg", old), RESULTS) == STALE
    body = s3.get_object(Bucket=bucket, Key="results/k.jpg.json")["Body"].read()
    assert json.loads(body)["source"]["etag"] == new


def test_no_result_is_written_for_a_deleted_source(s3, bucket):
    etag = s3.put_object(Bucket=bucket, Key="gone.jpg", Body=b"x")["ETag"].strip('"')
    s3.delete_object(Bucket=bucket, Key="gone.jpg")
    assert head_source(s3, bucket, "gone.jpg") is None
    assert write_if_current(s3, _result(bucket, "gone.jpg", etag), RESULTS) == GONE
    assert read_result(s3, bucket, "results/gone.jpg.json") is None
