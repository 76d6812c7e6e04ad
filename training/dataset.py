"""Labelled images on S3 (or a local folder) as a streaming ``tf.data`` pipeline.

Three layouts are read:

* folders per split: ``<root>/<split>/<label>/<file>`` (splits train, val, test);
* folders per label, as ``keras.utils.image_dataset_from_directory`` expects: ``<root>/<label>/<file>``,
  each image's split decided by a seeded hash of its path (70/15/15);
* a CSV manifest ``key,label[,split]`` (a header row is optional); keys are relative to the CSV's
  folder or full ``s3://`` URIs.

Only the key list is read up front; the pipeline fetches and decodes objects in parallel as it runs,
so nothing is downloaded in full first. Unreadable images are skipped and listed, not fatal.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from vehicle_core.classifier import letterbox
from vehicle_core.errors import ConfigError, VehiclePipelineError
from vehicle_core.storage import ObjectStore

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Example:
    """One labelled image: where it is (``s3://`` URI or local path), its label and split."""

    uri: str
    label: str
    split: str


@dataclass
class DatasetIndex:
    """The key list of a dataset: examples, class names (sorted) and what is odd about it."""

    root: str
    examples: list[Example]
    class_names: list[str]
    empty_classes: dict[str, list[str]] = field(default_factory=dict)  # split -> labels without images
    unreadable: list[str] = field(default_factory=list)  # filled while the pipeline runs

    def split(self, name: str) -> list[Example]:
        return [e for e in self.examples if e.split == name]

    def counts(self) -> dict[str, dict[str, int]]:
        """Images per split and label, every class listed (zeros included)."""
        out: dict[str, dict[str, int]] = {}
        for split in sorted({e.split for e in self.examples} | set(self.empty_classes)):
            c = Counter(e.label for e in self.examples if e.split == split)
            out[split] = {name: c.get(name, 0) for name in self.class_names}
        return out

    def summary(self) -> str:
        lines = [f"dataset {self.root}: {len(self.examples)} images, classes {self.class_names}"]
        for split, counts in self.counts().items():
            lines.append(f"  {split}: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
        for split, labels in sorted(self.empty_classes.items()):
            lines.append(f"  WARNING {split}: no images for {labels}")
        if self.unreadable:
            lines.append(f"  skipped {len(self.unreadable)} unreadable images: {self.unreadable[:10]}")
        return "\n".join(lines)


def index_dataset(root: str, reader: ObjectStore) -> DatasetIndex:
    """Index ``root``: a folder/prefix in the split/label layout, or a ``.csv`` manifest."""
    if root.lower().endswith(".csv"):
        return _index_csv(root, reader)
    return _index_folders(root.rstrip("/"), reader)


def _index_folders(root: str, reader: ObjectStore) -> DatasetIndex:
    """``<split>/<label>/<file>`` when every top folder is a split name, else Keras's plain
    ``<label>/<file>`` with each image's split drawn from a seeded hash of its path."""
    entries = [(info.uri, info.uri[len(root) + 1 :].strip("/").split("/")) for info in reader.list(root + "/")]
    tops = {parts[0] for _, parts in entries if len(parts) >= 2}
    split_layout = bool(tops) and tops <= set(SPLITS)
    examples, labels_seen = [], {}
    for uri, parts in entries:
        if split_layout and len(parts) >= 2:
            split, label = parts[0], parts[1]
            labels_seen.setdefault(split, set()).add(label)  # folder markers name empty classes too
            if len(parts) >= 3 and not uri.endswith("/") and uri.lower().endswith(IMAGE_SUFFIXES):
                examples.append(Example(uri, label, split))
        elif not split_layout and len(parts) == 2 and not uri.endswith("/") and uri.lower().endswith(IMAGE_SUFFIXES):
            split = seeded_split("/".join(parts))
            labels_seen.setdefault(split, set()).add(parts[0])
            examples.append(Example(uri, parts[0], split))
    if not examples:
        raise ConfigError(f"no labelled images under {root}: looked for <split>/<label>/<image> "
                          f"(splits {', '.join(SPLITS)}) and <label>/<image>, images ending in "
                          f"{', '.join(IMAGE_SUFFIXES)}; or pass a CSV manifest (key,label[,split])")
    if not split_layout:
        log.info("%s has no split folders: %s of each image's path decides its split (%.0f%% val, %.0f%% test)",
                 root, "a seeded hash", 100 * VAL_FRACTION, 100 * TEST_FRACTION)
    return _finish(root, examples, labels_seen)


VAL_FRACTION, TEST_FRACTION = 0.15, 0.15


def seeded_split(relative_path: str, seed: int = 0) -> str:
    """train, val or test for an image of a plain ``<label>/<file>`` root: a stable hash of its path
    (the same image lands in the same split on every run and machine, whatever the listing order)."""
    digest = hashlib.sha256(f"{seed}:{relative_path}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    return "test" if u < TEST_FRACTION else "val" if u < TEST_FRACTION + VAL_FRACTION else "train"


def _index_csv(root: str, reader: ObjectStore) -> DatasetIndex:
    base = root.rsplit("/", 1)[0]
    rows = list(csv.reader(io.StringIO(reader.read(root).decode("utf-8-sig"))))
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["key", "label"]:
        rows = rows[1:]
    examples, labels_seen = [], {}
    for row in rows:
        if not row or not row[0].strip():
            continue
        key, label = row[0].strip(), row[1].strip()
        split = row[2].strip() if len(row) > 2 and row[2].strip() else "train"
        uri = key if key.startswith("s3://") or key.startswith("/") else f"{base}/{key}"
        labels_seen.setdefault(split, set()).add(label)
        examples.append(Example(uri, label, split))
    return _finish(root, examples, labels_seen)


def _finish(root: str, examples: list[Example], labels_seen: dict[str, set[str]]) -> DatasetIndex:
    class_names = sorted(set().union(*labels_seen.values())) if labels_seen else []
    empty = {}
    for split in labels_seen:
        have = {e.label for e in examples if e.split == split}
        missing = [c for c in class_names if c not in have]
        if missing:
            empty[split] = missing
    index = DatasetIndex(root=root, examples=examples, class_names=class_names, empty_classes=empty)
    log.info(index.summary())
    return index


def decode_example(data: bytes, size: int) -> np.ndarray | None:
    """Decode bytes to an RGB ``size``x``size`` letterboxed uint8 image; ``None`` when unreadable."""
    import cv2

    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
    if pixels is None or pixels.size == 0:
        return None
    return letterbox(cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB), size)


def make_tf_dataset(
    index: DatasetIndex,
    examples: list[Example],
    reader: ObjectStore,
    *,
    image_size: int,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    augment: Callable | None = None,
    deterministic: bool = True,
):
    """A ``tf.data.Dataset`` of ``(uint8 images NxSxSx3 as float32, one-hot labels)``, fetched on the fly.

    Unreadable images are dropped and their URIs appended to ``index.unreadable``. ``deterministic``
    keeps the (seeded) shuffled order and draws the augmentation's random numbers in one thread, so a
    seed gives the same batches every run; off, parallel calls may finish, and draw, in any order.
    """
    import tensorflow as tf

    label_of = {name: i for i, name in enumerate(index.class_names)}
    uris = [e.uri for e in examples]
    labels = [label_of[e.label] for e in examples]
    n_classes = len(index.class_names)

    def load(uri_t):
        uri = uri_t.numpy().decode()
        try:
            image = decode_example(reader.read(uri), image_size)
        except (VehiclePipelineError, ValueError) as exc:  # a vanished object or a read error: skip it like a bad image
            log.warning("cannot read %s: %s", uri, exc)
            image = None
        if image is None:
            if uri not in index.unreadable:
                index.unreadable.append(uri)
            return np.zeros((image_size, image_size, 3), np.uint8), False
        return image, True

    @tf.autograph.experimental.do_not_convert  # plain graph ops: nothing for AutoGraph to rewrite
    def fetch(uri, label):
        image, ok = tf.py_function(load, [uri], [tf.uint8, tf.bool])
        image.set_shape((image_size, image_size, 3))
        ok.set_shape(())
        return image, tf.one_hot(label, n_classes), ok

    ds = tf.data.Dataset.from_tensor_slices((uris, labels))
    if shuffle:
        ds = ds.shuffle(len(uris), seed=seed, reshuffle_each_iteration=True)
    # Parallel fetches: boto3 and OpenCV release the GIL, so threads overlap network and decoding.
    ds = ds.map(fetch, num_parallel_calls=8, deterministic=deterministic or not shuffle)
    ds = ds.filter(_readable).map(_drop_flag)
    ds = ds.batch(batch_size)
    if augment is not None:
        parallel = None if deterministic else tf.data.AUTOTUNE  # random layers draw from one shared state
        ds = ds.map(lambda x, y: (augment(x, training=True), y), num_parallel_calls=parallel)
    return ds.prefetch(tf.data.AUTOTUNE)


def _readable(image, label, ok):
    return ok


def _drop_flag(image, label, ok):
    import tensorflow as tf

    return tf.cast(image, tf.float32), label
