"""The detectron2 backend's model specs, and its clear failure where detectron2 is not installed.

These need no detectron2; its models run in test_detectron2_models.py (``make install`` builds it).
"""

import importlib.util
import json

import pytest

from vehicle_core.config import load_settings
from vehicle_core.detection import build_detector
from vehicle_core.detection.detectron2_backend import DEFAULT_ZOO_CONFIG, parse_model_spec
from vehicle_core.errors import ModelLoadError

HAS_D2 = importlib.util.find_spec("detectron2") is not None


def _artifact(tmp_path, **manifest):
    base = {"name": "d2", "version": "3", "backend": "detectron2", "config": DEFAULT_ZOO_CONFIG,
            "weights": "model_final.pkl"}
    base.update(manifest)
    (tmp_path / "manifest.json").write_text(json.dumps(base))
    return tmp_path


def test_zoo_uri_names_config_and_leaves_weights_to_the_zoo():
    spec = parse_model_spec(f"detectron2://{DEFAULT_ZOO_CONFIG}", resolve=None)
    assert spec.config == DEFAULT_ZOO_CONFIG and spec.config_is_zoo and spec.weights is None
    assert spec.info.name == "detectron2-mask_rcnn_R_101_FPN_3x"


def test_artifact_with_zoo_config_and_local_checkpoint(tmp_path):
    _artifact(tmp_path, categories=["car", "truck"])
    (tmp_path / "model_final.pkl").write_bytes(b"weights")
    spec = parse_model_spec("s3://models/d2/", resolve=lambda uri: tmp_path)
    assert spec.config_is_zoo and spec.weights == str(tmp_path / "model_final.pkl")
    assert spec.categories == ["car", "truck"] and (spec.info.name, spec.info.version) == ("d2", "3")


def test_artifact_with_its_own_config_file(tmp_path):
    _artifact(tmp_path, config="config.yaml")
    (tmp_path / "config.yaml").write_text("MODEL: {}\n")
    (tmp_path / "model_final.pkl").write_bytes(b"weights")
    spec = parse_model_spec(str(tmp_path), resolve=lambda uri: tmp_path)
    assert not spec.config_is_zoo and spec.config == str(tmp_path / "config.yaml")


@pytest.mark.parametrize(
    ("manifest", "message"),
    [({"backend": "torchvision"}, "not detectron2"), ({"weights": "absent.pkl"}, "absent.pkl is missing")],
)
def test_bad_artifacts_are_model_load_errors(tmp_path, manifest, message):
    _artifact(tmp_path, **manifest)
    with pytest.raises(ModelLoadError, match=message):
        parse_model_spec(str(tmp_path), resolve=lambda uri: tmp_path)


@pytest.mark.skipif(HAS_D2, reason="detectron2 is installed here")
def test_without_detectron2_building_says_how_to_install_it():
    settings = load_settings(env={"VP_DETECTOR__BACKEND": "detectron2",
                                  "VP_DETECTOR__MODEL": f"detectron2://{DEFAULT_ZOO_CONFIG}"})
    with pytest.raises(ModelLoadError, match="Dockerfile") as err:
        build_detector(settings.detector, settings.storage)
    assert "detectron2.git@02b5c4e295e990042a714712c21dc79b731e8833" in str(err.value)
