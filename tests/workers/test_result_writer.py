"""The "done" rule and the stale-ETag rule for result documents (vehicle_core/results/contract.py,
workers/result_writer.py)."""

from __future__ import annotations

from vehicle_core.results.contract import ImageResult, ResultStamp, SourceRef, is_done, result_uri
from vehicle_core.storage import ObjectInfo
from workers.result_writer import GONE, STALE, WRITTEN, decide_write


def _stamp(etag, code=None):
    doc = {"status": "error" if code else "ok", "source": {"bucket": "b", "key": "k.jpg", "etag": etag},
           "error": {"code": code} if code else None}
    return ResultStamp.from_document(doc)


def test_a_result_for_the_same_etag_means_done_quotes_or_not():
    assert is_done(_stamp('"e1"'), "e1")
    assert is_done(_stamp("e1", code="undecodable"), '"e1"')  # permanent errors are answers too


def test_a_result_for_another_etag_or_none_is_not_done():
    assert not is_done(_stamp("e0"), "e1")
    assert not is_done(None, "e1")
    assert not is_done(_stamp("e1"), None)  # without an ETag we cannot tell: process
    assert not is_done(ResultStamp.from_document({"no": "status"}), "e1")


def test_results_a_later_attempt_may_fix_are_not_done():
    # Faults of the system, an unknown code included: never an image's final answer.
    for code in ("storage_unavailable", "transient", "model_unavailable", "config", "internal", "out_of_memory",
                 "timeout", "a-code-from-a-newer-version"):
        assert not is_done(_stamp("e1", code=code), "e1"), code
    # The image's own faults are its answer (access denied to *that object* included).
    for code in ("undecodable", "unsupported_format", "too_large", "not_found", "access_denied", "worker_crashed"):
        assert is_done(_stamp("e1", code=code), "e1"), code


def test_the_metadata_stamp_says_what_the_document_says():
    result = ImageResult.from_error(SourceRef("b", "k.jpg", etag='"e1"'), TimeoutError("slow"))
    stamp = ResultStamp.of(result)
    assert ResultStamp.from_metadata(stamp.to_metadata()) == stamp == ResultStamp.from_document(result.to_dict())
    assert ResultStamp.from_metadata({}) is None  # a result written before stamps: read the document


def test_write_only_while_the_source_still_has_the_processed_etag():
    processed = SourceRef("b", "k.jpg", etag="e1")
    assert decide_write(processed, ObjectInfo("s3://b/k.jpg", "k.jpg", etag="e1")) == WRITTEN
    assert decide_write(processed, ObjectInfo("s3://b/k.jpg", "k.jpg", etag="e2")) == STALE
    assert decide_write(processed, None) == GONE


def test_version_ids_decide_when_both_sides_have_them():
    processed = SourceRef("b", "k.jpg", etag="same", version_id="v1")
    assert decide_write(processed, ObjectInfo("s3://b/k.jpg", "k.jpg", etag="same", version_id="v2")) == STALE
    assert decide_write(processed, ObjectInfo("s3://b/k.jpg", "k.jpg", etag="same", version_id="v1")) == WRITTEN


def test_result_location_uses_results_bucket_when_set_else_the_source_bucket():
    src = SourceRef("cams", "a/b c.jpg")
    assert result_uri(src, None, "results/") == "s3://cams/results/a/b c.jpg.json"
    assert result_uri(src, "out", "r/") == "s3://out/r/cams/a/b c.jpg.json"  # the source bucket named
