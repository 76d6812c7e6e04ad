"""vehicle-flower (workers/flower.py): credentials from settings or a file, never the command line;
the demo's password refused outside the demo; loopback unless told."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import pytest

from vehicle_core.config import load_settings
from vehicle_core.errors import ConfigError
from workers.flower import DEMO_CREDENTIALS, credentials, flower_command

FLOWER = load_settings(env={}).flower


def test_flower_binds_loopback_and_keeps_credentials_off_the_command_line():
    flower = replace(FLOWER, basic_auth="ops:long-secret")
    command = flower_command(flower)
    assert "--address=127.0.0.1" in command
    assert not any("long-secret" in part for part in command)
    assert credentials(flower) == "ops:long-secret"


def test_a_credentials_file_wins_over_the_setting(tmp_path):
    secret = tmp_path / "flower-auth"
    secret.write_text("ops:from-file\n")
    assert credentials(replace(FLOWER, basic_auth="ops:from-env", basic_auth_file=str(secret))) == "ops:from-file"


@pytest.mark.parametrize("value", [None, "", "nopassword", "user:", ":pass", "a:b,c:d", DEMO_CREDENTIALS])
def test_missing_malformed_or_demo_credentials_are_refused(value):
    with pytest.raises(ConfigError):
        credentials(replace(FLOWER, basic_auth=value))


def test_the_demo_may_use_its_published_password():
    assert credentials(replace(FLOWER, basic_auth=None), demo=True) == DEMO_CREDENTIALS


def test_vehicle_flower_without_credentials_says_what_to_set():
    env = {"PATH": "/usr/bin:/bin", "VP_FLOWER__BASIC_AUTH": DEMO_CREDENTIALS}
    out = subprocess.run([sys.executable, "-m", "workers.flower"], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 2 and "demo's published password" in out.stderr and len(out.stderr.splitlines()) == 1


def test_vehicle_flower_on_an_sqs_broker_says_it_would_show_nothing_and_what_to_watch():
    env = {"PATH": "/usr/bin:/bin", "VP_FLOWER__BASIC_AUTH": "ops:s3cret-pass", "VP_BROKER__URL": "sqs://"}
    out = subprocess.run([sys.executable, "-m", "workers.flower"], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 2 and "SQS broker" in out.stderr and "vp_queue_depth" in out.stderr
    assert len(out.stderr.splitlines()) == 1


def test_flower_lists_both_queues_whichever_workers_it_has_inspected():
    """Flower lists the queues of inspected workers only (else the default queue): `detect` went
    missing while only the classify worker was known. workers.flower_server adds every routed queue."""
    from types import SimpleNamespace

    from flower.views import BaseHandler

    from workers.app import app
    from workers.flower_server import list_queues_always, project_queues

    assert project_queues(app.conf) == {"detect", "classify"}  # the routes of workers/ (train: training's)
    queues = project_queues(app.conf, app.vehicle_settings.broker)
    assert queues == {"detect", "classify", "train"}
    only_classify = {"classify@h": {"active_queues": [{"name": "classify"}]}}
    handler = SimpleNamespace(application=SimpleNamespace(workers=only_classify), capp=app)
    assert BaseHandler.get_active_queue_names(handler) == ["classify"]  # Flower's own answer: the bug
    list_queues_always(queues)
    assert BaseHandler.get_active_queue_names(handler) == ["classify", "detect", "train"]
    handler.application.workers = {}
    assert BaseHandler.get_active_queue_names(handler) == ["classify", "detect", "train"]
    assert flower_command(FLOWER)[1:3] == ["-m", "workers.flower_server"]


def test_without_task_events_flower_is_told_not_to_switch_them_on_and_parses_that():
    """worker.task_events false (the default): Flower would broadcast enable_events every few seconds
    and turn the workers' task events back on; vehicle-flower passes --enable_events=False."""
    from flower.options import options

    off = flower_command(FLOWER, task_events=False)
    assert "--enable_events=False" in off and "--enable_events=False" not in flower_command(FLOWER)
    before = options.enable_events
    try:
        options.parse_command_line(["flower", "--enable_events=False"], final=False)
        assert options.enable_events is False
    finally:
        options.enable_events = before


def test_task_events_follow_the_setting_and_are_off_by_default():
    from vehicle_core.config import load_settings
    from workers.app import celery_config

    default = celery_config(load_settings(env={}))
    assert default["worker_send_task_events"] is False and default["task_send_sent_event"] is False
    on = celery_config(load_settings(env={"VP_WORKER__TASK_EVENTS": "true"}))
    assert on["worker_send_task_events"] is True and on["task_send_sent_event"] is True
