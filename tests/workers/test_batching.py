"""celery-batches glue: the batching worker prefetches enough to fill a batch; attempts are counted."""

from __future__ import annotations

from types import SimpleNamespace

from vehicle_core.config import load_settings
from workers.batching import attempt_of, prefetch_for


def test_each_batching_worker_prefetches_a_full_batch_and_other_queues_keep_theirs():
    settings = load_settings(env={"VP_WORKER__BATCH_FLUSH_EVERY": "12", "VP_WORKER__PREFETCH_MULTIPLIER": "1",
                                  "VP_DETECTOR__BATCH_SIZE": "6"})
    assert prefetch_for("classify", settings) == 12
    assert prefetch_for("detect", settings) == 6
    assert prefetch_for("train", settings) == 1


def test_on_an_sqs_broker_a_detect_worker_receives_the_next_batch_while_one_runs():
    settings = load_settings(env={"VP_BROKER__URL": "sqs://", "VP_DETECTOR__BATCH_SIZE": "6",
                                  "VP_WORKER__BATCH_FLUSH_EVERY": "12"})
    assert prefetch_for("detect", settings) == 12
    assert prefetch_for("classify", settings) == 12


def test_a_larger_configured_prefetch_is_kept():
    settings = load_settings(env={"VP_WORKER__BATCH_FLUSH_EVERY": "4", "VP_WORKER__PREFETCH_MULTIPLIER": "32"})
    assert prefetch_for("classify", settings) == 32


def test_compose_gives_each_batching_worker_a_full_batch_of_prefetch():
    import yaml

    from tests.integration.test_deployment_files import ROOT

    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    classify = services["classify-worker"]["command"]
    assert f"--prefetch-multiplier={prefetch_for('classify', load_settings(env={}))}" in classify
    detect = services["detect-worker"]
    batch = detect["environment"]["VP_DETECTOR__BATCH_SIZE"]
    assert f"--prefetch-multiplier={batch}" in detect["command"]


def test_attempts_are_read_from_the_request_kwargs():
    assert attempt_of(SimpleNamespace(kwargs={})) == 0
    assert attempt_of(SimpleNamespace(kwargs=None)) == 0
    assert attempt_of(SimpleNamespace(kwargs={"attempt": 3})) == 3
