"""Every failure the pipeline names, each with a stable string ``code``.

Two families matter to a caller:

* :class:`InvalidInputError` is permanent: the same bytes will fail the same way. Workers write an
  ``error`` result for it and never retry.
* :class:`TransientError` may pass: storage throttling, a network blip. Workers retry it with backoff.

Everything else (:class:`ConfigError`, :class:`ModelLoadError`) is an operator's problem and stops
start-up with a message that says what to fix.
"""

from __future__ import annotations


class VehiclePipelineError(Exception):
    """Base of every error this project raises on purpose."""

    code = "internal"

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

    code = "model_unavailable"


class InvalidInputError(VehiclePipelineError):
    """The input itself is bad; retrying cannot help."""

    code = "invalid_input"


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


class SourceNotFoundError(InvalidInputError):
    """The S3 object named by a message no longer exists."""

    code = "not_found"


class TransientError(VehiclePipelineError):
    """A failure that may pass on its own; safe to retry."""

    code = "transient"


class StorageUnavailableError(TransientError):
    """S3 answered with throttling or a 5xx after botocore's own retries, or could not be reached."""

    code = "storage_unavailable"


class StorageAccessError(VehiclePipelineError):
    """S3 refused us, or we have no credentials to ask it: an operator's problem, never retried."""

    code = "storage_access"


#: Codes a result document may carry in ``error.code``; docs/result.schema.json lists the same.
ERROR_CODES = (
    EmptyImageError.code,
    UnsupportedFormatError.code,
    UndecodableImageError.code,
    ImageTooLargeError.code,
    SourceNotFoundError.code,
    InvalidInputError.code,
    StorageUnavailableError.code,  # transient, written only once every retry failed
    VehiclePipelineError.code,
)
