"""Chaos: 300 images through the real stack while, in turn, processes die, Redis restarts, S3 fails,
events come twice and out of order, and a poison image kills whatever decodes it; once with the Redis
broker, once with the SQS broker (moto's SQS; Redis then keeps only the crash ledger and the dead list,
and it is that Redis which restarts; an eighth phase then has SQS itself fail every request for a while).

Real servers on loopback: redis-server (AOF on, restarted mid-test), moto over HTTP behind the
fault-injecting proxy (devstack/s3_proxy.py) for the workers' S3 traffic, the producer, one detect
and one classify worker as the README starts them. The classifier is the untrained test artifact:
this checks delivery, never labels. It asserts exactly one current, schema-valid result per image,
none lost, and a ``worker_crashed`` result for the poison image; it prints

    fault | images | results | lost | duplicates | seconds

and ends with ``chaos: N lost, N duplicated``. ``duplicates`` counts images whose result was written
more than once (redelivered work; harmless, since writes are idempotent).
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import redis

from devstack.processes import DeadlineExceeded, kill_process, start_process, stop_process, wait_until
from devstack.s3_proxy import s3_proxy
from devstack.servers import aws_env, free_port, moto_server, redis_server
from devstack.stack import start_stack, stop_stack, worker_argv
from tests.integration.poison.sitecustomize import POISON, SLOW_DETECT_FILE, SLOW_FILE
from tests.integration.stack import results_under, where_are
from training.synthetic.scenes import encode, make_scene
from vehicle_core.results.contract import validate_result
from workers.crash_ledger import marked

# Seven faults in turn, each waiting for its images' results: minutes on two cores, more on a busy machine.
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(2700)]
VISIBILITY_TIMEOUT_S = 40  # a whole worker that vanishes has its messages back after this
PER_PHASE = 45  # x5 phases, + 25 events, + 50 with the poison: 300 images
BUCKET = "chaos"


def _scene(seed: int) -> bytes:
    return encode(make_scene(np.random.default_rng(seed), size=(256, 192)).image, ".jpg")


class Chaos:
    """The stack, the Redis server (restartable), the S3 proxy, and what each phase did."""

    def __init__(self, stack, proxy, redis_port: int, redis_dir: Path, kind: str = "redis"):
        self.stack, self.proxy, self.kind = stack, proxy, kind
        self.redis_port, self.redis_dir = redis_port, redis_dir
        self.redis_ctx = None
        self.expected: dict[str, str] = {}  # key -> current ETag
        self.rows: list[tuple[str, int, float]] = []  # fault, images, seconds
        self.seed = 1000

    @property
    def broker(self) -> redis.Redis:
        return redis.Redis(port=self.redis_port)

    def upload(self, prefix: str, n: int) -> list[str]:
        keys = []
        for _ in range(n):
            self.seed += 1
            key = f"{prefix}/img-{self.seed}.jpg"
            etag = self.stack.s3.put_object(Bucket=BUCKET, Key=key, Body=_scene(self.seed))["ETag"].strip('"')
            self.expected[key] = etag
            keys.append(key)
        return keys

    def wait_results(self, keys: list[str], timeout: float = 300) -> None:
        def ready():
            self.stack.check_alive()
            docs = results_under(self.stack.s3, BUCKET)
            return all(k in docs and docs[k]["source"]["etag"] == self.expected[k] for k in keys)

        try:
            wait_until(ready, timeout=timeout, what=f"{len(keys)} results", interval=0.5)
        except DeadlineExceeded as exc:
            docs = results_under(self.stack.s3, BUCKET)
            missing = [k for k in keys if k not in docs or docs[k]["source"]["etag"] != self.expected[k]]
            raise DeadlineExceeded(f"{exc}\n{where_are(self.stack, self.broker, missing)}") from None

    def worker(self, name: str):
        return next(p for p in self.stack.processes if p.name == name)

    def pool_children(self, name: str) -> list[psutil.Process]:
        return psutil.Process(self.worker(name).pid).children(recursive=True)

    def queue_depth(self, queue: str) -> int:
        """Messages waiting in a Celery queue: its Redis list, or SQS's ApproximateNumberOfMessages."""
        if self.kind == "redis":
            return self.broker.llen(queue)
        sqs = _sqs(self)
        try:
            url = sqs.get_queue_url(QueueName=queue)["QueueUrl"]
        except sqs.exceptions.QueueDoesNotExist:
            return 0
        attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])
        return int(attributes["Attributes"]["ApproximateNumberOfMessages"])

    def in_flight(self, task: str = "") -> list[str]:
        """Crash-ledger marks now set (the tasks key them ``detect:<id>`` and ``classify:<id>``)."""
        return [mark for mark in marked(self.broker) if mark.startswith(f"{task}:" if task else "")]



