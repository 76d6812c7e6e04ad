"""workers/metrics.py: the observe_* API, and one /metrics per node in multiprocess mode (real
redis-server for the queue depths, real forked processes, real HTTP)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import urllib.request

import pytest
import redis
from prometheus_client import REGISTRY

from tests.integration.stack import free_port
from vehicle_core.results.contract import ImageResult, ModelInfo, SourceRef
from workers import metrics

MODELS = {"detector": ModelInfo("maskrcnn", "d1"), "classifier": ModelInfo("resnet50", "v7")}


def _value(metric: str, /, **labels: str) -> float:
    return REGISTRY.get_sample_value(metric, labels) or 0.0


def test_images_and_crops_are_separate_counters():
    before = _value("vp_images_total", stage="classify"), _value("vp_crops_total", stage="classify")
    metrics.observe_batch("classify", images=3, crops=11, seconds=0.2)
    assert _value("vp_images_total", stage="classify") == before[0] + 3
    assert _value("vp_crops_total", stage="classify") == before[1] + 11
    assert _value("vp_batch_crops_bucket", stage="classify", le="16.0") >= 1


def test_results_carry_status_error_code_and_model_versions_and_upload_latency():
    labels = {"status": "error", "error_code": "decode_failed", "detector": "maskrcnn", "classifier": "resnet50",
              "classifier_version": "v7"}
    before = _value("vp_results_total", **labels)
    count = _value("vp_upload_to_result_seconds_count", classifier_version="v7")
    source = SourceRef(bucket="b", key="k.jpg", event_time="2026-11-26T08:00:00.000Z")
    result = ImageResult(source=source, status="error", error={"code": "decode_failed", "message": "x"},
                         models=MODELS, processed_at="2026-11-26T08:00:04.500Z")
    metrics.observe_result(result)
    assert _value("vp_results_total", **labels) == before + 1
    assert _value("vp_upload_to_result_seconds_count", classifier_version="v7") == count + 1
    assert _value("vp_upload_to_result_seconds_bucket", classifier_version="v7", le="5.0") >= 1


def test_backfilled_images_have_no_upload_time_and_no_latency_sample():
    assert metrics.observe_latency(SourceRef(bucket="b", key="k.jpg"), "2026-11-26T08:00:04Z") is None
    assert metrics.observe_latency(SourceRef(bucket="b", key="k.jpg", event_time="2026-11-26T08:00:00Z"),
                                   "2026-11-26T08:00:04Z") == pytest.approx(4.0)


def test_a_new_model_version_replaces_the_old_one_in_model_info():
    metrics.observe_model("classifier", ModelInfo("resnet50", "v1"))
    metrics.observe_model("classifier", ModelInfo("resnet50", "v2"))
    assert _value("vp_model_info", role="classifier", name="resnet50", version="v1") == 0
    assert _value("vp_model_info", role="classifier", name="resnet50", version="v2") == 1


NODE = textwrap.dedent('''
    import os, sys
    from workers import metrics
    from vehicle_core.results.contract import ImageResult, ModelInfo, SourceRef
    metrics.clear_multiprocess_dir()
    models = {"detector": ModelInfo("maskrcnn", "d1"), "classifier": ModelInfo("resnet50", "v7")}
    children = []
    for i in range(2):  # two pool processes, as a prefork pool forks them
        pid = os.fork()
        if pid == 0:
            metrics.observe_batch("classify", images=2, crops=5, seconds=0.1)
            metrics.observe_result(ImageResult(source=SourceRef(bucket="b", key=f"{i}.jpg",
                event_time="2026-11-26T08:00:00Z"), status="ok", models=models,
                processed_at="2026-11-26T08:00:03Z"))
            os._exit(0)
        children.append(pid)
    for pid in children:
        os.waitpid(pid, 0)
    metrics.serve_node(int(sys.argv[1]), sys.argv[2], ["detect", "classify"], addr="127.0.0.1")
    print("ready", flush=True)
    sys.stdin.read()  # serve until the test closes stdin
''')


def test_one_node_endpoint_sums_every_pool_process_and_reports_queue_depths(redis_server, tmp_path):
    client = redis.Redis.from_url(redis_server.url)
    client.delete("detect", "classify")
    client.lpush("detect", *[f"m{i}" for i in range(4)])
    client.lpush("classify", "m")
    port = free_port()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom"), "PATH": "/usr/bin:/bin"}
    node = subprocess.Popen([sys.executable, "-c", NODE, str(port), redis_server.url], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert node.stdout.readline().strip() == "ready"
        # "ready" comes after the server is listening: one request, no waiting
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    finally:
        node.stdin.close()
        node.wait(timeout=30)
    lines = set(text.splitlines())
    print("\n".join(sorted(line for line in lines if line.startswith(("vp_images", "vp_crops", "vp_queue",
                                                                         "vp_results", "vp_upload_to_result_seconds_count")))))
    assert 'vp_images_total{stage="classify"} 4.0' in lines  # 2 + 2 from two processes
    assert 'vp_crops_total{stage="classify"} 10.0' in lines
    assert 'vp_queue_depth{queue="detect"} 4.0' in lines and 'vp_queue_depth{queue="classify"} 1.0' in lines
    assert ('vp_results_total{classifier="resnet50",classifier_version="v7",detector="maskrcnn",error_code="",'
            'status="ok"} 2.0') in lines
    assert 'vp_upload_to_result_seconds_count{classifier_version="v7"} 2.0' in lines


def test_every_result_written_to_s3_is_counted(aws_env, bucket):
    from vehicle_core.config import load_settings
    from vehicle_core.storage import ObjectStore
    from workers.result_writer import WRITTEN, write_if_current

    settings = load_settings(env={})
    store = ObjectStore(settings.storage)
    store.put(f"s3://{bucket}/cam/a.jpg", b"jpeg", content_type="image/jpeg")
    etag = store.head(f"s3://{bucket}/cam/a.jpg").etag
    labels = {"status": "no_vehicle", "error_code": "", "detector": "maskrcnn", "classifier": "resnet50",
              "classifier_version": "v7"}
    before = _value("vp_results_total", **labels)
    result = ImageResult(source=SourceRef(bucket=bucket, key="cam/a.jpg", etag=etag),
                         status="no_vehicle", models=MODELS)
    assert write_if_current(store, result, settings.results) == WRITTEN
    assert _value("vp_results_total", **labels) == before + 1


@pytest.mark.integration
def test_a_celery_worker_node_serves_one_endpoint_from_its_main_process(redis_server, tmp_path):
    """The real worker command line, two pool processes, multiprocess mode: the worker_init hook in
    workers.metrics serves the node's /metrics (queue depths included) from the main process, and
    logs.format=json reaches Celery's own handlers."""
    import json as _json

    from devstack.processes import start_process, stop_process, wait_until
    from devstack.stack import stack_env, worker_argv

    client = redis.Redis.from_url(redis_server.url)
    client.delete("classify-node-test")
    client.lpush("classify-node-test", *["m"] * 3)  # not a queue this worker consumes: it only counts
    port = free_port()
    env = stack_env(broker_url=redis_server.url, aws={}, extra={
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom"), "VP_WORKER__METRICS_PORT": str(port),
        "VP_BROKER__CLASSIFY_QUEUE": "classify-node-test", "VP_LOGS__FORMAT": "json"})
    worker = start_process("detect-node", worker_argv("detect-node-test", "node@test", concurrency=2), env,
                           tmp_path / "logs")

    def scrape() -> str | None:
        if not worker.alive():
            raise AssertionError(f"worker exited:\n{worker.log_tail()}")
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        except OSError:
            return None

    try:
        text = wait_until(scrape, timeout=120, what="the worker node's /metrics")
        assert 'vp_queue_depth{queue="classify-node-test"} 3.0' in text.splitlines()
        json_lines = wait_until(lambda: [line for line in worker.log_tail(200).splitlines() if line.startswith("{")],
                                timeout=60, what="a JSON log line from the worker")
        assert all("level" in _json.loads(line) for line in json_lines)
    finally:
        stop_process(worker)
