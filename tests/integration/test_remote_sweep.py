"""``vehicle-train sweep --via celery``: trials as tasks on the train queue of a real worker, answers via S3.

A real ``celery -A training.trial_worker`` worker on a real redis-server and moto's S3 server. Faults
not in the happy path: the worker's pool process is SIGKILLed in the middle of a trial (the trial is
delivered again and finishes), and one trial cannot train at all (its settings are invalid: it comes
back as an error, the others are ranked without it).
"""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path

import psutil
import pytest

from devstack.processes import start_process, stop_process, wait_until
from tests.fixtures_models import write_labelled_images
from tests.integration.stack import redis_url
from training import cli
from vehicle_core.config import load_settings

pytestmark = pytest.mark.slow

SPEC = """
search: grid
metric: val_accuracy
data: {tiny: s3://BUCKET/data}
base: {image_size: 32, batch_size: 8, head_epochs: 0, finetune_epochs: 2, finetune_layers: 0,
       imagenet_weights: none, augment: false, early_stopping_patience: 5, seed: 3}
space:
  dropout: [0.0, 0.25, 2.0]      # 2.0 is no dropout rate: that trial cannot be built
"""


def _upload_dataset(s3, bucket: str, root: Path) -> None:
    for split, n, seed in (("train", 8, 1), ("val", 4, 2), ("test", 4, 3)):
        for paths in write_labelled_images(root / split, per_class=n, seed=seed).values():
            for path in paths:
                s3.upload_file(str(path), bucket, f"data/{path.relative_to(root).as_posix()}")


def _worker_env(aws_env: dict, broker: str, cache: Path) -> dict:
    return {**os.environ, **aws_env, "VP_BROKER__URL": broker, "VP_STORAGE__CACHE_DIR": str(cache),
            "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}


def test_a_sweep_on_a_train_worker_survives_a_killed_trial_and_reports_a_failed_one(
        redis_server, aws_env, s3, bucket, tmp_path, monkeypatch):
    import redis

    broker = redis_url(redis_server)
    monkeypatch.setenv("VP_BROKER__URL", broker)
    _upload_dataset(s3, bucket, tmp_path / "data")
    s3.put_object(Bucket=bucket, Key="spec.yaml", Body=SPEC.replace("BUCKET", bucket).encode())
    out = f"s3://{bucket}/sweeps/s1"

    cache = tmp_path / "worker-cache"
    worker = start_process("train-worker", [
        sys.executable, "-m", "celery", "-A", "training.trial_worker", "worker", "-Q", "train", "-c", "1",
        "-n", "train@test", "--without-gossip", "--without-mingle", "--loglevel=INFO"],
        _worker_env(aws_env, broker, cache), tmp_path / "logs")
    try:
        from training.remote import find_workers

        settings = load_settings()
        wait_until(lambda: find_workers(settings, "train", timeout_s=1.0), timeout=120, what="the train worker")
        answer: dict = {}
        sweep = threading.Thread(target=lambda: answer.update(rc=cli.main(
            ["sweep", f"s3://{bucket}/spec.yaml", "--out", out, "--via", "celery"])))
        sweep.start()

        # While the first trial trains: its message is held in the train app's own unacked set (the
        # image workers' restore sweeps never see it), then its pool process dies.
        runs = cache / "sweep-trials"
        wait_until(lambda: list(runs.glob("*/*/run/*-epochs.csv")), timeout=300, what="a trial to train an epoch",
                   interval=0.5)
        client = redis.Redis.from_url(broker)
        assert client.hlen("unacked_train") == 1
        assert not any(b"train_trial" in held for held in client.hvals("unacked"))
        pool = psutil.Process(worker.pid).children(recursive=True)
        assert pool, worker.log_tail()
        for child in pool:
            child.kill()
        psutil.wait_procs(pool, timeout=30)

        sweep.join(timeout=900)
        assert not sweep.is_alive() and answer.get("rc") == 0, worker.log_tail(80)
    finally:
        stop_process(worker)

    def doc(key: str) -> dict:
        return json.loads(s3.get_object(Bucket=bucket, Key=f"sweeps/s1/{key}")["Body"].read())

    trials = sorted({k["Key"].split("/")[3] for k in s3.list_objects_v2(Bucket=bucket, Prefix="sweeps/s1/trials/")
                     ["Contents"]})
    assert len(trials) == 3
    answers = {}
    for trial in trials:
        keys = {o["Key"].rsplit("/", 1)[-1] for o in s3.list_objects_v2(
            Bucket=bucket, Prefix=f"sweeps/s1/trials/{trial}/")["Contents"]}
        answers[trial] = doc(f"trials/{trial}/result.json") if "result.json" in keys else doc(f"trials/{trial}/error.json")
    failed = [a for a in answers.values() if "error" in a]
    done = [a for a in answers.values() if "error" not in a]
    assert len(failed) == 1 and "rate" in failed[0]["error"].lower(), failed
    assert sorted(a["dropout"] for a in done) == [0.0, 0.25]
    assert all(a["worker"] == "train@test" and a["epochs"] == 2 and 0 <= a["val_accuracy"] <= 1 for a in done)
    # The kept run files, not the checkpoints or the resume backup
    run_keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=f"sweeps/s1/trials/{done[0]['trial']}/run/")
                ["Contents"]]
    assert any(k.endswith("artifact/model.keras") for k in run_keys) and any("/logs/" in k for k in run_keys)
    assert not any("/backup/" in k or "/checkpoints/" in k for k in run_keys)
    best = doc("best.json")
    assert best["trial"] in {a["trial"] for a in done} and best["test_images"] == 8
    table = s3.get_object(Bucket=bucket, Key="sweeps/s1/results.md")["Body"].read().decode()
    assert table.count("| ") and all(a["trial"] in table for a in done) and failed[0]["trial"] not in table
    assert s3.head_object(Bucket=bucket, Key="sweeps/s1/sweep.png")["ContentLength"] > 0


def test_without_a_train_worker_the_sweep_says_how_to_start_one(redis_server, aws_env, bucket, s3, monkeypatch,
                                                                   capsys):
    monkeypatch.setenv("VP_BROKER__URL", redis_url(redis_server))
    s3.put_object(Bucket=bucket, Key="spec.yaml", Body=SPEC.replace("BUCKET", bucket).encode())
    assert cli.main(["sweep", f"s3://{bucket}/spec.yaml", "--out", f"s3://{bucket}/s", "--via", "celery"]) == 2
    err = capsys.readouterr().err
    assert "no worker consumes queue 'train'" in err and "celery -A training.trial_worker worker -Q train" in err


def test_a_local_sweep_refuses_an_s3_out(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.replace("BUCKET", "b"))
    assert cli.main(["sweep", str(spec), "--out", "s3://b/s"]) == 2
    assert "--via celery" in capsys.readouterr().err


def test_a_train_task_never_reads_or_writes_local_paths(tmp_path):
    from training.trial_worker import run_trial
    from vehicle_core.errors import ConfigError

    settings = load_settings(env={})
    for spec, out in ((str(tmp_path / "spec.yaml"), "s3://b/s"), ("s3://b/spec.yaml", str(tmp_path))):
        with pytest.raises(ConfigError, match="s3://"):
            run_trial(spec, "t000", out, settings=settings, worker="w")
    assert list(tmp_path.iterdir()) == []
