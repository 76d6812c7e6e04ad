"""The result contract: one JSON document per source image (docs/results.md, docs/result.schema.json).

Typed pieces first (what the detector, cropper and classifier hand each other), then
:class:`ImageResult`, which turns them into the document workers write to S3.
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

import numpy as np

SCHEMA_VERSION = "1.0"
STATUS_OK = "ok"
STATUS_NO_VEHICLE = "no_vehicle"
STATUS_ERROR = "error"


@dataclass(frozen=True)
class Detection:
    """One object found by a detector, in pixels of the upright image."""

    box: tuple[float, float, float, float]  # x1, y1, x2, y2
    score: float  # 0-1
    label: str  # detector class name, e.g. "car"
    mask: np.ndarray | None = field(default=None, compare=False, repr=False)  # bool HxW, full image

    @property
    def area(self) -> float:
        x1, y1, x2, y2 = self.box
        return max(0.0, x2 - x1) * max(0.0, y2 - y1)


@dataclass(frozen=True)
class Classification:
    """The classifier's answer for one crop."""

    label: str
    confidence: float  # 0-1, softmax probability of ``label``
    top_k: tuple[tuple[str, float], ...]  # best first, includes ``label``


@dataclass(frozen=True)
class SourceRef:
    """Which S3 object a result describes."""

    bucket: str
    key: str
    etag: str | None = None
    version_id: str | None = None
    size: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "bucket": self.bucket,
            "key": self.key,
            "etag": self.etag,
            "version_id": self.version_id,
            "size": self.size,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SourceRef:
        return cls(**{k: data.get(k) for k in ("bucket", "key", "etag", "version_id", "size")})


@dataclass(frozen=True)
class VehicleResult:
    """One vehicle in a result document."""

    box: tuple[float, float, float, float]
    detector_class: str
    detector_score: float
    label: str
    confidence: float
    top_k: tuple[tuple[str, float], ...]

    @property
    def area(self) -> float:
        x1, y1, x2, y2 = self.box
        return max(0.0, x2 - x1) * max(0.0, y2 - y1)

    @classmethod
    def combine(cls, detection: Detection, classification: Classification) -> VehicleResult:
        return cls(
            box=detection.box,
            detector_class=detection.label,
            detector_score=detection.score,
            label=classification.label,
            confidence=classification.confidence,
            top_k=classification.top_k,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "box": [round(float(v), 1) for v in self.box],
            "detector_class": self.detector_class,
            "detector_score": round(float(self.detector_score), 4),
            "label": self.label,
            "confidence": round(float(self.confidence), 4),
            "top_k": [{"label": lbl, "confidence": round(float(p), 4)} for lbl, p in self.top_k],
        }


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version}


@dataclass(frozen=True)
class ImageResult:
    """Everything known about one source image; ``to_dict()`` is the published document."""

    source: SourceRef
    status: str
    vehicles: tuple[VehicleResult, ...] = ()
    error: dict[str, str] | None = None
    models: dict[str, ModelInfo] = field(default_factory=dict)
    timings_ms: dict[str, float] = field(default_factory=dict)
    image_size: tuple[int, int] | None = None  # width, height of the upright image
    processed_at: str = field(default_factory=lambda: utc_now())

    @property
    def primary(self) -> VehicleResult | None:
        """The largest vehicle: the one the image is 'about'."""
        return max(self.vehicles, key=lambda v: v.area, default=None)

    @classmethod
    def from_vehicles(cls, source: SourceRef, vehicles: list[VehicleResult], **kwargs: Any) -> ImageResult:
        status = STATUS_OK if vehicles else STATUS_NO_VEHICLE
        return cls(source=source, status=status, vehicles=tuple(vehicles), **kwargs)

    @classmethod
    def from_error(cls, source: SourceRef, error: Exception, **kwargs: Any) -> ImageResult:
        code = getattr(error, "code", "internal")
        message = getattr(error, "message", None) or str(error) or type(error).__name__
        return cls(source=source, status=STATUS_ERROR, error={"code": code, "message": message}, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        primary = self.primary
        return {
            "schema_version": SCHEMA_VERSION,
            "source": self.source.to_dict(),
            "status": self.status,
            "label": primary.label if primary else None,
            "confidence": round(float(primary.confidence), 4) if primary else None,
            "image": {"width": self.image_size[0], "height": self.image_size[1]} if self.image_size else None,
            "vehicles": [v.to_dict() for v in self.vehicles],
            "error": self.error,
            "models": {role: info.to_dict() for role, info in self.models.items()},
            "timings_ms": {k: round(float(v), 2) for k, v in self.timings_ms.items()},
            "processed_at": self.processed_at,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, sort_keys=False, indent=2)


def utc_now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@cache
def result_schema() -> dict[str, Any]:
    """The JSON Schema of a result document (a copy of docs/result.schema.json ships in the package)."""
    text = resources.files("vehicle_core").joinpath("schemas/result.schema.json").read_text()
    return json.loads(text)


def validate_result(document: dict[str, Any]) -> None:
    """Raise ``jsonschema.ValidationError`` unless ``document`` follows the result contract."""
    import jsonschema

    jsonschema.validate(document, result_schema())
