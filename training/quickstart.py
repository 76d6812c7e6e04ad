"""The research loop end to end on synthetic data, and the demo classifier built the same way.

``ensure_demo_classifier`` trains (once, then caches) a ResNet50 from random weights on synthetic
vehicle crops cut like the pipeline cuts them. ImageNet weights are not needed: the synthetic vehicles
are simple shapes and the input is small, so it trains in minutes on two CPU cores.
``run_quickstart`` does the same against S3: data to a bucket, train streaming from it, evaluate,
publish to the registry.
"""

from __future__ import annotations

import dataclasses
import fcntl
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from vehicle_core.classifier import DEMO_CACHE_NAME, MANIFEST_FILE
from vehicle_core.config import Settings, TrainingSettings

log = logging.getLogger(__name__)

DEMO_NAME = "vehicle-resnet50-synthetic-demo"
DEMO_SEED = 7
DEMO_PER_CLASS = 200  # crops per class (70% train, 15% val, 15% test)
#: The demo preset: from scratch (no ImageNet offline), small input, the top of the network trains.
DEMO_TRAINING: dict[str, Any] = {
    "image_size": 48,
    "batch_size": 32,
    "head_epochs": 0,
    "finetune_epochs": 12,
    # Only the last residual block (11 layers) and the head train; the layers below keep their random
    # weights. On a 2-core CPU without AVX-512 a full backward pass costs ~4 s per batch of 32 (the
    # late layers' gradients dominate, whatever the image size); this one ~0.7 s, and it scores
    # 0.88-0.99 on the held-out crops (docs/training.md).
    "finetune_layers": 11,
    "finetune_learning_rate": 0.001,
    "imagenet_weights": "none",
    "early_stopping_patience": 12,  # from scratch val_loss swings; the best epoch is restored anyway
    "augment": False,
    "class_weights": False,  # the synthetic classes are balanced
    "seed": DEMO_SEED,
}


def demo_training_settings(base: TrainingSettings) -> TrainingSettings:
    """The training settings of the demo model: ``base`` with :data:`DEMO_TRAINING` applied."""
    return dataclasses.replace(base, **DEMO_TRAINING)


def _is_demo_artifact(path: Path) -> bool:
    import json

    from training.synthetic.scenes import CLASSES

    try:
        manifest = json.loads((path / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return False
    return manifest.get("name") == DEMO_NAME and manifest.get("class_names") == sorted(CLASSES)


def ensure_demo_classifier(cache_dir: Path, settings: Settings) -> Path:
    """Path of a trained demo classifier artifact under ``cache_dir``, training one if none is cached.

    Safe to call from several processes at once: one trains, the others wait for it (file lock).
    """
    cache_dir = Path(cache_dir).expanduser()
    target = cache_dir / DEMO_CACHE_NAME
    if _is_demo_artifact(target):
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / f"{DEMO_CACHE_NAME}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second process blocks here until the first one is done
        if _is_demo_artifact(target):
            return target
        with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
            result = train_demo(Path(tmp), settings)
            shutil.rmtree(target, ignore_errors=True)
            Path(result["artifact"]).rename(target)  # same file system: atomic
    log.info("demo classifier ready at %s (test accuracy %.3f)", target, result["test_accuracy"])
    return target


def train_demo(work_dir: Path, settings: Settings, *, per_class: int = DEMO_PER_CLASS) -> dict[str, Any]:
    """Make synthetic crops in ``work_dir/data``, train the demo preset, score it on the test split."""
    from training.dataset import index_dataset
    from training.evaluate import evaluate_artifact
    from training.synthetic.datasets import write_crop_dataset
    from training.train import train_classifier
    from vehicle_core.storage import ObjectStore

    t0 = time.monotonic()
    store = ObjectStore(settings.storage)
    data = str(work_dir / "data")
    write_crop_dataset(data, store, per_class=per_class, seed=DEMO_SEED, crop=settings.crop)
    t_data = time.monotonic() - t0
    index = index_dataset(data, store)
    result = train_classifier(
        index, store, demo_training_settings(settings.training), run_dir=work_dir / "run", name=DEMO_NAME,
        storage=settings.storage,
    )
    t_train = time.monotonic() - t0 - t_data
    evaluation, _ = evaluate_artifact(result.artifact, index, index.split("test"), store)
    _record_test_accuracy(Path(result.artifact), evaluation.accuracy, evaluation.n_images)
    return {
        "artifact": str(result.artifact),
        "test_accuracy": evaluation.accuracy,
        "test_images": evaluation.n_images,
        "seconds": {"data": round(t_data, 1), "train": round(t_train, 1), "total": round(time.monotonic() - t0, 1)},
    }


def _record_test_accuracy(artifact: Path, accuracy: float, n_images: int) -> None:
    """Add the held-out score to the artifact's manifest (the model file is untouched)."""
    import json

    path = artifact / MANIFEST_FILE
    manifest = json.loads(path.read_text())
    manifest.setdefault("metrics", {}).update(test_accuracy=accuracy, test_images=n_images)
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))


def run_quickstart(settings: Settings, bucket: str, *, out_dir: Path, per_class: int = DEMO_PER_CLASS) -> dict[str, Any]:
    """Synthetic data to ``s3://bucket/quickstart/data``, train from it, evaluate, publish; a summary."""
    from training.dataset import index_dataset
    from training.evaluate import evaluate_artifact, upload_report, write_report
    from training.publish import publish
    from training.synthetic.datasets import write_crop_dataset
    from training.train import train_classifier
    from vehicle_core.classifier import load_classifier
    from vehicle_core.storage import ObjectStore

    t0 = time.monotonic()
    store = ObjectStore(settings.storage, cache_dir=out_dir / "cache")
    data = f"s3://{bucket}/quickstart/data"
    written = write_crop_dataset(data, store, per_class=per_class, seed=DEMO_SEED, crop=settings.crop)
    index = index_dataset(data, store)
    result = train_classifier(
        index, store, demo_training_settings(settings.training), run_dir=out_dir / "run", storage=settings.storage
    )
    evaluation, images = evaluate_artifact(result.artifact, index, index.split("test"), store)
    report = write_report(evaluation, images, out_dir / "report")
    version = result.manifest["version"]
    report_uri = upload_report(report, f"s3://{bucket}/quickstart/reports/{version}", settings.storage)
    registry = settings.classifier.registry or f"s3://{bucket}/models/classifier"
    published = publish(result.artifact, registry, settings.storage)
    # What a worker started now would serve: it resolves the registry's pointer like the workers do.
    served = load_classifier(dataclasses.replace(settings.classifier, model=None, registry=registry), settings.storage)
    return {
        "data": data,
        "images": written,
        "unreadable": index.unreadable,
        "version": version,
        "test_accuracy": evaluation.accuracy,
        "report": str(report / "report.md"),
        "report_s3": report_uri,
        "published": published,
        "registry": registry,
        "served_by_workers": served.info.version,
        "seconds": round(time.monotonic() - t0, 1),
    }
