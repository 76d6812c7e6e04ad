"""The whole stream on real servers: S3 (moto over HTTP) -> SQS -> `vehicle-producer listen` -> Redis
-> detect worker -> classify worker -> results/ in S3, each component its own process.

The classifier is the untrained test artifact (labels are meaningless), so these tests check
delivery, statuses, error codes and ETags, never labels; the demo checks labels with a trained one.
"""

from __future__ import annotations

import base64
import json
import re
import urllib.error
import urllib.request

import pytest
import redis

from devstack.processes import kill_process, start_process, stop_process, wait_until
from devstack.stack import start_stack, stop_stack, worker_argv, worker_ready
from tests.integration.stack import free_port, redis_url, results_under
from vehicle_core.config import load_settings
from workers.broker import unacked_record
from workers.messages import sender_app

pytestmark = [pytest.mark.integration, pytest.mark.slow]
AUTH = "tester:s3cret"
VISIBILITY_TIMEOUT_S = 6


def _scene(seed: int) -> bytes:
    import numpy as np

    from training.synthetic.scenes import encode, make_scene

    return encode(make_scene(np.random.default_rng(seed)).image, ".jpg")


@pytest.fixture(scope="module")
def proxy(moto_server):
    """The workers reach S3 through the fault-injecting proxy (no faults unless a test asks)."""
    from devstack.s3_proxy import s3_proxy

    with s3_proxy(moto_server.endpoint_url) as running:
        yield running


@pytest.fixture(scope="module")
def stack(redis_server, moto_server, proxy, classifier_artifact, tmp_path_factory):
    from devstack.demo import _endpoint
    from devstack.servers import aws_env

    log_dir = tmp_path_factory.mktemp("stack-logs")
    extra = {"VP_WORKER__RETRY_BACKOFF_MAX_S": "2", "VP_DETECTOR__BATCH_SIZE": "4", "VP_STORAGE__MAX_ATTEMPTS": "2",
             "AWS_ENDPOINT_URL_S3": proxy.endpoint_url}
    running = start_stack((redis_url(redis_server), aws_env(_endpoint(moto_server))), log_dir=log_dir,
                          classifier=classifier_artifact, flower_port=free_port(), basic_auth=AUTH,
                          bucket="e2e", extra_env=extra)
    yield running
    stop_stack(running)


def _upload(stack, key: str, data: bytes) -> str:
    return stack.s3.put_object(Bucket=stack.bucket, Key=key, Body=data)["ETag"].strip('"')


def _wait_for_results(stack, expected: dict[str, str | None], timeout: float = 300) -> dict[str, dict]:
    """Wait until every key in ``expected`` has a result whose source ETag is the expected one."""
    found: dict[str, dict] = {}

    def ready():
        stack.check_alive()
        found.clear()
        found.update(results_under(stack.s3, stack.bucket))
        return all(k in found and (etag is None or found[k]["source"]["etag"] == etag) for k, etag in expected.items())

    wait_until(ready, timeout=timeout, what="results", interval=0.5,
               progress=lambda: f"{sum(k in found for k in expected)}/{len(expected)} results")
    return found


def _queues_drained(stack) -> bool:
    client = redis.Redis.from_url(stack.broker_url)
    return client.llen("detect") == 0 and client.llen("classify") == 0 and client.hlen("unacked") == 0


def test_every_uploaded_image_gets_exactly_one_current_result(stack):
    # Given: 30 uploads through boto3: valid scenes (odd keys among them), corrupt files, non-images,
    # an object under results/, and one key uploaded twice with different content
    valid = {f"in/scene-{i:02d}.jpg": _scene(i) for i in range(19)}
    valid["in/with space ü ß.jpg"] = _scene(100)
    valid["in/plus+sign & 日本.jpeg"] = _scene(101)
    valid["in/nested/deep/x.png"] = _scene(102)  # JPEG bytes under .png: decoding goes by content
    corrupt = {
        "in/truncated.jpg": (_scene(103)[:400], "undecodable"),
        "in/text-pretending.jpg": (b"just some text, no pixels\n" * 10, "unsupported_format"),
        "in/empty.png": (b"", "empty"),
    }
    ignored = {"in/notes.txt": b"hello", "in/table.csv": b"a,b\n1,2\n", "results/sneaky.jpg": _scene(104)}
    etags = {key: _upload(stack, key, data) for key, data in valid.items()}
    etags.update({key: _upload(stack, key, data) for key, (data, _) in corrupt.items()})
    for key, data in ignored.items():
        _upload(stack, key, data)
    _upload(stack, "in/twice.jpg", _scene(200))
    etags["in/twice.jpg"] = _upload(stack, "in/twice.jpg", _scene(201))  # the second upload wins
    assert len(valid) + len(corrupt) + len(ignored) + 2 == 30 and len(etags) == 26

    # When: the stream settles
    results = _wait_for_results(stack, etags)
    wait_until(lambda: _queues_drained(stack), timeout=120, what="queues to drain")
    results = results_under(stack.s3, stack.bucket)

    # Then: exactly one result per image key, none for non-images or for anything under results/
    assert sorted(results) == sorted(etags)
    for key in valid:
        assert results[key]["status"] in ("ok", "no_vehicle"), results[key]
        assert results[key]["source"]["etag"] == etags[key]
    assert sum(results[k]["status"] == "ok" for k in valid) >= len(valid) * 0.7  # scenes contain vehicles
    for key, (_, code) in corrupt.items():
        assert results[key]["status"] == "error" and results[key]["error"]["code"] == code, results[key]
    # ... and the twice-uploaded key describes the second upload
    assert results["in/twice.jpg"]["source"]["etag"] == etags["in/twice.jpg"]


