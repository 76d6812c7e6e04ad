"""The tree tells the architecture (docs/architecture.md, "Layout"), and the docs match the tree.

* the layout tables name every module of the five packages, and nothing that does not exist;
* the library's top folder stays small (at most 15 modules): roles live in sub-packages;
* the serving core never imports the reports or the command lines built on top of it; outside the
  library, only the one-line error helpers of ``vehicle_core.cli`` are shared, and nothing but the
  command lines and the dev tools draws reports.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("vehicle_core", "workers", "producer", "training", "devstack")
DOC = ROOT / "docs" / "architecture.md"
ON_TOP = ("vehicle_core.cli", "vehicle_core.reports")  # built on the core; the core never imports them


def layout_paths(text: str) -> list[str]:
    """The paths named in the first cell of every table row under ``## Layout``."""
    section = text.split("## Layout", 1)[1]
    return re.findall(r"^\| `([^`]+)` \|", section, flags=re.M)


def module_files() -> list[str]:
    return sorted(str(p.relative_to(ROOT)) for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")
                  if p.name != "__init__.py")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out += [f"{node.module}.{a.name}" for a in node.names]
    return out


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def layering_violations(module: str, imports: list[str]) -> list[str]:
    """Imports of ``module`` that break the core / on-top split."""
    bad = []
    for name in imports:
        if not any(_under(name, top) for top in ON_TOP):
            continue
        if _under(module, "vehicle_core") and not any(_under(module, top) for top in ON_TOP):
            bad.append(name)  # the core importing what sits on it
        elif module.split(".")[0] in ("workers", "producer", "training") and not _under(name, "vehicle_core.cli.errors"):
            bad.append(name)  # the services share only the one-line errors
    return bad


def test_the_layout_tables_name_every_module_and_only_modules_that_exist():
    named = layout_paths(DOC.read_text())
    missing = [p for p in named if not (ROOT / p.rstrip("/")).exists()]
    assert missing == [], f"docs/architecture.md names paths that do not exist: {missing}"
    omitted = [m for m in module_files() if m not in named]
    assert omitted == [], f"docs/architecture.md's layout omits: {omitted}"


def test_the_doc_check_catches_a_stale_and_a_missing_row():
    text = "# x\n## Layout\n| path | what |\n| --- | --- |\n| `vehicle_core/gone.py` | old |\n| `deploy/` | x |\n"
    assert layout_paths(text) == ["vehicle_core/gone.py", "deploy/"]
    assert not (ROOT / "vehicle_core/gone.py").exists()
    assert "vehicle_core/config.py" not in layout_paths(text)


def test_the_library_top_folder_holds_at_most_15_modules():
    top = sorted(p.name for p in (ROOT / "vehicle_core").glob("*.py") if p.name != "__init__.py")
    assert len(top) <= 15, top
    assert not [n for n in top if n.startswith("result")], "results are one package: vehicle_core/results/"


@pytest.mark.parametrize("path", [ROOT / m for m in module_files()] +
                         [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("__init__.py")],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_the_core_never_imports_what_is_built_on_it(path):
    assert layering_violations(module_name(path), imports_of(path)) == []


def test_the_layering_check_catches_wrong_imports():
    assert layering_violations("vehicle_core.pipeline", ["vehicle_core.reports.gallery.write"]) != []
    assert layering_violations("vehicle_core.results.tables", ["vehicle_core.cli.errors.report"]) != []
    assert layering_violations("workers.tasks", ["vehicle_core.reports.visualize.draw"]) != []
    assert layering_violations("workers.flower", ["vehicle_core.cli.errors.report"]) == []
    assert layering_violations("vehicle_core.cli.results", ["vehicle_core.reports.gallery.write"]) == []
    assert layering_violations("devstack.demo", ["vehicle_core.reports.gallery.write"]) == []
