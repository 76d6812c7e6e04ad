"""ImageNet-layout ResNet50 weights brought as a file (local or s3://) are what training starts from.

Offline users bring ``resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5``; these tests make a
file of the same layout (Keras's legacy HDF5 weights: one group per layer, same names and shapes)
from a seeded random ResNet50, so a wrong load is visible as different numbers.
"""

from __future__ import annotations

import dataclasses

import h5py
import keras
import numpy as np
import pytest

from training.crops_vs_full import ARMS, run_benchmark
from training.dataset import index_dataset
from training.train import train_classifier
from vehicle_core.classifier import build_classifier, load_artifact
from vehicle_core.config import load_settings
from vehicle_core.storage import ObjectStore


@pytest.fixture(scope="module")
def imagenet_layout_file(module_tmp_path):
    """(path, conv1 kernel) of a ResNet50 notop weights file in the ImageNet download's layout."""
    from keras.src.legacy.saving.legacy_h5_format import save_weights_to_hdf5_group

    keras.utils.set_random_seed(99)
    backbone = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(32, 32, 3))
    path = module_tmp_path / "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
    with h5py.File(path, "w") as f:
        save_weights_to_hdf5_group(f, backbone)
    return path, backbone.get_layer("conv1_conv").get_weights()[0]


def _conv1(model) -> np.ndarray:
    return model.get_layer("resnet50").get_layer("conv1_conv").get_weights()[0]


def test_weights_file_has_the_imagenet_download_layer_names(imagenet_layout_file):
    path, _ = imagenet_layout_file
    with h5py.File(path, "r") as f:
        names = [n.decode() if isinstance(n, bytes) else n for n in f.attrs["layer_names"]]
        assert f["conv1_conv"].attrs["weight_names"].size == 2  # kernel and bias
    assert {"conv1_conv", "conv2_block1_1_bn", "conv5_block3_3_conv"} <= set(names)


@pytest.mark.slow
def test_head_training_from_a_local_weights_file_keeps_its_backbone(imagenet_layout_file, tiny_image_folder, tmp_path):
    path, conv1 = imagenet_layout_file
    reader = ObjectStore()
    index = index_dataset(str(tiny_image_folder), reader)
    settings = dataclasses.replace(
        load_settings(env={}).training, image_size=32, batch_size=8, head_epochs=1, finetune_epochs=0,
        imagenet_weights=str(path), augment=False,
    )
    result = train_classifier(index, reader, settings, run_dir=tmp_path / "run")
    model, manifest = load_artifact(result.artifact)
    np.testing.assert_array_equal(_conv1(model), conv1)  # frozen in the head stage: exactly the file's
    assert manifest["training"]["settings"]["imagenet_weights"] == str(path)


@pytest.mark.integration
def test_weights_file_on_s3_is_fetched_and_loaded(imagenet_layout_file, aws_env, s3, bucket, tmp_path):
    path, conv1 = imagenet_layout_file
    s3.upload_file(str(path), bucket, "weights/resnet50_notop.h5")
    storage = load_settings(env={}).replace(storage={"cache_dir": str(tmp_path / "cache")}).storage
    model = build_classifier(["a", "b"], input_size=32, weights=f"s3://{bucket}/weights/resnet50_notop.h5",
                             storage=storage)
    np.testing.assert_array_equal(_conv1(model), conv1)


@pytest.mark.slow
def test_three_arms_from_a_weights_file_give_one_table(imagenet_layout_file, tmp_path):
    path, _ = imagenet_layout_file
    tiny = {"image_size": 32, "batch_size": 8, "head_epochs": 1, "finetune_epochs": 1, "finetune_layers": 12}
    summary = run_benchmark(tmp_path, load_settings(env={}), n_scenes=30, seed=5, ground_truth=True,
                            imagenet_weights=str(path), overrides=tiny)
    arms = summary["arms"]
    assert list(arms) == list(ARMS) == ["baseline", "finetuned", "finetuned_crops"]
    assert arms["baseline"]["training"]["finetune_epochs"] == 0
    assert arms["finetuned"]["training"]["finetune_epochs"] == 1
    assert all(a["training"]["imagenet_weights"] == str(path) for a in arms.values())
    assert arms["finetuned_crops"]["data"] == "crops" and arms["baseline"]["data"] == "full"
    table = (tmp_path / "benchmark.md").read_text().splitlines()
    assert len(table) == 2 + 3
    assert all(0.0 <= a["test_accuracy"] <= 1.0 for a in arms.values())
