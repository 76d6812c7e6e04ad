"""Result writes against a real S3 API (moto server): conditional PUTs (If-None-Match, then If-Match),
never over a newer upload, a repeat is a no-op, never for an object gone when read, stamped so that a
HEAD says whether an image is done; two S3 requests per image on the common path."""

from __future__ import annotations

import json

import pytest

from vehicle_core.config import ResultSettings, load_settings
from vehicle_core.results.contract import ImageResult, SourceRef
from vehicle_core.storage import ObjectStore
from workers.result_writer import (
    ANSWERED,
    GONE,
    STALE,
    WRITTEN,
    is_answered,
    write_error_result,
    write_if_current,
)

pytestmark = pytest.mark.integration
RESULTS = ResultSettings(bucket=None, prefix="results/")
UNCONDITIONAL = ResultSettings(bucket=None, prefix="results/", conditional_writes=False)


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


def test_no_result_is_written_for_an_object_gone_when_read(s3, store, bucket):
    from vehicle_core.errors import SourceNotFoundError

    source = SourceRef(bucket, "gone.jpg", etag="e0")
    for results in (RESULTS, UNCONDITIONAL):
        store.requests.clear()
        assert write_error_result(store, source, SourceNotFoundError("gone.jpg does not exist"), results) == GONE
        assert store.get_json(f"s3://{bucket}/results/gone.jpg.json") is None
        assert store.requests["PutObject"] == 0, results


def test_without_conditional_writes_no_result_is_written_for_a_deleted_source(s3, store, bucket):
    etag = s3.put_object(Bucket=bucket, Key="gone.jpg", Body=b"x")["ETag"].strip('"')
    s3.delete_object(Bucket=bucket, Key="gone.jpg")
    assert write_if_current(store, _result(bucket, "gone.jpg", etag), UNCONDITIONAL) == GONE
    assert store.get_json(f"s3://{bucket}/results/gone.jpg.json") is None


def test_a_first_result_costs_one_put_and_a_repeat_changes_nothing(s3, store, bucket):
    etag = s3.put_object(Bucket=bucket, Key="one.jpg", Body=b"x")["ETag"].strip('"')
    store.requests.clear()
    assert write_if_current(store, _result(bucket, "one.jpg", etag), RESULTS) == WRITTEN
    assert dict(store.requests) == {"PutObject": 1}  # no HEAD of the source or of the result
    first = s3.head_object(Bucket=bucket, Key="results/one.jpg.json")
    # The same image again (a duplicate event, a redelivery): its answer stands, not rewritten
    assert write_if_current(store, _result(bucket, "one.jpg", etag), RESULTS) == ANSWERED
    again = s3.head_object(Bucket=bucket, Key="results/one.jpg.json")
    assert (again["ETag"], again["LastModified"]) == (first["ETag"], first["LastModified"])
    assert dict(store.requests) == {"PutObject": 2, "HeadObject": 1}


def test_the_same_results_with_conditional_writes_off_cost_a_head_of_the_source_each(s3, store, bucket):
    etag = s3.put_object(Bucket=bucket, Key="h.jpg", Body=b"x")["ETag"].strip('"')
    store.requests.clear()
    assert write_if_current(store, _result(bucket, "h.jpg", etag), UNCONDITIONAL) == WRITTEN
    assert dict(store.requests) == {"HeadObject": 1, "PutObject": 1}


def test_a_newer_uploads_result_replaces_an_older_one_written_first(s3, store, bucket):
    old = s3.put_object(Bucket=bucket, Key="n.jpg", Body=b"first")["ETag"].strip('"')
    # The older upload's task wrote first (the newer upload landed after it read the image)
    assert write_if_current(store, _result(bucket, "n.jpg", old), RESULTS) == WRITTEN
    new = s3.put_object(Bucket=bucket, Key="n.jpg", Body=b"second")["ETag"].strip('"')
    store.requests.clear()
    assert write_if_current(store, _result(bucket, "n.jpg", new), RESULTS) == WRITTEN
    # 412, HEAD of the result (another ETag), HEAD of the source (ours is current), PUT If-Match
    assert dict(store.requests) == {"PutObject": 2, "HeadObject": 2}
    assert store.get_json(f"s3://{bucket}/results/n.jpg.json")["source"]["etag"] == new
    assert is_answered(store, SourceRef(bucket, "n.jpg", etag=new), RESULTS)


def test_a_final_answer_replaces_a_retriable_error_of_the_same_upload_never_the_reverse(s3, store, bucket):
    from vehicle_core.errors import StorageUnavailableError

    etag = s3.put_object(Bucket=bucket, Key="f.jpg", Body=b"x")["ETag"].strip('"')
    source = SourceRef(bucket, "f.jpg", etag=etag)
    assert write_error_result(store, source, StorageUnavailableError("S3 down"), RESULTS) == WRITTEN
    assert write_if_current(store, _result(bucket, "f.jpg", etag), RESULTS) == WRITTEN
    assert store.get_json(f"s3://{bucket}/results/f.jpg.json")["status"] == "no_vehicle"
    # A late retriable error of the same upload (a slow duplicate) does not replace the answer
    assert write_error_result(store, source, StorageUnavailableError("late"), RESULTS) == ANSWERED
    assert store.get_json(f"s3://{bucket}/results/f.jpg.json")["status"] == "no_vehicle"
    assert is_answered(store, source, RESULTS)


