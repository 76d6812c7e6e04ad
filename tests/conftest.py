"""Shared fixtures: real servers on loopback (redis-server, moto's S3+SQS server), started per session.

Like dramatiq's conftest: a test that needs a server it cannot start skips on a laptop but fails
under CI (CI=true), where every server must be present.
"""

from __future__ import annotations

import os
import shutil
import urllib.request

import pytest

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def skip_or_fail(reason: str) -> None:
    """Skip locally, fail in CI: CI always has Redis and the S3 server."""
    if CI:
        pytest.fail(reason)
    pytest.skip(reason)

# Model fixtures (a small real classifier artifact, ...) live in their own plugin module.
pytest_plugins = ["tests.fixtures_models"]


@pytest.fixture(scope="module")
def module_tmp_path(request, tmp_path_factory):
    """A folder for a module's fixtures, removed when the module's tests are done (kept if one failed):
    module fixtures hold model files of ~90 MB each, and a whole run must fit a CI disk."""
    path = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    failed_before = request.session.testsfailed
    yield path
    if request.session.testsfailed == failed_before:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server():
    """A real redis-server on a free loopback port, for the whole session."""
    from devstack.servers import redis_server as start_redis

    try:
        ctx = start_redis()
        server = ctx.__enter__()
    except RuntimeError as exc:
        skip_or_fail(f"cannot start redis-server: {exc}")
    try:
        yield server
    finally:
        ctx.__exit__(None, None, None)


_session_moto: list = []  # the session's moto server, once a test asked for it


@pytest.fixture(scope="session")
def moto_server():
    """moto's real HTTP server (S3, SQS) in a subprocess on a free loopback port, for the session."""
    from devstack.servers import moto_server as start_moto

    try:
        ctx = start_moto()
        server = ctx.__enter__()
    except RuntimeError as exc:
        skip_or_fail(f"cannot start moto server: {exc}")
    _session_moto.append(server)
    try:
        yield server
    finally:
        _session_moto.remove(server)
        ctx.__exit__(None, None, None)


@pytest.fixture(scope="module", autouse=True)
def _moto_emptied_after_each_module():
    """The session's moto server forgets every bucket and queue when a module's tests are done: it keeps
    each object over 5 MB in a temporary file of its own (deleted, held open), and a run publishes
    dozens of ~90 MB model archives: 3.7 GB of disk by the end of a run, out of sight of ``du``. No
    fixture keeps S3 or SQS state beyond its module (set up first, this one is torn down last)."""
    yield
    for server in _session_moto:
        request = urllib.request.Request(f"{server.endpoint_url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=30) as resp:
            assert resp.status == 200, f"moto reset answered {resp.status}"


@pytest.fixture
def aws_env(moto_server, monkeypatch):
    """AWS_* variables pointing this process (and its children) at the moto server."""
    from devstack.servers import aws_env as make_env

    env = make_env(moto_server.endpoint_url)
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_SQS", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def _client(service: str, endpoint_url: str):
    import boto3

    return boto3.client(service, endpoint_url=endpoint_url, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


@pytest.fixture
def s3(moto_server):
    """A boto3 S3 client talking to the moto server over HTTP."""
    return _client("s3", moto_server.endpoint_url)


@pytest.fixture
def sqs(moto_server):
    """A boto3 SQS client talking to the moto server over HTTP."""
    return _client("sqs", moto_server.endpoint_url)


@pytest.fixture
def bucket(s3):
    """A fresh, uniquely named bucket on the moto server."""
    import uuid

    name = f"test-{uuid.uuid4().hex[:16]}"
    s3.create_bucket(Bucket=name)
    return name
