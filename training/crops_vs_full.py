"""The card's claim, measured: does training on detector crops beat training on full images?

    python -m training.crops_vs_full --out bench-out [--scenes 600] [--ground-truth]

One synthetic benchmark (cluttered scenes, small vehicles, label = the primary vehicle's), two runs of
the same classifier with the same settings and epochs: on the full images, and on the primary
vehicle's crop. Both are scored on the same held-out test scenes; for the crop model a test scene the
detector finds nothing in counts as wrong. Results go to ``OUT/benchmark.json`` and ``OUT/benchmark.md``.
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

#: The demo's preset (from scratch: no ImageNet offline) but a larger input, since vehicles are small.
#: The whole network trains here (finetune_layers -1), as in the measured run in docs/training.md.
BENCH_TRAINING: dict[str, Any] = {**DEMO_TRAINING, "image_size": 64, "finetune_epochs": 8, "finetune_layers": -1,
                                  "seed": 11}


def run_benchmark(out: Path, settings: Settings, *, n_scenes: int, seed: int, ground_truth: bool,
                  imagenet_weights: str | None = None) -> dict[str, Any]:
    """Make the scenes, crop them, train both models, score both on the same test scenes."""
    from training.crops import crop_dataset
    from training.dataset import index_dataset
    from training.evaluate import evaluate_artifact, write_report
    from training.synthetic_datasets import write_scene_dataset
    from training.train import train_classifier
    from vehicle_core.storage import ObjectStore

    store = ObjectStore(settings.storage)
    scenes, crops = str(out / "scenes"), str(out / "crops")
    t0 = time.monotonic()
    write_scene_dataset(scenes, store, n=n_scenes, seed=seed)
    rows = crop_dataset(scenes, crops, settings, use_ground_truth=ground_truth)
    preset = dict(BENCH_TRAINING)
    if imagenet_weights:  # both models start from the same pretrained backbone (head first, then fine-tune)
        preset.update(imagenet_weights=imagenet_weights, head_epochs=3, finetune_layers=settings.training.finetune_layers,
                      finetune_learning_rate=settings.training.finetune_learning_rate)
    training = dataclasses.replace(settings.training, **preset)
    summary: dict[str, Any] = {"scenes": n_scenes, "seed": seed, "training": dataclasses.asdict(training)}
    summary["crops"] = {"written": sum("key" in r for r in rows), "skipped": [r for r in rows if "skipped" in r]}
    full_index = index_dataset(scenes, store)
    n_test = len(full_index.split("test"))
    for name, root in (("full", scenes), ("crops", crops)):
        index = index_dataset(root, store)
        t1 = time.monotonic()
        result = train_classifier(index, store, training, run_dir=out / f"run-{name}", version=f"bench-{name}")
        evaluation, images = evaluate_artifact(result.artifact, index, index.split("test"), store, split="test")
        write_report(evaluation, images, out / f"report-{name}")
        correct = round(evaluation.accuracy * evaluation.n_images)
        summary[name] = {
            "train_images": len(index.split("train")),
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
    return (
        f"| training data | train images | test accuracy (all {s['test_scenes']} test scenes) | train s |\n"
        "| --- | --- | --- | --- |\n"
        f"| full images | {s['full']['train_images']} | {s['full']['test_accuracy']:.3f} | {s['full']['train_seconds']} |\n"
        f"| crops ({s['detector']}) | {s['crops']['train_images']} | {s['crops']['test_accuracy']:.3f} | "
        f"{s['crops']['train_seconds']} |\n"
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.crops_vs_full", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--scenes", type=int, default=600)
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--ground-truth", action="store_true", help="crop ground-truth boxes instead of detector boxes")
    p.add_argument("--imagenet-weights", help="start both models from these ResNet50 weights (path, s3:// or 'imagenet')")
    args = p.parse_args(argv)
    summary = run_benchmark(args.out, load_settings(), n_scenes=args.scenes, seed=args.seed, ground_truth=args.ground_truth,
                            imagenet_weights=args.imagenet_weights)
    print(_markdown(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