class _CutIn(ObjectStore):
    """A store whose HEAD of a result lets another writer finish first: a deterministic interleaving of
    two tasks on the real S3 API (between our read of the result and our If-Match PUT)."""

    def __init__(self, *cut_in: ImageResult) -> None:
        super().__init__(load_settings().storage)
        self.cut_in = list(cut_in)

    def head(self, uri):
        info = super().head(uri)
        while self.cut_in and uri.endswith(".json"):
            self.outcome_of_cut_in = write_if_current(ObjectStore(self.storage), self.cut_in.pop(), RESULTS)
        return info


def test_a_writer_that_loses_the_compare_and_swap_reads_again_and_decides_again(s3, bucket, aws_env):
    from vehicle_core.errors import StorageUnavailableError

    old = s3.put_object(Bucket=bucket, Key="r.jpg", Body=b"first")["ETag"].strip('"')
    plain = ObjectStore(load_settings().storage)
    assert write_if_current(plain, _result(bucket, "r.jpg", old), RESULTS) == WRITTEN
    new = s3.put_object(Bucket=bucket, Key="r.jpg", Body=b"second")["ETag"].strip('"')
    source = SourceRef(bucket, "r.jpg", etag=new)
    # Two tasks for the new upload: one gives up with a retriable error and replaces the old result
    # while the other, which has the answer, is between its read and its compare-and-swap ...
    store = _CutIn(ImageResult.from_error(source, StorageUnavailableError("a slow S3")))
    assert write_if_current(store, _result(bucket, "r.jpg", new), RESULTS) == WRITTEN
    assert store.outcome_of_cut_in == WRITTEN
    # ... whose swap fails (the result changed), and which reads again and replaces the error
    assert store.requests["PutObject"] == 3 and store.requests["HeadObject"] == 3
    doc = plain.get_json(f"s3://{bucket}/results/r.jpg.json")
    assert (doc["source"]["etag"], doc["status"]) == (new, "no_vehicle")
    # A duplicate task with the same answer cutting in: the other one finds it answered
    other = s3.put_object(Bucket=bucket, Key="s.jpg", Body=b"x")["ETag"].strip('"')
    write_error_result(plain, SourceRef(bucket, "s.jpg", etag=other), StorageUnavailableError("down"), RESULTS)
    store = _CutIn(_result(bucket, "s.jpg", other))
    assert write_if_current(store, _result(bucket, "s.jpg", other), RESULTS) == ANSWERED
    assert store.outcome_of_cut_in == WRITTEN


def test_a_result_deleted_between_the_head_and_the_compare_and_swap_is_written_again(s3, bucket, aws_env):
    etag = s3.put_object(Bucket=bucket, Key="d.jpg", Body=b"x")["ETag"].strip('"')
    from vehicle_core.errors import StorageUnavailableError

    class Deleting(ObjectStore):
        def head(self, uri):
            info = super().head(uri)
            if uri.endswith(".json") and info is not None:
                s3.delete_object(Bucket=bucket, Key="results/d.jpg.json")  # an operator's cleanup, say
            return info

    store = Deleting(load_settings().storage)
    write_error_result(store, SourceRef(bucket, "d.jpg", etag=etag), StorageUnavailableError("down"), RESULTS)
    assert write_if_current(store, _result(bucket, "d.jpg", etag), RESULTS) == WRITTEN
    assert store.get_json(f"s3://{bucket}/results/d.jpg.json")["status"] == "no_vehicle"


def test_a_result_that_keeps_changing_is_a_retriable_fault_not_an_answer(s3, bucket, aws_env):
    from vehicle_core.errors import StorageUnavailableError, TransientError

    etag = s3.put_object(Bucket=bucket, Key="c.jpg", Body=b"x")["ETag"].strip('"')

    class Churning(ObjectStore):
        def head(self, uri):
            info = super().head(uri)
            if uri.endswith(".json"):  # someone rewrites the result after every read
                self.rewrites = getattr(self, "rewrites", 0) + 1
                s3.put_object(Bucket=bucket, Key="results/c.jpg.json", Body=b'{"n": %d}' % self.rewrites)
            return info

    store = Churning(load_settings().storage)
    write_error_result(store, SourceRef(bucket, "c.jpg", etag=etag), StorageUnavailableError("down"), RESULTS)
    with pytest.raises(TransientError):
        write_if_current(store, _result(bucket, "c.jpg", etag), RESULTS)
    assert store.rewrites == 5 and store.requests["PutObject"] == 2 + 5  # error result + marker, 5 tries


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