def _flower_get(url: str, auth: str | None) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, ConnectionError):
        return 0, b""


def test_flower_lists_both_workers_with_basic_auth_and_refuses_without(stack):
    def both_listed():
        status, body = _flower_get(f"{stack.flower_url}/api/workers?refresh=1", AUTH)
        return status == 200 and {"detect@demo", "classify@demo"} <= set(json.loads(body))

    wait_until(both_listed, timeout=90, what="Flower to list both workers", interval=1.0)
    assert _flower_get(f"{stack.flower_url}/api/workers", None)[0] == 401
    assert _flower_get(f"{stack.flower_url}/api/workers", "tester:wrong")[0] == 401
    status, body = _flower_get(f"{stack.flower_url}/api/queues/length", AUTH)
    assert status == 200 and {q["name"] for q in json.loads(body)["active_queues"]} >= {"detect", "classify"}
    # Batched classify tasks still appear one by one, succeeded, with their batch size in the result
    status, body = _flower_get(f"{stack.flower_url}/api/tasks?taskname=workers.tasks.classify&state=SUCCESS", AUTH)
    tasks = json.loads(body).values()
    assert status == 200 and tasks and all("batch_images" in (t.get("result") or "") for t in tasks)


def test_flower_pages_render_every_queue_in_chromium(stack, tmp_path):
    """What `vehicle-demo --flower-screenshots` saves: Flower's broker page, rendered in headless
    Chromium with the basic-auth credentials, lists all three routed queues."""
    from devstack.browser import chromium_binary, dump_dom
    from devstack.demo import flower_screenshot
    from tests.conftest import skip_or_fail

    if chromium_binary() is None:
        skip_or_fail("chromium is not installed (apt-get install chromium)")
    host = stack.flower_url.removeprefix("http://")
    dom = dump_dom(f"http://{AUTH}@{host}/broker")
    assert all(f">{queue}<" in dom.replace(" ", "") for queue in ("detect", "classify", "train")), dom[-3000:]
    assert ">detect<" not in dump_dom(f"http://tester:wrong@{host}/broker").replace(" ", "")  # no auth, no queues
    png = flower_screenshot(stack, AUTH, "broker", tmp_path / "flower.png", when=lambda: True)
    assert png is not None and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _detect_unacked(client) -> int:
    """Messages of the detect queue delivered to a worker and not yet acked."""
    return sum(unacked_record(v)[2] == "detect" for v in client.hvals("unacked"))


def test_tasks_of_a_sigkilled_worker_are_redelivered_to_its_replacement(stack):
    # Given: the detect worker stopped, and 6 images waiting for it
    client = redis.Redis.from_url(stack.broker_url)
    detect = next(p for p in stack.processes if p.name == "detect-worker")
    stop_process(detect)
    stack.processes.remove(detect)
    etags = {f"kill/img-{i}.jpg": _upload(stack, f"kill/img-{i}.jpg", _scene(300 + i)) for i in range(6)}
    wait_until(lambda: client.llen("detect") >= 6, timeout=60, what="6 queued detect tasks")
    # A short visibility timeout and a fast sweep, so a killed worker's tasks come back in seconds
    # (only for these workers: elsewhere a model loading for longer would be redelivered, harmlessly).
    env = {**stack.env, "VP_BROKER__VISIBILITY_TIMEOUT_S": str(VISIBILITY_TIMEOUT_S), "VP_BROKER__RESTORE_INTERVAL_S": "1"}
    app = sender_app(load_settings(env={"VP_BROKER__URL": stack.broker_url}).broker)

    # When: a worker takes tasks and is SIGKILLed while it holds them
    victim = start_process("detect-victim", worker_argv("detect", "victim@test"), env, stack.log_dir)
    try:
        wait_until(lambda: _detect_unacked(client) >= 1, timeout=120, what="the worker to hold a task")
        kill_process(victim)
    finally:
        stop_process(victim)
    held = _detect_unacked(client)
    assert held >= 1  # the messages it held are neither acked nor lost

    # Then: a replacement worker gets them after the visibility timeout and every image gets its result
    replacement = start_process("detect-worker", worker_argv("detect", "detect@demo"), env, stack.log_dir)
    stack.processes.append(replacement)
    wait_until(lambda: worker_ready(app, "detect@demo"), timeout=120, what="the replacement worker")
    results = _wait_for_results(stack, etags, timeout=240)
    assert all(results[k]["source"]["etag"] == e for k, e in etags.items())
    wait_until(lambda: _detect_unacked(client) == 0, timeout=60, what="no unacked detect task")


