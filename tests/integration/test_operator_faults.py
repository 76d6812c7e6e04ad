"""Operator faults: images flow while the operator's side of the system goes wrong, in turn.

The detector model is missing, then published; the registry pointer is malformed, then fixed; a
truncated artifact is promoted; Redis is down 120 s; S3 refuses every request for 60 s; classify and
detect messages are malformed; a 1,015-byte key and the same key in a second bucket arrive; an
out-of-memory error hits one forward pass. None of these is an image's fault, so none may end an
image with a final result, and nothing may be lost.

Real servers on loopback: redis-server (AOF on, stopped for 120 s), moto's S3+SQS server, the
workers' S3 traffic through the fault-injecting proxy, the producer, one detect and one classify
worker as the README starts them. The detector comes from S3 (``detector.model`` an ``s3://``
prefix), the classifier from a registry on S3 (a results bucket of its own holds the results).
It asserts that every image ends with exactly one correct result once the fault is gone (a scene:
``ok`` or ``no_vehicle``; a corrupt file: its own ``undecodable`` error), none wrongly final, the
dead-letter queue empty and the malformed messages in ``vp:dead``, and prints

    fault | images | results | wrongly final | lost | seconds

ending with ``operator faults: N wrongly final, N lost``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import redis

from devstack.processes import wait_until
from devstack.s3_proxy import s3_proxy
from devstack.servers import aws_env, free_port, redis_server
from devstack.stack import start_stack, stop_stack
from tests.integration.poison.sitecustomize import OOM_FILE
from training.synthetic.scenes import encode, make_scene
from vehicle_core.config import load_settings
from vehicle_core.results.contract import validate_result
from vehicle_core.storage import ZOO_DIR, ObjectStore

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(2400)]

BUCKET, SECOND, RESULTS = "ops", "ops-second", "ops-results"
REGISTRY = f"s3://{BUCKET}/models/classifier"
DETECTOR = f"s3://{BUCKET}/models/detector/tiny/"
REDIS_DOWN_S, S3_DOWN_S = 120, 60
FINAL_FOR_CORRUPT = "undecodable"


def _scene(seed: int) -> bytes:
    return encode(make_scene(np.random.default_rng(seed), size=(256, 192)).image, ".jpg")


class Ops:
    def __init__(self, stack, proxy, redis_port: int, redis_dir: Path, storage):
        self.stack, self.proxy, self.storage = stack, proxy, storage
        self.redis_port, self.redis_dir = redis_port, redis_dir
        self.redis_ctx = None
        self.expected: dict[tuple[str, str], tuple[str, bool]] = {}  # (bucket, key) -> (etag, is a scene)
        self.rows: list[tuple[str, list[tuple[str, str]], float]] = []
        self.seed = 5000

    @property
    def s3(self):
        return self.stack.s3

    def upload(self, prefix: str, n: int, *, corrupt: bool = False) -> list[tuple[str, str]]:
        keys = []
        for i in range(n):
            self.seed += 1
            key = f"{prefix}/img-{self.seed}.jpg"
            data = _scene(self.seed)
            is_scene = not (corrupt and i == n - 1)
            if not is_scene:
                data = data[: len(data) // 3]  # truncated JPEG: the image's own fault
            keys.append(self.put(BUCKET, key, data, is_scene))
        return keys

    def put(self, bucket: str, key: str, data: bytes, is_scene: bool = True) -> tuple[str, str]:
        etag = self.s3.put_object(Bucket=bucket, Key=key, Body=data)["ETag"].strip('"')
        self.expected[(bucket, key)] = (etag, is_scene)
        return bucket, key

    def documents(self) -> dict[tuple[str, str], dict]:
        """Every result document in the results bucket, by the source it names."""
        docs = {}
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=RESULTS, Prefix="results/"):
            for obj in page.get("Contents", []):
                if obj["Key"].endswith(".json"):
                    doc = json.loads(self.s3.get_object(Bucket=RESULTS, Key=obj["Key"])["Body"].read())
                    docs[(doc["source"]["bucket"], doc["source"]["key"])] = doc
        return docs

    def correct(self, ident: tuple[str, str], doc: dict | None) -> bool:
        etag, is_scene = self.expected[ident]
        if doc is None or doc["source"].get("etag") != etag:
            return False
        if is_scene:
            return doc["status"] in ("ok", "no_vehicle")
        return doc["status"] == "error" and doc["error"]["code"] == FINAL_FOR_CORRUPT

    def wait_results(self, idents: list[tuple[str, str]], timeout: float = 420) -> None:
        def ready():
            self.stack.check_alive()
            docs = self.documents()
            return all(self.correct(i, docs.get(i)) for i in idents)

        wait_until(ready, timeout=timeout, what=f"{len(idents)} correct results", interval=1.0)

    def log(self, name: str) -> str:
        proc = next(p for p in self.stack.processes if p.name == name)
        return proc.log_path.read_text(errors="replace")

    def wait_log(self, name: str, text: str, *, after: int = 0, timeout: float = 180) -> None:
        wait_until(lambda: self.stack.check_alive() or text in self.log(name)[after:], timeout=timeout,
                   what=f"{text!r} in the {name} log")

    def log_size(self, name: str) -> int:
        return len(self.log(name))

    def broker(self) -> redis.Redis:
        return redis.Redis(port=self.redis_port)

    def phase(self, fault: str, run) -> None:
        t0 = time.monotonic()
        idents = run()
        self.wait_results(idents)
        self.rows.append((fault, idents, time.monotonic() - t0))

    def pointer(self, body: dict | str) -> None:
        text = body if isinstance(body, str) else json.dumps(body)
        self.s3.put_object(Bucket=BUCKET, Key="models/classifier/current", Body=text.encode())

    def flow_until_refused(self, prefix: str, after: int) -> list[tuple[str, str]]:
        """Images one at a time until the classify worker has refused the pointer (it reads it before
        a batch, at most every poll interval), then a few more: all must be answered by the version
        in service."""
        idents: list[tuple[str, str]] = []
        deadline = time.monotonic() + 180
        while "refusing" not in self.log("classify-worker")[after:]:
            assert time.monotonic() < deadline, "the classify worker never read the bad pointer"
            idents += self.upload(prefix, 1)
            self.wait_results(idents[-1:])
        return idents + self.upload(prefix, 4)


@pytest.fixture(scope="module")
def ops(moto_server, classifier_artifact, tmp_path_factory):
    from training.publish import publish

    log_dir = tmp_path_factory.mktemp("ops-logs")
    redis_dir = tmp_path_factory.mktemp("ops-redis")
    env = aws_env(moto_server.endpoint_url)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        storage = load_settings().storage
        store = ObjectStore(storage)
        for bucket in (BUCKET, SECOND, RESULTS):
            store.client.create_bucket(Bucket=bucket)
        version = publish(classifier_artifact, REGISTRY, storage)  # the version in service
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    port = free_port()
    redis_ctx = redis_server(port, data_dir=redis_dir)
    server = redis_ctx.__enter__()
    with s3_proxy(moto_server.endpoint_url, seed=7) as proxy:
        extra = {
            "AWS_ENDPOINT_URL_S3": proxy.endpoint_url,  # the workers' S3 traffic goes through the proxy
            "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parent / "poison"),
                                                        os.environ.get("PYTHONPATH")])),
            OOM_FILE: str(log_dir / "oom-next-forward-pass"),
            "VP_DETECTOR__MODEL": DETECTOR,  # not published yet: the first phase
            "VP_CLASSIFIER__MODEL": "null",
            "VP_CLASSIFIER__REGISTRY": REGISTRY,
            "VP_CLASSIFIER__POLL_INTERVAL_S": "1",
            "VP_RESULTS__BUCKET": RESULTS,
            "VP_BROKER__VISIBILITY_TIMEOUT_S": "60",
            "VP_BROKER__RESTORE_INTERVAL_S": "2",
            "VP_WORKER__RETRY_BACKOFF_MAX_S": "5",
            "VP_WORKER__MODEL_RETRY_MAX_S": "10",
            "VP_STORAGE__MAX_ATTEMPTS": "2",
            "VP_PRODUCER__OUTAGE_BACKOFF_MAX_S": "5",
        }
        stack = start_stack((server.url, env), log_dir=log_dir, classifier=classifier_artifact,
                            flower_port=free_port(), basic_auth="ops:ops-pass", bucket=BUCKET, extra_env=extra)
        state = Ops(stack, proxy, port, redis_dir, storage)
        state.redis_ctx = redis_ctx
        state.version = version
        try:
            yield state
        finally:
            stop_stack(stack)
            state.redis_ctx.__exit__(None, None, None)


def test_operator_faults(ops):
    store = ObjectStore(client=ops.s3)

    # 1. The detector model is not there: the detect worker stops consuming, nothing is answered
    #    (least of all finally); once the model is published, every image is.
    def detector_missing():
        idents = ops.upload("m1", 6, corrupt=True)
        ops.wait_log("detect-worker", "not consuming queue detect")
        assert not any(i in ops.documents() for i in idents), "an image was answered without a detector"
        store.upload_tree(ZOO_DIR / "synthetic-maskrcnn-tiny", DETECTOR)
        return idents

    ops.phase("detector model missing, then published", detector_missing)

    # 2. The registry pointer is malformed: the version in service answers; then it is fixed.
    def pointer_malformed():
        seen = ops.log_size("classify-worker")
        good = ops.s3.get_object(Bucket=BUCKET, Key="models/classifier/current")["Body"].read().decode()
        ops.pointer({"version": "v2"})  # no artifact
        idents = ops.flow_until_refused("m2", seen)
        ops.pointer(good)
        return idents

    ops.phase("registry pointer malformed, then fixed", pointer_malformed)

    # 3. A truncated archive is promoted (its digest recorded as it is): refused, the version stays.
    def truncated_promoted():
        import hashlib

        seen = ops.log_size("classify-worker")
        good = ops.s3.get_object(Bucket=BUCKET, Key="models/classifier/current")["Body"].read().decode()
        archive = ops.s3.get_object(Bucket=BUCKET, Key=json.loads(good)["artifact"].split("/", 3)[3])["Body"].read()
        cut = archive[: len(archive) // 2]
        ops.s3.put_object(Bucket=BUCKET, Key="models/classifier/v-truncated/model.tar.gz", Body=cut)
        ops.pointer({"version": "v-truncated", "artifact": f"{REGISTRY}/v-truncated/model.tar.gz",
                     "sha256": hashlib.sha256(cut).hexdigest()})
        idents = ops.flow_until_refused("m3", seen)
        ops.pointer(good)
        return idents

    ops.phase("truncated artifact promoted", truncated_promoted)

    # 4. Redis is down for 120 s while 50 images arrive.
    def redis_down():
        ops.redis_ctx.__exit__(None, None, None)
        down_at = time.monotonic()
        idents = ops.upload("m4", 50)
        # The outage itself lasts REDIS_DOWN_S; meanwhile the processes must stay up.
        wait_until(lambda: ops.stack.check_alive() or time.monotonic() - down_at >= REDIS_DOWN_S,
                   timeout=REDIS_DOWN_S + 60, what="the end of the Redis outage", interval=1.0)
        ops.redis_ctx = redis_server(ops.redis_port, data_dir=ops.redis_dir)
        ops.redis_ctx.__enter__()
        return idents

    ops.phase(f"redis down {REDIS_DOWN_S} s", redis_down)

    # 5. S3 refuses every request of the workers for 60 s.
    def s3_down():
        ops.proxy.fault_rate = 1.0
        down_at = time.monotonic()
        idents = ops.upload("m5", 10)
        wait_until(lambda: ops.stack.check_alive() or time.monotonic() - down_at >= S3_DOWN_S,
                   timeout=S3_DOWN_S + 60, what="the end of the S3 outage", interval=1.0)
        assert not any(ops.correct(i, d) for i, d in ops.documents().items() if i in idents)
        ops.proxy.fault_rate = 0.0
        return idents

    ops.phase(f"S3 refuses everything {S3_DOWN_S} s", s3_down)

    # 6. Malformed task messages beside good images: dead-lettered, their batch-mates answered.
    def malformed_messages():
        from workers.messages import CLASSIFY_TASK, DETECT_TASK, sender_app

        app = sender_app(load_settings(env={"VP_BROKER__URL": f"redis://127.0.0.1:{ops.redis_port}/0"}).broker)
        source = {"bucket": BUCKET, "key": "m6/none.jpg", "etag": "e"}
        bad = [
            app.send_task(CLASSIFY_TASK, args=[{"source": source, "detections": [], "crops": [], "timings_ms": [1]}]),
            app.send_task(CLASSIFY_TASK, args=[{"source": source, "detections": [], "crops": [], "models": ["x"]}]),
            app.send_task(DETECT_TASK, args=[{"not": "a source"}]),
        ]
        ops.bad_ids = {r.id for r in bad}
        return ops.upload("m6", 8)

    ops.phase("malformed task messages", malformed_messages)

    # 7. A 1,015-byte key, in the bucket and in a second bucket (its event sent as S3 would).
    def long_keys_two_buckets():
        key = "m7/" + "k" * (1015 - len("m7/") - len(".jpg")) + ".jpg"
        assert len(key.encode()) == 1015
        ops.seed += 1
        data = _scene(ops.seed)
        first = ops.put(BUCKET, key, data)
        second = ops.put(SECOND, key, _scene(ops.seed + 1))
        ops.seed += 1
        _send_event(ops, SECOND, key, ops.expected[second][0])
        return [first, second]

    ops.phase("1,015-byte key in two buckets", long_keys_two_buckets)

    # 8. An out-of-memory error in one forward pass.
    def out_of_memory():
        seen = ops.log_size("detect-worker")
        Path(ops.stack.env[OOM_FILE]).touch()
        idents = ops.upload("m8", 6)
        ops.wait_log("detect-worker", "out of memory", after=seen)
        return idents

    ops.phase("out of memory in a forward pass", out_of_memory)

    # Then: every image has exactly one correct result; none wrongly final; nothing dead-lettered
    # but the malformed messages; the dead-letter queue of the events is empty.
    docs = ops.documents()
    for doc in docs.values():
        validate_result(doc)
    lost = [i for i in ops.expected if not ops.correct(i, docs.get(i))]
    wrongly_final = [i for i in ops.expected if docs.get(i, {}).get("status") == "error"
                     and ops.expected[i][1]]
    assert set(docs) == set(ops.expected), set(docs) ^ set(ops.expected)
    long_keys = [k for k in _result_keys(ops) if "/_long/" in k]
    assert len(long_keys) == 2, long_keys  # both long results took the hashed form, one per bucket
    dead = [json.loads(e) for e in ops.broker().lrange("vp:dead", 0, -1)]
    assert {e["task_id"] for e in dead} == ops.bad_ids
    _print_table(ops, docs)
    print(f"operator faults: {len(wrongly_final)} wrongly final, {len(lost)} lost")
    assert _dlq_depth(ops) == 0
    assert wrongly_final == [] and lost == []


def _send_event(ops: Ops, bucket: str, key: str, etag: str) -> None:
    from urllib.parse import quote_plus

    import boto3

    sqs = boto3.client("sqs", endpoint_url=ops.s3.meta.endpoint_url, region_name="us-east-1",
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    record = {"eventVersion": "2.1", "eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
              "s3": {"bucket": {"name": bucket}, "object": {"key": quote_plus(key), "eTag": etag}}}
    sqs.send_message(QueueUrl=ops.stack.queue_url, MessageBody=json.dumps({"Records": [record]}))


def _dlq_depth(ops: Ops) -> int:
    import boto3

    sqs = boto3.client("sqs", endpoint_url=ops.s3.meta.endpoint_url, region_name="us-east-1",
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    url = sqs.get_queue_url(QueueName=f"{BUCKET}-events-dlq")["QueueUrl"]
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages",
                                                                   "ApproximateNumberOfMessagesNotVisible"])
    return sum(int(v) for v in attrs["Attributes"].values())


def _result_keys(ops: Ops) -> list[str]:
    return [o["Key"] for page in ops.s3.get_paginator("list_objects_v2").paginate(Bucket=RESULTS)
            for o in page.get("Contents", []) if o["Key"].endswith(".json")]


def _print_table(ops: Ops, docs: dict) -> None:
    print(f"\n{'fault':<42} | images | results | wrongly final | lost | seconds")
    for fault, idents, seconds in ops.rows:
        results = sum(i in docs for i in idents)
        wrong = sum(docs.get(i, {}).get("status") == "error" and ops.expected[i][1] for i in idents)
        lost = sum(not ops.correct(i, docs.get(i)) for i in idents)
        print(f"{fault:<42} | {len(idents):>6} | {results:>7} | {wrong:>13} | {lost:>4} | {seconds:>7.1f}")
