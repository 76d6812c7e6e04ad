"""Fixed-cost stand-ins for the detector and the classifier: ``fake://`` model URIs.

``detector.model: fake://detector?cpu_ms=10&vehicles=3`` and ``classifier.model:
fake://classifier?cpu_ms=1`` make the same workers, the same stages and the same messages run with
models that spend a fixed amount of CPU (``cpu_ms`` per image for the detector, per crop for the
classifier; measured on the calling thread's CPU clock, so the cost does not depend on load) and
answer deterministically: the detector finds ``vehicles`` boxes laid out from the image's size, the
classifier labels a crop by its mean grey level. No framework is imported.

They exist for ``python -m devstack.bench pipeline --fake-models``: the cost of the plumbing
(queues, messages, S3, crop encoding) alone, at a higher rate than real models allow. Never serve
them: every result they produce is made up.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

import numpy as np

from vehicle_core.detection.batched import BatchedDetector
from vehicle_core.errors import ConfigError
from vehicle_core.results.contract import Classification, Detection, ModelInfo

if TYPE_CHECKING:
    from vehicle_core.config import ClassifierSettings, DetectorSettings

SCHEME = "fake://"
#: Labels of the fake classifier (those of the demo classifier, training/synthetic/scenes.py).
CLASS_NAMES = ("sedan", "suv", "pickup", "truck", "bus", "motorcycle")


def is_fake(uri: str | None) -> bool:
    """True for a ``fake://`` model URI."""
    return bool(uri) and str(uri).startswith(SCHEME)


def parse_fake_uri(uri: str, allowed: dict[str, float]) -> dict[str, float]:
    """The options of ``fake://NAME?key=value&...``: ``allowed`` gives the keys and their defaults."""
    parts = urlsplit(uri)
    if parts.scheme != "fake":
        raise ConfigError(f"not a fake:// model URI: {uri!r}")
    options = dict(allowed)
    for key, values in parse_qs(parts.query, keep_blank_values=True, strict_parsing=False).items():
        if key not in allowed:
            raise ConfigError(f"unknown option {key!r} in {uri!r}; known: {sorted(allowed)}")
        try:
            options[key] = float(values[-1])
        except ValueError:
            raise ConfigError(f"option {key!r} of {uri!r} must be a number, got {values[-1]!r}") from None
        if options[key] < 0:
            raise ConfigError(f"option {key!r} of {uri!r} must be 0 or more, got {values[-1]!r}")
    return options


def burn_cpu(seconds: float) -> None:
    """Spend ``seconds`` of this thread's CPU time (spinning; other threads and processes do not count)."""
    if seconds <= 0:
        return
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


class FakeDetector(BatchedDetector):
    """``detector.model: fake://detector?cpu_ms=MS&vehicles=N``: MS CPU-milliseconds per image, and
    N boxes side by side across the middle of every image, through the vehicle filter every backend
    uses (so ``detector.*`` thresholds still apply). No masks."""

    OPTIONS = {"cpu_ms": 10.0, "vehicles": 3.0}

    def __init__(self, settings: DetectorSettings) -> None:
        self.settings = settings
        opts = parse_fake_uri(settings.model, self.OPTIONS)
        self.cpu_s = opts["cpu_ms"] / 1000.0
        self.vehicles = int(opts["vehicles"])
        self.device = "cpu"
        self.info = ModelInfo(name="fake-detector", version=f"cpu{opts['cpu_ms']:g}ms-{self.vehicles}v")

    def _detect_batch(self, images: Sequence[np.ndarray]) -> list[list[Detection]]:
        burn_cpu(self.cpu_s * len(images))
        return [self._boxes(image.shape[:2]) for image in images]

    def _boxes(self, size: tuple[int, int]) -> list[Detection]:
        height, width = size
        n = self.vehicles
        if n == 0:
            return []
        classes = list(self.settings.vehicle_classes) or ["car"]
        slot = width / n
        boxes = np.array([[slot * (i + 0.1), height * 0.3, slot * (i + 0.9), height * 0.7] for i in range(n)])
        scores = np.array([0.95 - 0.3 * i / n for i in range(n)])
        labels = [classes[i % len(classes)] for i in range(n)]
        return self._vehicles(boxes, scores, labels, None, (height, width))


class FakeClassifier:
    """``classifier.model: fake://classifier?cpu_ms=MS``: MS CPU-milliseconds per crop; the label is
    ``CLASS_NAMES[mean grey level mod 6]``, its confidence fixed."""

    OPTIONS = {"cpu_ms": 1.0}

    def __init__(self, settings: ClassifierSettings) -> None:
        opts = parse_fake_uri(str(settings.model), self.OPTIONS)
        self.cpu_s = opts["cpu_ms"] / 1000.0
        self.class_names = list(CLASS_NAMES)
        self.top_k = max(1, min(settings.top_k, len(self.class_names)))
        self.batch_size = settings.batch_size
        self.backend = "fake"
        self.info = ModelInfo(name="fake-classifier", version=f"cpu{opts['cpu_ms']:g}ms")

    def classify(self, crops: Sequence[np.ndarray]) -> list[Classification]:
        burn_cpu(self.cpu_s * len(crops))
        out = []
        n = len(self.class_names)
        for crop in crops:
            best = int(np.asarray(crop).mean()) % n
            order = [best, *[(best + k) % n for k in range(1, self.top_k)]]
            top = tuple((self.class_names[i], 0.7 if i == best else 0.3 / max(1, self.top_k - 1)) for i in order)
            out.append(Classification(label=top[0][0], confidence=top[0][1], top_k=top))
        return out
