"""The card's three arms, measured: baseline, fine-tuned, and fine-tuned on detector crops.

    python -m training.crops_vs_full --out bench-out [--scenes 150] [--ground-truth] [--imagenet-weights FILE]

One synthetic benchmark (cluttered scenes, small vehicles, label = the primary vehicle's) and three
runs of the same classifier, all scored on the same held-out test scenes:

* ``baseline``: the backbone frozen, only a new head trained, on the full images;
* ``finetuned``: the same head, then the top of the backbone fine-tuned, on the full images;
* ``finetuned_crops``: the same recipe on the primary vehicle's detector crop of each scene
  (a test scene the detector finds nothing in counts as wrong).

From random weights by default (no ImageNet offline); ``--imagenet-weights`` starts every arm from a
ResNet50 weights file in Keras's ImageNet layout (a path or ``s3://`` URI). Results go to
``OUT/benchmark.json`` and ``OUT/benchmark.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path
from typing import Any

from training.quickstart import DEMO_TRAINING
from vehicle_core.config import Settings, load_settings

#: The demo's preset (from scratch): a head stage, then the last residual block fine-tuned (the whole
#: network costs ~4 s per batch on a 2-core CPU). Few epochs: sized to finish on a shared 2-core VM.
BENCH_TRAINING: dict[str, Any] = {**DEMO_TRAINING, "image_size": 48, "head_epochs": 2, "head_learning_rate": 0.003,
                                  "finetune_epochs": 4, "finetune_layers": 11, "seed": 11}
#: What starts differently from pretrained weights: BatchNorm frozen, a gentler fine-tuning rate.
PRETRAINED_CHANGES: dict[str, Any] = {"finetune_learning_rate": 0.0001, "finetune_layers": 30}
#: name -> (dataset, stage 2 on?)
ARMS: dict[str, tuple[str, bool]] = {
    "baseline": ("full", False),
    "finetuned": ("full", True),
    "finetuned_crops": ("crops", True),
}
ARM_TITLES = {
    "baseline": "baseline: frozen backbone, new head, full images",
    "finetuned": "fine-tuned, full images",
    "finetuned_crops": "fine-tuned, detector crops",
}


def arm_settings(settings: Settings, arm: str, *, imagenet_weights: str | None = None,
                 overrides: dict[str, Any] | None = None):
    """The training settings of one arm: the bench preset, pretrained changes, ``overrides``, then the arm."""
    preset = dict(BENCH_TRAINING)
    if imagenet_weights:
        preset.update(PRETRAINED_CHANGES, imagenet_weights=imagenet_weights)
    preset.update(overrides or {})
    if not ARMS[arm][1]:
        preset["finetune_epochs"] = 0
    return dataclasses.replace(settings.training, **preset)


def run_benchmark(out: Path, settings: Settings, *, n_scenes: int, seed: int, ground_truth: bool,
                  imagenet_weights: str | None = None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Make the scenes, crop them, train the three arms, score each on the same test scenes."""
    from training.crops import crop_dataset
    from training.dataset import index_dataset
    from training.evaluate import evaluate_artifact, write_report
    from training.synthetic.datasets import write_scene_dataset
    from training.train import train_classifier
    from vehicle_core.storage import ObjectStore

    store = ObjectStore(settings.storage)
    roots = {"full": str(out / "scenes"), "crops": str(out / "crops")}
    t0 = time.monotonic()
    write_scene_dataset(roots["full"], store, n=n_scenes, seed=seed)
    rows = crop_dataset(roots["full"], roots["crops"], settings, use_ground_truth=ground_truth)
    summary: dict[str, Any] = {"scenes": n_scenes, "seed": seed, "imagenet_weights": imagenet_weights or "none"}
    summary["crops"] = {"written": sum("key" in r for r in rows), "skipped": [r for r in rows if "skipped" in r]}
    n_test = len(index_dataset(roots["full"], store).split("test"))
    summary["arms"] = {}
    for arm, (data, _) in ARMS.items():
        training = arm_settings(settings, arm, imagenet_weights=imagenet_weights, overrides=overrides)
        index = index_dataset(roots[data], store)
        t1 = time.monotonic()
        result = train_classifier(index, store, training, run_dir=out / f"run-{arm}", version=f"bench-{arm}",
                                  storage=settings.storage)
        evaluation, images = evaluate_artifact(result.artifact, index, index.split("test"), store, split="test")
        write_report(evaluation, images, out / f"report-{arm}")
        correct = round(evaluation.accuracy * evaluation.n_images)
        summary["arms"][arm] = {
            "data": data,
            "training": dataclasses.asdict(training),
            "train_images": len(index.split("train")),
            "val_accuracy": result.manifest["metrics"].get("val_accuracy"),
            "test_scored": evaluation.n_images,
            "test_accuracy_scored": evaluation.accuracy,
            # Over every held-out scene: a scene without a crop is a miss for the crop model.
            "test_accuracy": correct / n_test if n_test else 0.0,
            "train_seconds": round(time.monotonic() - t1, 1),
        }
    summary["test_scenes"] = n_test
    summary["detector"] = "ground-truth boxes" if ground_truth else settings.detector.model
    summary["machine"] = f"{platform.machine()} {platform.processor() or ''} x{_cpus()} CPU, {platform.system()}"
    summary["seconds"] = round(time.monotonic() - t0, 1)
    (out / "benchmark.json").write_text(json.dumps(summary, indent=2, default=str))
    (out / "benchmark.md").write_text(_markdown(summary))
    return summary


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


def _markdown(s: dict[str, Any]) -> str:
    lines = [
        f"| arm | train images | val accuracy | test accuracy (all {s['test_scenes']} test scenes) | train s |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for arm, r in s["arms"].items():
        title = ARM_TITLES[arm] + (f" ({s['detector']})" if r["data"] == "crops" else "")
        lines.append(f"| {title} | {r['train_images']} | {r['val_accuracy'] or 0:.3f} | {r['test_accuracy']:.3f} | "
                     f"{r['train_seconds']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.crops_vs_full", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--scenes", type=int, default=150)
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--ground-truth", action="store_true", help="crop ground-truth boxes instead of detector boxes")
    p.add_argument("--imagenet-weights", help="start every arm from these ResNet50 weights (path, s3:// or 'imagenet')")
    args = p.parse_args(argv)
    summary = run_benchmark(args.out, load_settings(), n_scenes=args.scenes, seed=args.seed, ground_truth=args.ground_truth,
                            imagenet_weights=args.imagenet_weights)
    print(_markdown(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
