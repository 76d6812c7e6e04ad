"""Labelled synthetic datasets written in the reader's layout (``<root>/<split>/<label>/<n>.png``).

Two kinds, both from ``training.synthetic.scenes`` scenes:

* crops: one vehicle per scene, cut out with ``crop_vehicles`` exactly as the pipeline cuts detector
  boxes (margin, square padding, mask blanking), so a classifier trained on them sees what it will
  be served;
* scenes: whole cluttered images labelled by their primary (largest) vehicle, plus an
  ``annotations.jsonl`` of ground-truth boxes, for the crop-versus-full-image benchmark.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping

import numpy as np

from vehicle_core.config import CropSettings
from vehicle_core.results.contract import Detection
from vehicle_core.storage import ObjectStore

DEFAULT_SPLITS = {"train": 0.7, "val": 0.15, "test": 0.15}


def _split_plan(n: int, splits: Mapping[str, float]) -> list[str]:
    """``n`` split names in proportion to ``splits`` (deterministic: the last split takes the rest)."""
    names = list(splits)
    plan: list[str] = []
    for name in names[:-1]:
        plan += [name] * round(n * splits[name])
    return plan + [names[-1]] * (n - len(plan))


def ground_truth_detections(scene) -> list[Detection]:
    """A scene's objects as detections (score 1), as a perfect detector would report them."""
    return [Detection(box=tuple(map(float, o.box)), score=1.0, label=o.detector_class, mask=o.mask) for o in scene.objects]


def crop_examples(
    seed: int, per_class: int, crop: CropSettings, *, scene_size: tuple[int, int] = (160, 120)
) -> Iterator[tuple[str, np.ndarray]]:
    """``(label, crop)`` pairs: ``per_class`` one-vehicle scenes per class, cut like the pipeline does."""
    from training.synthetic.scenes import CLASSES, make_scene
    from vehicle_core.crop import crop_vehicles

    rng = np.random.default_rng(seed)
    for _ in range(per_class):
        for label in CLASSES:
            scene = make_scene(rng, size=scene_size, n_vehicles=(1, 1), scale=(0.45, 0.85), labels=[label])
            (pixels,) = crop_vehicles(scene.image, ground_truth_detections(scene)[:1], crop)
            yield label, pixels


def write_crop_dataset(
    root: str,
    store: ObjectStore,
    *,
    per_class: int,
    seed: int,
    crop: CropSettings,
    splits: Mapping[str, float] = DEFAULT_SPLITS,
) -> dict[str, int]:
    """Write ``per_class`` crops per class under ``root``; returns images written per split."""
    from training.synthetic.scenes import CLASSES, encode

    plan = _split_plan(per_class, splits)
    written: dict[str, int] = {}
    for n, (label, pixels) in enumerate(crop_examples(seed, per_class, crop)):
        split = plan[n // len(CLASSES)]
        store.put(f"{root.rstrip('/')}/{split}/{label}/{n:05d}.png", encode(pixels, ".png"))
        written[split] = written.get(split, 0) + 1
    return written


def write_scene_dataset(
    root: str,
    store: ObjectStore,
    *,
    n: int,
    seed: int,
    size: tuple[int, int] = (320, 240),
    scale: tuple[float, float] = (0.12, 0.3),
    n_vehicles: tuple[int, int] = (1, 2),
    splits: Mapping[str, float] = DEFAULT_SPLITS,
) -> dict[str, int]:
    """Write ``n`` cluttered scenes labelled by their primary vehicle, and their boxes as JSON lines.

    Small ``scale`` (vehicle length / image width) is the benchmark's point: the vehicle is a small
    part of a busy image, which is where cropping should help.
    """
    from training.synthetic.scenes import encode, make_scene

    rng = np.random.default_rng(seed)
    plan = _split_plan(n, splits)
    rng_plan = np.random.default_rng(seed + 1)
    rng_plan.shuffle(plan)  # interleave splits so every split sees the whole generator's variety
    lines, written = [], {}
    for i, split in enumerate(plan):
        scene = make_scene(rng, size=size, n_vehicles=n_vehicles, scale=scale)
        primary = max(scene.objects, key=lambda o: (o.box[2] - o.box[0]) * (o.box[3] - o.box[1]))
        uri = f"{root.rstrip('/')}/{split}/{primary.label}/{i:05d}.jpg"
        store.put(uri, encode(scene.image, ".jpg"))
        boxes = [{"label": o.label, "detector_class": o.detector_class, "box": [float(v) for v in o.box]} for o in scene.objects]
        lines.append(json.dumps({"uri": uri, "label": primary.label, "split": split, "objects": boxes}))
        written[split] = written.get(split, 0) + 1
    store.put(f"{root.rstrip('/')}/annotations.jsonl", ("\n".join(lines) + "\n").encode())
    return written
