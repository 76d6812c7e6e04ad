"""Every command line of the project answers --version with its name and the project's version (issue 20)."""

from __future__ import annotations

import importlib
import tomllib
from pathlib import Path

import pytest

from vehicle_core.cli.errors import project_version

SCRIPTS = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]["scripts"]


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_every_command_prints_its_version_and_exits_0(name, capsys):
    module, func = SCRIPTS[name].split(":")
    with pytest.raises(SystemExit) as exit_:
        getattr(importlib.import_module(module), func)(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"{name} {project_version()}"
    assert project_version() != "unknown"
