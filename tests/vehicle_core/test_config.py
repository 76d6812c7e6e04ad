"""Settings: defaults, YAML file and VP_SECTION__KEY overrides, and ConfigError naming the bad key."""

from __future__ import annotations

import pytest

from vehicle_core.config import Settings, load_settings
from vehicle_core.errors import ConfigError


def test_defaults_load_and_match_the_declarations():
    settings = load_settings(env={})
    assert settings.to_dict() == Settings().to_dict()
    assert settings.sources["images.max_pixels"] == "default"


def test_yaml_file_overrides_defaults(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("detector:\n  score_threshold: 0.25\nimages:\n  max_bytes: 1000\n")
    settings = load_settings(path, env={})
    assert settings.detector.score_threshold == 0.25
    assert settings.images.max_bytes == 1000
    assert settings.sources["images.max_bytes"] == str(path)
    assert settings.images.max_pixels == load_settings(env={}).images.max_pixels


def test_vp_config_env_names_the_file(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("crop:\n  size: 64\n")
    assert load_settings(env={"VP_CONFIG": str(path)}).crop.size == 64


def test_env_overrides_file_with_type_parsing(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("detector:\n  score_threshold: 0.25\n")
    settings = load_settings(path, env={
        "VP_DETECTOR__SCORE_THRESHOLD": "0.7",
        "VP_IMAGES__MAX_PIXELS": "1234",
        "VP_CROP__SQUARE": "false",
        "VP_STORAGE__ENDPOINT_URL": "http://127.0.0.1:9000",
        "VP_DETECTOR__VEHICLE_CLASSES": "car, bus",
    })
    assert settings.detector.score_threshold == 0.7
    assert settings.images.max_pixels == 1234 and isinstance(settings.images.max_pixels, int)
    assert settings.crop.square is False
    assert settings.storage.endpoint_url == "http://127.0.0.1:9000"
    assert settings.detector.vehicle_classes == ["car", "bus"]
    assert settings.sources["detector.score_threshold"] == "env"


@pytest.mark.parametrize("env,key", [
    ({"VP_IMAGES__MAX_PIXLES": "5"}, "images.max_pixles"),
    ({"VP_NOSUCHSECTION__X": "5"}, "nosuchsection"),
    ({"VP_IMAGES__MAX_PIXELS": "lots"}, "images.max_pixels"),
    ({"VP_CROP__SQUARE": "maybe"}, "crop.square"),
    ({"VP_DETECTOR__SCORE_THRESHOLD": "1.5"}, "detector.score_threshold"),
    ({"VP_CROP__JPEG_QUALITY": "0"}, "crop.jpeg_quality"),
], ids=["unknown-key", "unknown-section", "bad-int", "bad-bool", "threshold-range", "quality-range"])
def test_bad_settings_raise_config_error_naming_the_key(env, key):
    with pytest.raises(ConfigError, match=key) as exc:
        load_settings(env=env)
    assert exc.value.code == "config"


def test_unknown_key_in_yaml_file_names_key_and_file(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("storage:\n  endpoint: http://x\n")
    with pytest.raises(ConfigError, match="storage.endpoint") as exc:
        load_settings(path, env={})
    assert str(path) in str(exc.value)


def test_missing_or_invalid_yaml_file_raises_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "missing.yaml", env={})
    bad = tmp_path / "bad.yaml"
    bad.write_text("detector: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(bad, env={})
