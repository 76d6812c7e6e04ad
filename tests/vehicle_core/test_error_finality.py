"""Issue 19: a fault of the system is never an image's final result.

Walks every project error class: exactly the image's own faults are final, everything else (a
setting, a model, a server, memory, a bug, a timeout) leaves the image not done, so ``reconcile``
lists it and it is sent again.
"""

from __future__ import annotations

import pytest

import producer.events  # noqa: F401 - defines MalformedEventError, a subclass error_classes() must see
from vehicle_core.errors import (
    MalformedMessageError,
    OutOfMemoryError,
    ProcessingTimeoutError,
    VehiclePipelineError,
    error_classes,
    final_codes,
    is_out_of_memory,
    not_final_codes,
)
from vehicle_core.results.contract import (
    RETRIABLE,
    STATUS_ERROR,
    ImageResult,
    ResultStamp,
    SourceRef,
    is_done,
    result_schema,
    validate_result,
    why_not_done,
)

#: The image's own faults: the same bytes (or object) fail the same way every time.
IMAGE_FAULTS = frozenset({
    "empty", "unsupported_format", "undecodable", "too_large", "aspect_ratio", "not_found", "invalid_input",
    "access_denied", "storage_rejected", "malformed_message", "malformed_event", "worker_crashed",
})
#: Faults of the system: never an image's final result.
SYSTEM_FAULTS = frozenset({
    "internal", "config", "model_unavailable", "transient", "storage_unavailable", "out_of_memory", "timeout",
})

ETAG = "0123456789abcdef0123456789abcdef"
SOURCE = SourceRef(bucket="photos", key="cam1/0001.jpg", etag=ETAG, size=1234)


def _project_classes() -> list[type[VehiclePipelineError]]:
    # Only the project's own classes: a test elsewhere in the session may subclass an error.
    return [cls for cls in error_classes() if cls.__module__.split(".")[0] in ("vehicle_core", "producer", "workers",
                                                                                 "training")]


CLASSES = _project_classes()


def test_the_walk_sees_every_known_class_including_other_modules():
    codes = {cls.code for cls in CLASSES}
    assert codes == IMAGE_FAULTS | SYSTEM_FAULTS
    assert producer.events.MalformedEventError in CLASSES
    assert OutOfMemoryError in CLASSES and ProcessingTimeoutError in CLASSES
    # One class per code: a code never means "final" in one place and "retriable" in another.
    assert len(codes) == len(CLASSES)


def test_final_classes_are_exactly_the_images_own_faults():
    final = {cls.code for cls in CLASSES if cls.final}
    retriable = {cls.code for cls in CLASSES if not cls.final}
    assert final == IMAGE_FAULTS
    assert retriable == SYSTEM_FAULTS
    assert final_codes() >= IMAGE_FAULTS and not (final_codes() & SYSTEM_FAULTS)
    assert not_final_codes() >= SYSTEM_FAULTS and not (not_final_codes() & IMAGE_FAULTS)


def test_final_is_false_by_default_for_a_new_subclass():
    # A new error someone adds without thinking about finality is the system's fault (retriable).
    class SomethingNew(VehiclePipelineError):
        code = "something_new"

    assert SomethingNew.final is False
    assert ProcessingTimeoutError.final is False  # an InvalidInputError subclass that opts out


@pytest.mark.parametrize("cls", CLASSES, ids=lambda cls: f"{cls.__name__}-{cls.code}")
def test_an_error_result_is_done_iff_its_class_is_final(cls):
    result = ImageResult.from_error(SOURCE, cls("m"))
    assert result.status == STATUS_ERROR and result.error == {"code": cls.code, "message": "m"}
    # The stamp as the worker writes it (from the result), and as read back from metadata or the document
    stamps = [ResultStamp.of(result), ResultStamp.from_metadata(ResultStamp.of(result).to_metadata()),
              ResultStamp.from_document(result.to_dict())]
    for stamp in stamps:
        assert stamp == ResultStamp(ETAG, STATUS_ERROR, cls.code)
        assert stamp.retriable is (not cls.final)
        assert is_done(stamp, ETAG) is cls.final
        assert is_done(stamp, f'"{ETAG}"') is cls.final  # HEAD/LIST quote ETags
        assert why_not_done(stamp, ETAG) == (None if cls.final else RETRIABLE)
    # A result for another upload of the key is stale whatever its code
    assert why_not_done(ResultStamp.of(result), "another-etag") == "stale"
    # Every code is one the published contract names
    validate_result(result.to_dict())


