"""Is an image done? Answered from two listings walked in step, not from one GET per result.

``backfill --skip-done`` and ``reconcile`` list the source prefix and the results prefix (results
prefix + the same sub-prefix). S3 lists keys in UTF-8 binary order, and a result key is
``results prefix + source key + ".json"``, so the two streams advance together; a small buffer
absorbs the few places where appending ``.json`` changes the order (``a.jpg`` vs ``a.jpg (1).jpg``).

A listing carries each object's LastModified but no user metadata, so the rule read from it is:

* no result -> ``missing``;
* result older than the source (whole seconds) -> ``stale``: written for an earlier upload;
* result newer than the source -> it describes this upload (the result writer never replaces a
  newer upload's result: workers/result_writer.py), unless a retry marker (``<result key>.retry``, written
  after a retriable error result) is newer than the result -> ``retriable``; a marker older than
  the result was overtaken by a later final result;
* same second (source and result, or result and marker): LastModified has a 1-second granularity,
  so the listing cannot order them; one HEAD of the result reads its metadata stamp and
  :func:`vehicle_core.results.contract.why_not_done` decides (a GET only for a result written before stamps
  existed). A retriable error result usually meets its marker in the same second: one HEAD each.

Caveats: the result writer's window is inherited (``workers/result_writer.py``): an upload landing
while the previous upload of its key is being worked on, before that one's result exists, is listed
as done until its own task replaces that result (``--verify`` tells; so does the task, when it runs);
a worker killed between a retriable error result and its marker leaves that error looking done
(``reconcile --verify`` HEADs every result and closes that gap at one HEAD per image).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator

from vehicle_core.results.contract import (
    MISSING,
    RETRIABLE,
    RETRY_MARKER_SUFFIX,
    STALE,
    ResultStamp,
    is_long,
    result_key,
    retry_marker_key,
    source_key_of,
    why_not_done,
)
from vehicle_core.storage import ObjectInfo, ObjectStore

_PRUNE_EVERY = 1000


def read_stamp(store: ObjectStore, uri: str) -> ResultStamp | None:
    """What the result at ``uri`` says of itself: one HEAD (its metadata stamp); a result written
    before stamps existed is read in full once. None when there is no result."""
    head = store.head(uri)
    return None if head is None else stamp_of(store, head)


def stamp_of(store: ObjectStore, head: ObjectInfo) -> ResultStamp | None:
    """The stamp in the metadata of a HEAD of a result, or (written before stamps existed) in its document."""
    stamp = ResultStamp.from_metadata(head.metadata)
    return stamp if stamp is not None else ResultStamp.from_document(store.get_json(head.uri))


class ResultIndex:
    """Answers :meth:`reason` for source objects given in key order, reading the results listing
    only as far as needed (memory: a listing page plus out-of-order stragglers)."""

    def __init__(self, store: ObjectStore, results: Iterable[ObjectInfo], prefix: str,
                 results_bucket: str, *, verify: bool = False) -> None:
        self.store = store
        self.prefix = prefix
        self.bucket = results_bucket
        self.verify = verify  # HEAD every result instead of trusting LastModified
        self.heads = 0  # HEADs made for same-second (or --verify) results
        self._results: Iterator[ObjectInfo] = iter(results)
        self._next: ObjectInfo | None = next(self._results, None)
        self._seen: dict[str, list[ObjectInfo | None]] = {}  # source key -> [result, marker]
        self._calls = 0

    def reason(self, source: ObjectInfo) -> str | None:
        """None when ``source`` has its current answer, else ``missing``, ``stale`` or ``retriable``.
        Calls must come in source-key order."""
        if is_long(source.key, self.prefix):
            # Its result has the hashed key (results/_long/<sha256>.json), outside the in-step order:
            # one HEAD of it (and of its marker) decides.
            self.heads += 1
            return self._reason_by_head(source)
        self._read_until(retry_marker_key(source.key, self.prefix))
        result, marker = self._seen.pop(source.key, (None, None))
        self._calls += 1
        if self._calls % _PRUNE_EVERY == 0:
            self._prune(source.key)
        if result is None:
            return MISSING
        source_t, result_t = _second(source.last_modified), _second(result.last_modified)
        marker_t = _second(marker.last_modified) if marker is not None else None
        if self.verify or source_t is None or result_t is None or source_t == result_t or marker_t == result_t:
            self.heads += 1  # the listing cannot order them: the result's stamp decides
            return why_not_done(read_stamp(self.store, f"s3://{self.bucket}/{result.key}"), source.etag)
        if result_t < source_t:
            return STALE
        if marker_t is not None and marker_t > result_t:
            return RETRIABLE
        return None

    def _reason_by_head(self, source: ObjectInfo) -> str | None:
        # The result's own stamp says missing, stale or retriable (a retriable error result is
        # stamped so), like the same-second case of the in-step walk.
        return why_not_done(read_stamp(self.store, f"s3://{self.bucket}/{result_key(source.key, self.prefix)}"),
                            source.etag)

    def _read_until(self, bound: str) -> None:
        while self._next is not None and self._next.key <= bound:
            info, self._next = self._next, next(self._results, None)
            key, slot = info.key, 0
            if key.endswith(RETRY_MARKER_SUFFIX):
                key, slot = key[: -len(RETRY_MARKER_SUFFIX)], 1
            source_key = source_key_of(key, self.prefix)
            if source_key is not None:
                self._seen.setdefault(source_key, [None, None])[slot] = info

    def _prune(self, current: str) -> None:
        # Sources come in key order: a result for a key below the current one will never be asked
        # for again (an orphan, or a source the filters dropped).
        for key in [k for k in self._seen if k < current]:
            del self._seen[key]


def results_start_after(source_start_after: str | None, prefix: str) -> str | None:
    """Where to resume the results listing when the source listing resumes after a key: every result
    of a later source key sorts after ``prefix + key`` (the ``.json`` suffix cannot move it before)."""
    return prefix + source_start_after if source_start_after else None


def _second(value: dt.datetime | None) -> dt.datetime | None:
    return value.replace(microsecond=0) if value is not None else None
