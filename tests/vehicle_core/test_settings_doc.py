"""docs/settings.md and the commented defaults YAML are generated from the settings' declarations."""

from __future__ import annotations

import subprocess
import sys

import yaml

from vehicle_core.cli.settings_doc import DOC_PATH, defaults_yaml, settings_markdown, type_name
from vehicle_core.config import Settings, declared_settings, load_settings


def test_every_declared_type_has_a_name_in_the_docs():
    assert {type_name(d.type) for d in declared_settings()} == {
        "string", "integer", "number", "boolean", "list of strings", "string or null"}


def test_the_generated_yaml_is_a_valid_settings_file_with_every_doc(tmp_path):
    text = defaults_yaml()
    path = tmp_path / "all.yaml"
    path.write_text(text)
    assert load_settings(path, env={}) == Settings()
    for d in declared_settings():
        assert f"  {d.key}: " in text and d.doc in text


def test_docs_settings_table_matches_the_declarations():
    assert DOC_PATH.read_text() == settings_markdown(), (
        "docs/settings.md is out of date: run `make settings-doc` "
        "(python -m vehicle_core.cli.settings_doc markdown --write docs/settings.md)")


def test_docs_settings_table_names_every_setting_once():
    rows = [line for line in DOC_PATH.read_text().splitlines() if line.startswith("| `")]
    assert [row.split("`")[1] for row in rows] == [d.name for d in declared_settings()]
    assert all(row.count(" | ") == 4 for row in rows)  # no unescaped | inside a cell


def test_settings_doc_command_writes_the_table(tmp_path):
    out = tmp_path / "settings.md"
    subprocess.run([sys.executable, "-m", "vehicle_core.cli.settings_doc", "markdown", "--write", str(out)], check=True,
                   timeout=120)
    assert out.read_text() == settings_markdown()
    printed = subprocess.run([sys.executable, "-m", "vehicle_core.cli.settings_doc", "yaml"], capture_output=True,
                             text=True, check=True, timeout=120).stdout
    assert yaml.safe_load(printed) == Settings().to_dict()
