"""What both detector-training scripts share: the scene distribution, held-out scoring, CPU timing and
the command line (``--out --seed --steps --minutes --threads``).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from training.synthetic.scenes import make_scene
from vehicle_core.detection.base import box_iou

SIZE = 256
SCENE = dict(size=(SIZE, SIZE), n_vehicles=(1, 3), scale=(0.15, 0.6))


Predictions = list[tuple[list[float], str]]


def score_held_out(predict: Callable[[object], Predictions], seed: int, n: int = 100) -> dict[str, float]:
    """Recall (IoU >= 0.5, right COCO class) and precision of ``predict(scene) -> [(box, class)]`` (the
    detections above the score threshold) on ``n`` fresh scenes; both training scripts score this way."""
    rng = np.random.default_rng(seed)
    truths = found = matched_truth = matched_pred = 0
    for _ in range(n):
        scene = make_scene(rng, **SCENE)
        preds = predict(scene)
        truths += len(scene.objects)
        found += len(preds)
        used: set[int] = set()
        for o in scene.objects:
            for j, (b, c) in enumerate(preds):
                if j not in used and c == o.detector_class and box_iou(b, o.box) >= 0.5:
                    used.add(j)
                    matched_truth += 1
                    break
        matched_pred += len(used)
    return {"recall_iou50": round(matched_truth / max(1, truths), 3),
            "precision_iou50": round(matched_pred / max(1, found), 3), "eval_scenes": n}


@torch.inference_mode()
def time_per_image(model: torch.nn.Module, inputs: list, repeats: int = 5) -> float:
    """Median ms per image of ``model(inputs)`` (one forward pass over the batch), after a warm-up."""
    model(inputs)  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        model(inputs)
        times.append((time.perf_counter() - t) * 1000 / len(inputs))
    return round(float(np.median(times)), 1)


def time_cpu(model: torch.nn.Module, to_input: Callable[[object], object], batch: int, repeats: int = 5) -> float:
    """Median ms per image on CPU at ``batch`` seeded scenes per forward pass (``to_input(scene)`` each)."""
    rng = np.random.default_rng(123)
    return time_per_image(model, [to_input(make_scene(rng, **SCENE)) for _ in range(batch)], repeats)


def speed_metrics(model: torch.nn.Module, to_input: Callable[[object], object], steps: int, threads: int) -> dict:
    """The manifest's training and CPU-speed figures."""
    return {"train_steps": steps, "cpu_threads": threads,
            "cpu_ms_per_image_batch1": time_cpu(model, to_input, 1),
            "cpu_ms_per_image_batch8": time_cpu(model, to_input, 8)}


def parser(description: str) -> argparse.ArgumentParser:
    """The options both scripts take; each adds its own."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--minutes", type=float, default=12.0)
    p.add_argument("--threads", type=int, default=2)
    return p