def test_a_deep_classify_queue_is_classified_in_batches(stack):
    # Given: the classify worker stopped while 6 images go through detection
    import re

    client = redis.Redis.from_url(stack.broker_url)
    classify = next(p for p in stack.processes if p.name == "classify-worker")
    stop_process(classify)
    stack.processes.remove(classify)
    etags = {f"batch/img-{i}.jpg": _upload(stack, f"batch/img-{i}.jpg", _scene(400 + i)) for i in range(6)}
    wait_until(lambda: client.llen("classify") >= 6, timeout=120, what="6 queued classify tasks")
    # When: a classify worker starts on the deep queue
    replacement = start_process("classify-batched", worker_argv("classify", "classify@demo"), stack.env, stack.log_dir)
    stack.processes.append(replacement)
    results = _wait_for_results(stack, etags, timeout=240)
    # Then: it prefetched enough to classify them together, and says so in its log
    assert all(results[k]["source"]["etag"] == e for k, e in etags.items())
    sizes = [int(n) for n in re.findall(r"classify batch: (\d+) images", replacement.log_path.read_text())]
    assert max(sizes) >= 2, sizes


def test_vehicle_train_crop_runs_on_the_detect_workers(stack, monkeypatch):
    # Given: 24 labelled scenes and one corrupt image in a bucket the producer does not watch
    from training import cli
    from training.dataset import index_dataset
    from training.synthetic.datasets import write_scene_dataset
    from vehicle_core.storage import ObjectStore

    for name, value in stack.env.items():
        if name.startswith("AWS_") or name == "VP_BROKER__URL":
            monkeypatch.setenv(name, value)
    stack.s3.create_bucket(Bucket="datasets")
    store = ObjectStore(load_settings().storage)
    write_scene_dataset("s3://datasets/scenes", store, n=24, seed=5)
    corrupt = "s3://datasets/scenes/train/sedan/corrupt.jpg"
    store.put(corrupt, b"\xff\xd8\xff\xe0 truncated")

    # When: `vehicle-train crop` is asked to use the detect workers
    assert cli.main(["crop", "s3://datasets/scenes", "s3://datasets/crops", "--via", "celery"]) == 0

    # Then: the detect worker cut them, every image is accounted for, the corrupt one by its error code
    report = json.loads(store.read("s3://datasets/crops/report.json"))
    assert report["executor"].startswith("celery") and "detect@demo" in report["executor"]
    assert report["written"] + len(report["skipped"]) == 25
    assert {"uri": corrupt, "skipped": "undecodable", "worker": "detect@demo"} in report["skipped"]
    assert report["written"] >= 18  # the zoo detector finds ~9 in 10 synthetic vehicles
    crops = index_dataset("s3://datasets/crops", store)
    assert len(crops.examples) == report["written"]
    assert not list(store.list("s3://datasets/crops/_parts/"))  # the workers' answers were cleaned up


