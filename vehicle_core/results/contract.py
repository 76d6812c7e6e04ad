"""The result contract: one JSON document per source image (docs/results.md, vehicle_core/schemas/result.schema.json).

Typed pieces first (what the detector, cropper and classifier hand each other), then
:class:`ImageResult`, which turns them into the document workers write to S3.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

import numpy as np

from vehicle_core.errors import MalformedMessageError, final_codes

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
    #: bool mask of the object. Either the full image (H x W, ``mask_origin`` (0, 0)), or only the
    #: window of the image it covers, whose top-left pixel is ``mask_origin`` (x, y): detectors that
    #: paste masks at box resolution (torchvision backend) never allocate an image-sized array per box.
    #: Outside its window a mask is False. Read it through :meth:`mask_window` / :meth:`full_mask`.
    mask: np.ndarray | None = field(default=None, compare=False, repr=False)
    mask_origin: tuple[int, int] = field(default=(0, 0), compare=False, repr=False)

    @property
    def area(self) -> float:
        x1, y1, x2, y2 = self.box
        return max(0.0, x2 - x1) * max(0.0, y2 - y1)

    def mask_window(self, x1: int, y1: int, x2: int, y2: int) -> np.ndarray | None:
        """The mask over image pixels [y1:y2, x1:x2] (bool, False where the mask does not reach), or None."""
        if self.mask is None:
            return None
        out = np.zeros((max(0, y2 - y1), max(0, x2 - x1)), dtype=bool)
        ox, oy = self.mask_origin
        mh, mw = self.mask.shape[:2]
        ix1, iy1, ix2, iy2 = max(x1, ox), max(y1, oy), min(x2, ox + mw), min(y2, oy + mh)
        if ix1 < ix2 and iy1 < iy2:
            out[iy1 - y1 : iy2 - y1, ix1 - x1 : ix2 - x1] = self.mask[iy1 - oy : iy2 - oy, ix1 - ox : ix2 - ox]
        return out

    def full_mask(self, height: int, width: int) -> np.ndarray | None:
        """The mask as a bool ``height`` x ``width`` array of the whole image (for drawing), or None."""
        return self.mask_window(0, 0, width, height)


@dataclass(frozen=True)
class Classification:
    """The classifier's answer for one crop."""

    label: str
    confidence: float  # 0-1, softmax probability of ``label``
    top_k: tuple[tuple[str, float], ...]  # best first, includes ``label``


@dataclass(frozen=True)
class SourceRef:
    """One S3 object version: what a result describes, and the detect task's one argument.

    The ETag is kept bare (S3 events give it bare, HEAD/LIST in quotes). :meth:`from_dict` validates a
    received message and raises :class:`MalformedMessageError` for anything that is not one.
    ``event_time`` (ISO 8601, from the S3 event; None for backfill) measures upload -> result latency
    and tells a new upload's message from one that may name an image already answered (the detect task
    checks those first: ``workers.tasks.may_repeat``); it is not part of the object's identity, and
    ``to_dict`` names it only when known.
    """

    bucket: str
    key: str
    etag: str | None = None
    version_id: str | None = None
    size: int | None = None
    event_time: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "etag", normalize_etag(self.etag))

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "bucket": self.bucket,
            "key": self.key,
            "etag": self.etag,
            "version_id": self.version_id,
            "size": self.size,
        } | ({"event_time": self.event_time} if self.event_time else {})

    @classmethod
    def from_dict(cls, data: Any) -> SourceRef:
        """Validate a message or document part: non-empty string bucket/key, optional string
        etag/version_id, optional non-negative integer size."""
        if not isinstance(data, dict):
            raise MalformedMessageError(f"an image reference must be an object, got {type(data).__name__}")
        for name in ("bucket", "key"):
            if not isinstance(data.get(name), str) or not data[name]:
                raise MalformedMessageError(f"an image reference needs a non-empty string {name!r}")
        size = data.get("size")
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
            raise MalformedMessageError(f"an image reference's size must be a non-negative integer, got {size!r}")
        for name in ("etag", "version_id", "event_time"):
            if data.get(name) is not None and not isinstance(data[name], str):
                raise MalformedMessageError(f"an image reference's {name} must be a string or null")
        return cls(bucket=data["bucket"], key=data["key"], etag=data.get("etag"),
                   version_id=data.get("version_id"), size=size, event_time=data.get("event_time"))


def normalize_etag(etag: str | None) -> str | None:
    """S3 events give ETags bare, HEAD/GET/LIST in double quotes: the contract compares and stores them
    bare (the storage layer uses this rule too: vehicle_core.storage.normalize_etag)."""
    if etag is None:
        return None
    return etag.strip().strip('"') or None


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
    """The JSON Schema of a result document (vehicle_core/schemas/result.schema.json, in the package)."""
    text = resources.files("vehicle_core").joinpath("schemas/result.schema.json").read_text()
    return json.loads(text)


def validate_result(document: dict[str, Any]) -> None:
    """Raise ``jsonschema.ValidationError`` unless ``document`` follows the result contract."""
    import jsonschema

    jsonschema.validate(document, result_schema())


# ---------------------------------------------------------------------------------------------
# Where results live, and the one rule for "this image is done"


#: S3's key limit (bytes of UTF-8); a result key and its retry marker must both fit.
MAX_KEY_BYTES = 1024
#: Where the results of source keys too long for ``prefix + key + ".json.retry"`` go, hashed.
LONG_KEYS = "_long/"


