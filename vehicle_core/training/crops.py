"""Turn a labelled image dataset into a labelled crop dataset: run the detector, keep the primary vehicle.

    rows = crop_dataset("s3://b/scenes", "s3://b/scenes-crops", settings)

Input and output use the reader's layout (``<root>/<split>/<label>/<file>``); the output also gets a
``manifest.csv`` (``key,label,split``) and ``report.json`` (images without a vehicle, unreadable ones).

The unit of work is :func:`crop_chunk`: plain arguments in (URIs, labels, splits, settings as a dict),
plain rows out; :func:`crop_dataset` maps it over chunks locally with a thread pool unless given another
``map_chunks``. ``workers.dataset_crops`` is that other one: each chunk becomes a task on the detect
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
from pathlib import PurePosixPath
from typing import Any

from vehicle_core.config import Settings, load_settings
from vehicle_core.errors import InvalidInputError
from vehicle_core.results import Detection, SourceRef
from vehicle_core.training.dataset import ObjectReader, index_dataset

log = logging.getLogger(__name__)

CHUNK = 16  # images per unit of work: a few detector batches, small enough to spread over workers

_STAGES: dict[int, Any] = {}  # one loaded DetectStage per process (keyed by settings) for crop_chunk
_STAGES_LOCK = threading.Lock()  # two threads of the local pool must not both load the detector


def _detect_stage(settings: Settings):
    from vehicle_core.pipeline import DetectStage

    key = hash(json.dumps(settings.to_dict(), sort_keys=True, default=str))
    with _STAGES_LOCK:
        if key not in _STAGES:
            _STAGES[key] = DetectStage.from_settings(settings)
        return _STAGES[key]


def _primary(detections: Sequence[Detection]) -> int | None:
    return max(range(len(detections)), key=lambda i: detections[i].area, default=None)


def crop_chunk(
    examples: Sequence[dict[str, str]],
    dst_root: str,
    settings: dict[str, Any],
    ground_truth: dict[str, list[dict[str, Any]]] | None = None,
) -> list[dict[str, str]]:
    """Crop the primary vehicle of each ``{"uri", "label", "split"}`` and write it under ``dst_root``.

    With ``ground_truth`` (uri -> objects with ``box``/``detector_class``) boxes come from it instead of
    the detector, through the same crop code. Returns one row per example: ``key``/``label``/``split``
    for a written crop, or ``uri`` and ``skipped`` (``no_vehicle`` or an error code).
    """
    s = load_settings(env={}).replace(**settings)
    stage = None if ground_truth is not None else _detect_stage(s)
    return crop_examples(examples, dst_root, s, stage=stage, ground_truth=ground_truth, store=ObjectReader(s.storage))


def crop_examples(
    examples: Sequence[dict[str, str]],
    dst_root: str,
    settings: Settings,
    *,
    stage: Any,
    ground_truth: dict[str, list[dict[str, Any]]] | None,
    store: ObjectReader,
) -> list[dict[str, str]]:
    """:func:`crop_chunk` with the objects already built: a loaded ``DetectStage`` (unused with
    ``ground_truth``) and a reader. A detect worker calls this with the stage it serves images with."""
    items, rows = [], []
    for ex in examples:
        try:
            items.append((store.read(ex["uri"]), SourceRef(bucket="dataset", key=ex["uri"])))
        except OSError as exc:
            rows.append({"uri": ex["uri"], "skipped": f"unreadable: {exc}"})
    if ground_truth is None:
        crop_sets = stage.run(items)
    else:
        crop_sets = [_ground_truth_crops(data, src, ground_truth.get(src.key, []), settings) for data, src in items]
    by_uri = {ex["uri"]: ex for ex in examples}
    for cs in crop_sets:
        ex = by_uri[cs.source.key]
        best = _primary(cs.detections)
        if cs.error or best is None:
            rows.append({"uri": ex["uri"], "skipped": (cs.error or {}).get("code", "no_vehicle")})
            continue
        name = PurePosixPath(ex["uri"]).stem + ".jpg"
        key = f"{dst_root.rstrip('/')}/{ex['split']}/{ex['label']}/{name}"
        store.write(key, cs.crops[best])
        rows.append({"key": key, "label": ex["label"], "split": ex["split"]})
    return rows


def _ground_truth_crops(data: bytes, source: SourceRef, objects: list[dict[str, Any]], settings: Settings):
    from vehicle_core.crop import crop_vehicles, encode_crop
    from vehicle_core.images import decode_image
    from vehicle_core.pipeline import CropSet

    cs = CropSet(source=source)
    try:
        pixels = decode_image(data, settings.images)
    except InvalidInputError as exc:
        cs.error = exc.to_dict()
        return cs
    cs.detections = [Detection(box=tuple(o["box"]), score=1.0, label=o["detector_class"]) for o in objects]
    cs.crops = [encode_crop(c, settings.crop) for c in crop_vehicles(pixels, cs.detections, settings.crop)]
    return cs


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

    ``use_ground_truth`` takes boxes from ``src_root/annotations.jsonl`` (see ``synth_data``) instead of
    running the detector. ``map_chunks(fn, list_of_args)`` runs the chunks (its ``description`` goes
    into ``report.json``); the default is a local thread pool of ``workers`` (one shared detector).
    """
    store = ObjectReader(settings.storage)
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


def _read_annotations(src_root: str, store: ObjectReader) -> dict[str, list[dict[str, Any]]]:
    text = store.read(f"{src_root.rstrip('/')}/annotations.jsonl").decode()
    return {rec["uri"]: rec["objects"] for rec in map(json.loads, filter(None, text.splitlines()))}


def _write_outputs(dst_root: str, rows: list[dict[str, str]], store: ObjectReader, *, executor: str) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["key", "label", "split"])
    base = dst_root.rstrip("/") + "/"
    for row in rows:
        if "key" in row:
            writer.writerow([row["key"].removeprefix(base), row["label"], row["split"]])
    store.write(base + "manifest.csv", buf.getvalue().encode())
    skipped = [row for row in rows if "skipped" in row]
    report = {"written": len(rows) - len(skipped), "skipped": skipped, "executor": executor}
    store.write(base + "report.json", json.dumps(report, indent=2).encode())
    log.info("cropped %d images into %s; skipped %d", report["written"], dst_root, len(skipped))
