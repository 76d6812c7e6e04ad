"""Every failure the pipeline names, each with a stable string ``code``, and whether it is *final*.

A result is final when its error is the image's own fault: the same bytes (or the same object) will
fail the same way. Everything else is a fault of the system (a setting, a model, a server, memory):
never an image's final result, so ``reconcile`` lists it and ``--enqueue`` sends it again.

* :class:`InvalidInputError` and its subclasses are final (corrupt, unsupported, too large, a strip,
  deleted, refused to this process, killed ``worker.max_deliveries`` processes, malformed message),
  except :class:`ProcessingTimeoutError` (a slow or overloaded worker is not the image's fault).
* Everything else is retriable (``final = False``): :class:`TransientError` (storage throttling, a
  network blip: retried at once with backoff), :class:`ModelLoadError`, :class:`ConfigError`,
  :class:`OutOfMemoryError`, and ``internal`` (an exception the code did not expect).

``docs/results.md`` has the table; ``tests/vehicle_core/test_error_finality.py`` walks every class.
"""

from __future__ import annotations


class VehiclePipelineError(Exception):
    """Base of every error this project raises on purpose."""

    code = "internal"
    #: True only for the image's own faults. False for failures a later attempt may fix (a model, a
    #: setting, a server, memory, a bug): a result carrying such a code does not count as done
    #: (``vehicle_core.results.contract.is_done``).
    final = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


class ConfigError(VehiclePipelineError):
    """A setting is unknown, of the wrong type or out of range."""

    code = "config"


class ModelLoadError(VehiclePipelineError):
    """Model weights or an artifact could not be found, fetched or validated."""

    code = "model_unavailable"  # an operator fixes the model; the images deserve another try


class InvalidInputError(VehiclePipelineError):
    """The input itself is bad; retrying cannot help."""

    code = "invalid_input"
    final = True


class EmptyImageError(InvalidInputError):
    """The object has zero bytes."""

    code = "empty"


class UnsupportedFormatError(InvalidInputError):
    """The bytes are a format we do not read (GIF, PDF, text, ...)."""

    code = "unsupported_format"


class UndecodableImageError(InvalidInputError):
    """The bytes claim a format we read, but the decoder cannot produce pixels (truncated, corrupt)."""

    code = "undecodable"


class ImageTooLargeError(InvalidInputError):
    """Width x height (read from the header, before decoding) or the byte size exceeds the limit."""

    code = "too_large"


class AspectRatioError(InvalidInputError):
    """The image is a strip: one side more than ``images.max_aspect_ratio`` times the other."""

    code = "aspect_ratio"


class SourceNotFoundError(InvalidInputError):
    """The S3 object named by a message no longer exists."""

    code = "not_found"


class AccessDeniedError(InvalidInputError):
    """S3 refused this process access to the object (403): permanent until someone fixes a policy."""

    code = "access_denied"


class StorageRejectedError(InvalidInputError):
    """S3 rejected the request as such (4xx other than 403/404/408/409/429: key too long, bad request)."""

    code = "storage_rejected"


class WorkerCrashedError(InvalidInputError):
    """Worker processes died (killed, out of memory, crashed) on this image ``worker.max_deliveries``
    times: it is not tried again."""

    code = "worker_crashed"


class ProcessingTimeoutError(InvalidInputError):
    """Processing this image outlasted ``worker.task_time_limit_s`` (a slow or overloaded worker as
    much as the image: retriable)."""

    code = "timeout"
    final = False


class MalformedMessageError(InvalidInputError):
    """A queue message lacks a field or has one of the wrong type."""

    code = "malformed_message"


class TransientError(VehiclePipelineError):
    """A failure that may pass on its own; safe to retry."""

    code = "transient"


class OutOfMemoryError(VehiclePipelineError):
    """The process (or its GPU) ran out of memory in a forward pass: the worker's fault, not the image's."""

    code = "out_of_memory"


class StorageUnavailableError(TransientError):
    """S3 answered with throttling or a 5xx after botocore's own retries, or could not be reached."""

    code = "storage_unavailable"


def error_classes() -> list[type[VehiclePipelineError]]:
    """Every error class defined so far, this one's subclasses in other modules included (import
    ``workers.messages`` or ``producer.events`` first to see theirs)."""
    found, todo = [], [VehiclePipelineError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


def is_out_of_memory(exc: BaseException) -> bool:
    """True for the out-of-memory errors of Python and the frameworks (CUDA OOM, TensorFlow's
    ResourceExhaustedError), told by name so that this module imports no framework."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    return bool(names & {"MemoryError", "OutOfMemoryError", "ResourceExhaustedError"}) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())


def final_codes() -> frozenset[str]:
    """Codes of the image's own faults: a result carrying one is that image's answer."""
    return frozenset(cls.code for cls in error_classes() if cls.final)


def not_final_codes() -> frozenset[str]:
    """Codes of failures that a later attempt may fix (see ``VehiclePipelineError.final``)."""
    return frozenset(cls.code for cls in error_classes() if not cls.final)
