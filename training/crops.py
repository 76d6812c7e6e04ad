"""Turn a labelled image dataset into a labelled crop dataset: run the detector, keep the primary vehicle.

    rows = crop_dataset("s3://b/scenes", "s3://b/scenes-crops", settings)

Input and output use the reader's layout (``<root>/<split>/<label>/<file>``); the output also gets a
``manifest.csv`` (``key,label,split``) and ``report.json`` (images without a vehicle, unreadable ones).

The unit of work is :func:`crop_chunk`: plain arguments in (URIs, labels, splits, settings as a dict),
plain rows out; :func:`crop_dataset` maps it over chunks locally with a thread pool unless given another
``map_chunks``. ``training.remote_crops`` is that other one: each chunk becomes a task on the detect
queue, run by the detect workers with the detector they serve (``vehicle-train crop`` picks it when
detect workers answer).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from training.dataset import index_dataset
from vehicle_core.config import Settings
from vehicle_core.labelled_crops import crop_examples
from vehicle_core.lazy import Lazy
from vehicle_core.storage import ObjectStore

log = logging.getLogger(__name__)

CHUNK = 16  # images per unit of work: a few detector batches, small enough to spread over workers

_STAGES: dict[str, Lazy] = {}  # one DetectStage per process and settings, loaded once for crop_chunk
_STAGES_LOCK = threading.Lock()


def _detect_stage(settings: Settings):
    from vehicle_core.pipeline import DetectStage

    key = json.dumps(settings.to_dict(), sort_keys=True, default=str)
    with _STAGES_LOCK:
        holder = _STAGES.setdefault(key, Lazy("detector for crops", lambda: DetectStage.from_settings(settings)))
    return holder.get()  # Lazy's own lock: two threads of the local pool never both load the detector


def crop_chunk(
    examples: Sequence[dict[str, str]],
    dst_root: str,
    settings: dict[str, Any],
    ground_truth: dict[str, list[dict[str, Any]]] | None = None,
) -> list[dict[str, str]]:
    """:func:`vehicle_core.labelled_crops.crop_examples` from plain arguments (``settings`` as the
    dict of ``Settings.to_dict()``, so a chunk can travel as a message)."""
    s = Settings.from_dict(settings)
    stage = None if ground_truth is not None else _detect_stage(s)
    return crop_examples(examples, dst_root, s, stage=stage, ground_truth=ground_truth, store=ObjectStore(s.storage))


def crop_dataset(
    src_root: str,
    dst_root: str,
    settings: Settings,
    *,
    use_ground_truth: bool = False,
    map_chunks: Callable[[Callable, list[tuple]], list[list[dict]]] | None = None,
    workers: int = 2,
) -> list[dict[str, str]]:
    """Crop every image under ``src_root`` into ``dst_root``; returns the rows of all chunks.

    ``use_ground_truth`` takes boxes from ``src_root/annotations.jsonl`` (see ``training.synthetic.datasets``) instead of
    running the detector. ``map_chunks(fn, list_of_args)`` runs the chunks (its ``description`` goes
    into ``report.json``); the default is a local thread pool of ``workers`` (one shared detector).
    """
    store = ObjectStore(settings.storage)
    index = index_dataset(src_root, store)
    examples = [{"uri": e.uri, "label": e.label, "split": e.split} for e in index.examples]
    truth = _read_annotations(src_root, store) if use_ground_truth else None
    overrides = settings.to_dict()
    chunks = [examples[i : i + CHUNK] for i in range(0, len(examples), CHUNK)]
    args = [(chunk, dst_root, overrides, _subset(truth, chunk)) for chunk in chunks]
    if map_chunks is None:
        executor = f"local ({workers} threads)"
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(lambda a: crop_chunk(*a), args))
    else:
        executor = getattr(map_chunks, "description", repr(map_chunks))
        results = map_chunks(crop_chunk, args)
    rows = [row for chunk_rows in results for row in chunk_rows]
    _write_outputs(dst_root, rows, store, executor=executor)
    return rows


def _subset(truth, chunk):
    return None if truth is None else {ex["uri"]: truth.get(ex["uri"], []) for ex in chunk}


def _read_annotations(src_root: str, store: ObjectStore) -> dict[str, list[dict[str, Any]]]:
    text = store.read(f"{src_root.rstrip('/')}/annotations.jsonl").decode()
    return {rec["uri"]: rec["objects"] for rec in map(json.loads, filter(None, text.splitlines()))}


def _write_outputs(dst_root: str, rows: list[dict[str, str]], store: ObjectStore, *, executor: str) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["key", "label", "split"])
    base = dst_root.rstrip("/") + "/"
    for row in rows:
        if "key" in row:
            writer.writerow([row["key"].removeprefix(base), row["label"], row["split"]])
    store.put(base + "manifest.csv", buf.getvalue().encode())
    skipped = [row for row in rows if "skipped" in row]
    report = {"written": len(rows) - len(skipped), "skipped": skipped, "executor": executor}
    store.put(base + "report.json", json.dumps(report, indent=2).encode())
    log.info("cropped %d images into %s; skipped %d", report["written"], dst_root, len(skipped))
