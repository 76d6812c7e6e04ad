"""Throughput of the detector and the classifier in one process: ``python -m devstack.bench [models]``.

Prints one table row per (model, batch size): images per second and milliseconds per image, the
median of ``--repeats`` timed batches after one warm-up batch. Inputs are synthetic scenes (detector)
and crops of them (classifier), so the numbers need no dataset. Speeds do not depend on the weights'
values, so models can be benchmarked untrained (``--classifier-input``, ``--detector-arch``).
Each row runs its whole batch in one forward pass.

    python -m devstack.bench                       # configured detector + ResNet50 classifier
    python -m devstack.bench --crop-messages 40    # ... and the size of crops on the wire
    python -m devstack.bench --skip-classifier --detector-arch maskrcnn_resnet101_fpn \
        --detector-min-size 800 --detector-batches 1,8  # the card's R101-FPN, untrained, torchvision

The end-to-end figure (workers, queues, S3), the enqueue and backfill rates are the other
subcommands of ``python -m devstack.bench`` (devstack/bench/__main__.py).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from vehicle_core.config import load_settings


@dataclass
class Row:
    model: str
    device: str
    batch: int
    images_per_s: float
    ms_per_image: float


def time_batches(run: Callable[[list], object], inputs: list, batch: int, repeats: int) -> tuple[float, float]:
    """Median images/s and ms/image of ``run`` over ``repeats`` batches of ``batch`` inputs."""
    chunk = [inputs[i % len(inputs)] for i in range(batch)]
    run(chunk)  # warm-up: graph tracing, allocator, thread pools
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run(chunk)
        seconds.append(time.perf_counter() - t0)
    median = statistics.median(seconds)
    return batch / median, median * 1000.0 / batch


def synthetic_inputs(n: int, size: int, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``n`` scenes of ``size`` x ``size`` pixels and one crop per vehicle in them."""
    from training.synthetic.scenes import make_scene
    from vehicle_core.crop import crop_vehicles
    from vehicle_core.results.contract import Detection

    settings = load_settings()
    rng = np.random.default_rng(seed)
    scenes = [make_scene(rng, size=(size, size)) for _ in range(n)]
    crops = []
    for scene in scenes:
        dets = [Detection(box=o.box, score=1.0, label=o.detector_class, mask=o.mask) for o in scene.objects]
        crops.extend(crop_vehicles(scene.image, dets, settings.crop))
    return [s.image for s in scenes], crops


def untrained_detector_artifact(arch: str, min_size: int, directory: str) -> str:
    """A torchvision detector artifact of ``arch`` with random weights (speed does not need training)."""
    import json

    import torch

    from vehicle_core.detection.torchvision_backend import COCO_CATEGORIES, build_arch

    model = build_arch(arch, len(COCO_CATEGORIES), min_size, int(min_size * 1333 / 800))
    torch.save(model.state_dict(), os.path.join(directory, "model.pt"))
    manifest = {"name": f"{arch}-untrained", "version": f"{min_size}px", "backend": "torchvision", "arch": arch,
                "categories": COCO_CATEGORIES, "min_size": min_size, "max_size": int(min_size * 1333 / 800),
                "weights": "model.pt"}
    with open(os.path.join(directory, "manifest.json"), "w") as f:
        json.dump(manifest, f)
    return directory


def bench_detector(args: argparse.Namespace, images: list[np.ndarray], tmp: str) -> list[Row]:
    from vehicle_core.detection import build_detector

    settings = load_settings()
    model = args.detector_model or settings.detector.model
    if args.detector_arch:
        model = untrained_detector_artifact(args.detector_arch, args.detector_min_size, tmp)
    # One forward pass per row: the backend's batch size covers the largest row.
    det_settings = settings.replace(detector={"model": model, "batch_size": max(args.detector_batches)}).detector
    detector = build_detector(det_settings, settings.storage)
    name = f"detector {detector.info.name}"
    rows = []
    for batch in args.detector_batches:
        ips, ms = time_batches(detector.detect, images, batch, args.repeats)
        rows.append(Row(name, _device_of(detector), batch, ips, ms))
    return rows


def _device_of(detector) -> str:
    """The device a detector runs on: its ``device`` (torchvision) or its config's (detectron2)."""
    device = getattr(detector, "device", None)
    if device is None and getattr(detector, "cfg", None) is not None:
        device = detector.cfg.MODEL.DEVICE
    return str(device or "?")


def bench_classifier(args: argparse.Namespace, crops: list[np.ndarray], tmp: str) -> list[Row]:
    from training.synthetic.scenes import CLASSES
    from vehicle_core.classifier import (
        VehicleClassifier,
        build_classifier,
        make_manifest,
        save_artifact,
        use_backend,
    )

    use_backend(load_settings().classifier.backend)  # classifier.backend: tensorflow (default) or torch
    device = classifier_device()
    rows = []
    for size in args.classifier_input:
        names = list(CLASSES)
        model = build_classifier(names, input_size=size, weights=None, dropout=0.0)
        manifest = make_manifest(name=f"resnet50-{size}px", version="bench", class_names=names, input_size=size)
        path = save_artifact(model, manifest, os.path.join(tmp, f"resnet50-{size}"))
        classifier = VehicleClassifier.from_artifact(path, batch_size=max(args.classifier_batches))
        for batch in args.classifier_batches:
            ips, ms = time_batches(classifier.classify, crops, batch, args.repeats)
            rows.append(Row(f"classifier ResNet50 {size}px", device, batch, ips, ms))
    return rows


