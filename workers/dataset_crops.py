"""The detect worker's side of ``vehicle-train crop`` (the client is ``training.remote_crops``): one
chunk of a labelled dataset cropped with the ``DetectStage`` this worker serves images with."""

from __future__ import annotations

import json
import logging
from typing import Any

from vehicle_core.config import Settings
from vehicle_core.errors import ConfigError
from vehicle_core.labelled_crops import crop_examples
from vehicle_core.storage import ObjectStore, is_s3

log = logging.getLogger(__name__)


def run_chunk(examples: list[dict[str, str]], dst_root: str, ground_truth: dict | None, part_uri: str, *,
              settings: Settings, stage: Any, worker: str) -> dict[str, Any]:
    """The worker's side: crop one chunk with ``stage`` and write its rows to ``part_uri``."""
    # Anyone who can send a task must not make a worker read or write its local disk: S3 only.
    for uri in (dst_root, part_uri, *(ex.get("uri", "") for ex in examples)):
        if not is_s3(uri):
            raise ConfigError(f"a crop chunk may read and write s3:// URIs only, not {uri!r}")
    store = ObjectStore(settings.storage)
    try:
        rows = crop_examples(examples, dst_root, settings, stage=stage, ground_truth=ground_truth, store=store)
    except Exception as exc:  # noqa: BLE001 - the whole chunk failed for good: report every image of it, lose none
        log.exception("crop chunk %s failed", part_uri)
        rows = [{"uri": ex["uri"], "skipped": f"error: {exc!r}"} for ex in examples]
    rows = [{**row, "worker": worker} for row in rows]
    store.put(part_uri, json.dumps(rows).encode())
    return {"part": part_uri, "images": len(examples), "written": sum("key" in r for r in rows)}