def test_an_unknown_code_is_the_systems_fault():
    stamp = ResultStamp(ETAG, STATUS_ERROR, "code_from_a_newer_worker")
    assert stamp.retriable and not is_done(stamp, ETAG) and why_not_done(stamp, ETAG) == RETRIABLE
    # An error result without any code is not an answer either
    no_code = ResultStamp(ETAG, STATUS_ERROR, None)
    assert no_code.retriable and not is_done(no_code, ETAG)
    # Metadata whose code is empty reads as None, hence retriable
    from_meta = ResultStamp.from_metadata({ResultStamp.META_ETAG: ETAG, ResultStamp.META_STATUS: STATUS_ERROR,
                                           ResultStamp.META_ERROR: ""})
    assert from_meta.error_code is None and not is_done(from_meta, ETAG)


def test_a_non_project_exception_is_an_internal_error_and_not_done():
    result = ImageResult.from_error(SOURCE, KeyError("boxes"))
    assert result.error["code"] == "internal" and "boxes" in result.error["message"]
    stamp = ResultStamp.of(result)
    assert stamp.retriable and not is_done(stamp, ETAG) and why_not_done(stamp, ETAG) == RETRIABLE
    validate_result(result.to_dict())


@pytest.mark.parametrize("status", ["ok", "no_vehicle"])
def test_answers_are_done_and_never_retriable(status):
    stamp = ResultStamp(ETAG, status, None)
    assert not stamp.retriable and is_done(stamp, ETAG)
    assert not is_done(stamp, None) and why_not_done(None, ETAG) == "missing"


def test_final_codes_follow_the_class_attribute(monkeypatch):
    # final_codes() is derived from the classes, not a list kept beside them.
    assert "malformed_message" in final_codes()
    monkeypatch.setattr(MalformedMessageError, "final", False)
    assert "malformed_message" not in final_codes()
    assert ResultStamp(ETAG, STATUS_ERROR, "malformed_message").retriable


class OutOfMemoryErrorLike(RuntimeError):
    pass


def _named(name: str, base: type[BaseException] = RuntimeError) -> type[BaseException]:
    return type(name, (base,), {})


@pytest.mark.parametrize("exc", [
    MemoryError(),
    MemoryError("cannot allocate 8 GiB"),
    _named("OutOfMemoryError")("CUDA error: tried to allocate 2 GiB"),  # torch.cuda.OutOfMemoryError
    _named("ResourceExhaustedError", Exception)("OOM when allocating tensor"),  # tf.errors.ResourceExhaustedError
    _named("Sub", _named("OutOfMemoryError"))("a subclass of one"),  # told through the MRO
    RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB"),
    RuntimeError("CUDA Out Of Memory"),
    OutOfMemoryError("the project's own"),
], ids=repr)
def test_is_out_of_memory_recognises_the_frameworks(exc):
    assert is_out_of_memory(exc)


@pytest.mark.parametrize("exc", [
    ValueError("out of memory"),  # only RuntimeError's message is read
    RuntimeError("CUDA error: device-side assert triggered"),
    KeyError("memory"),
    OutOfMemoryErrorLike("a name that merely contains it"),
    Exception(),
], ids=repr)
def test_is_out_of_memory_refuses_the_rest(exc):
    assert not is_out_of_memory(exc)


def test_every_code_is_in_the_result_schema_enum():
    codes = _schema_codes(result_schema())
    assert {cls.code for cls in CLASSES} <= codes
    # ... and the schema names no code that nothing raises (a stale enum would hide a typo)
    assert codes <= {cls.code for cls in CLASSES}


def _schema_codes(schema) -> set[str]:
    """The ``enum`` of the error object's ``code`` property, wherever it is nested."""
    found: set[str] = set()

    def walk(node):
        if isinstance(node, dict):
            code = node.get("properties", {}).get("code") if isinstance(node.get("properties"), dict) else None
            if isinstance(code, dict) and "enum" in code:
                found.update(code["enum"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    assert found, "no error code enum in the result schema"
    return found
