"""Doors: Redis with a password end to end, and secrets never printed (settings output, logs)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import redis

from devstack.servers import redis_server
from tests.integration.stack import queued_tasks
from vehicle_core.config import load_settings, mask_secret
from vehicle_core.results.contract import SourceRef
from workers.crash_ledger import CrashLedger
from workers.messages import DETECT_TASK, enqueue_image, sender_app

pytestmark = pytest.mark.integration
PASSWORD = "correct-horse-battery"


@pytest.fixture(scope="module")
def locked_redis():
    with redis_server(password=PASSWORD) as server:
        yield server


def test_the_producer_enqueues_into_a_redis_that_demands_a_password(locked_redis):
    settings = load_settings(env={"VP_BROKER__URL": locked_redis.url, "VP_BROKER__DETECT_QUEUE": "locked-detect"})
    enqueue_image(sender_app(settings.broker), SourceRef("cams", "a.jpg", etag="e"))
    client = redis.Redis.from_url(locked_redis.url)
    assert [name for name, _, _ in queued_tasks(client, "locked-detect")] == [DETECT_TASK]
    # The workers' crash ledger talks to the same server with the same URL
    ledger = CrashLedger(client, max_deliveries=3, ttl_s=60)
    assert ledger.crashes(["locked-1"]) == {"locked-1": 0}


def test_without_the_password_redis_refuses(locked_redis):
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(port=locked_redis.port).ping()


def test_secrets_are_masked_in_the_settings_output(locked_redis):
    env = {"PATH": "/usr/bin:/bin", "VP_BROKER__URL": locked_redis.url, "VP_FLOWER__BASIC_AUTH": f"ops:{PASSWORD}"}
    out = subprocess.run([sys.executable, "-m", "vehicle_core.cli.classify", "--settings"], capture_output=True, text=True,
                         env=env, timeout=120, check=True)
    assert PASSWORD not in out.stdout + out.stderr
    assert f"broker.url = 'redis://:***@127.0.0.1:{locked_redis.port}/0'" in out.stdout
    assert "flower.basic_auth = 'ops:***'" in out.stdout


@pytest.mark.parametrize(("value", "masked"), [
    ("redis://:pw@host:6379/0", "redis://:***@host:6379/0"),
    ("rediss://user:pw@host:6380/1", "rediss://user:***@host:6380/1"),
    ("redis://host:6379/0", "redis://host:6379/0"),
    ("admin:pw", "admin:***"),
])
def test_mask_secret(value, masked):
    assert mask_secret(value) == masked


def test_crop_via_celery_without_workers_does_not_print_the_broker_password(locked_redis, tmp_path):
    # Given: a broker URL with a password and no detect worker on it
    env = {"PATH": "/usr/bin:/bin", "VP_BROKER__URL": locked_redis.url, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    # When: --via celery finds no worker
    out = subprocess.run([sys.executable, "-m", "training.cli", "crop", "s3://src/ds", "s3://dst/ds", "--via", "celery"],
                         capture_output=True, text=True, env=env, timeout=120)
    # Then: one line naming the queue and the masked URL, never the password
    assert out.returncode != 0
    assert PASSWORD not in out.stdout + out.stderr
    assert f"redis://:***@127.0.0.1:{locked_redis.port}/0" in out.stderr


def test_log_lines_and_error_lines_mask_urls_with_passwords(capsys):
    import logging

    from vehicle_core.cli.errors import report
    from vehicle_core.config import mask_urls
    from vehicle_core.errors import ConfigError
    from vehicle_core.logs import JsonFormatter, TextFormatter

    text = f"Error connecting to redis://user:{PASSWORD}@host:6379/0 (rediss://:{PASSWORD}@h2/1; redis://h3/0)"
    assert mask_urls(text) == "Error connecting to redis://user:***@host:6379/0 (rediss://:***@h2/1; redis://h3/0)"
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "broker down: %s", (text,), None)
    for formatter in (TextFormatter(), JsonFormatter()):
        line = formatter.format(record)
        assert PASSWORD not in line and "redis://user:***@host:6379/0" in line
    assert report("vehicle-x", ConfigError(text)) == 2
    assert PASSWORD not in capsys.readouterr().err
