"""Issue 19: a task message that cannot be parsed is kept in the Redis list ``vp:dead`` (real
redis-server on loopback), never looped, and never takes its batch-mates down; every other failure
inside a batch becomes a retriable project error (``system_fault``)."""

from __future__ import annotations

import json
import logging
import socket
from types import SimpleNamespace

import pytest
import redis
from celery.exceptions import SoftTimeLimitExceeded
from redis.backoff import NoBackoff
from redis.retry import Retry

from vehicle_core.errors import (
    ConfigError,
    MalformedMessageError,
    ModelLoadError,
    StorageUnavailableError,
    UndecodableImageError,
    VehiclePipelineError,
)
from vehicle_core.messages import CropSet
from vehicle_core.results.contract import SourceRef
from workers import dead_letters

SOURCE = {"bucket": "photos", "key": "cam1/0001.jpg", "etag": "abc", "version_id": None, "size": 10}
GOOD_CROPS = {"source": SOURCE, "detections": [], "crops": [], "image_size": [40, 30], "models": {},
              "timings_ms": {"detect": 1.5}, "error": None}


@pytest.fixture
def client(redis_server):
    # A database of its own: the session's server is shared with other tests.
    client = redis.Redis(host="127.0.0.1", port=redis_server.port, db=11, password=redis_server.password)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


def _request(task_id: str, args, kwargs=None):
    return SimpleNamespace(id=task_id, args=args, kwargs=kwargs or {})


# --------------------------------------------------------------------------------------------
# dead_letters.keep / read


def test_keep_stores_json_entries_newest_first(client):
    for i in range(3):
        dead_letters.keep(client, task="workers.tasks.classify", request=_request(f"id-{i}", [{"n": i}], {"k": i}),
                          error=ValueError(f"bad {i}"))
    raw = client.lrange(dead_letters.DEAD_LIST, 0, -1)
    assert len(raw) == 3
    entries = [json.loads(r) for r in raw]  # each entry is plain JSON in Redis, readable with redis-cli
    assert [e["task_id"] for e in entries] == ["id-2", "id-1", "id-0"]
    newest = entries[0]
    assert newest["task"] == "workers.tasks.classify"
    assert newest["error"] == "ValueError: bad 2"
    assert newest["args"] == [{"n": 2}] and newest["kwargs"] == {"k": 2}
    assert newest["at"].endswith("+00:00")
    # read() gives the same, newest first, and honours count
    assert dead_letters.read(client) == entries
    assert [e["task_id"] for e in dead_letters.read(client, count=2)] == ["id-2", "id-1"]


def test_entries_with_non_json_args_are_stored_as_repr(client):
    marker = object()
    dead_letters.keep(client, task="workers.tasks.detect_crop",
                      request=_request("id-x", [b"\x00raw", marker], {"when": {1, 2}}), error=TypeError("nope"))
    (entry,) = dead_letters.read(client)
    assert isinstance(entry["args"], str) and "b'\\x00raw'" in entry["args"] and "object at" in entry["args"]
    assert entry["kwargs"] == repr({"when": {1, 2}})
    assert entry["task_id"] == "id-x" and entry["error"] == "TypeError: nope"


def test_a_request_without_id_args_or_kwargs_is_still_kept(client):
    dead_letters.keep(client, task="t", request=object(), error=KeyError("x"))
    (entry,) = dead_letters.read(client)
    assert entry["task_id"] is None and entry["args"] is None and entry["kwargs"] is None
    assert entry["error"] == "KeyError: 'x'"


def test_long_errors_and_args_are_cut(client):
    dead_letters.keep(client, task="t", request=_request("id", [object()] * 500), error=ValueError("e" * 5000))
    (entry,) = dead_letters.read(client)
    assert len(entry["error"]) == 500
    assert len(entry["args"]) == 2000


def test_the_list_is_trimmed_to_keep(client, monkeypatch):
    monkeypatch.setattr(dead_letters, "KEEP", 3)
    for i in range(7):
        dead_letters.keep(client, task="t", request=_request(f"id-{i}", [i]), error=ValueError("bad"))
    assert client.llen(dead_letters.DEAD_LIST) == 3
    # the newest three stay, the older ones are dropped
    assert [e["task_id"] for e in dead_letters.read(client, count=10)] == ["id-6", "id-5", "id-4"]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again on leaving: nothing listens there


