"""The messages of the two hops, and their codecs, in one place (no Celery, no ML framework here).

* producer -> detect task: one :class:`~vehicle_core.results.contract.SourceRef` (``SourceRef.to_dict()``;
  ``SourceRef.from_dict`` validates it and normalises the ETag);
* detect task -> classify task: one :class:`CropSet` (``to_message()`` / ``from_message()``).

An image whose result already exists ends the chain at the detect task; nothing else travels.
``workers.messages`` names the Celery tasks and builds the chain from these.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any

from vehicle_core.errors import MalformedMessageError
from vehicle_core.results.contract import Detection, ModelInfo, SourceRef


@dataclass
class CropSet:
    """What the detect stage hands the classify stage for one image: boxes plus encoded crops.

    ``to_message()`` is plain JSON (crops as base64 JPEG, a few KB each), so it travels in a
    Celery message without touching S3 again.
    """

    source: SourceRef
    detections: list[Detection] = field(default_factory=list)
    crops: list[bytes] = field(default_factory=list)  # encoded JPEG, one per detection
    image_size: tuple[int, int] | None = None  # width, height
    models: dict[str, ModelInfo] = field(default_factory=dict)
    timings_ms: dict[str, float] = field(default_factory=dict)
    error: dict[str, str] | None = None  # set when the image could not be read; no crops then

    def to_message(self) -> dict[str, Any]:
        return {
            "source": self.source.to_dict(),
            "detections": [{"box": list(d.box), "score": d.score, "label": d.label} for d in self.detections],
            "crops": [base64.b64encode(c).decode("ascii") for c in self.crops],
            "image_size": list(self.image_size) if self.image_size else None,
            "models": {role: info.to_dict() for role, info in self.models.items()},
            "timings_ms": self.timings_ms,
            "error": self.error,
        }

    @classmethod
    def from_message(cls, msg: Any) -> CropSet:
        """Validate and decode a received CropSet; MalformedMessageError for anything else."""
        if not isinstance(msg, dict):
            raise MalformedMessageError(f"a crop message must be an object, got {type(msg).__name__}")
        try:
            crop_set = cls(
                source=SourceRef.from_dict(msg.get("source")),
                detections=[Detection(box=tuple(float(v) for v in d["box"]), score=float(d["score"]),
                                      label=str(d["label"])) for d in msg["detections"]],
                crops=[base64.b64decode(c, validate=True) for c in msg["crops"]],
                image_size=tuple(int(v) for v in msg["image_size"]) if msg.get("image_size") else None,
                models={role: ModelInfo(**info) for role, info in (msg.get("models") or {}).items()},
                timings_ms={k: float(v) for k, v in (msg.get("timings_ms") or {}).items()},
                error=msg.get("error"),
            )
        except (KeyError, TypeError, ValueError, AttributeError, binascii.Error) as exc:
            raise MalformedMessageError(f"not a crop message: {exc!r}") from None
        error = crop_set.error
        if error is not None and not (isinstance(error, dict) and isinstance(error.get("code"), str)
                                      and isinstance(error.get("message"), str)):
            raise MalformedMessageError("a crop message's error must be null or {code: string, message: string}")
        if len(crop_set.crops) != len(crop_set.detections) or any(len(d.box) != 4 for d in crop_set.detections):
            raise MalformedMessageError("a crop message needs one crop per detection, boxes of four numbers")
        return crop_set
