"""What every detector backend shares (and the ``fake://`` stand-in of vehicle_core/fake_models.py):
forward passes of ``batch_size`` images, and the vehicle filter with the settings' thresholds."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from vehicle_core.results.contract import Detection, ModelInfo

if TYPE_CHECKING:
    from vehicle_core.config import DetectorSettings


class BatchedDetector:
    """What every backend shares: ``detect`` in forward passes of ``settings.batch_size`` images, and
    the vehicle filter with the settings' thresholds. Subclasses set ``settings`` and ``info`` and
    implement ``_detect_batch``."""

    settings: DetectorSettings
    info: ModelInfo

    def detect(self, images: Sequence[np.ndarray]) -> list[list[Detection]]:
        """Vehicles in each RGB uint8 image, ``settings.batch_size`` images per forward pass."""
        out: list[list[Detection]] = []
        step = max(1, self.settings.batch_size)
        for start in range(0, len(images), step):
            out.extend(self._detect_batch(images[start : start + step]))
        return out

    def _detect_batch(self, images: Sequence[np.ndarray]) -> list[list[Detection]]:
        raise NotImplementedError

    def _vehicles(self, boxes, scores, labels, masks, image_size: tuple[int, int]) -> list[Detection]:
        s = self.settings
        return filter_detections(boxes, scores, labels, masks, vehicle_classes=s.vehicle_classes,
                                 score_threshold=s.score_threshold, min_box_size=s.min_box_size,
                                 max_vehicles=s.max_vehicles, image_size=image_size,
                                 same_vehicle_iou=s.same_vehicle_iou)


def filter_detections(
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: Sequence[str],
    masks: np.ndarray | None,
    *,
    vehicle_classes: Sequence[str],
    score_threshold: float,
    min_box_size: float,
    max_vehicles: int,
    image_size: tuple[int, int],
    same_vehicle_iou: float = 1.0,
) -> list[Detection]:
    """Keep vehicles only: wanted class, score, size; clip boxes to the image; best score first.

    A box overlapping an already kept, higher-scoring vehicle with an IoU above ``same_vehicle_iou``
    is the same vehicle seen as another class (COCO detectors suppress duplicates per class only, so
    one pickup can come back as both "truck" and "car"); it is dropped. 1.0 keeps every box.
    ``boxes`` is N x 4 (x1, y1, x2, y2), ``image_size`` (height, width). ``masks``: N x H x W bool, or
    None, or an object whose ``window(i)`` returns ``(bool array, (x, y) origin)`` of detection ``i``'s
    mask; it is called for kept detections only (a backend pastes just the masks it keeps).
    """
    height, width = image_size
    wanted = set(vehicle_classes)
    kept: list[Detection] = []
    for i in np.argsort(-np.asarray(scores), kind="stable"):
        score = float(scores[i])
        if score < score_threshold or labels[i] not in wanted:
            continue
        x1, y1, x2, y2 = (float(v) for v in boxes[i])
        x1, x2 = min(max(x1, 0.0), width), min(max(x2, 0.0), width)
        y1, y2 = min(max(y1, 0.0), height), min(max(y2, 0.0), height)
        if min(x2 - x1, y2 - y1) < min_box_size:
            continue
        if any(box_iou((x1, y1, x2, y2), k.box) > same_vehicle_iou for k in kept):
            continue
        mask, origin = _mask_of(masks, int(i))
        kept.append(Detection(box=(x1, y1, x2, y2), score=score, label=labels[i], mask=mask, mask_origin=origin))
        if len(kept) >= max_vehicles:
            break
    return kept


def _mask_of(masks, i: int) -> tuple[np.ndarray | None, tuple[int, int]]:
    if masks is None:
        return None, (0, 0)
    window = getattr(masks, "window", None)
    if window is not None:
        return window(i)
    return np.asarray(masks[i], dtype=bool), (0, 0)


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