def classifier_device() -> str:
    """"gpu" or "cpu": where the Keras backend of this process runs the classifier."""
    import keras

    if keras.backend.backend() == "torch":
        import torch

        return "gpu" if torch.cuda.is_available() else "cpu"
    import tensorflow as tf

    return "gpu" if tf.config.list_logical_devices("GPU") else "cpu"


def crop_message_sizes(scene_sizes: Sequence[tuple[int, int]], n: int, seed: int = 0) -> list[str]:
    """Markdown rows: how big the detect -> classify message (a CropSet with its JPEG crops) gets."""
    import json

    from training.synthetic.scenes import encode, make_scene
    from vehicle_core.pipeline import DetectStage
    from vehicle_core.results.contract import SourceRef

    stage = DetectStage.from_settings(load_settings())
    rng = np.random.default_rng(seed)
    lines = ["| source image | source JPEG (median) | vehicles/image | message (median) | message (max) | per crop |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for w, h in scene_sizes:
        sizes, crops, sources = [], [], []
        for i in range(n):
            data = encode(make_scene(rng, size=(w, h)).image, ".jpg")
            crop_set = stage.run([(data, SourceRef("bench", f"{i}.jpg"))])[0]
            if crop_set.crops:
                sizes.append(len(json.dumps(crop_set.to_message())))
                crops.append(len(crop_set.crops))
                sources.append(len(data))
        if not sizes:
            lines.append(f"| {w}x{h} | no vehicle found in {n} scenes | | | | |")
            continue
        per_crop = statistics.median(b / c for b, c in zip(sizes, crops, strict=True))
        lines.append(f"| {w}x{h} | {statistics.median(sources) / 1e3:.0f} KB | {statistics.mean(crops):.1f} | "
                     f"{statistics.median(sizes) / 1e3:.1f} KB | {max(sizes) / 1e3:.1f} KB | {per_crop / 1e3:.1f} KB |")
    return lines


def print_table(rows: Sequence[Row]) -> None:
    header = f"| {'model':<44} | {'device':<6} | {'batch':>5} | {'images/s':>9} | {'ms/image':>9} |"
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for r in rows:
        print(f"| {r.model:<44} | {r.device:<6} | {r.batch:>5} | {r.images_per_s:>9.1f} | {r.ms_per_image:>9.1f} |")


def machine_line() -> str:
    from importlib.metadata import PackageNotFoundError, version

    import torch

    tf_version = "absent"
    for dist in ("tensorflow", "tensorflow-cpu"):  # the installed version, without importing TensorFlow
        try:
            tf_version = version(dist)
            break
        except PackageNotFoundError:
            continue
    cpu = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{os.cpu_count()} CPU cores ({cpu}), {gpu}; Python {platform.python_version()}, "
        f"torch {torch.__version__}, tensorflow {tf_version}, Keras backend {os.environ.get('KERAS_BACKEND', '-')}, "
        f"threads torch={torch.get_num_threads()}"
    )


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--detector-batches", type=_ints, default=[1, 8, 32], help="comma-separated batch sizes")
    parser.add_argument("--classifier-batches", type=_ints, default=[1, 8, 32], help="comma-separated batch sizes")
    parser.add_argument("--classifier-input", type=_ints, default=[128, 224], help="classifier input sides, px")
    parser.add_argument("--detector-model", default=None, help="detector.model to benchmark (default: settings)")
    parser.add_argument("--detector-arch", help="benchmark this torchvision arch untrained instead (e.g. maskrcnn_resnet101_fpn)")
    parser.add_argument("--detector-min-size", type=int, default=800, help="input short side for --detector-arch, px")
    parser.add_argument("--image-size", type=int, default=320, help="side of the synthetic scenes, px")
    parser.add_argument("--repeats", type=int, default=3, help="timed batches per row (median reported)")
    parser.add_argument("--skip-detector", action="store_true")
    parser.add_argument("--skip-classifier", action="store_true")
    parser.add_argument("--crop-messages", type=int, default=0, metavar="N",
                        help="also measure detect->classify message sizes over N scenes of 320x240 and 1280x960")
    args = parser.parse_args(argv)

    import tempfile

    images, crops = synthetic_inputs(16, args.image_size)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_detector:
            rows += bench_detector(args, images, tmp)
        if not args.skip_classifier:
            rows += bench_classifier(args, crops, tmp)
    print(f"\nmachine: {machine_line()}")
    print(f"inputs: synthetic scenes {args.image_size}x{args.image_size}; {len(crops)} crops; median of {args.repeats}\n")
    print_table(rows)
    if args.crop_messages:
        print(f"\ncrops on the wire (CropSet messages, {args.crop_messages} scenes per size, configured detector):\n")
        print("\n".join(crop_message_sizes([(320, 240), (1280, 960)], args.crop_messages)))


if __name__ == "__main__":
    main()
