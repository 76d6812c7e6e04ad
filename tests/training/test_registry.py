"""Publishing to the S3 model registry decides what load_classifier serves (moto on loopback)."""

from __future__ import annotations

import pytest

from training.publish import publish, set_current
from vehicle_core.classifier import load_artifact, load_classifier, save_artifact
from vehicle_core.config import load_settings
from vehicle_core.errors import ModelLoadError
from vehicle_core.registry import current_version, list_versions


@pytest.fixture
def settings(aws_env, bucket, tmp_path):
    return load_settings(env={}).replace(
        storage={"cache_dir": str(tmp_path / "cache")},
        classifier={"registry": f"s3://{bucket}/models/classifier", "top_k": 2},
    )


def _with_version(artifact, version, out):
    model, manifest = load_artifact(artifact)
    return save_artifact(model, {**manifest, "version": version}, out)


def test_published_version_is_what_load_classifier_serves(settings, classifier_artifact, tmp_path):
    registry = settings.classifier.registry
    # Given two published versions, the second made current
    v1 = _with_version(classifier_artifact, "20260101-000000", tmp_path / "v1")
    v2 = _with_version(classifier_artifact, "20260102-000000", tmp_path / "v2")
    uri = publish(v1, registry, settings.storage)
    publish(v2, registry, settings.storage)
    assert uri == f"{registry}/20260101-000000/model.tar.gz"
    assert list_versions(registry, settings.storage) == ["20260101-000000", "20260102-000000"]
    # When the classifier is loaded through the registry pointer
    clf = load_classifier(settings.classifier, settings.storage)
    # Then it is the current version, and results would carry that version
    assert clf.info.version == "20260102-000000"
    assert current_version(registry, settings.storage)["version"] == "20260102-000000"
    # And rolling the pointer back changes what is served
    set_current(registry, "20260101-000000", settings.storage)
    assert load_classifier(settings.classifier, settings.storage).info.version == "20260101-000000"


def test_registry_without_pointer_is_a_clear_model_load_error(settings):
    with pytest.raises(ModelLoadError, match="no 'current' pointer"):
        load_classifier(settings.classifier, settings.storage)


def test_pointer_to_unpublished_version_is_refused(settings):
    with pytest.raises(ModelLoadError, match="not published"):
        set_current(settings.classifier.registry, "missing", settings.storage)
