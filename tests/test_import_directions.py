"""The layers point one way (docs/architecture.md): an import graph check over every module.

    vehicle_core  <-  workers  <-  producer          training -> vehicle_core, workers
                          devstack -> everything; nothing imports devstack (tests aside)

Every ``import``/``from … import`` is read from the source (at any depth: imports inside functions
count), so a lazy import that points the wrong way fails here as surely as a top-level one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("vehicle_core", "workers", "producer", "training", "devstack")

#: package -> the project modules it may import (a name also allows everything below it).
ALLOWED = {
    "vehicle_core": ("vehicle_core",),
    "workers": ("vehicle_core", "workers"),
    "producer": ("vehicle_core", "producer", "workers.messages"),
    "training": ("vehicle_core", "training", "workers"),
    "devstack": PACKAGES,
}
#: package -> third-party modules it must never import.
FORBIDDEN = {
    "vehicle_core": ("celery", "celery_batches", "kombu", "flower", "redis"),
    "producer": ("torch", "torchvision", "tensorflow", "keras", "detectron2", "cv2"),
    "workers": ("tensorflow", "keras", "torch"),  # the models come through vehicle_core
}


def imported_modules(source: str) -> list[str]:
    """Every module a source file imports, ``from a import b`` giving ``a.b``."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out += [f"{node.module}.{alias.name}" for alias in node.names]
    return out


def violations(package: str, source: str) -> list[str]:
    """The imports of ``source`` (a module of ``package``) that point the wrong way."""
    bad = []
    for name in imported_modules(source):
        top = name.split(".")[0]
        if top in PACKAGES:
            if not any(name == ok or name.startswith(ok + ".") for ok in ALLOWED[package]):
                bad.append(name)
        elif top in FORBIDDEN.get(package, ()):
            bad.append(name)
    return bad


def _modules():
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            yield package, path


@pytest.mark.parametrize(("package", "path"), list(_modules()), ids=lambda v: str(v).split(str(ROOT))[-1])
def test_module_imports_only_what_its_layer_may(package, path):
    assert violations(package, path.read_text()) == []


def test_the_check_catches_wrong_way_imports_at_any_depth():
    lazy = "def f():\n    from training.publish import publish\n"
    assert violations("vehicle_core", lazy) == ["training.publish.publish"]
    assert violations("vehicle_core", "from workers import tasks") == ["workers.tasks"]
    assert violations("producer", "import workers.tasks") == ["workers.tasks"]
    assert violations("producer", "from workers.messages import sender_app") == []
    assert violations("workers", "from devstack.servers import moto_server") == ["devstack.servers.moto_server"]
    assert violations("producer", "import torch") == ["torch"]
    assert violations("vehicle_core", "from celery import Celery") == ["celery.Celery"]


def test_every_project_package_is_checked():
    found = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()} - {"tests"}
    assert found == set(PACKAGES)
