"""celery-batches glue: the batching worker prefetches enough to fill a batch; attempts are counted."""

from __future__ import annotations

from types import SimpleNamespace

from workers.batching import attempt_of, raise_prefetch_for_batches


def _conf(prefetch: int):
    return SimpleNamespace(worker_prefetch_multiplier=prefetch)


def test_a_worker_consuming_the_batch_queue_prefetches_a_full_batch():
    conf = _conf(1)
    raise_prefetch_for_batches(conf, {"queues": ["classify"]}, batch_queue="classify", flush_every=16)
    assert conf.worker_prefetch_multiplier == 16


def test_queues_given_as_a_comma_string_are_understood():
    conf = _conf(1)
    raise_prefetch_for_batches(conf, {"queues": "detect,classify"}, batch_queue="classify", flush_every=8)
    assert conf.worker_prefetch_multiplier == 8


def test_other_workers_keep_their_prefetch_and_larger_values_are_kept():
    detect = _conf(1)
    raise_prefetch_for_batches(detect, {"queues": ["detect"]}, batch_queue="classify", flush_every=16)
    assert detect.worker_prefetch_multiplier == 1
    big = _conf(64)
    raise_prefetch_for_batches(big, {"queues": ["classify"]}, batch_queue="classify", flush_every=16)
    assert big.worker_prefetch_multiplier == 64


def test_attempts_are_read_from_the_request_kwargs():
    assert attempt_of(SimpleNamespace(kwargs={})) == 0
    assert attempt_of(SimpleNamespace(kwargs=None)) == 0
    assert attempt_of(SimpleNamespace(kwargs={"attempt": 3})) == 3
