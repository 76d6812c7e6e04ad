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


def test_flower_lists_both_queues_whichever_workers_it_has_inspected():
    """Flower lists the queues of inspected workers only (else the default queue): `detect` went
    missing while only the classify worker was known. workers.flower_server adds every routed queue."""
    from types import SimpleNamespace

    from flower.views import BaseHandler

    from workers.app import app
    from workers.flower_server import list_queues_always, project_queues

    assert project_queues(app.conf) == {"detect", "classify", "train"}
    only_classify = {"classify@h": {"active_queues": [{"name": "classify"}]}}
    handler = SimpleNamespace(application=SimpleNamespace(workers=only_classify), capp=app)
    assert BaseHandler.get_active_queue_names(handler) == ["classify"]  # Flower's own answer: the bug
    list_queues_always(project_queues(app.conf))
    assert BaseHandler.get_active_queue_names(handler) == ["classify", "detect", "train"]
    handler.application.workers = {}
    assert BaseHandler.get_active_queue_names(handler) == ["classify", "detect", "train"]
    assert flower_command(FLOWER)[1:3] == ["-m", "workers.flower_server"]