@pytest.fixture(scope="module", params=["redis", "sqs"])
def chaos(request, classifier_artifact, tmp_path_factory):
    kind = request.param
    log_dir = tmp_path_factory.mktemp(f"chaos-logs-{kind}")
    redis_dir = tmp_path_factory.mktemp(f"chaos-redis-{kind}")
    port = free_port()
    redis_ctx = redis_server(port, data_dir=redis_dir)
    server = redis_ctx.__enter__()
    # A moto server of its own: the bucket, the event queue and (SQS broker) the task queues start empty.
    with moto_server() as moto, s3_proxy(moto.endpoint_url, seed=11) as proxy, \
            s3_proxy(moto.endpoint_url, seed=12) as sqs_proxy:
        poison_path = str(Path(__file__).parent / "poison")
        extra = {
            "AWS_ENDPOINT_URL_S3": proxy.endpoint_url,  # the workers' S3 traffic goes through the proxy
            "PYTHONPATH": os.pathsep.join(filter(None, [poison_path, os.environ.get("PYTHONPATH")])),
            "VP_BROKER__VISIBILITY_TIMEOUT_S": str(VISIBILITY_TIMEOUT_S),
            "VP_BROKER__RESTORE_INTERVAL_S": "2",
            "VP_WORKER__RETRY_BACKOFF_MAX_S": "2",
            "VP_STORAGE__MAX_ATTEMPTS": "3",
            SLOW_FILE: str(log_dir / "slow-classify"),  # exists only while phase 2 wants slow batches
            SLOW_DETECT_FILE: str(log_dir / "slow-detect"),  # ... and phases 1 and 3 slow detect batches
        }
        broker_url = server.url
        if kind == "sqs":  # task messages in SQS; the crash ledger and the dead list in the Redis
            broker_url = "sqs://"
            extra.update({"VP_BROKER__STATE_URL": server.url, "VP_BROKER__REGION": "us-east-1",
                          "AWS_ENDPOINT_URL_SQS": sqs_proxy.endpoint_url})  # SQS faults on demand (phase 8)
        stack = start_stack((broker_url, aws_env(moto.endpoint_url)), log_dir=log_dir,
                            classifier=classifier_artifact, flower_port=free_port(), basic_auth="chaos:chaos-pass",
                            bucket=BUCKET, extra_env=extra)
        state = Chaos(stack, proxy, port, redis_dir, kind)
        state.sqs_proxy = sqs_proxy
        state.redis_ctx = redis_ctx
        try:
            yield state
        finally:
            stop_stack(stack)
            state.redis_ctx.__exit__(None, None, None)


def _phase(chaos: Chaos, fault: str, keys_and_action) -> None:
    t0 = time.monotonic()
    keys = keys_and_action()
    chaos.wait_results(keys)
    chaos.rows.append((fault, len(keys), time.monotonic() - t0))


