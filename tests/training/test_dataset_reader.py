"""The training dataset reader over a real S3 server (moto on loopback): both layouts, bad data."""

from __future__ import annotations

import numpy as np
import pytest

from tests.fixtures_models import write_labelled_images
from training.dataset import index_dataset, make_tf_dataset
from vehicle_core.config import load_settings
from vehicle_core.storage import ObjectStore


@pytest.fixture
def storage(aws_env, tmp_path):
    return load_settings(env={}).replace(storage={"cache_dir": str(tmp_path / "cache")}).storage


@pytest.fixture
def local_images(tmp_path):
    return write_labelled_images(tmp_path / "src", per_class=3, seed=5)


def _upload(s3, bucket, files, prefix):
    for label, paths in files.items():
        for p in paths:
            s3.put_object(Bucket=bucket, Key=f"{prefix}/{label}/{p.name}", Body=p.read_bytes())


def _read_all(index, examples, reader):
    ds = make_tf_dataset(index, examples, reader, image_size=24, batch_size=4)
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds], strict=True)
    return np.concatenate(xs), np.concatenate(ys)


def test_folder_layout_skips_corrupt_image_and_reports_empty_class(s3, bucket, storage, local_images):
    # Given train/<label>/ images, a corrupt JPEG and an empty class (only its folder marker exists)
    _upload(s3, bucket, local_images, "data/train")
    s3.put_object(Bucket=bucket, Key="data/train/red/broken.jpg", Body=b"\xff\xd8\xff\xe0 truncated")
    s3.put_object(Bucket=bucket, Key="data/train/green/", Body=b"")
    reader = ObjectStore(storage)
    # When it is indexed and streamed
    index = index_dataset(f"s3://{bucket}/data", reader)
    x, y = _read_all(index, index.split("train"), reader)
    # Then every class is named, the empty one reported, the corrupt image skipped and listed
    assert index.class_names == ["blue", "green", "red"]
    assert index.empty_classes == {"train": ["green"]}
    assert index.counts()["train"] == {"blue": 3, "green": 0, "red": 4}
    assert index.unreadable == [f"s3://{bucket}/data/train/red/broken.jpg"]
    assert x.shape == (6, 24, 24, 3)
    assert y.sum(axis=0).tolist() == [3.0, 0.0, 3.0]
    # and the pixels are the real decoded images: red bars are red, blue discs are blue
    red_rows = x[y[:, 2] == 1]
    assert red_rows[..., 0].mean() > red_rows[..., 2].mean()


def test_csv_manifest_with_relative_and_absolute_keys(s3, bucket, storage, local_images):
    _upload(s3, bucket, local_images, "pool")
    rows = ["key,label,split"]
    rows += [f"pool/red/{p.name},red,train" for p in local_images["red"]]
    rows += [f"s3://{bucket}/pool/blue/{p.name},blue,test" for p in local_images["blue"]]
    s3.put_object(Bucket=bucket, Key="manifest.csv", Body="\n".join(rows).encode())
    reader = ObjectStore(storage)

    index = index_dataset(f"s3://{bucket}/manifest.csv", reader)

    assert index.class_names == ["blue", "red"]
    assert index.counts() == {"test": {"blue": 3, "red": 0}, "train": {"blue": 0, "red": 3}}
    x, y = _read_all(index, index.split("test"), reader)
    assert x.shape[0] == 3 and y[:, 0].tolist() == [1.0, 1.0, 1.0]
    assert index.unreadable == []


def test_cache_dir_serves_repeated_reads_without_s3(s3, bucket, storage, tmp_path):
    s3.put_object(Bucket=bucket, Key="a.bin", Body=b"payload")
    reader = ObjectStore(storage, cache_dir=tmp_path / "images")
    assert reader.read(f"s3://{bucket}/a.bin") == b"payload"
    s3.delete_object(Bucket=bucket, Key="a.bin")
    assert reader.read(f"s3://{bucket}/a.bin") == b"payload"


def test_a_plain_label_folder_root_is_split_by_a_seeded_hash(tmp_path):
    from training.dataset import seeded_split

    # Given: Keras's <label>/<file> layout, no split folders
    for label in ("bus", "sedan"):
        (tmp_path / label).mkdir()
        for i in range(40):
            (tmp_path / label / f"{i:03d}.jpg").write_bytes(b"x")
    index = index_dataset(str(tmp_path), ObjectStore())
    # Then: every image is indexed with its label, split 70/15/15 the same way every time
    assert len(index.examples) == 80 and index.class_names == ["bus", "sedan"]
    counts = {split: len(index.split(split)) for split in ("train", "val", "test")}
    assert sum(counts.values()) == 80 and all(counts[s] > 0 for s in counts) and counts["train"] > 40
    assert all(e.split == seeded_split(f"{e.label}/{e.uri.rsplit('/', 1)[1]}") for e in index.examples)


def test_an_empty_dataset_names_its_root_and_the_layouts_looked_for(tmp_path):
    from vehicle_core.errors import ConfigError

    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(ConfigError, match=str(tmp_path)) as exc:
        index_dataset(str(tmp_path), ObjectStore())
    assert "<label>/<image>" in exc.value.message and "<split>/<label>/<image>" in exc.value.message
