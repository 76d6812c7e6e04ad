"""A detect batch's in-flight marks are cleared in the write of its hand-on (``workers.broker.along_with_publish``,
``workers.crash_ledger.Clearing``): a round trip per batch less, and nothing else changes.

On a real redis-server, through the workers' transport and crash ledger: the hand-on's one write carries the
LPUSH and the clearing, the marks are gone from then on, and the window's end sends nothing; a ledger on
another server (here another database), an empty batch, or a failed write leave the clearing to the window,
as before. And the detect task puts its hand-on inside the clearing (the wiring).
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import redis
from kombu import Connection

from vehicle_core.messages import CropSet
from vehicle_core.results.contract import SourceRef
from workers import broker
from workers.broker import TRANSPORT, along_with_publish
from workers.crash_ledger import Clearing, CrashLedger, marked

pytestmark = pytest.mark.integration

QUEUE = "clearing-rides"
COUNTED = ("lpush", "hset", "hdel", "del", "expireat")


@pytest.fixture
def server(redis_server):
    client = redis.Redis(port=redis_server.port)
    client.flushall()
    yield redis_server
    client.flushall()


def _spent(client) -> dict[str, int]:
    stats = client.info("commandstats")
    return {name: stats[f"cmdstat_{name}"]["calls"] for name in COUNTED if f"cmdstat_{name}" in stats}


class _HandOn:
    """The transport's publish batch, as the detect worker's hand-on uses it (no Celery)."""

    def __init__(self, url: str) -> None:
        self.conn = Connection(url, transport=TRANSPORT)
        self.channel = self.conn.default_channel
        warm = self.batch(1)  # the batch's connection open and its handshake done before anything is counted
        warm.flush()
        warm.close()
        self.channel.client.delete(QUEUE)

    def batch(self, n: int):
        publish = self.channel.create_publish_batch(max_size=n + 1)
        for i in range(n):
            publish.publish(self.channel.prepare_message(json.dumps({"crops": "x" * 9_000, "n": i}), 0,
                                                         "application/json", "utf-8", {}),
                            exchange="", routing_key=QUEUE)
        return publish

    def close(self) -> None:
        self.conn.release()


def test_the_hand_on_write_carries_the_clearing(server, writes):
    url = f"redis://127.0.0.1:{server.port}/0"
    client, hand_on = redis.Redis(port=server.port), _HandOn(url)
    ledger = CrashLedger(redis.Redis.from_url(url), max_deliveries=3, ttl_s=600)
    ids = [f"detect:{n}" for n in range(4)]
    try:
        with ledger.in_flight(ids) as clearing:
            assert sorted(marked(client)) == ids
            publish = hand_on.batch(4)
            before = _spent(client)
            writes.clear()
            with along_with_publish(clearing):
                publish.flush()
            flushed = list(writes)
            publish.close()
            assert len(flushed) == 1 and flushed[0] > 4 * 9_000  # messages and clearing: one write
            assert clearing.sent and marked(client) == []  # gone from the hand-on on
            spent = {k: v - before.get(k, 0) for k, v in _spent(client).items() if v != before.get(k, 0)}
            assert spent == {"lpush": 1, "hdel": 1, "del": 1}
            after_hand_on = _spent(client)
        assert _spent(client) == after_hand_on  # the window's end sends nothing more
        assert client.llen(QUEUE) == 4
    finally:
        hand_on.close()


def test_outside_the_block_or_for_another_server_the_window_clears(server):
    url = f"redis://127.0.0.1:{server.port}/0"
    client, hand_on = redis.Redis(port=server.port), _HandOn(url)
    ledger = CrashLedger(redis.Redis.from_url(f"redis://127.0.0.1:{server.port}/1"), max_deliveries=3, ttl_s=600)
    try:
        with ledger.in_flight(["detect:a"]) as clearing:
            with along_with_publish(clearing):
                hand_on.batch(2).flush()  # the broker's database 0, the ledger's 1: not the same place
            assert not clearing.sent and marked(ledger.client) == ["detect:a"]
        assert marked(ledger.client) == []  # cleared by the window, as before
        assert client.llen(QUEUE) == 2

        with ledger.in_flight(["detect:b"]) as clearing:
            hand_on.batch(1).flush()  # no rider set: nothing rides
        assert not clearing.sent and marked(ledger.client) == []
    finally:
        hand_on.close()


def test_an_empty_batch_or_a_failed_write_carries_nothing(server, monkeypatch):
    url = f"redis://127.0.0.1:{server.port}/0"
    client, hand_on = redis.Redis(port=server.port), _HandOn(url)
    ledger = CrashLedger(redis.Redis.from_url(url), max_deliveries=3, ttl_s=600)
    try:
        with ledger.in_flight(["detect:empty"]) as clearing:
            with along_with_publish(clearing):
                hand_on.batch(0).flush()  # nothing to hand on: no write at all
            assert not clearing.sent and marked(client) == ["detect:empty"]
        assert marked(client) == []

        publish = hand_on.batch(3)
        pipeline = publish.pipeline._pipeline

        def refused(*_args, **_kwargs):
            pipeline.reset()
            raise redis.ConnectionError("the broker went away")

        monkeypatch.setattr(pipeline, "execute", refused)
        with ledger.in_flight(["detect:refused"]) as clearing:
            with along_with_publish(clearing), pytest.raises(Exception, match="delivery is uncertain"):
                publish.flush()  # the hand-on fails (the detect task requeues its images) ...
            assert not clearing.sent and marked(client) == ["detect:refused"]  # ... and the marks stay meanwhile
        assert marked(client) == [] and client.llen(QUEUE) == 0  # the window cleared them once the batch was over
    finally:
        hand_on.close()


def test_the_detect_task_hands_on_inside_its_clearing(monkeypatch):
    """workers.tasks._detect_group: the batch's hand-on is the write that may carry its clearing."""
    from workers import batching, tasks

    seen = []

    def hand_on_all(app, items):
        seen.append((broker._riders.current, [request.id for request, _ in items]))
        return {}

    class Stage:
        def detect(self, prepared):
            return [crop_set for crop_set, _ in prepared]

    class Pool:
        def map(self, fn, items):
            return [fn(item) for item in items]

    monkeypatch.setattr(tasks, "holders", SimpleNamespace(detect=SimpleNamespace(get=Stage),
                                                          fetchers=SimpleNamespace(get=Pool)), raising=False)
    monkeypatch.setattr(tasks, "_fetch", lambda item: (CropSet(source=item[1]), None))
    monkeypatch.setattr(batching, "hand_on_all", hand_on_all)
    monkeypatch.setattr(tasks, "settings", SimpleNamespace(broker=SimpleNamespace(kind="redis")), raising=False)
    clearing = Clearing(client=None, commands=[("hdel", ("k", "detect:r1", "detect:r2"))])
    group = [(SimpleNamespace(id=f"r{n}"), SourceRef(bucket="b", key=f"k{n}.jpg", etag="e" * 32)) for n in (1, 2)]
    done, requeue = [], []
    tasks._detect_group(SimpleNamespace(name="detect", app=None), group, done, requeue, clearing)
    assert seen == [(clearing, ["r1", "r2"])]  # handed on inside the clearing's block
    assert getattr(broker._riders, "current", None) is None  # and only there
    assert [summary["key"] for _, summary in done] == ["k1.jpg", "k2.jpg"] and requeue == []
