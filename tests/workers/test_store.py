"""Idempotency and stale-ETag rules for result documents (workers/store.py)."""

from __future__ import annotations

from vehicle_core.config import ResultSettings
from vehicle_core.results import SourceRef
from workers.store import GONE, STALE, WRITTEN, ObjectState, already_done, decide_write, result_location


def _doc(etag, code=None):
    return {"source": {"bucket": "b", "key": "k.jpg", "etag": etag}, "error": {"code": code} if code else None}


def test_a_result_for_the_same_etag_means_done_quotes_or_not():
    assert already_done(_doc('"e1"'), "e1")
    assert already_done(_doc("e1", code="undecodable"), "e1")  # permanent errors are answers too


def test_a_result_for_another_etag_or_none_is_not_done():
    assert not already_done(_doc("e0"), "e1")
    assert not already_done(None, "e1")
    assert not already_done(_doc("e1"), None)  # without an ETag we cannot tell: process


def test_a_result_left_by_exhausted_transient_retries_gets_another_try():
    assert not already_done(_doc("e1", code="storage_unavailable"), "e1")


def test_write_only_while_the_source_still_has_the_processed_etag():
    processed = SourceRef("b", "k.jpg", etag="e1")
    assert decide_write(processed, ObjectState(etag='"e1"', last_modified=None)) == WRITTEN
    assert decide_write(processed, ObjectState(etag="e2", last_modified=None)) == STALE
    assert decide_write(processed, None) == GONE


def test_version_ids_decide_when_both_sides_have_them():
    processed = SourceRef("b", "k.jpg", etag="same", version_id="v1")
    assert decide_write(processed, ObjectState(etag="same", last_modified=None, version_id="v2")) == STALE
    assert decide_write(processed, ObjectState(etag="same", last_modified=None, version_id="v1")) == WRITTEN


def test_result_location_uses_results_bucket_when_set_else_the_source_bucket():
    src = SourceRef("cams", "a/b c.jpg")
    assert result_location(src, ResultSettings(bucket=None, prefix="results/")) == ("cams", "results/a/b c.jpg.json")
    assert result_location(src, ResultSettings(bucket="out", prefix="r/")) == ("out", "r/a/b c.jpg.json")