def _unreachable() -> redis.Redis:
    """A client of a closed loopback port, without redis-py's reconnect back-off (the test stays fast)."""
    return redis.Redis(host="127.0.0.1", port=_closed_port(), socket_connect_timeout=1, socket_timeout=1,
                       retry=Retry(NoBackoff(), 0))


def test_keep_never_raises_when_redis_is_unreachable(caplog):
    down = _unreachable()
    with caplog.at_level(logging.ERROR, logger="workers.dead_letters"):
        assert dead_letters.keep(down, task="workers.tasks.classify", request=_request("id-lost", [1]),
                                 error=ValueError("bad")) is None
    messages = [r.getMessage() for r in caplog.records]
    # the log line is what is left: which message, and that it could not be kept
    assert any("dead-lettered message id-lost" in m and "ValueError: bad" in m for m in messages)
    assert any("could not keep dead-lettered message id-lost" in m for m in messages)
    with pytest.raises(redis.ConnectionError):  # the client really was unreachable
        down.ping()


# --------------------------------------------------------------------------------------------
# The parsers, on the malformed messages of the issue


def test_a_good_crop_message_parses():
    crop_set = CropSet.from_message(GOOD_CROPS)
    assert crop_set.source == SourceRef.from_dict(SOURCE) and crop_set.timings_ms == {"detect": 1.5}
    assert CropSet.from_message(crop_set.to_message()).to_message() == crop_set.to_message()


@pytest.mark.parametrize("message", [
    {**GOOD_CROPS, "source": {"bucket": "photos"}},
    {**GOOD_CROPS, "detections": None},
    {**GOOD_CROPS, "detections": [{"box": [0, 0, 1], "score": 1, "label": "car"}], "crops": ["AAAA"]},
    {**GOOD_CROPS, "crops": ["not base64!"], "detections": [{"box": [0, 0, 1, 1], "score": 1, "label": "car"}]},
    {**GOOD_CROPS, "image_size": "ab"},
    {**GOOD_CROPS, "models": {"detector": "x"}},
    "a string",
    ["a", "list"],
], ids=["no-key", "detections-null", "box-of-3", "crop-not-base64", "image-size-str", "model-str", "str", "list"])
def test_malformed_crop_messages_raise_malformed_message(message):
    with pytest.raises(MalformedMessageError):
        CropSet.from_message(message)


# From the issue: these pass the type checks of the parser's try block and surface as AttributeError
# (`.items()` of a list), or pass as a CropSet whose ``error`` is not an error object. The worker
# dead-letters the first two anyway (``_parse_requests`` catches everything; see the test below), but
# the parser's contract ("MalformedMessageError for anything else") does not hold for them.
@pytest.mark.parametrize("message, raised", [
    ({**GOOD_CROPS, "timings_ms": [1]}, AttributeError),
    ({**GOOD_CROPS, "models": ["x"]}, AttributeError),
], ids=["timings-list", "models-list"])
def test_malformed_crop_messages_from_the_issue_are_refused(message, raised):
    with pytest.raises(MalformedMessageError):
        CropSet.from_message(message)


@pytest.mark.parametrize("error", ["boom", {"code": 5}, ["x"]])
def test_a_crop_message_whose_error_is_not_an_error_object_is_refused(error):
    with pytest.raises(MalformedMessageError):
        CropSet.from_message({**GOOD_CROPS, "error": error})


@pytest.mark.parametrize("argument", [
    {}, {"bucket": "photos"}, {"key": "cam1/0001.jpg"}, {"bucket": "", "key": "k"}, {"Bucket": "b", "Key": "k"},
    {"bucket": "b", "key": "k", "size": -1}, {"bucket": "b", "key": "k", "etag": 5}, "s3://photos/k.jpg", None,
])
def test_a_detect_argument_that_is_not_an_image_reference_is_malformed(argument):
    with pytest.raises(MalformedMessageError):
        SourceRef.from_dict(argument)


# --------------------------------------------------------------------------------------------
# The worker's side: _parse_requests dead-letters, system_fault maps every other failure


@pytest.fixture
def tasks(client, monkeypatch):
    """workers.tasks (its Celery app built from the default settings, nothing connects at import) with
    the crash ledger's Redis client replaced by the test's."""
    from workers import tasks

    monkeypatch.setattr(tasks, "holders", SimpleNamespace(ledger=SimpleNamespace(get=lambda: SimpleNamespace(
        client=client))))
    return tasks


