"""Settings declared once (issue 22): each setting's type, default, doc and check come from one field."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import typing

import pytest

from vehicle_core import config
from vehicle_core.config import (
    SECRETS,
    DetectorSettings,
    Settings,
    declared_settings,
    load_settings,
    setting,
    settings_lines,
)
from vehicle_core.errors import ConfigError

SECTION_CLASSES = [typing.get_type_hints(Settings)[f.name] for f in dataclasses.fields(Settings) if f.name != "sources"]


def test_every_setting_is_declared_with_a_doc_a_type_and_a_default():
    names = [d.name for d in declared_settings()]
    assert len(names) == len(set(names)) == sum(len(dataclasses.fields(c)) for c in SECTION_CLASSES) == 99
    for d in declared_settings():
        assert d.doc.strip() and len(d.doc) > 10, d.name
        assert d.type in (str, int, float, bool, list[str], str | None), d.name  # what _coerce reads
        assert d.default is not None or type(None) in typing.get_args(d.type), d.name
    for cls in SECTION_CLASSES:
        for f in dataclasses.fields(cls):
            assert f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING, f.name
            assert f.metadata["doc"], f.name


def test_every_default_passes_its_own_check_and_choices_name_the_default():
    for d in declared_settings():
        if d.check is not None:
            assert d.check(d.default), d.name
        if d.choices:
            assert d.default in d.choices, d.name


def test_setting_refuses_an_undocumented_declaration():
    with pytest.raises(TypeError, match="doc"):
        setting(1, "")
    with pytest.raises(TypeError, match="must"):
        setting(1, "a number", check=bool)


def test_sections_build_from_their_defaults_and_by_keyword_as_before():
    assert Settings() == load_settings(env={})
    det = DetectorSettings(backend="detectron2", batch_size=2)
    assert det.model == "zoo://synthetic-maskrcnn-tiny" and det.allow_pickle is False
    assert dataclasses.replace(det, batch_size=8).batch_size == 8
    assert DetectorSettings().vehicle_classes is not DetectorSettings().vehicle_classes  # no shared list


def test_secrets_come_from_the_declaration():
    assert set(SECRETS) == {("broker", "url"), ("broker", "state_url"), ("broker", "result_backend"), ("flower", "basic_auth")}


@pytest.mark.parametrize(("env", "words"), [
    ({"VP_DETECTOR__BACKEND": "yolo"}, ["detector.backend", "VP_DETECTOR__BACKEND", "torchvision or detectron2"]),
    ({"VP_TRAINING__LR_SCHEDULE": "step"}, ["training.lr_schedule", "VP_TRAINING__LR_SCHEDULE", "constant or cosine"]),
    ({"VP_CLASSIFIER__TOP_K": "many"}, ["classifier.top_k", "VP_CLASSIFIER__TOP_K", "must be an integer"]),
    ({"VP_TRAINING__DROPOUT": "1"}, ["training.dropout", "VP_TRAINING__DROPOUT", "at least 0 and below 1"]),
    ({"VP_PRODUCER__WAIT_TIME_S": "30"}, ["producer.wait_time_s", "between 0 and 20 (SQS limit)"]),
    ({"VP_RESULTS__PREFIX": ""}, ["results.prefix", "must be a string"]),
    ({"VP_DETECTOR__SCORE_TRESHOLD": "0.3"}, ["detector.score_treshold", "(from env)"]),
], ids=["bad-choice", "bad-choice-new", "wrong-type", "exclusive-bound", "note", "null-prefix", "unknown-key"])
def test_a_bad_env_value_is_refused_naming_the_key_and_its_source(env, words):
    with pytest.raises(ConfigError) as exc:
        load_settings(env=env)
    for word in words:
        assert word in str(exc.value)


def test_a_bad_file_value_is_refused_naming_the_key_and_the_file(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("classifier:\n  device: tpu\nlogs:\n  format: xml\n")
    with pytest.raises(ConfigError, match="classifier.device='tpu'") as exc:
        load_settings(path, env={})
    assert f"(from {path})" in str(exc.value) and "auto, cpu or gpu" in str(exc.value)
    path.write_text("worker:\n  task_events: sometimes\n")
    with pytest.raises(ConfigError, match=r"worker.task_events \(from .*s.yaml\) must be true or false"):
        load_settings(path, env={})


def test_an_empty_prefix_from_code_is_refused_and_replace_records_code_as_the_source():
    settings = load_settings(env={})
    with pytest.raises(ConfigError, match=r"results.prefix='' \(from code\) must be a non-empty prefix"):
        settings.replace(results={"prefix": ""})
    changed = settings.replace(detector={"score_threshold": 0.3})
    assert changed.detector.score_threshold == 0.3 and changed.sources["detector.score_threshold"] == "code"
    assert changed.sources["detector.batch_size"] == "default"
    with pytest.raises(ConfigError, match="a settings dict"):
        Settings.from_dict({**settings.to_dict(), "crop": {**settings.to_dict()["crop"], "size": 4}})


@pytest.mark.parametrize(("name", "text", "value"), [
    ("VP_TRAINING__MIXED_PRECISION", "off", "off"),
    ("VP_STORAGE__REGION", "yes", "yes"),
    ("VP_BROKER__DETECT_QUEUE", "123", "123"),
    ("VP_TRAINING__IMAGENET_WEIGHTS", "null", None),
    ("VP_TRAINING__IMAGENET_WEIGHTS", "", None),
    ("VP_WORKER__TASK_EVENTS", "on", True),  # a boolean setting: YAML's words are booleans
    ("VP_IMAGES__MAX_ASPECT_RATIO", "4", 4.0),
    ("VP_PRODUCER__INPUT_PREFIXES", "[cams/, uploads/]", ["cams/", "uploads/"]),
    ("VP_PRODUCER__IMAGE_SUFFIXES", ".jpg, .png", [".jpg", ".png"]),
])
def test_vp_values_are_read_as_the_declared_type(name, text, value):
    section, key = name[3:].lower().split("__")
    got = getattr(getattr(load_settings(env={name: text}), section), key)
    assert got == value and type(got) is type(value)


def test_settings_output_lists_every_declared_setting_with_its_source(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("crop:\n  size: 64\n")
    settings = load_settings(path, env={"VP_BROKER__URL": "redis://:pw@h:6379/0"})
    lines = settings_lines(settings)
    assert [line.split(" = ")[0] for line in lines] == [d.name for d in declared_settings()]
    assert f"crop.size = 64  ({path})" in lines
    assert "broker.url = 'redis://:***@h:6379/0'  (env)" in lines
    assert "detector.backend = 'torchvision'  (default)" in lines


def test_vehicle_classify_settings_prints_those_lines():
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": os.environ.get("PYTHONPATH", ""), "VP_DETECTOR__BATCH_SIZE": "2"}
    out = subprocess.run([sys.executable, "-m", "vehicle_core.cli.classify", "--settings"], capture_output=True, text=True,
                         env=env, timeout=120, check=True)
    assert out.stdout.splitlines() == settings_lines(load_settings(env={"VP_DETECTOR__BATCH_SIZE": "2"}))


def test_config_imports_only_the_stdlib_yaml_and_errors():
    import ast

    tree = ast.parse(open(config.__file__).read())
    modules = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    modules |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    allowed = set(sys.stdlib_module_names) | {"yaml", "vehicle_core.errors", "__future__"}
    assert {m for m in modules if m.split(".")[0] not in allowed and m not in allowed} == set()