def test_chaos(chaos):
    # 1. The detect pool process is SIGKILLed while it works on an image: requeued at once.
    def detect_pool_killed():
        slow = Path(chaos.stack.env[SLOW_DETECT_FILE])
        slow.touch()  # detect batches take seconds: the kill below lands while one is held, however fast
        keys = chaos.upload("p1", PER_PHASE)
        wait_until(lambda: len(chaos.in_flight("detect")) >= 1, timeout=120, what="a detect task in flight")
        for child in chaos.pool_children("detect-worker"):
            child.kill()
        slow.unlink()
        return keys

    _phase(chaos, "detect pool process SIGKILL", detect_pool_killed)

    # 2. The classify pool process is SIGKILLed holding a full batch: requeued at once, not after
    #    the visibility timeout, and the worker goes on consuming (the wedge of celery-batches).
    def classify_pool_killed():
        classify = chaos.worker("classify-worker")
        stop_process(classify)
        chaos.stack.processes.remove(classify)
        slow = Path(chaos.stack.env[SLOW_FILE])
        slow.touch()  # batches now take seconds: the kill below lands while one is held
        keys = chaos.upload("p2", PER_PHASE)
        wait_until(lambda: chaos.queue_depth("classify") >= 16, timeout=180, what="16 crop sets waiting")
        env = chaos.stack.env
        fresh = start_process("classify-worker", worker_argv("classify", "classify@demo", env=env), env,
                              chaos.stack.log_dir)
        chaos.stack.processes.append(fresh)
        wait_until(lambda: len(chaos.in_flight("classify")) >= 4, timeout=180, what="a batch in a classify process")
        log = chaos.worker("classify-worker").log_path
        seen = log.stat().st_size
        for child in chaos.pool_children("classify-worker"):
            child.kill()
        # Requeued by the worker itself at once, not left for the visibility timeout to bring back
        wait_until(lambda: "requeueing them now" in log.read_text(errors="replace")[seen:],
                   timeout=VISIBILITY_TIMEOUT_S - 10, what="the killed batch requeued")
        slow.unlink()
        return keys

    _phase(chaos, "classify pool process SIGKILL (batch of 16)", classify_pool_killed)

    # 3. A whole detect worker is SIGKILLed (node lost); another takes over after the visibility timeout.
    def detect_worker_killed():
        slow = Path(chaos.stack.env[SLOW_DETECT_FILE])
        slow.touch()
        keys = chaos.upload("p3", PER_PHASE)
        wait_until(lambda: len(chaos.in_flight("detect")) >= 1, timeout=120, what="a detect task in flight")
        slow.unlink()  # the replacement works at full speed
        victim = chaos.worker("detect-worker")
        kill_process(victim)
        chaos.stack.processes.remove(victim)
        env = chaos.stack.env
        chaos.stack.processes.append(start_process("detect-worker", worker_argv("detect", "detect2@demo", env=env),
                                                   env, chaos.stack.log_dir))
        return keys

    _phase(chaos, "detect worker SIGKILL + replacement", detect_worker_killed)

    # 4. redis-server restarts (AOF on) while images flow.
    def redis_restarted():
        keys = chaos.upload("p4", PER_PHASE)
        wait_until(lambda: len(results_under(chaos.stack.s3, BUCKET, "results/p4/")) >= 5, timeout=180,
                   what="some results before the restart")
        chaos.redis_ctx.__exit__(None, None, None)
        chaos.redis_ctx = redis_server(chaos.redis_port, data_dir=chaos.redis_dir)
        chaos.redis_ctx.__enter__()
        return keys

    _phase(chaos, "redis-server restart (AOF)", redis_restarted)

    # 5. S3 answers 500/503/SlowDown to a fifth of the workers' requests.
    def s3_faults():
        chaos.proxy.fault_rate = 0.2
        keys = chaos.upload("p5", PER_PHASE)
        chaos.wait_results(keys)
        chaos.proxy.fault_rate = 0.0
        return keys

    _phase(chaos, "S3 500/503/SlowDown on 20% of requests", s3_faults)

    # 6. Events arrive twice and out of order: an object uploaded twice, the older event delivered last.
    def events_twice_out_of_order():
        sqs = _sqs(chaos)
        keys = chaos.upload("p6", 25)
        stale = {}
        for key in keys[:10]:
            stale[key] = chaos.expected[key]
            chaos.seed += 1
            chaos.expected[key] = chaos.stack.s3.put_object(Bucket=BUCKET, Key=key, Body=_scene(chaos.seed))["ETag"].strip('"')
        for key in keys:
            body = _event(key, chaos.expected[key])
            sqs.send_message(QueueUrl=chaos.stack.queue_url, MessageBody=body)  # twice
            sqs.send_message(QueueUrl=chaos.stack.queue_url, MessageBody=body)
        for key, old in stale.items():  # and the superseded upload's event, last
            sqs.send_message(QueueUrl=chaos.stack.queue_url, MessageBody=_event(key, old))
        return keys

    _phase(chaos, "events twice + out of order", events_twice_out_of_order)

    # 7. A poison image kills every process that decodes it: after worker.max_deliveries, an error result.
    def poison():
        chaos.seed += 1
        data = _scene(chaos.seed) + POISON
        chaos.expected["p7/poison.jpg"] = chaos.stack.s3.put_object(Bucket=BUCKET, Key="p7/poison.jpg",
                                                                     Body=data)["ETag"].strip('"')
        return ["p7/poison.jpg", *chaos.upload("p7", 49)]

    _phase(chaos, "poison image (kills its process)", poison)

    # 8. SQS broker only: SQS itself answers 500/503 to every request of the workers and the producer
    #    (the task queues and the event queue) while images flow, then recovers.
    def sqs_outage():
        keys = chaos.upload("p8", 10)
        wait_until(lambda: len(results_under(chaos.stack.s3, BUCKET, "results/p8/")) >= 2, timeout=180,
                   what="some results before the outage")
        chaos.sqs_proxy.fault_rate = 1.0
        keys += chaos.upload("p8", 15)
        wait_until(lambda: sum(chaos.sqs_proxy.faults.values()) >= 60, timeout=180, what="60 SQS requests failed")
        chaos.sqs_proxy.fault_rate = 0.0
        return keys

    if chaos.kind == "sqs":
        _phase(chaos, "SQS 500/503 on every request, then back", sqs_outage)

    # Then: exactly one current, valid result per image; the poison one says worker_crashed
    docs = results_under(chaos.stack.s3, BUCKET)
    lost = [k for k, etag in chaos.expected.items() if k not in docs or docs[k]["source"]["etag"] != etag]
    for doc in docs.values():
        validate_result(doc)
    assert docs["p7/poison.jpg"]["status"] == "error"
    assert docs["p7/poison.jpg"]["error"]["code"] == "worker_crashed"
    assert set(docs) == set(chaos.expected)
    writes = _result_writes(chaos.stack.log_dir)
    duplicated = {k for k, n in writes.items() if n > 1}
    _print_table(chaos, writes, lost)
    print(f"chaos ({chaos.kind} broker): {len(lost)} lost, {len(duplicated)} duplicated")
    assert lost == []
    assert len(chaos.expected) == (300 if chaos.kind == "redis" else 325)


