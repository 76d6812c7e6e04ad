"""What a classify message shows as its arguments (``argsrepr``: Flower's args column, the worker's log):
a summary of the CropSet, not Celery's kilobyte of base64 cut off mid-crop, on a real redis-server."""

from __future__ import annotations

import base64
import json
import os
from types import SimpleNamespace

import pytest
import redis

from tests.integration.stack import redis_url
from vehicle_core.config import ResultSettings, load_settings
from vehicle_core.errors import StorageUnavailableError
from vehicle_core.results.contract import SourceRef
from workers.batching import hand_on_all, retry_later
from workers.broker import envelope_body
from workers.messages import CLASSIFY_TASK, args_repr, sender_app

pytestmark = pytest.mark.integration
QUEUE = "classify-args-test"


def _crop_set(n: int = 3) -> dict:
    """A CropSet message as the detect task hands it on: ``n`` crops of ~1.5 KB JPEG each."""
    return {"source": {"bucket": "cams", "key": "site-7/2026/12/07/frame-000123.jpg", "etag": '"abc"', "size": 183412},
            "detections": [{"box": [10.5, 20.0, 200.0, 180.0], "score": 0.9 - i / 10, "label": label}
                           for i, label in zip(range(n), ("car", "bus", "truck"), strict=False)],
            "crops": [base64.b64encode(os.urandom(1478)).decode() for _ in range(n)],
            "image_size": [1280, 960], "models": {}, "timings_ms": {"detect": 12.0}, "error": None}


@pytest.fixture
def app(redis_server):
    client = redis.Redis.from_url(redis_url(redis_server))
    client.delete(QUEUE)
    settings = load_settings(env={"VP_BROKER__URL": redis_url(redis_server), "VP_BROKER__CLASSIFY_QUEUE": QUEUE})
    yield sender_app(settings.broker)
    client.delete(QUEUE)


def _queued(app) -> list[tuple[dict, bytes, int]]:
    """(envelope, raw message, its size) of each message on the queue, oldest first."""
    client = redis.Redis.from_url(app.conf.broker_url)
    return [(json.loads(raw), raw, len(raw)) for raw in reversed(client.lrange(QUEUE, 0, -1))]


def test_a_handed_on_crop_set_shows_the_image_its_vehicles_and_its_crops_and_travels_smaller(app):
    value = _crop_set()
    request = SimpleNamespace(id="detect-1", request_dict={"chain": [dict(app.signature(CLASSIFY_TASK))],
                                                          "root_id": "detect-1"})
    assert hand_on_all(app, [(request, value)]) == {}
    app.signature(CLASSIFY_TASK).apply_async((value,))  # Celery's own argsrepr, for comparison
    (ours, raw, size), (_default, _raw, default_size) = _queued(app)
    shown = ours["headers"]["argsrepr"]
    assert "s3://cams/site-7/2026/12/07/frame-000123.jpg" in shown
    assert "car 0.90" in shown and "bus 0.80" in shown and "truck 0.70" in shown
    assert "3 JPEG, 5916 base64 characters" in shown and value["crops"][0][:40] not in shown
    # The work itself is untouched: the body carries every crop; only the header shrank (~0.7 KB of
    # each classify message, which Redis takes twice: the queue's LPUSH and the unacked record)
    args, _kwargs, _embed = json.loads(envelope_body(ours))
    assert args == [value]
    assert default_size - size >= 600, (default_size, size)


def test_a_retried_classify_request_keeps_the_summary(app, aws_env, bucket):
    from vehicle_core.storage import ObjectStore

    value = _crop_set(1)
    request = SimpleNamespace(id="r1", args=(value,), kwargs={}, request_dict={})
    outcome = retry_later(app.signature(CLASSIFY_TASK), request, SourceRef(bucket, "k.jpg"),
                          StorageUnavailableError("503"), max_retries=3, backoff_max=60,
                          store=ObjectStore(load_settings().storage), results=ResultSettings(bucket=None))
    assert outcome == "retry"
    ((envelope, _raw, _size),) = _queued(app)
    assert envelope["headers"]["argsrepr"] == args_repr((value,))
    assert "car 0.90" in envelope["headers"]["argsrepr"]


@pytest.mark.parametrize("args", [
    ({"bucket": "b", "key": "k.jpg"},),  # a detect task's SourceRef: Celery's repr of it is already short
    ({"crops": "not a list", "source": {"bucket": "b", "key": "k"}, "detections": []},),
    ({"crops": [], "source": "s3://b/k", "detections": []},),
    ({"crops": [], "source": {"bucket": "b", "key": "k"}, "detections": [{"label": "car", "score": "high"}]},),
    (1, 2),
    (),
])
def test_anything_but_a_crop_set_keeps_celerys_own_repr(args):
    assert args_repr(args) is None
