"""Redis restarted 20 times under load, at random moments: nothing lost.

The chaos test restarts Redis once; the one image it lost in CI was taken off the detect queue by
BRPOP a moment before the restart and never recorded as unacked (kombu's window, closed by
workers/broker.py, reproduced in tests/workers/test_broker_window.py). Here redis-server (AOF on)
is stopped and started again 20 times, at random moments drawn from a seeded generator, while
images keep arriving through S3 events, the producer and both workers. Every image must end with
its result. Prints ``redis restarts: N, images N, lost N, seconds N``.
"""

from __future__ import annotations

import random
import threading
import time

import numpy as np
import pytest
import redis

from devstack.processes import DeadlineExceeded, wait_until
from devstack.servers import aws_env, free_port, redis_server
from devstack.stack import start_stack, stop_stack
from tests.integration.stack import results_under, where_are
from training.synthetic.scenes import encode, make_scene

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1800)]

BUCKET = "restarts"
RESTARTS = 20


@pytest.fixture(scope="module")
def stack(moto_server, classifier_artifact, tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("restart-logs")
    redis_dir = tmp_path_factory.mktemp("restart-redis")
    port = free_port()
    holder = {"ctx": redis_server(port, data_dir=redis_dir)}
    server = holder["ctx"].__enter__()
    extra = {"VP_BROKER__VISIBILITY_TIMEOUT_S": "40", "VP_BROKER__RESTORE_INTERVAL_S": "2",
             "VP_WORKER__RETRY_BACKOFF_MAX_S": "2", "VP_PRODUCER__OUTAGE_BACKOFF_MAX_S": "2"}
    running = start_stack((server.url, aws_env(moto_server.endpoint_url)), log_dir=log_dir,
                          classifier=classifier_artifact, flower_port=free_port(), basic_auth="r:restart-pass",
                          bucket=BUCKET, extra_env=extra)
    try:
        yield running, holder, port, redis_dir
    finally:
        stop_stack(running)
        holder["ctx"].__exit__(None, None, None)


def test_twenty_redis_restarts_under_load_lose_nothing(stack):
    running, holder, port, redis_dir = stack
    rng = random.Random(20261203)
    expected: dict[str, str] = {}
    pause = threading.Event()  # never set: its wait() paces the load and spaces the faults
    t0 = time.monotonic()
    seed = 0
    for restart in range(RESTARTS):
        for _ in range(rng.randint(2, 6)):  # a few uploads, then the restart lands among their tasks
            seed += 1
            key = f"r{restart:02d}/img-{seed}.jpg"
            data = encode(make_scene(np.random.default_rng(seed), size=(256, 192)).image, ".jpg")
            expected[key] = running.s3.put_object(Bucket=BUCKET, Key=key, Body=data)["ETag"].strip('"')
        pause.wait(rng.uniform(0.2, 2.5))  # a random moment: images queued, in flight or being written
        running.check_alive()
        holder["ctx"].__exit__(None, None, None)
        pause.wait(rng.uniform(0.0, 2.0))  # down for a random while
        holder["ctx"] = redis_server(port, data_dir=redis_dir)
        holder["ctx"].__enter__()

    def all_answered():
        running.check_alive()
        docs = results_under(running.s3, BUCKET)
        return all(k in docs and docs[k]["source"]["etag"] == etag for k, etag in expected.items())

    try:
        wait_until(all_answered, timeout=600, what=f"{len(expected)} results", interval=1.0)
    except DeadlineExceeded:
        pass  # which ones, and where they are: the assertion below
    finally:
        docs = results_under(running.s3, BUCKET)
        lost = sorted(k for k, etag in expected.items() if k not in docs or docs[k]["source"]["etag"] != etag)
        print(f"\nredis restarts: {RESTARTS}, images {len(expected)}, lost {len(lost)}, "
              f"seconds {time.monotonic() - t0:.0f}")
    assert lost == [], where_are(running, redis.Redis(port=port), lost)
