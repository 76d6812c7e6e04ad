"""The listing-only "done" rule: two key-ordered listings walked in step (no S3: plain ObjectInfo streams)."""

from __future__ import annotations

import datetime as dt

from vehicle_core.results.contract import (
    MISSING,
    RETRIABLE,
    STALE,
    ResultStamp,
    retry_marker_key,
    why_not_done,
)
from vehicle_core.results.listing import ResultIndex, results_start_after
from vehicle_core.storage import ObjectInfo

T0 = dt.datetime(2026, 11, 26, 12, 0, 0, tzinfo=dt.UTC)
P = "results/"


def _at(key: str, second: int, etag: str = "e") -> ObjectInfo:
    return ObjectInfo(uri=f"s3://b/{key}", key=key, etag=etag, last_modified=T0 + dt.timedelta(seconds=second))


class _Heads:
    """A stand-in store answering HEADs from a dict of metadata stamps."""

    def __init__(self, stamps: dict[str, ResultStamp]):
        self.stamps = stamps
        self.asked: list[str] = []

    def head(self, uri: str):
        self.asked.append(uri)
        stamp = self.stamps.get(uri)
        return None if stamp is None else ObjectInfo(uri=uri, key=uri, metadata=stamp.to_metadata())


def _index(results: list[ObjectInfo], stamps=None) -> tuple[ResultIndex, _Heads]:
    store = _Heads(stamps or {})
    return ResultIndex(store, sorted(results, key=lambda i: i.key), P, "b"), store


def test_reasons_from_timestamps_and_markers_without_a_head():
    # Given: sources at second 10; results newer, older, newer with a marker, newer with an older marker
    sources = [_at(k, 10) for k in ("a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg")]
    results = [_at("results/a.jpg.json", 20), _at("results/b.jpg.json", 5), _at("results/c.jpg.json", 20),
               _at(retry_marker_key("c.jpg", P), 21), _at("results/d.jpg.json", 30),
               _at(retry_marker_key("d.jpg", P), 20)]
    index, store = _index(results)
    # When / Then: done, stale, retriable, done (the marker predates the final result), missing
    assert [index.reason(s) for s in sources] == [None, STALE, RETRIABLE, None, MISSING]
    assert store.asked == [] and index.heads == 0


def test_same_second_results_are_settled_by_one_head_of_their_stamp():
    sources = [_at("a.jpg", 10, "e1"), _at("b.jpg", 10, "e2"), _at("c.jpg", 10, "e3"), _at("d.jpg", 5, "e4")]
    results = [_at("results/a.jpg.json", 10), _at("results/b.jpg.json", 10), _at("results/c.jpg.json", 10),
               _at("results/d.jpg.json", 20), _at(retry_marker_key("d.jpg", P), 20)]
    stamps = {"s3://b/results/a.jpg.json": ResultStamp("e1", "ok"),
              "s3://b/results/b.jpg.json": ResultStamp("old", "ok"),
              "s3://b/results/c.jpg.json": ResultStamp("e3", "error", "storage_unavailable"),
              "s3://b/results/d.jpg.json": ResultStamp("e4", "ok")}  # a final result in its marker's second
    index, store = _index(results, stamps)
    assert [index.reason(s) for s in sources] == [None, STALE, RETRIABLE, None]
    assert index.heads == 4 and len(store.asked) == 4


def test_keys_whose_order_changes_with_the_json_suffix_still_meet_their_results():
    # "img.jpg" < "img.jpg (1).jpg" as sources, but "img.jpg (1).jpg.json" < "img.jpg.json" as results
    sources = sorted([_at("img.jpg", 10), _at("img.jpg (1).jpg", 10), _at("img.jpg-2.jpg", 10)], key=lambda i: i.key)
    results = [_at("results/img.jpg.json", 20), _at("results/img.jpg (1).jpg.json", 20)]
    index, _ = _index(results)
    assert {s.key: index.reason(s) for s in sources} == {"img.jpg": None, "img.jpg (1).jpg": None,
                                                          "img.jpg-2.jpg": MISSING}


def test_orphan_results_do_not_accumulate():
    # Given: 5,000 results whose sources are gone, and 3,000 sources without results after them
    results = [_at(f"results/gone/{i:05d}.jpg.json", 20) for i in range(5000)]
    index, _ = _index(results)
    for i in range(3000):
        assert index.reason(_at(f"later/{i:05d}.jpg", 10)) == MISSING
    # Then: the buffer was pruned (sources come in key order; orphans below them are never asked for)
    assert len(index._seen) < 1000


def test_why_not_done_is_is_done_with_a_reason():
    assert why_not_done(ResultStamp("e", "ok"), '"e"') is None
    assert why_not_done(ResultStamp("e", "error", "undecodable"), "e") is None  # a final answer
    assert why_not_done(ResultStamp("e", "error", "transient"), "e") == RETRIABLE
    assert why_not_done(ResultStamp("x", "ok"), "e") == STALE
    assert why_not_done(None, "e") == MISSING


def test_results_listing_resumes_before_every_later_result():
    after = results_start_after("img.jpg", P)
    assert after < "results/img.jpg (1).jpg.json" and after < "results/img.jpg.json"
    assert results_start_after(None, P) is None
