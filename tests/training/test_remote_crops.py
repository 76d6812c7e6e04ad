"""`vehicle-train crop` chooses where to run: the detect workers when they answer, locally otherwise.

(The run on a real detect worker is in tests/integration/test_end_to_end.py.)"""

from __future__ import annotations

import json

import pytest

from tests.fixtures_models import write_labelled_images
from tests.integration.stack import free_port
from training import cli
from training.remote_crops import CeleryChunks, find_detect_workers
from vehicle_core.config import load_settings


def test_no_broker_means_no_detect_workers():
    settings = load_settings(env={"VP_BROKER__URL": f"redis://127.0.0.1:{free_port()}/0"})
    assert find_detect_workers(settings, timeout_s=0.5) == []


def test_a_broker_without_detect_workers_answers_none(redis_server):
    from tests.integration.stack import redis_url

    settings = load_settings(env={"VP_BROKER__URL": redis_url(redis_server)})
    assert find_detect_workers(settings, timeout_s=0.5) == []


def test_auto_crops_local_folders_in_this_process(tmp_path, capsys):
    files = write_labelled_images(tmp_path / "src" / "train", per_class=1, size=40, seed=3)
    records = [{"uri": str(p), "objects": [{"box": [4.0, 4.0, 36.0, 30.0], "detector_class": "car"}]}
               for paths in files.values() for p in paths]
    (tmp_path / "src" / "annotations.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    assert cli.main(["crop", str(tmp_path / "src"), str(tmp_path / "dst"), "--ground-truth"]) == 0
    report = json.loads((tmp_path / "dst" / "report.json").read_text())
    assert report["executor"].startswith("local") and report["written"] == len(records)


def test_celery_refuses_local_folders(tmp_path, capsys):
    assert cli.main(["crop", str(tmp_path / "src"), str(tmp_path / "dst"), "--via", "celery"]) == 2
    assert "s3://" in capsys.readouterr().err


def test_celery_with_no_worker_says_so(monkeypatch, capsys):
    monkeypatch.setenv("VP_BROKER__URL", f"redis://127.0.0.1:{free_port()}/0")
    assert cli.main(["crop", "s3://b/src", "s3://b/dst", "--via", "celery"]) == 2
    assert "no worker consumes queue 'detect'" in capsys.readouterr().err


def test_chunks_go_to_s3_destinations_only():
    chunks = CeleryChunks(load_settings(env={}), ["detect@x"])
    with pytest.raises(ValueError, match="s3://"):
        chunks(None, [([{"uri": "a.jpg", "label": "car", "split": "train"}], "/tmp/out", {}, None)])


def test_a_worker_never_reads_or_writes_local_paths_named_by_a_task(tmp_path):
    from vehicle_core.errors import ConfigError
    from workers.dataset_crops import run_chunk

    settings = load_settings(env={})
    examples = [{"uri": "/etc/passwd", "label": "car", "split": "train"}]
    for dst, part in ((str(tmp_path), "s3://b/p.json"), ("s3://b/d", str(tmp_path / "p.json"))):
        with pytest.raises(ConfigError, match="s3://"):
            run_chunk([], dst, None, part, settings=settings, stage=None, worker="w")
    with pytest.raises(ConfigError, match="/etc/passwd"):
        run_chunk(examples, "s3://b/d", None, "s3://b/p.json", settings=settings, stage=None, worker="w")
    assert list(tmp_path.iterdir()) == []
