"""Bytes in, :class:`ImageResult` out: decode -> detect -> crop -> classify.

The work splits into two stages so that workers can run them in separate processes (PyTorch for the
detector, TensorFlow for the classifier) and hand each other a compact :class:`CropSet`:

    stage1 = DetectStage.from_settings(settings)          # loads the detector once
    crop_sets = stage1.run([(data, source), ...])         # decode, detect, crop; never raises for bad input
    stage2 = ClassifyStage.from_settings(settings)        # loads the classifier once
    results = stage2.run(crop_sets)                       # list[ImageResult]

:class:`VehiclePipeline` chains both in one process: ``VehiclePipeline.from_settings(s).process(data)``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace

from vehicle_core.config import CropSettings, ImageSettings, Settings
from vehicle_core.crop import crop_vehicles, decode_crop, encode_crop
from vehicle_core.errors import InvalidInputError
from vehicle_core.images import Decoded, decode
from vehicle_core.messages import CropSet
from vehicle_core.results.contract import STATUS_ERROR, Detection, ImageResult, SourceRef, VehicleResult


class DetectStage:
    """Decode, detect and crop a batch of images. Bad images become a ``CropSet`` with ``error``."""

    def __init__(self, *, detector, images: ImageSettings, crop: CropSettings) -> None:
        self.detector = detector
        self.image_settings = images
        self.crop_settings = crop

    @classmethod
    def from_settings(cls, settings: Settings) -> DetectStage:
        from vehicle_core import threads
        from vehicle_core.detection import build_detector

        detector = build_detector(settings.detector, settings.storage)
        threads.apply_loaded()  # the detector's framework is imported now: give it the configured threads
        return cls(detector=detector, images=settings.images, crop=settings.crop)

    def run(self, items: Sequence[tuple[bytes, SourceRef]]) -> list[CropSet]:
        """Decode, detect (one forward pass per ``detector.batch_size``) and crop; bad images become a
        CropSet with ``error``, never an exception."""
        return self.detect([self.prepare(data, source) for data, source in items])

    def prepare(self, data: bytes, source: SourceRef) -> tuple[CropSet, Decoded | None]:
        """Decode one image (thread-safe: OpenCV releases the GIL, so workers decode while fetching)."""
        crop_set = CropSet(source=source, models={"detector": self.detector.info})
        t0 = time.perf_counter()
        try:
            image = decode(data, self.image_settings, max_side=self.image_settings.max_side)
        except InvalidInputError as exc:
            crop_set.error = exc.to_dict()
            return crop_set, None
        crop_set.timings_ms["decode"] = _ms_since(t0)
        crop_set.image_size = image.original_size
        return crop_set, image

    def detect(self, prepared: Sequence[tuple[CropSet, Decoded | None]]) -> list[CropSet]:
        """Run the detector over every decoded image of ``prepared`` at once, then crop each."""
        decoded = [(crop_set, image) for crop_set, image in prepared if image is not None]
        if decoded:
            t0 = time.perf_counter()
            detections = self.detector.detect([image.pixels for _, image in decoded])
            per_image_ms = _ms_since(t0) / len(decoded)
            for (crop_set, image), found in zip(decoded, detections, strict=True):
                t1 = time.perf_counter()
                crops = crop_vehicles(image.pixels, found, self.crop_settings)
                crop_set.detections = [_to_original(d, image.scale) for d in found]
                crop_set.crops = [encode_crop(c, self.crop_settings) for c in crops]
                crop_set.timings_ms["detect"] = per_image_ms
                crop_set.timings_ms["crop"] = _ms_since(t1)
        return [crop_set for crop_set, _ in prepared]


class ClassifyStage:
    """Classify the crops of many images in shared batches and assemble their results.

    With a ``watcher`` (:class:`~vehicle_core.registry.RegistryWatcher`, built by ``from_settings``
    when the classifier comes from a registry), each :meth:`run` first swaps in the version the
    registry's pointer names now: roll-outs between batches, never inside one.
    """

    def __init__(self, *, classifier, watcher=None) -> None:
        self.classifier = classifier
        self.watcher = watcher

    @classmethod
    def from_settings(cls, settings: Settings) -> ClassifyStage:
        from vehicle_core.classifier import load_classifier
        from vehicle_core.registry import RegistryWatcher

        classifier = load_classifier(settings.classifier, settings.storage)
        watcher = RegistryWatcher.from_settings(settings.classifier, settings.storage, version=classifier.info.version)
        return cls(classifier=classifier, watcher=watcher)

    def refresh(self) -> bool:
        """Swap in the registry's current version if it changed; True when it did."""
        fresh = self.watcher.maybe_reload() if self.watcher is not None else None
        if fresh is None:
            return False
        self.classifier = fresh
        return True

    def run(self, crop_sets: Sequence[CropSet]) -> list[ImageResult]:
        self.refresh()
        flat = [(i, j) for i, cs in enumerate(crop_sets) if not cs.error for j in range(len(cs.crops))]
        t0 = time.perf_counter()
        pixels = [decode_crop(crop_sets[i].crops[j]) for i, j in flat]
        answers = self.classifier.classify(pixels) if pixels else []
        per_crop_ms = _ms_since(t0) / max(1, len(flat))
        vehicles: dict[int, list[VehicleResult]] = {i: [] for i in range(len(crop_sets))}
        for (i, j), answer in zip(flat, answers, strict=True):
            vehicles[i].append(VehicleResult.combine(crop_sets[i].detections[j], answer))
        results = []
        for i, cs in enumerate(crop_sets):
            models = {**cs.models, "classifier": self.classifier.info}
            timings = dict(cs.timings_ms)
            common = {"models": models, "image_size": cs.image_size}
            if cs.error:
                results.append(
                    ImageResult(source=cs.source, status=STATUS_ERROR, error=cs.error, timings_ms=timings, **common)
                )
                continue
            timings["classify"] = per_crop_ms * len(cs.crops)
            results.append(ImageResult.from_vehicles(cs.source, vehicles[i], timings_ms=timings, **common))
        return results


