"""The streaming system on loopback, as the demo, the benchmarks and the integration tests run it: each
process's command line and environment, S3 -> SQS wiring, start and stop in order.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devstack.processes import Process, start_process, stop_process, wait_until


def worker_argv(queue: str, name: str, *, concurrency: int = 1, env: dict[str, str] | None = None) -> list[str]:
    """The documented worker command line, run with this interpreter (prefetch per workers.batching, from
    the settings in ``env``: the stack's, else this process's environment)."""
    from vehicle_core.config import load_settings
    from workers.batching import prefetch_for

    settings = load_settings(env=env)
    return [sys.executable, "-m", "celery", "-A", "workers.app", "worker", "-Q", queue, "-c", str(concurrency),
            "-n", name, f"--prefetch-multiplier={prefetch_for(queue, settings)}", "--loglevel=INFO",
            "--without-gossip", "--without-mingle"]


def producer_argv(queue_url: str) -> list[str]:
    return [sys.executable, "-m", "producer.cli", "listen", "--queue-url", queue_url]


def flower_argv(port: int) -> list[str]:
    """``vehicle-flower`` as the README runs it (credentials from VP_FLOWER__BASIC_AUTH, loopback only)."""
    return [sys.executable, "-m", "workers.flower", f"--port={port}", "--demo"]


def stack_env(*, broker_url: str, aws: dict[str, str], extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment of every stack process: our settings as VP_* variables plus the AWS endpoint."""
    env = dict(os.environ)  # the user's VP_* settings reach every process (the stack's own come after)
    env.update(aws)
    env.update({"VP_BROKER__URL": broker_url, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2"})
    env.update(extra or {})
    return env


def worker_ready(app, name: str, process: Process | None = None) -> bool:
    """True once worker ``name`` answers a broadcast ping (Redis), or once its log says it is ready
    (SQS carries no broadcasts: ``celery@host ready.`` is Celery's line once it consumes)."""
    from vehicle_core.config import broker_kind

    if process is not None and broker_kind(app.conf.broker_url) == "sqs":
        return process.log_path.exists() and f"{name} ready." in process.log_path.read_text(errors="replace")
    replies = app.control.ping(destination=[name], timeout=1.0) or []
    return any(name in reply for reply in replies)


@dataclass
class Stack:
    """The running demo: servers, processes and the clients to talk to them."""

    s3: Any
    bucket: str
    queue_url: str
    broker_url: str
    flower_url: str
    env: dict[str, str] = field(default_factory=dict, repr=False)  # of every stack process
    log_dir: Path | None = None
    processes: list[Process] = field(default_factory=list)

    def check_alive(self) -> None:
        for proc in self.processes:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.log_tail()}")


def start_stack(stack_servers, *, log_dir: Path, classifier: Path, flower_port: int, basic_auth: str,
                bucket: str = "vehicle-demo", extra_env: dict[str, str] | None = None) -> Stack:
    """Wire S3 -> SQS, then start Flower, the producer and one worker per queue; wait until they are up."""
    import boto3

    from devstack.servers import wire_bucket_notifications
    from workers.messages import sender_app

    broker_url, aws = stack_servers
    session = boto3.Session(aws_access_key_id=aws.get("AWS_ACCESS_KEY_ID"),
                            aws_secret_access_key=aws.get("AWS_SECRET_ACCESS_KEY"),
                            region_name=aws.get("AWS_DEFAULT_REGION", "us-east-1"))
    s3 = session.client("s3", endpoint_url=aws["AWS_ENDPOINT_URL"])
    sqs = session.client("sqs", endpoint_url=aws["AWS_ENDPOINT_URL"])
    s3.create_bucket(Bucket=bucket)
    queue_url = wire_bucket_notifications(s3, sqs, bucket, f"{bucket}-events")
    env = stack_env(broker_url=broker_url, aws=aws, extra={
        "VP_CLASSIFIER__MODEL": str(classifier), "VP_PRODUCER__WAIT_TIME_S": "2",
        "VP_FLOWER__BASIC_AUTH": basic_auth, "VP_FLOWER__ADDRESS": "127.0.0.1",
        # The demo shows Flower's task list: task events on (off by default, workers/app.py).
        "VP_WORKER__TASK_EVENTS": "true", **(extra_env or {})})
    stack = Stack(s3=s3, bucket=bucket, queue_url=queue_url, broker_url=broker_url,
                  flower_url=f"http://127.0.0.1:{flower_port}", env=env, log_dir=log_dir)
    root = Path(__file__).resolve().parents[1]
    from vehicle_core.config import broker_kind

    sqs = broker_kind(broker_url) == "sqs"
    for name, argv in (
        ("detect-worker", worker_argv("detect", "detect@demo", env=env)),
        ("classify-worker", worker_argv("classify", "classify@demo", env=env)),
        ("producer", producer_argv(queue_url)),
        *([] if sqs else [("flower", flower_argv(flower_port))]),  # on SQS Flower has nothing to show
    ):
        stack.processes.append(start_process(name, argv, env, log_dir, cwd=root))
    app = sender_app(_broker_settings(env))
    for name, proc in (("detect@demo", stack.processes[0]), ("classify@demo", stack.processes[1])):
        wait_until(lambda n=name, p=proc: stack.check_alive() or worker_ready(app, n, p), timeout=180,
                   what=f"worker {name}")
    return stack


def stop_stack(stack: Stack) -> None:
    """Producer first (stop feeding), then workers (warm shutdown finishes their task), then Flower."""
    for proc in sorted(stack.processes, key=lambda p: ("producer", "detect", "classify", "flower").index(p.name.split("-")[0])):
        stop_process(proc)


def _broker_settings(env: dict[str, str]):
    from vehicle_core.config import load_settings

    return load_settings(env={k: v for k, v in env.items() if k.startswith("VP_BROKER__")}).broker
