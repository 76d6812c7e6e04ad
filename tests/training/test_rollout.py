"""Roll-out without restarts (moto over HTTP): `vehicle-train models list|promote|rollback`, and a
classify stage that swaps to a newly promoted version between batches, exactly once."""

from __future__ import annotations

import json

import numpy as np
import pytest

from training.cli import main
from training.publish import publish
from vehicle_core.classifier import load_artifact, load_classifier, save_artifact
from vehicle_core.config import load_settings
from vehicle_core.crop import encode_crop
from vehicle_core.messages import CropSet
from vehicle_core.pipeline import ClassifyStage
from vehicle_core.registry import RegistryWatcher
from vehicle_core.results.contract import Detection, SourceRef

V1, V2 = "20260101-000000", "20260102-000000"


@pytest.fixture
def settings(aws_env, bucket, tmp_path):
    return load_settings(env={}).replace(
        storage={"cache_dir": str(tmp_path / "cache")},
        classifier={"registry": f"s3://{bucket}/models/classifier", "top_k": 2, "poll_interval_s": 10},
    )


@pytest.fixture
def versions(classifier_artifact, tmp_path):
    model, manifest = load_artifact(classifier_artifact)
    return {v: save_artifact(model, {**manifest, "version": v}, tmp_path / v) for v in (V1, V2)}


def _models(capsys, registry: str, *args: str) -> tuple[int, dict | str]:
    code = main(["models", *args, "--registry", registry])
    out, err = capsys.readouterr()
    return code, json.loads(out) if code == 0 else err


def test_models_list_promote_and_rollback(settings, versions, capsys):
    registry = settings.classifier.registry
    publish(versions[V1], registry, settings.storage)
    publish(versions[V2], registry, settings.storage)
    code, listed = _models(capsys, registry, "list")
    assert code == 0 and listed["versions"] == [V1, V2] and listed["current"] == V2 and listed["history"] == [V1]
    # rollback: back to the version current before
    assert _models(capsys, registry, "rollback")[1]["current"] == V1
    assert load_classifier(settings.classifier, settings.storage).info.version == V1
    # nothing older to go back to: a one-line refusal, status 2
    code, err = _models(capsys, registry, "rollback")
    assert code == 2 and "no earlier version" in err
    # promote a version by name; an unpublished one is refused
    code, promoted = _models(capsys, registry, "promote", V2)
    assert code == 0 and promoted["current"] == V2 and promoted["history"] == [V1]
    assert _models(capsys, registry, "promote", "19990101-000000")[0] == 2


def test_seed_registry_publishes_only_into_an_empty_registry(settings, versions, capsys):
    registry = settings.classifier.registry
    assert main(["seed-registry", "--artifact", str(versions[V1]), "--registry", registry]) == 0
    assert json.loads(capsys.readouterr().out)["current"] == V1
    assert main(["seed-registry", "--artifact", str(versions[V2]), "--registry", registry]) == 0
    seeded = json.loads(capsys.readouterr().out)
    assert seeded["published"] is None and seeded["current"] == V1 and seeded["versions"] == [V1]


def _crop_set(key: str) -> CropSet:
    pixels = np.full((40, 40, 3), 128, np.uint8)
    return CropSet(source=SourceRef(bucket="b", key=key), detections=[Detection((0, 0, 40, 40), 0.9, "car")],
                   crops=[encode_crop(pixels, load_settings(env={}).crop)], image_size=(40, 40))


class FakeClock:
    """A clock the test moves: the watcher's interval is checked without waiting for it."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_watcher_swaps_to_a_promoted_version_once_between_batches(settings, versions, caplog):
    registry, storage = settings.classifier.registry, settings.storage
    publish(versions[V1], registry, storage)
    clock = FakeClock()
    first = load_classifier(settings.classifier, storage)
    watcher = RegistryWatcher(registry, storage, 10, classifier=settings.classifier, version=first.info.version,
                              clock=clock)
    stage = ClassifyStage(classifier=first, watcher=watcher)
    (before,) = stage.run([_crop_set("before.jpg")])
    # When v2 is published while the worker runs
    publish(versions[V2], registry, storage)
    clock.now = 5  # within the interval: the pointer is not even read
    assert watcher.maybe_reload() is None
    clock.now = 11
    with caplog.at_level("INFO", logger="vehicle_core.registry"):
        (after,) = stage.run([_crop_set("after.jpg")])
    # Then the next batch is classified by v2, and the switch happened exactly once
    assert before.models["classifier"].version == V1
    assert after.models["classifier"].version == V2 and len(after.vehicles) == 1
    assert any(f"version {V1} -> {V2}" in r.getMessage() for r in caplog.records)
    for t in (22, 33):
        clock.now = t
        assert watcher.maybe_reload() is None
    assert stage.classifier.info.version == V2


def test_watcher_keeps_serving_when_the_pointer_names_a_missing_version(settings):
    from vehicle_core.storage import ObjectStore

    registry, storage = settings.classifier.registry, settings.storage

    ObjectStore(storage).put(f"{registry}/current", json.dumps(
        {"version": "gone", "artifact": f"{registry}/gone/model.tar.gz"}).encode())
    clock = FakeClock()
    watcher = RegistryWatcher(registry, storage, 10, classifier=settings.classifier, version=V1, clock=clock)
    clock.now = 11
    assert watcher.maybe_reload() is None and watcher.version == V1


def test_from_settings_follows_only_a_registry_with_polling_on(settings):
    assert RegistryWatcher.from_settings(settings.classifier, settings.storage) is not None
    off = settings.replace(classifier={"poll_interval_s": 0})
    assert RegistryWatcher.from_settings(off.classifier, off.storage) is None
    pinned = settings.replace(classifier={"model": "/some/artifact"})
    assert RegistryWatcher.from_settings(pinned.classifier, pinned.storage) is None
