"""The image message the producer sends and the detect workers receive (no ML import here).

One message names one S3 object version: ``{bucket, key, etag, version_id, size}``. The producer
imports only this module (plus Celery itself) to enqueue work; it sends by task *name*, so it never
imports ``workers.tasks`` and the model code behind it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from vehicle_core.errors import InvalidInputError

if TYPE_CHECKING:
    from celery import Celery

    from vehicle_core.config import BrokerSettings

#: Registered names of the two tasks (workers/tasks.py registers them under these names).
DETECT_TASK = "workers.tasks.detect_crop"
CLASSIFY_TASK = "workers.tasks.classify"
#: ``vehicle-train crop`` on the detect workers: one chunk of a training dataset (workers/dataset_crops.py).
CROP_CHUNK_TASK = "workers.tasks.crop_dataset_chunk"


class MalformedMessageError(InvalidInputError):
    """A queue message lacks a field or has one of the wrong type."""

    code = "malformed_message"


def normalize_etag(etag: str | None) -> str | None:
    """S3 events give ETags bare, HEAD/LIST give them in double quotes: compare them bare."""
    if etag is None:
        return None
    return etag.strip().strip('"') or None


@dataclass(frozen=True)
class ImageMessage:
    """One S3 object version to process."""

    bucket: str
    key: str
    etag: str | None = None
    version_id: str | None = None
    size: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "etag", normalize_etag(self.etag))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> ImageMessage:
        """Validate a received message; raise :class:`MalformedMessageError` when it is not one."""
        if not isinstance(data, dict):
            raise MalformedMessageError(f"image message must be an object, got {type(data).__name__}")
        for name in ("bucket", "key"):
            if not isinstance(data.get(name), str) or not data[name]:
                raise MalformedMessageError(f"image message needs a non-empty string {name!r}")
        size = data.get("size")
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
            raise MalformedMessageError(f"image message size must be a non-negative integer, got {size!r}")
        for name in ("etag", "version_id"):
            if data.get(name) is not None and not isinstance(data[name], str):
                raise MalformedMessageError(f"image message {name} must be a string or null")
        return cls(
            bucket=data["bucket"],
            key=data["key"],
            etag=data.get("etag"),
            version_id=data.get("version_id"),
            size=size,
        )


def result_key(source_key: str, prefix: str) -> str:
    """Where the result of ``source_key`` goes: ``prefix + source_key + ".json"``."""
    return f"{prefix}{source_key}.json"


def is_result_key(key: str, prefix: str) -> bool:
    """True for keys under the results prefix: they are outputs, never inputs (no feedback loop)."""
    return key.startswith(prefix)


def task_routes(broker: BrokerSettings) -> dict[str, dict[str, str]]:
    """Which queue each task goes to: detect-side tasks (PyTorch) and classify (TensorFlow)."""
    detect = {"queue": broker.detect_queue}
    return {DETECT_TASK: detect, CROP_CHUNK_TASK: detect, CLASSIFY_TASK: {"queue": broker.classify_queue}}


def sender_app(broker: BrokerSettings) -> Celery:
    """A Celery app that only sends: broker URL and routes, no task modules, no models."""
    from celery import Celery

    app = Celery("vehicle-producer", broker=broker.url, backend=broker.result_backend, set_as_current=False)
    app.conf.task_routes = task_routes(broker)
    app.conf.broker_transport_options = {"visibility_timeout": broker.visibility_timeout_s}
    # Flower shows a task as "sent" (and its args) from the moment the producer enqueues it.
    app.conf.task_send_sent_event = True
    return app


def image_chain(app: Celery, msg: ImageMessage):
    """``chain(detect_crop.s(msg), classify.s())``, built from task names so no task module is imported."""
    return app.signature(DETECT_TASK, args=[msg.to_dict()]) | app.signature(CLASSIFY_TASK)


def enqueue_image(app: Celery, msg: ImageMessage) -> str:
    """Send one image down the detect -> classify chain; return the detect task's id.

    The queues come from ``app.conf.task_routes`` (detect and classify queues in the broker settings).
    """
    return image_chain(app, msg).apply_async().parent.id