def result_key(source_key: str, prefix: str) -> str:
    """Where the result of ``source_key`` goes: ``prefix + source_key + ".json"``; when that (with the
    retry marker's ``.retry``) would pass S3's 1,024 bytes, ``prefix + "_long/" + sha256(source key)
    + ".json"`` instead (the document names its source key in ``source.key``)."""
    key = f"{prefix}{source_key}.json"
    if is_long(source_key, prefix):
        digest = hashlib.sha256(source_key.encode("utf-8", "surrogatepass")).hexdigest()
        key = f"{prefix}{LONG_KEYS}{digest}.json"
    return key


def is_long(source_key: str, prefix: str) -> bool:
    """True when ``source_key``'s result takes the hashed form (its plain key would not fit)."""
    plain = f"{prefix}{source_key}.json{RETRY_MARKER_SUFFIX}"
    return len(plain.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES


def source_key_of(result_key_: str, prefix: str) -> str | None:
    """The source key a result key describes; None for keys that are not result documents and for
    hashed ones (``_long/``: the source key is only inside the document)."""
    if not result_key_.startswith(prefix) or not result_key_.endswith(".json"):
        return None
    if result_key_.startswith(prefix + LONG_KEYS) and len(result_key_) == len(prefix + LONG_KEYS) + 64 + 5:
        return None
    return result_key_[len(prefix) : -len(".json")]


def is_result_key(key: str, prefix: str) -> bool:
    """True for keys under the results prefix: they are outputs, never inputs (no feedback loop)."""
    return key.startswith(prefix)


def results_prefix(source_bucket: str, bucket: str | None, prefix: str) -> str:
    """Where the results of ``source_bucket``'s images go under ``bucket``: ``prefix`` beside the
    sources (``bucket`` None or the same bucket), ``prefix + source_bucket + "/"`` in a results bucket
    of its own, so that ``s3://a/x.jpg`` and ``s3://b/x.jpg`` never share a result."""
    if bucket is None or bucket == source_bucket:
        return prefix
    return f"{prefix}{source_bucket}/"


def result_uri(source: SourceRef, bucket: str | None, prefix: str) -> str:
    """``s3://`` URI of the result document of ``source`` (``bucket`` None: the source's bucket)."""
    return f"s3://{bucket or source.bucket}/{result_key(source.key, results_prefix(source.bucket, bucket, prefix))}"


@dataclass(frozen=True)
class ResultStamp:
    """What a stored result says of itself: the ETag it describes, its status and error code.

    Read from the document, or from the S3 user metadata the workers write with it
    (:meth:`to_metadata`), so a HEAD answers "is this image done?" without reading the document.
    """

    etag: str | None
    status: str
    error_code: str | None = None

    META_ETAG = "vp-source-etag"
    META_STATUS = "vp-status"
    META_ERROR = "vp-error-code"

    @classmethod
    def of(cls, result: ImageResult) -> ResultStamp:
        return cls(result.source.etag, result.status, (result.error or {}).get("code"))

    @classmethod
    def from_document(cls, doc: Any) -> ResultStamp | None:
        if not isinstance(doc, dict) or not isinstance(doc.get("status"), str):
            return None
        source = doc.get("source") if isinstance(doc.get("source"), dict) else {}
        error = doc.get("error") if isinstance(doc.get("error"), dict) else {}
        etag = source.get("etag") if isinstance(source.get("etag"), str) else None
        return cls(normalize_etag(etag), doc["status"], error.get("code"))

    @classmethod
    def from_metadata(cls, metadata: dict[str, str]) -> ResultStamp | None:
        if cls.META_STATUS not in metadata:
            return None  # written before stamps existed: read the document instead
        return cls(normalize_etag(metadata.get(cls.META_ETAG)) or None, metadata[cls.META_STATUS],
                   metadata.get(cls.META_ERROR) or None)

    @property
    def retriable(self) -> bool:
        """An error result a later attempt may fix: any error but the image's own faults
        (``VehiclePipelineError.final``); an unknown code is the system's, hence retriable."""
        return self.status == STATUS_ERROR and self.error_code not in final_codes()

    def to_metadata(self) -> dict[str, str]:
        return {self.META_ETAG: self.etag or "", self.META_STATUS: self.status, self.META_ERROR: self.error_code or ""}


def is_done(stamp: ResultStamp | None, etag: str | None) -> bool:
    """The one rule for "this image version has its answer": a result describes this ETag, and it is
    not an error a later attempt may fix (only the image's own faults are final: corrupt, unsupported,
    too large, deleted, refused; see vehicle_core/errors.py). Workers skip done images; backfill ``--skip-done`` and ``reconcile``
    use the same rule. Without an ETag nothing can be told: not done.
    """
    return why_not_done(stamp, etag) is None


#: Why an image has no current result (``reconcile`` counts each): no result at all, a result for
#: another upload (ETag), or an error result a later attempt may fix.
MISSING, STALE, RETRIABLE = "missing", "stale", "retriable"


def why_not_done(stamp: ResultStamp | None, etag: str | None) -> str | None:
    """``None`` when :func:`is_done`, else :data:`MISSING`, :data:`STALE` or :data:`RETRIABLE`."""
    if stamp is None or etag is None:
        return MISSING
    if stamp.etag != normalize_etag(etag):
        return STALE
    return RETRIABLE if stamp.retriable else None


#: Suffix of the retry marker: ``result key + ".retry"``, written *after* a retriable error result.
#: It sorts right after the result key, so one listing of the results prefix carries both and a
#: listing alone tells a retriable error from an answer (listings carry no user metadata).
RETRY_MARKER_SUFFIX = ".retry"


def retry_marker_key(source_key: str, prefix: str) -> str:
    """Key of the retry marker of ``source_key``'s result (never an image suffix, under the results prefix)."""
    return result_key(source_key, prefix) + RETRY_MARKER_SUFFIX
