"""Train the tiny Mask R-CNN on synthetic scenes and write a detector artifact.

    python -m vehicle_core.detection.train_synthetic --out vehicle_core/zoo/synthetic-maskrcnn-tiny \
        --seed 0 --minutes 12

Scenes are drawn on the fly from ``vehicle_core.synthetic`` (seeded), so the run needs no data. It stops
after ``--steps`` steps or ``--minutes``, whichever first (the step count reached is in the manifest),
then scores the model on held-out scenes (recall at IoU 0.5 with the right class, precision at the
default score threshold) and times CPU inference; the numbers go into the manifest's ``metrics``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from vehicle_core.detection.base import box_iou
from vehicle_core.detection.torchvision_backend import COCO_CATEGORIES, build_arch
from vehicle_core.synthetic import make_scene

ARCH, SIZE = "maskrcnn_tiny", 256
SCENE = dict(size=(SIZE, SIZE), n_vehicles=(1, 3), scale=(0.15, 0.6))


def _target(scene) -> dict[str, torch.Tensor]:
    return {
        "boxes": torch.tensor([o.box for o in scene.objects], dtype=torch.float32),
        "labels": torch.tensor([COCO_CATEGORIES.index(o.detector_class) for o in scene.objects]),
        "masks": torch.from_numpy(np.stack([o.mask for o in scene.objects]).astype(np.uint8)),
    }


def _tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1).float() / 255


def train(seed: int, steps: int, minutes: float, batch: int = 4) -> tuple[torch.nn.Module, int]:
    """The trained model (eval mode) and the steps run."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = build_arch(ARCH, len(COCO_CATEGORIES), SIZE, SIZE).train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.05)
    deadline = time.monotonic() + minutes * 60
    step = 0
    while step < steps and time.monotonic() < deadline:
        scenes = [make_scene(rng, **SCENE) for _ in range(batch)]
        losses = model([_tensor(s.image) for s in scenes], [_target(s) for s in scenes])
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        step += 1
        if step % 50 == 0:
            print(f"step {step} loss {loss.item():.3f}", flush=True)
    return model.eval(), step


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
def evaluate(model: torch.nn.Module, seed: int, n: int = 100, threshold: float = 0.5) -> dict[str, float]:
    """:func:`score_held_out` of the torchvision model at ``threshold``."""

    def predict(scene) -> Predictions:
        r = model([_tensor(scene.image)])[0]
        keep = r["scores"] >= threshold
        return [(b, COCO_CATEGORIES[int(c)]) for b, c in zip(r["boxes"][keep].tolist(), r["labels"][keep], strict=True)]

    return score_held_out(predict, seed, n)


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


def time_cpu(model: torch.nn.Module, batch: int, repeats: int = 5) -> float:
    """Median ms per image on CPU at ``batch`` images per forward pass."""
    rng = np.random.default_rng(123)
    return time_per_image(model, [_tensor(make_scene(rng, **SCENE).image) for _ in range(batch)], repeats)


def main(argv: list[str] | None = None) -> None:
    """Train, evaluate, time and write ``--out`` (manifest.json + model.pt)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--minutes", type=float, default=12.0)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, steps = train(args.seed, args.steps, args.minutes)
    metrics = evaluate(model, seed=args.seed + 10_000)
    metrics.update({"train_steps": steps, "cpu_threads": args.threads,
                    "cpu_ms_per_image_batch1": time_cpu(model, 1), "cpu_ms_per_image_batch8": time_cpu(model, 8)})
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), args.out / "model.pt")
    manifest = {"name": "synthetic-maskrcnn-tiny", "version": f"seed{args.seed}-steps{steps}", "backend": "torchvision",
                "arch": ARCH, "categories": COCO_CATEGORIES, "min_size": SIZE, "max_size": SIZE,
                "weights": "model.pt", "metrics": metrics}
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(json.dumps(metrics))


if __name__ == "__main__":
    main()