def test_one_detect_batch_gives_each_image_its_own_outcome(stack, proxy):
    # Given: the detect worker stopped, and four images waiting: good, corrupt, missing, and one whose
    # S3 reads fail for a while (more than botocore's own retries absorb)
    from vehicle_core.results.contract import SourceRef
    from workers.messages import enqueue_image

    client = redis.Redis.from_url(stack.broker_url)
    detect = next(p for p in stack.processes if p.name == "detect-worker")
    stop_process(detect)
    stack.processes.remove(detect)
    app = sender_app(load_settings(env={"VP_BROKER__URL": stack.broker_url}).broker)
    good = _upload(stack, "mixed/good.jpg", _scene(500))
    corrupt = _upload(stack, "mixed/corrupt.jpg", _scene(501)[:300])
    flaky = _upload(stack, "mixed/flaky.jpg", _scene(502))
    proxy.fail_next["mixed/flaky.jpg"] = 3  # 2 attempts per call: the first fetch fails, a retry succeeds
    wait_until(lambda: client.llen("detect") >= 3, timeout=60, what="3 queued detect tasks")
    enqueue_image(app, SourceRef(stack.bucket, "mixed/missing.jpg", etag="gone"))
    # When: a detect worker with batch size 4 takes them
    replacement = start_process("detect-worker", worker_argv("detect", "detect@demo"), stack.env, stack.log_dir)
    stack.processes.append(replacement)
    results = _wait_for_results(stack, {"mixed/good.jpg": good, "mixed/corrupt.jpg": corrupt,
                                        "mixed/flaky.jpg": flaky}, timeout=240)
    # Then: each image has its own outcome, the flaky one after a retry of it alone
    assert results["mixed/good.jpg"]["status"] in ("ok", "no_vehicle")
    assert results["mixed/corrupt.jpg"]["error"]["code"] == "undecodable"
    assert results["mixed/flaky.jpg"]["status"] in ("ok", "no_vehicle")
    log = replacement.log_path.read_text()
    assert "retry 1/" in log and "mixed/flaky.jpg" in log
    sizes = [int(n) for n in re.findall(r"detect batch: (\d+) images", log)]
    assert max(sizes) >= 2, sizes
    # ... and the missing object has no result (nothing to describe), but was answered, not lost
    wait_until(lambda: client.llen("detect") == 0 and _detect_unacked(client) == 0, timeout=120,
               what="the detect queue drained")
    assert "mixed/missing.jpg" not in results_under(stack.s3, stack.bucket)


def test_a_version_published_while_images_flow_takes_over_without_a_restart(stack, classifier_artifact, monkeypatch,
                                                                            tmp_path):
    # Given: a registry with v1 current, and the classify worker serving from it (polling every second)
    from training.publish import publish
    from vehicle_core.classifier import load_artifact, save_artifact

    for name, value in stack.env.items():
        if name.startswith("AWS_"):
            monkeypatch.setenv(name, value)
    storage = load_settings().storage
    registry = f"s3://{stack.bucket}/models/classifier"
    model, manifest = load_artifact(classifier_artifact)
    v1, v2 = (save_artifact(model, {**manifest, "version": v}, tmp_path / v) for v in ("20260101-000000", "20260102-000000"))
    publish(v1, registry, storage)
    classify = next(p for p in stack.processes if p.name.startswith("classify"))  # an earlier test renames it
    stop_process(classify)
    stack.processes.remove(classify)
    env = {**stack.env, "VP_CLASSIFIER__MODEL": "null", "VP_CLASSIFIER__REGISTRY": registry,
           "VP_CLASSIFIER__POLL_INTERVAL_S": "1"}
    worker = start_process("classify-worker", worker_argv("classify", "classify@demo"), env, stack.log_dir)
    stack.processes.append(worker)
    before = {f"roll/a-{i}.jpg": _upload(stack, f"roll/a-{i}.jpg", _scene(600 + i)) for i in range(3)}
    results = _wait_for_results(stack, before, timeout=240)
    assert {results[k]["models"]["classifier"]["version"] for k in before} == {"20260101-000000"}

    # When: v2 is published (the pointer moves) while images keep arriving
    publish(v2, registry, storage)
    sent: dict[str, str] = {}

    def v2_serves() -> bool:
        key = f"roll/b-{len(sent)}.jpg"
        sent[key] = _upload(stack, key, _scene(700 + len(sent)))
        docs = _wait_for_results(stack, {key: sent[key]}, timeout=120)
        return docs[key]["models"]["classifier"]["version"] == "20260102-000000"

    wait_until(v2_serves, timeout=240, what="a result from v2", interval=0.5)
    after = {f"roll/c-{i}.jpg": _upload(stack, f"roll/c-{i}.jpg", _scene(800 + i)) for i in range(3)}
    # Then: nothing was lost, the switch happened once, and every later image was classified by v2
    results = _wait_for_results(stack, {**before, **sent, **after}, timeout=240)
    versions = [results[k]["models"]["classifier"]["version"] for k in [*before, *sent, *after]]
    assert versions == sorted(versions)  # v1 ... v1, v2 ... v2: no image went back to v1
    assert {results[k]["models"]["classifier"]["version"] for k in after} == {"20260102-000000"}
    assert worker.log_path.read_text().count("-> 20260102-000000") == 1
