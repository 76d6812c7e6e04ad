"""Crop datasets: the primary vehicle of each image, through the pipeline's crop code, same layout."""

from __future__ import annotations

import json

from tests.fixtures_models import write_labelled_images
from training.crops import crop_chunk, crop_dataset
from training.dataset import decode_example, index_dataset
from vehicle_core.config import load_settings
from vehicle_core.storage import ObjectStore


def test_ground_truth_crops_keep_layout_and_list_images_without_vehicle(tmp_path):
    # Given images in train/<label>/ with boxes in annotations.jsonl, one image without any box
    src = tmp_path / "scenes"
    files = write_labelled_images(src / "train", per_class=2, size=40, seed=3)
    objects = {"box": [6.0, 10.0, 40.0, 30.0], "detector_class": "car", "label": "x"}
    small = {"box": [0.0, 0.0, 8.0, 8.0], "detector_class": "car", "label": "x"}
    records = [{"uri": str(p), "objects": [small, objects]} for p in files["red"]]
    records += [{"uri": str(files["blue"][0]), "objects": [objects]}, {"uri": str(files["blue"][1]), "objects": []}]
    (src / "annotations.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    settings = load_settings(env={}).replace(crop={"size": 32})
    # When the dataset is cropped
    rows = crop_dataset(str(src), str(tmp_path / "crops"), settings, use_ground_truth=True)
    # Then each image with a box gives one crop of its largest box, under the same split/label
    index = index_dataset(str(tmp_path / "crops"), ObjectStore())
    assert index.counts() == {"train": {"blue": 1, "red": 2}}
    assert [r["skipped"] for r in rows if "skipped" in r] == ["no_vehicle"]
    crop = decode_example(ObjectStore().read(index.split("train")[-1].uri), 32)
    assert crop is not None and crop[..., 0].mean() > crop[..., 2].mean()  # the red bar, not the noise
    report = json.loads((tmp_path / "crops" / "report.json").read_text())
    assert report["written"] == 3
    assert (tmp_path / "crops" / "manifest.csv").read_text().splitlines()[0] == "key,label,split"


def test_crop_chunk_takes_plain_arguments_for_a_task_queue(tmp_path):
    files = write_labelled_images(tmp_path / "src", per_class=1, seed=4)
    uri = str(files["red"][0])
    truth = {uri: [{"box": [6.0, 10.0, 40.0, 30.0], "detector_class": "car"}]}
    settings = json.loads(json.dumps(load_settings(env={}).to_dict()))  # survives a JSON message
    rows = crop_chunk([{"uri": uri, "label": "red", "split": "test"}], str(tmp_path / "out"), settings, truth)
    assert rows == [{"key": str(tmp_path / "out" / "test" / "red" / "000.jpg"), "label": "red", "split": "test"}]
