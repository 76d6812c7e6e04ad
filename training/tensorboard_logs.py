"""TensorBoard records beyond Keras's per-epoch scalars: a trial's hparams and a confusion matrix image.

Keras's ``TensorBoard`` callback writes the scalars of every epoch of every stage
(``RUN_DIR/logs/<stage>/{train,validation}``); this module adds ``RUN_DIR/logs/hparams`` (the HParams
dashboard: a sweep trial's settings next to its final metrics) and ``RUN_DIR/logs/val`` (the
validation confusion matrix as an image). ``tensorboard --logdir OUT/trials`` shows a whole sweep.
"""

from __future__ import annotations

import importlib.util
import io
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def available() -> bool:
    """Whether the ``tensorboard`` package is installed (the ``tf`` extra brings it)."""
    return importlib.util.find_spec("tensorboard") is not None


def write_hparams(log_dir: Path, hparams: Mapping[str, Any], metrics: Mapping[str, float], trial_id: str) -> bool:
    """One HParams session: ``hparams`` (bool/int/float/str values) and the ``metrics`` it scored."""
    if not available():
        log.info("tensorboard not installed: no hparams summary for %s", trial_id)
        return False
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp

    plain = {k: v if isinstance(v, bool | int | float | str) else str(v) for k, v in hparams.items()}
    with tf.summary.create_file_writer(str(log_dir)).as_default():
        hp.hparams(plain, trial_id=trial_id)
        for name, value in metrics.items():
            tf.summary.scalar(name, float(value), step=0)
    return True


def write_confusion_image(log_dir: Path, confusion: np.ndarray, class_names: Sequence[str], *, step: int = 0,
                          tag: str = "confusion_matrix") -> bool:
    """The confusion matrix (rows true, columns predicted) as an image summary."""
    if not available():
        return False
    import tensorflow as tf

    png = confusion_png(np.asarray(confusion), class_names)
    image = tf.image.decode_png(png, channels=4)[tf.newaxis]
    with tf.summary.create_file_writer(str(log_dir)).as_default():
        tf.summary.image(tag, image, step=step)
    return True


def confusion_png(confusion: np.ndarray, class_names: Sequence[str]) -> bytes:
    """PNG bytes of an annotated confusion matrix."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(class_names)
    fig, ax = plt.subplots(figsize=(1 + 0.6 * k, 1 + 0.6 * k))
    ax.imshow(confusion, cmap="Blues")
    ax.set_xticks(range(k), class_names, rotation=45, ha="right")
    ax.set_yticks(range(k), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(int(confusion[i, j])), ha="center", va="center", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()
