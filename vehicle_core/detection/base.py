"""The detector interface, the backend registry and ``build_detector``; the post-processing every
backend shares lives in :mod:`vehicle_core.detection.batched` (re-exported here)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np

from vehicle_core.detection.batched import BatchedDetector, box_iou, filter_detections
from vehicle_core.errors import ConfigError
from vehicle_core.results.contract import Detection, ModelInfo

if TYPE_CHECKING:
    from vehicle_core.config import DetectorSettings, StorageSettings

__all__ = ["DETECTOR_REGISTRY", "BatchedDetector", "Detector", "Registry", "box_iou", "build_detector",
           "filter_detections", "keep_triton_away_from_tensorflow"]


class Detector(Protocol):
    """Finds vehicles in a batch of upright RGB uint8 images (H x W x 3)."""

    info: ModelInfo  # name and version, copied into every result

    def detect(self, images: Sequence[np.ndarray]) -> list[list[Detection]]: ...


class Registry:
    """Name -> factory, in the manner of detectron2's ``Registry``."""

    def __init__(self, what: str) -> None:
        self._what = what
        self._factories: dict[str, Callable[..., Detector]] = {}
        # Backends live in modules that import heavy frameworks; import them only when asked for.
        self._lazy: dict[str, str] = {}

    def register(self, name: str) -> Callable[[Callable[..., Detector]], Callable[..., Detector]]:
        def deco(factory: Callable[..., Detector]) -> Callable[..., Detector]:
            self._factories[name] = factory
            return factory

        return deco

    def register_lazy(self, name: str, module: str) -> None:
        self._lazy[name] = module

    def get(self, name: str) -> Callable[..., Detector]:
        if name not in self._factories and name in self._lazy:
            importlib.import_module(self._lazy[name])
        try:
            return self._factories[name]
        except KeyError:
            known = sorted(set(self._factories) | set(self._lazy))
            raise ConfigError(f"unknown {self._what} {name!r}; known: {known}") from None

    def names(self) -> list[str]:
        return sorted(set(self._factories) | set(self._lazy))


def keep_triton_away_from_tensorflow() -> None:
    """Call before importing torchvision/detectron2. Triton (a dependency of PyTorch's CUDA wheels)
    and TensorFlow each load their own LLVM; loading triton's after TensorFlow's segfaults the process
    (seen with torch 2.14 + tensorflow 2.21). Nothing here uses torch.compile, so in a process that has
    already imported TensorFlow, triton is marked absent and PyTorch runs without it."""
    import sys

    if "tensorflow" in sys.modules and "triton" not in sys.modules:
        sys.modules["triton"] = None  # type: ignore[assignment]  # ``import triton`` -> ImportError


DETECTOR_REGISTRY = Registry("detector.backend")
DETECTOR_REGISTRY.register_lazy("torchvision", "vehicle_core.detection.torchvision_backend")
DETECTOR_REGISTRY.register_lazy("detectron2", "vehicle_core.detection.detectron2_backend")


def build_detector(settings: DetectorSettings, storage: StorageSettings) -> Detector:
    """Build the backend ``settings.backend`` names, weights loaded, ready to ``detect``. A
    ``fake://`` model is the fixed-cost stand-in of vehicle_core/fake_models.py, whatever the backend."""
    # Imported here, not at the top: vehicle_core.fake_models imports vehicle_core.detection.batched,
    # which runs this package's __init__ (and so this module) first; no cycle (it never imports base).
    from vehicle_core.fake_models import FakeDetector, is_fake

    if is_fake(settings.model):
        return FakeDetector(settings)
    return DETECTOR_REGISTRY.get(settings.backend)(settings, storage)
