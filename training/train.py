"""Transfer learning for the vehicle classifier: a new head on ResNet50, then fine-tuning its top.

Stage 1 trains the head with the backbone frozen; stage 2 unfreezes the top ``finetune_layers``
backbone layers at a lower learning rate. Both stages use AdamW, label smoothing, class weights,
EarlyStopping on ``val_loss``, a best checkpoint, TensorBoard logs and ``BackupAndRestore``, so a
run killed half-way picks up at its last finished epoch when started again with the same ``run_dir``.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
import math
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.dataset import DatasetIndex, Example, make_tf_dataset
from vehicle_core.classifier import build_classifier, make_manifest, preprocess, save_artifact
from vehicle_core.config import StorageSettings, TrainingSettings
from vehicle_core.storage import ObjectStore

log = logging.getLogger(__name__)

MODEL_NAME = "vehicle-resnet50"
_STAGE1_DONE = "stage1.weights.h5"  # written once stage 1 finished: a resumed run skips straight to stage 2


@dataclass
class TrainResult:
    """What a run produced: the artifact directory, its manifest and the per-epoch history."""

    run_dir: Path
    artifact: Path
    manifest: dict[str, Any]
    history: dict[str, list[float]]


def new_version() -> str:
    """A sortable version name: UTC time of the run."""
    return _dt.datetime.now(_dt.UTC).strftime("%Y%m%d-%H%M%S")


def split_examples(index: DatasetIndex, seed: int, val_fraction: float = 0.15) -> tuple[list[Example], list[Example]]:
    """Train and validation examples: the ``val`` split when there is one, else a per-class slice of train."""
    train = index.split("train")
    if index.split("val"):
        return train, index.split("val")
    rng = random.Random(seed)
    by_label: dict[str, list[Example]] = {}
    for e in train:
        by_label.setdefault(e.label, []).append(e)
    tr, va = [], []
    for items in by_label.values():
        items = sorted(items, key=lambda e: e.uri)
        rng.shuffle(items)
        n_val = max(1, round(len(items) * val_fraction)) if len(items) > 1 else 0
        va += items[:n_val]
        tr += items[n_val:]
    return tr, va


def augmentation(seed: int):
    """Random flip, zoom/shift (a crop's framing varies) and colour jitter, as Keras layers."""
    import keras

    layers = keras.layers
    return keras.Sequential(
        [
            layers.RandomFlip("horizontal", seed=seed),
            layers.RandomZoom((-0.15, 0.15), fill_mode="constant", seed=seed),
            layers.RandomTranslation(0.08, 0.08, fill_mode="constant", seed=seed),
            layers.RandomBrightness(0.15, value_range=(0, 255), seed=seed),
            layers.RandomContrast(0.2, seed=seed),
        ],
        name="augment",
    )


def class_weights(examples: Sequence[Example], class_names: Sequence[str]) -> dict[int, float]:
    """Inverse-frequency weights (mean 1 over present classes); absent classes get 1."""
    counts = Counter(e.label for e in examples)
    n, k = len(examples), max(1, len(counts))
    return {i: (n / (k * counts[c]) if counts.get(c) else 1.0) for i, c in enumerate(class_names)}


def train_classifier(
    index: DatasetIndex,
    reader: ObjectStore,
    settings: TrainingSettings,
    *,
    run_dir: str | Path,
    version: str | None = None,
    name: str = MODEL_NAME,
    storage: StorageSettings | None = None,
    callbacks: Sequence[Any] = (),
    steps_per_epoch: int | None = None,
) -> TrainResult:
    """Train on ``index``'s train split (validating on ``val`` or a slice of train) and save an artifact.

    ``run_dir`` holds logs, checkpoints and the backup that makes the run resumable; the artifact is
    ``run_dir/artifact``. ``callbacks`` are added to both stages (tests use them to interrupt a run).
    """
    import keras

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    _seed_everything(settings.seed, settings.deterministic)
    train_ex, val_ex = split_examples(index, settings.seed)
    if not train_ex:
        raise ValueError(f"dataset {index.root} has no training images")
    _set_precision(settings.mixed_precision)
    try:
        pretrained = str(settings.imagenet_weights or "none").lower() not in ("none", "null", "")
        model = build_classifier(
            index.class_names,
            input_size=settings.image_size,
            weights=settings.imagenet_weights,
            dropout=settings.dropout,
            storage=storage,
        )
        train_ds, val_ds = _datasets(index, reader, settings, train_ex, val_ex)
        if not pretrained:
            # From random weights the trained BatchNormalization layers' moving averages lag the weights:
            # validate (and checkpoint) with statistics re-estimated on training batches instead.
            callbacks = [precise_batchnorm_callback(train_ds), *callbacks]
        fit = _Fitter(model, settings, run_dir, train_ds, val_ds, callbacks, steps_per_epoch)
        fit.schedule_steps = steps_per_epoch or math.ceil(len(train_ex) / settings.batch_size)
        fit.class_weight = class_weights(train_ex, index.class_names) if settings.class_weights else None
        history: dict[str, list[float]] = {}
        stage1 = run_dir / _STAGE1_DONE
        if settings.head_epochs > 0 and not stage1.is_file():
            _freeze_backbone(model, trainable_top=0, keep_batchnorm_frozen=True)
            _merge(history, fit.run("stage1", settings.head_epochs, settings.head_learning_rate))
            model.save_weights(stage1)
        elif stage1.is_file():
            log.info("stage 1 already done in %s; resuming at stage 2", run_dir)
            model.load_weights(stage1)
        if not pretrained:
            _fast_batchnorm(model)
        if settings.finetune_epochs > 0:
            _freeze_backbone(model, trainable_top=settings.finetune_layers, keep_batchnorm_frozen=pretrained)
            _merge(history, fit.run("stage2", settings.finetune_epochs, settings.finetune_learning_rate))
        final = {} if val_ds is None else _score_validation(model, val_ds, index.class_names, run_dir / "logs" / "val")
    finally:
        keras.mixed_precision.set_global_policy("float32")
    manifest = make_manifest(
        name=name,
        version=version or new_version(),
        class_names=index.class_names,
        input_size=settings.image_size,
        training={
            "settings": dataclasses.asdict(settings),
            "dataset": index.root,
            "counts": {"train": len(train_ex), "val": len(val_ex)},
            "unreadable": list(index.unreadable),
            "history": history,
        },
        # Last epoch of each curve, and ``val_accuracy``/``val_loss`` of the weights actually kept.
        metrics={**{k: v[-1] for k, v in history.items() if v}, **final},
    )
    artifact = save_artifact(model, manifest, run_dir / "artifact")
    (run_dir / "history.json").write_text(json.dumps(history, indent=2))
    return TrainResult(run_dir=run_dir, artifact=artifact, manifest=manifest, history=history)


def _datasets(index, reader, settings, train_ex, val_ex):
    aug = augmentation(settings.seed) if settings.augment else None
    common = {"image_size": settings.image_size, "batch_size": settings.batch_size}
    train_ds = make_tf_dataset(index, train_ex, reader, shuffle=True, seed=settings.seed, augment=aug,
                               deterministic=settings.deterministic, **common)
    val_ds = make_tf_dataset(index, val_ex, reader, **common) if val_ex else None
    train_ds = train_ds.map(lambda x, y: (preprocess(x), y))
    # Validation images never change: fetch them once and keep them in memory.
    val_ds = val_ds.map(lambda x, y: (preprocess(x), y)).cache() if val_ds is not None else None
    return train_ds, val_ds


class _Fitter:
    """Runs one stage's ``fit`` with the callbacks every stage gets."""

    def __init__(self, model, settings, run_dir, train_ds, val_ds, extra, steps_per_epoch):
        self.model, self.settings, self.run_dir = model, settings, run_dir
        self.train_ds, self.val_ds, self.extra, self.steps = train_ds, val_ds, list(extra), steps_per_epoch
        self.class_weight = None
        self.schedule_steps = steps_per_epoch or 1  # batches per epoch, for the learning-rate schedule

    def run(self, stage: str, epochs: int, learning_rate: float) -> dict[str, list[float]]:
        import keras

        s = self.settings
        self.model.compile(
            optimizer=keras.optimizers.AdamW(learning_rate=self._schedule(learning_rate, epochs),
                                             weight_decay=s.weight_decay),
            loss=keras.losses.CategoricalCrossentropy(label_smoothing=s.label_smoothing),
            metrics=["accuracy"],
        )
        monitor = "val_loss" if self.val_ds is not None else "loss"
        best = self.run_dir / "checkpoints" / f"{stage}-best.weights.h5"
        best.parent.mkdir(parents=True, exist_ok=True)
        cbs = [
            keras.callbacks.BackupAndRestore(str(self.run_dir / "backup" / stage)),
            keras.callbacks.EarlyStopping(monitor=monitor, patience=s.early_stopping_patience),
            keras.callbacks.ModelCheckpoint(str(best), monitor=monitor, save_best_only=True, save_weights_only=True),
            keras.callbacks.CSVLogger(str(self.run_dir / f"{stage}-epochs.csv"), append=True),
            *_tensorboard(self.run_dir / "logs" / stage),
            *self.extra,
        ]
        h = self.model.fit(
            self.train_ds,
            validation_data=self.val_ds,
            epochs=epochs,
            steps_per_epoch=self.steps,
            class_weight=self.class_weight,
            callbacks=cbs,
            verbose=2,
        )
        if best.is_file():
            self.model.load_weights(best)  # the best epoch, not the last one
        return {f"{stage}_{k}": [float(v) for v in vals] for k, vals in h.history.items()}

    def _schedule(self, learning_rate: float, epochs: int):
        """The stage's rate: constant, or cosine-decayed per step to 0 at the end of its last epoch.

        With a constant rate the last epochs take steps as large as the first ones, so the weights
        (and the model picked by the best checkpoint) keep moving to the end; decayed, they settle.
        """
        import keras

        if self.settings.lr_schedule == "constant":
            return learning_rate
        if self.settings.lr_schedule != "cosine":
            raise ValueError(f"training.lr_schedule must be constant or cosine, not {self.settings.lr_schedule!r}")
        return keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=max(1, epochs * self.schedule_steps))


