"""VP_* values are parsed as their setting's type (issue 20): YAML 1.1's booleans stay text for strings."""

from __future__ import annotations

import pytest

from vehicle_core.config import load_settings
from vehicle_core.errors import ConfigError


@pytest.mark.parametrize("text", ["off", "on", "auto"])
def test_a_string_setting_keeps_yaml_boolean_words_as_text(text):
    assert load_settings(env={"VP_TRAINING__MIXED_PRECISION": text}).training.mixed_precision == text


def test_a_string_setting_keeps_numbers_and_words_as_written():
    settings = load_settings(env={"VP_RESULTS__PREFIX": "007/", "VP_STORAGE__REGION": "no",
                                  "VP_LOGS__FORMAT": "json"})
    assert settings.results.prefix == "007/"
    assert settings.storage.region == "no"  # YAML 1.1 would make it False
    assert settings.logs.format == "json"


def test_an_optional_string_setting_still_reads_null_as_none():
    assert load_settings(env={"VP_STORAGE__ENDPOINT_URL": "null"}).storage.endpoint_url is None
    assert load_settings(env={"VP_STORAGE__ENDPOINT_URL": "http://127.0.0.1:9"}).storage.endpoint_url == "http://127.0.0.1:9"


def test_typed_settings_are_still_parsed_and_checked():
    settings = load_settings(env={"VP_DETECTOR__ALLOW_PICKLE": "true", "VP_DETECTOR__BATCH_SIZE": "8",
                                  "VP_DETECTOR__VEHICLE_CLASSES": "[car, bus]"})
    assert settings.detector.allow_pickle is True and settings.detector.batch_size == 8
    assert settings.detector.vehicle_classes == ["car", "bus"]
    with pytest.raises(ConfigError, match="must be true or false"):
        load_settings(env={"VP_DETECTOR__ALLOW_PICKLE": "maybe"})
    with pytest.raises(ConfigError, match="auto, on or off"):
        load_settings(env={"VP_TRAINING__MIXED_PRECISION": "sometimes"})