def test_parse_requests_dead_letters_each_bad_message_and_keeps_its_batch_mates(tasks, client):
    from workers import metrics

    task = SimpleNamespace(name="workers.tasks.classify")
    counted = metrics.DEAD_LETTERED.labels(task.name)._value.get()
    requests = [
        _request("good-1", [GOOD_CROPS]),
        _request("timings-list", [{**GOOD_CROPS, "timings_ms": [1]}]),
        _request("models-list", [{**GOOD_CROPS, "models": ["x"]}]),
        _request("no-source", [{**GOOD_CROPS, "source": {"key": "k"}}]),
        _request("two-args", [GOOD_CROPS, GOOD_CROPS]),
        _request("args-not-a-list", {"source": SOURCE}),
        _request("good-2", [{**GOOD_CROPS, "source": {**SOURCE, "key": "cam1/0002.jpg"}}]),
    ]
    todo, done = tasks._parse_requests(task, requests, CropSet.from_message)
    assert [(r.id, cs.source.key) for r, cs in todo] == [("good-1", "cam1/0001.jpg"), ("good-2", "cam1/0002.jpg")]
    bad = ["timings-list", "models-list", "no-source", "two-args", "args-not-a-list"]
    assert [r.id for r, _ in done] == bad
    assert all(summary["skipped"] == "dead_lettered" for _, summary in done)
    kept = dead_letters.read(client, count=100)
    assert [e["task_id"] for e in kept] == bad[::-1]  # newest first
    assert all(e["task"] == task.name for e in kept)
    by_id = {e["task_id"]: e for e in kept}
    assert by_id["no-source"]["error"].startswith("MalformedMessageError")
    assert by_id["args-not-a-list"]["error"].startswith("TypeError") and by_id["args-not-a-list"]["args"] == {
        "source": SOURCE}
    assert by_id["timings-list"]["args"] == [{**GOOD_CROPS, "timings_ms": [1]}]
    assert metrics.DEAD_LETTERED.labels(task.name)._value.get() == counted + len(bad)


def test_parse_requests_of_detect_arguments(tasks, client):
    task = SimpleNamespace(name="workers.tasks.detect_crop")
    requests = [_request("ok", [SOURCE]), _request("no-bucket-key", [{"etag": "abc"}]), _request("none", [None])]
    todo, done = tasks._parse_requests(task, requests, SourceRef.from_dict)
    assert [r.id for r, _ in todo] == ["ok"] and [r.id for r, _ in done] == ["no-bucket-key", "none"]
    assert [e["task_id"] for e in dead_letters.read(client)] == ["none", "no-bucket-key"]


def test_parse_requests_goes_on_when_the_dead_list_is_unreachable(tasks, monkeypatch):
    down = _unreachable()
    monkeypatch.setattr(tasks, "holders", SimpleNamespace(ledger=SimpleNamespace(get=lambda: SimpleNamespace(
        client=down))))
    todo, done = tasks._parse_requests(SimpleNamespace(name="t"), [_request("bad", [None]), _request("ok", [SOURCE])],
                                       SourceRef.from_dict)
    assert [r.id for r, _ in todo] == ["ok"] and [r.id for r, _ in done] == ["bad"]


class OutOfMemoryError(RuntimeError):  # the name torch.cuda.OutOfMemoryError has
    pass


@pytest.mark.parametrize("exc, code", [
    (SoftTimeLimitExceeded(), "timeout"),
    (MemoryError(), "out_of_memory"),
    (OutOfMemoryError("CUDA"), "out_of_memory"),
    (RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"), "out_of_memory"),
    (ConnectionError("reset"), "transient"),
    (ConnectionResetError("reset"), "transient"),
    (TimeoutError("slow"), "transient"),
    (KeyError("boxes"), "internal"),
    (ValueError("shapes"), "internal"),
    # A final error raised for a whole batch is no image's own: it must not become one's final result
    (UndecodableImageError("raised by a bug for the batch"), "internal"),
    (MalformedMessageError("from deep inside"), "internal"),
], ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else v)
def test_system_fault_maps_any_failure_to_a_retriable_project_error(tasks, exc, code):
    fault = tasks.system_fault(exc, "classifying the batch")
    assert isinstance(fault, VehiclePipelineError)
    assert fault.code == code and fault.final is False
    assert "classifying the batch" in fault.message


@pytest.mark.parametrize("exc", [ModelLoadError("m"), ConfigError("c"), StorageUnavailableError("s")])
def test_system_fault_keeps_a_retriable_project_error_as_it_is(tasks, exc):
    assert tasks.system_fault(exc, "doing") is exc