class VehiclePipeline:
    """Both stages in one process: the library's one-call entry point."""

    def __init__(self, *, detect: DetectStage, classify: ClassifyStage) -> None:
        self.detect_stage = detect
        self.classify_stage = classify

    @classmethod
    def from_settings(cls, settings: Settings) -> VehiclePipeline:
        return cls(detect=DetectStage.from_settings(settings), classify=ClassifyStage.from_settings(settings))

    def process(self, data: bytes, source: SourceRef | None = None) -> ImageResult:
        """Turn the bytes of one image into its result document (never raises for bad input)."""
        return self.process_many([(data, source or SourceRef(bucket="local", key="image"))])[0]

    def process_many(self, items: Sequence[tuple[bytes, SourceRef]]) -> list[ImageResult]:
        return [result for result, _ in self.process_with_detections(items)]

    def process_with_detections(self, items: Sequence[tuple[bytes, SourceRef]]
                                ) -> list[tuple[ImageResult, list[Detection]]]:
        """Like :meth:`process_many`, each result with the detections behind its vehicles (same order),
        masks included where the detector gives them: what drawing needs and a document does not keep."""
        t0 = time.perf_counter()
        crop_sets = self.detect_stage.run(items)
        results = self.classify_stage.run(crop_sets)
        total = _ms_since(t0) / max(1, len(items))
        for r in results:
            r.timings_ms["total"] = total
        return [(r, cs.detections) for r, cs in zip(results, crop_sets, strict=True)]


def _to_original(detection: Detection, scale: float) -> Detection:
    """A detection found on downscaled pixels, in the original image's pixels (masks stay with the
    decoded pixels they describe, so they are dropped when the two differ)."""
    if scale == 1.0:
        return detection
    return replace(detection, box=tuple(float(v) * scale for v in detection.box), mask=None)


def _ms_since(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0
