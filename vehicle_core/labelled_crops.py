"""Crops of labelled dataset images: the primary vehicle of each, cut the way the pipeline cuts.

:func:`crop_examples` is the unit of work of ``vehicle-train crop``: a local thread pool runs it
(``training.crops``), and so does a detect worker with the detector it serves
(``workers.dataset_crops``), which is why it lives in the library both import.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import Any

from vehicle_core.config import Settings
from vehicle_core.errors import InvalidInputError
from vehicle_core.messages import CropSet
from vehicle_core.results.contract import Detection, SourceRef
from vehicle_core.storage import ObjectStore


def _primary(detections: Sequence[Detection]) -> int | None:
    return max(range(len(detections)), key=lambda i: detections[i].area, default=None)


def crop_examples(
    examples: Sequence[dict[str, str]],
    dst_root: str,
    settings: Settings,
    *,
    stage: Any,
    ground_truth: dict[str, list[dict[str, Any]]] | None,
    store: ObjectStore,
) -> list[dict[str, str]]:
    """Crop the primary vehicle of each ``{"uri", "label", "split"}`` and write it under ``dst_root``.

    ``stage`` is a loaded ``DetectStage`` (unused with ``ground_truth``: uri -> objects with
    ``box``/``detector_class``, whose boxes go through the same crop code). Returns one row per
    example: ``key``/``label``/``split`` for a written crop, or ``uri`` and ``skipped`` (``no_vehicle``,
    an error code, or why it was unreadable)."""
    items, rows = [], []
    for ex in examples:
        try:
            items.append((store.read(ex["uri"]), SourceRef(bucket="dataset", key=ex["uri"])))
        except InvalidInputError as exc:  # vanished or unreadable object: report it, lose nothing
            rows.append({"uri": ex["uri"], "skipped": f"unreadable: {exc.message}"})
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
        store.put(key, cs.crops[best])
        rows.append({"key": key, "label": ex["label"], "split": ex["split"]})
    return rows


def _ground_truth_crops(data: bytes, source: SourceRef, objects: list[dict[str, Any]], settings: Settings):
    from vehicle_core.crop import crop_vehicles, encode_crop
    from vehicle_core.images import decode_image

    cs = CropSet(source=source)
    try:
        pixels = decode_image(data, settings.images)
    except InvalidInputError as exc:
        cs.error = exc.to_dict()
        return cs
    cs.detections = [Detection(box=tuple(o["box"]), score=1.0, label=o["detector_class"]) for o in objects]
    cs.crops = [encode_crop(c, settings.crop) for c in crop_vehicles(pixels, cs.detections, settings.crop)]
    return cs