def _sqs(chaos):
    import boto3

    return boto3.client("sqs", endpoint_url=chaos.stack.s3.meta.endpoint_url, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def _event(key: str, etag: str) -> str:
    from urllib.parse import quote_plus

    record = {"eventVersion": "2.1", "eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
              "s3": {"bucket": {"name": BUCKET}, "object": {"key": quote_plus(key), "eTag": etag}}}
    return json.dumps({"Records": [record]})


def _result_writes(log_dir: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for log in log_dir.glob("*.log"):
        for key in re.findall(rf"wrote s3://{BUCKET}/results/(\S+)\.json", log.read_text(errors="replace")):
            counts[key] = counts.get(key, 0) + 1
    return counts


def _print_table(chaos: Chaos, writes: dict[str, int], lost: list[str]) -> None:
    prefixes = {"detect pool": "p1/", "classify pool": "p2/", "detect worker": "p3/", "redis": "p4/", "S3": "p5/",
                "events": "p6/", "poison": "p7/", "SQS": "p8/"}
    print(f"\n{chaos.kind + ' broker: fault':<46} | images | results | lost | duplicates | seconds")
    for fault, images, seconds in chaos.rows:
        prefix = next(p for name, p in prefixes.items() if fault.startswith(name))
        keys = [k for k in chaos.expected if k.startswith(prefix)]
        lost_here = sum(k in lost for k in keys)
        dups = sum(writes.get(k, 0) > 1 for k in keys)
        print(f"{fault:<46} | {images:>6} | {images - lost_here:>7} | {lost_here:>4} | {dups:>10} | {seconds:>7.1f}")