def _seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, NumPy and TensorFlow; with ``deterministic``, TensorFlow's op determinism too.

    Op determinism picks deterministic kernels and makes ``tf.data`` keep its order; it stays on for
    the rest of the process (TensorFlow has no per-model switch).
    """
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()


def _score_validation(model, val_ds, class_names: Sequence[str], log_dir: Path) -> dict[str, float]:
    """Accuracy and loss of the kept weights on the validation split; the confusion matrix to TensorBoard."""
    import numpy as np

    from training.tensorboard_logs import write_confusion_image

    y_true, y_prob = [], []
    for x, y in val_ds:
        y_prob.append(np.asarray(model(x, training=False), dtype=np.float64))
        y_true.append(np.argmax(y.numpy(), axis=1))
    if not y_true:
        return {}
    prob, true = np.concatenate(y_prob), np.concatenate(y_true)
    pred = prob.argmax(axis=1)
    k = len(class_names)
    confusion = np.zeros((k, k), np.int64)
    np.add.at(confusion, (true, pred), 1)
    write_confusion_image(log_dir, confusion, class_names)
    loss = float(-np.mean(np.log(np.clip(prob[np.arange(len(true)), true], 1e-7, 1.0))))
    return {"val_accuracy": float((pred == true).mean()), "val_loss": loss}


def _tensorboard(log_dir: Path) -> list:
    """TensorBoard logs (the ``tf`` extra installs ``tensorboard``; without it, the CSV logs only)."""
    import importlib.util

    import keras

    if importlib.util.find_spec("tensorboard") is None:
        log.info("tensorboard not installed: epoch metrics go to the CSV log only")
        return []
    return [keras.callbacks.TensorBoard(str(log_dir), profile_batch=0)]


def _freeze_backbone(model, *, trainable_top: int, keep_batchnorm_frozen: bool) -> None:
    """Make only the top ``trainable_top`` backbone layers trainable (<0 or more than there are: all).

    With pretrained weights, BatchNormalization stays frozen (inference mode) as Keras's fine-tuning
    guide advises: a small batch would otherwise wreck its ImageNet statistics. From scratch, it trains.
    """
    backbone = model.get_layer("resnet50")
    backbone.trainable = True
    layers = backbone.layers
    cut = 0 if trainable_top < 0 or trainable_top >= len(layers) else len(layers) - trainable_top
    for i, layer in enumerate(layers):
        is_bn = layer.__class__.__name__ == "BatchNormalization"
        layer.trainable = i >= cut and not (is_bn and keep_batchnorm_frozen)
    if trainable_top == 0:
        backbone.trainable = False


def recalibrate_batchnorm(model, dataset, *, batches: int, only_trainable: bool) -> None:
    """Set BatchNormalization moving statistics to their average over ``batches`` batches of ``dataset``.

    A forward pass in training mode with momentum k/(k+1) at batch k: an exact running mean of the
    batch statistics. Weights are untouched; only the moving mean and variance change.
    """
    import keras

    bns = [layer for layer in model.get_layer("resnet50").layers if isinstance(layer, keras.layers.BatchNormalization)]
    bns = [layer for layer in bns if layer.trainable or not only_trainable]
    saved = [(layer.trainable, layer.momentum) for layer in bns]
    for layer in bns:
        layer.trainable = True  # training mode only runs (and updates the statistics) when trainable
    try:
        for k, (x, _) in enumerate(dataset.take(batches)):
            for layer in bns:
                layer.momentum = k / (k + 1)
            model.get_layer("resnet50")(x, training=True)
    finally:
        for layer, (trainable, momentum) in zip(bns, saved, strict=True):
            layer.trainable, layer.momentum = trainable, momentum


def precise_batchnorm_callback(dataset, batches: int = 4):
    """A callback that, before each validation, re-estimates the trained BatchNormalization statistics.

    Found on the demo preset (docs/training.md): with moving averages (momentum 0.9, ~10 steps) its
    validation accuracy swung 0.64-0.94 between epochs while the same weights with their own batch
    statistics scored 0.95-1.0 at nearly every epoch; the moving averages, not the weights, were off.
    Validation, the best checkpoint and the artifact then use statistics of ``batches`` training
    batches taken with the current weights.
    """
    import keras

    class PreciseBatchNorm(keras.callbacks.Callback):
        def on_test_begin(self, logs=None):
            recalibrate_batchnorm(self.model, dataset, batches=batches, only_trainable=True)

    return PreciseBatchNorm()


def _fast_batchnorm(model, momentum: float = 0.9) -> None:
    """From random weights, let BatchNormalization's moving statistics follow the weights faster.

    With Keras's 0.99 they average over ~100 recent steps, so in a run of a few hundred steps they lag
    the still-changing weights and validation scores look like chance while training accuracy rises.
    """
    for layer in model.get_layer("resnet50").layers:
        if layer.__class__.__name__ == "BatchNormalization":
            layer.momentum = momentum


def _set_precision(mode: str) -> None:
    import keras
    import tensorflow as tf

    gpu = bool(tf.config.list_physical_devices("GPU"))
    on = mode == "on" or (mode == "auto" and gpu)
    keras.mixed_precision.set_global_policy("mixed_float16" if on else "float32")


def _merge(into: dict[str, list[float]], more: dict[str, list[float]]) -> None:
    for k, v in more.items():
        into.setdefault(k, []).extend(v)

