"""Reading result documents, and the images they describe, back from S3 (for summary, export, gallery).

Through the one S3 layer (:class:`vehicle_core.storage.ObjectStore`): one listing page and one
document are held at a time.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from vehicle_core.errors import SourceNotFoundError
from vehicle_core.storage import ObjectStore


def iter_result_documents(store: ObjectStore, bucket: str, prefix: str, limit: int | None = None
                          ) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(key, document)`` of every ``*.json`` object under ``s3://bucket/prefix``, in key order.

    Objects that are not JSON are skipped; a document deleted between listing and reading is skipped too.
    """
    if limit is not None and limit <= 0:
        return
    seen = 0
    for info in store.list(f"s3://{bucket}/{prefix}"):
        if not info.key.endswith(".json"):
            continue
        body = read_source(store, bucket, info.key)
        try:
            document = json.loads(body) if body is not None else None
        except ValueError:
            document = None  # not a result document: reports count what they can read
        if not isinstance(document, dict):
            continue
        yield info.key, document
        seen += 1
        if limit is not None and seen >= limit:
            return


def read_source(store: ObjectStore, bucket: str, key: str) -> bytes | None:
    """The bytes of ``s3://bucket/key`` (the image a result names), or None when it is gone."""
    try:
        return store.get(f"s3://{bucket}/{key}")[0]
    except SourceNotFoundError:
        return None
