"""The layers point one way (docs/architecture.md): an import graph check over every module.

    vehicle_core  <-  workers  <-  producer          training -> vehicle_core, workers
                          devstack -> everything; nothing imports devstack (tests aside)

Every ``import``/``from … import`` is read from the source (at any depth: imports inside functions
count), so a lazy import that points the wrong way fails here as surely as a top-level one. Also:

* the import graph of the whole project has no cycle (function-level imports count);
* workers import no torchvision, detectron2, OpenCV or TensorFlow at module level;
* every string that names a task, a task module or a Celery app (``send_task("a.b.c")``, route
  tables, ``name=`` of a task, ``conf.include``, ``celery -A module`` in the deployment files) names
  code that exists, and the apps register exactly the tasks the project names;
* importing any module of the project builds no Celery app, reads no settings, connects no Celery
  signal, configures no logging, changes no environment variable and writes no file.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import textwrap
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



# --------------------------------------------------------------------------------------------
# The import graph: no cycle, function-level imports included


def project_sources() -> dict[str, str]:
    """Module name -> source, for every module of the project's packages."""
    out = {}
    for _package, path in _modules():
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path.read_text()
    return out


def _owner(name: str, modules) -> str | None:
    """The module an imported name lives in: the longest project module that is a prefix of it."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def _absolute(module: str, node: ast.ImportFrom, is_package: bool) -> str | None:
    if node.level == 0:
        return node.module
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
    return ".".join(base + ([node.module] if node.module else []))


def import_graph(sources: dict[str, str], packages: set[str] = frozenset()) -> dict[str, set[str]]:
    """Module -> the project modules it imports, at any depth (function bodies included)."""
    graph: dict[str, set[str]] = {m: set() for m in sources}
    for module, source in sources.items():
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(module, node, module in packages)
                # ``from a import b``: module ``a.b`` when there is one, else ``a`` (b is a name in it)
                names = [f"{base}.{alias.name}" for alias in node.names] if base else []
            else:
                continue
            graph[module] |= {owner for n in names if (owner := _owner(n, sources)) and owner != module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def test_the_project_import_graph_has_no_cycle():
    sources = project_sources()
    packages = {m for m in sources if (ROOT / m.replace(".", "/") / "__init__.py").is_file()}
    assert cycles(import_graph(sources, packages)) == []


def test_the_cycle_check_catches_a_cycle_closed_by_a_function_level_import():
    sources = {
        "pkg.a": "from pkg.b import helper\n",
        "pkg.b": "def helper():\n    import pkg.c\n",  # lazy: still an edge
        "pkg.c": "from pkg import a\n",
        "pkg": "",
        "pkg.d": "import pkg.a\n",  # imports into the cycle, is not part of it
        "pkg.e": "from .d import x\n",  # relative imports resolve too
        "pkg.f": "def g():\n    from . import e\n",
    }
    graph = import_graph(sources, {"pkg"})
    assert graph["pkg.a"] == {"pkg.b"} and graph["pkg.b"] == {"pkg.c"} and graph["pkg.c"] == {"pkg.a"}
    assert graph["pkg.e"] == {"pkg.d"} and graph["pkg.f"] == {"pkg.e"}
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.c"]]
    assert cycles(import_graph({**sources, "pkg.a": ""})) == []


# --------------------------------------------------------------------------------------------
# Module-level imports of the workers: no torchvision, detectron2, OpenCV or TensorFlow


#: package -> third-party modules it may import inside functions only (never when the module loads).
FORBIDDEN_AT_MODULE_LEVEL = {"workers": ("torchvision", "detectron2", "cv2", "tensorflow")}


def module_level_imports(source: str) -> list[str]:
    """What a module imports when it loads: top level, class bodies and ``if``/``try``/``with`` blocks,
    not function bodies, lambdas or ``if TYPE_CHECKING:`` blocks."""
    out: list[str] = []

    def visit(nodes) -> None:
        for node in nodes:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                visit(node.orelse)
                continue
            if isinstance(node, ast.Import):
                out.extend(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                out.extend(f"{node.module}.{alias.name}" for alias in node.names)
            visit(ast.iter_child_nodes(node))

    visit(ast.parse(source).body)
    return out


def module_level_violations(package: str, source: str) -> list[str]:
    banned = FORBIDDEN_AT_MODULE_LEVEL.get(package, ())
    return [name for name in module_level_imports(source) if name.split(".")[0] in banned]


@pytest.mark.parametrize("path", sorted((ROOT / "workers").rglob("*.py")), ids=lambda p: p.name)
def test_workers_import_no_model_framework_at_module_level(path):
    assert module_level_violations("workers", path.read_text()) == []


def test_the_module_level_check_reads_blocks_and_skips_functions():
    source = textwrap.dedent("""
        import os
        from typing import TYPE_CHECKING
        if TYPE_CHECKING:
            import cv2
        try:
            import tensorflow as tf
        except ImportError:
            tf = None
        class Model:
            from torchvision.models import detection
        def lazy():
            import detectron2
    """)
    assert module_level_violations("workers", source) == ["tensorflow", "torchvision.models.detection"]


def test_importing_every_workers_module_loads_no_model_framework():
    """The same, through vehicle_core and everything else a workers module imports when it loads."""
    code = textwrap.dedent(f"""
        import importlib, json, sys
        for name in {sorted(m for m in project_sources() if m.split(".")[0] == "workers")!r}:
            importlib.import_module(name)
        print(json.dumps(sorted(m for m in {FORBIDDEN_AT_MODULE_LEVEL["workers"] + ("torch", "keras")!r}
                                if m in sys.modules)))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[-1]) == []


# --------------------------------------------------------------------------------------------
# Strings that name tasks, task modules and Celery apps


def _string(node, constants: dict[str, set[str]]) -> list[str]:
    """The string(s) a node stands for: a literal, or a project constant (``DETECT_TASK``) by name."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.Name) and node.id in constants:
        return sorted(constants[node.id])
    return []


def task_constants(sources: dict[str, str]) -> dict[str, set[str]]:
    """``NAME_TASK = "a.b.c"`` at module level, anywhere in the project: name -> value(s)."""
    out: dict[str, set[str]] = {}
    for source in sources.values():
        for node in ast.parse(source).body:
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(
                    node.value.value, str):
                for target in node.targets:
                    if isinstance(target, ast.Name) and target.id.endswith("_TASK"):
                        out.setdefault(target.id, set()).add(node.value.value)
    return out


def named_tasks_and_modules(source: str, constants: dict[str, set[str]]) -> tuple[set[str], set[str]]:
    """``(task names, module names)`` a source names in strings: ``send_task``/``signature`` arguments,
    ``name=`` of ``.task(...)``, keys of route tables (dicts of ``{"queue": ...}``), and ``include``
    entries (``conf.include = [...]``, ``include=[...]``, ``"include": [...]``)."""
    tasks: set[str] = set()
    modules: set[str] = set()

    def strings_of(node) -> list[str]:
        if isinstance(node, (ast.List, ast.Tuple)):
            return [s for elt in node.elts for s in _string(elt, constants)]
        return _string(node, constants)

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in ("send_task", "signature") and node.args:
                tasks.update(_string(node.args[0], constants))
            if node.func.attr in ("task", "shared_task"):
                tasks.update(s for kw in node.keywords if kw.arg == "name" for s in _string(kw.value, constants))
        if isinstance(node, ast.Call):
            modules.update(s for kw in node.keywords if kw.arg == "include" for s in strings_of(kw.value))
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Attribute) and t.attr == "include"
                                                for t in node.targets):
            modules.update(strings_of(node.value))
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if key is None:
                    continue
                if isinstance(value, ast.Dict) and any(isinstance(k, ast.Constant) and k.value == "queue"
                                                       for k in value.keys):
                    tasks.update(_string(key, constants))
                if isinstance(key, ast.Constant) and key.value == "include":
                    modules.update(strings_of(value))
    return tasks, modules


def defines(source: str, name: str) -> bool:
    """Whether a module defines ``name`` at top level (a function, class or assignment)."""
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
            return True
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, ast.AnnAssign) else []
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            return True
    return False


def task_name_problems(names, sources: dict[str, str]) -> list[str]:
    """Task names whose module is not a project module, or which that module does not define."""
    bad = []
    for name in sorted(names):
        module, _, function = name.rpartition(".")
        if module not in sources:
            bad.append(f"{name}: no module {module}")
        elif not defines(sources[module], function):
            bad.append(f"{name}: {module} defines no {function}")
    return bad


#: Text files that start Celery apps by name (``celery -A module``), besides the project's Python.
COMMAND_FILES = ("Dockerfile", "docker-compose.yml", "compose.aws.yml", "Makefile", "README.md", "docs/*.md",
                 "deploy/**/*")
CELERY_APP = re.compile(r"celery\W{1,8}-A\W{1,8}([A-Za-z_][\w.]*)")


def celery_app_modules() -> dict[str, list[str]]:
    """``module -> [where]`` for every ``celery -A module`` of the deployment files, docs and code."""
    paths = [p for pattern in COMMAND_FILES for p in ROOT.glob(pattern) if p.is_file()]
    paths += [path for _, path in _modules()]
    found: dict[str, list[str]] = {}
    for path in paths:
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for match in CELERY_APP.finditer(text):
            found.setdefault(match.group(1), []).append(str(path.relative_to(ROOT)))
    return found


def _project_task_strings() -> tuple[set[str], set[str]]:
    sources = project_sources()
    constants = task_constants(sources)
    tasks = {v for values in constants.values() for v in values}
    modules: set[str] = set()
    for source in sources.values():
        named, included = named_tasks_and_modules(source, constants)
        tasks |= named
        modules |= included
    return tasks, modules


def test_every_task_name_in_the_code_names_a_function_of_its_module():
    tasks, _ = _project_task_strings()
    assert {"workers.tasks.detect_crop", "workers.tasks.classify", "training.trial_worker.train_trial"} <= tasks
    assert task_name_problems(tasks, project_sources()) == []


def test_every_included_task_module_exists():
    _, modules = _project_task_strings()
    assert "workers.tasks" in modules
    assert sorted(set(modules) - set(project_sources())) == []


def test_the_task_string_checks_catch_a_wrong_name():
    constants = {"GONE_TASK": {"workers.tasks.gone"}}
    source = textwrap.dedent("""
        app.send_task("workers.tasks.detect_crop")
        app.signature(GONE_TASK)
        routes = {"producer.nothing.here": {"queue": "q"}, "unrouted": "x"}
        app.task(name="training.trial_worker.train_trial", bind=True)(f)
        app.conf.include = ["workers.tasks", "workers.taskz"]
        Celery("x", include=["producer.gone"])
    """)
    tasks, modules = named_tasks_and_modules(source, constants)
    assert tasks == {"workers.tasks.detect_crop", "workers.tasks.gone", "producer.nothing.here",
                     "training.trial_worker.train_trial"}
    assert modules == {"workers.tasks", "workers.taskz", "producer.gone"}
    assert task_name_problems(tasks, project_sources()) == [
        "producer.nothing.here: no module producer.nothing", "workers.tasks.gone: workers.tasks defines no gone"]


def test_every_celery_app_named_on_a_command_line_exists_and_defines_app():
    apps = celery_app_modules()
    assert {"workers.app", "training.trial_worker"} <= set(apps)
    assert "Dockerfile" in apps["training.trial_worker"] and "docker-compose.yml" in apps["workers.app"]
    sources = project_sources()
    bad = {m: where for m, where in apps.items() if m not in sources or not defines(sources[m], "app")}
    assert bad == {}


def test_the_apps_register_exactly_the_tasks_the_project_names():
    """Celery's own lookup (``find_app``, what ``-A`` does) on each app of the command lines; the worker's
    task modules imported (``conf.include``) and the app finalized, as a worker does at start."""
    code = textwrap.dedent(f"""
        import json
        from celery.app.utils import find_app
        out = {{}}
        for name in {sorted(celery_app_modules())!r}:
            app = find_app(name)
            app.loader.import_default_modules()
            app.finalize()
            out[name] = sorted(t for t in app.tasks if not t.startswith("celery."))
        print(json.dumps(out))
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("VP_")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300,
                         env={**env, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    registered = json.loads(out.stdout.splitlines()[-1])
    assert registered["training.trial_worker"] == ["training.trial_worker.train_trial"]
    assert set(registered["workers.app"]) == {"workers.tasks.detect_crop", "workers.tasks.classify",
                                              "workers.tasks.crop_dataset_chunk"}
    constants = task_constants(project_sources())
    assert {t for ts in registered.values() for t in ts} == {v for vs in constants.values() for v in vs}


def test_workers_and_producer_name_no_training_code():
    """The train queue's task name and route are training's (training/train_queue.py)."""
    bad = []
    for module, source in project_sources().items():
        if module.split(".")[0] not in ("workers", "producer"):
            continue
        tree = ast.parse(source)
        docstrings = {id(n.body[0].value) for n in ast.walk(tree) if isinstance(
            n, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and n.body and isinstance(
            n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        bad += [f"{module}: {node.value!r}" for node in ast.walk(tree) if isinstance(node, ast.Constant)
                and isinstance(node.value, str) and id(node) not in docstrings
                and re.match(r"training\.\w", node.value)]
    assert bad == []


# --------------------------------------------------------------------------------------------
# Importing a module has no side effect


def _optional_missing(source: str) -> bool:
    """A module that needs detectron2 at load, where detectron2 is not installed."""
    import importlib.util

    return any(name.split(".")[0] == "detectron2" for name in module_level_imports(source)) and (
        importlib.util.find_spec("detectron2") is None)


IMPORT_EVERYTHING = textwrap.dedent("""
    import importlib, json, logging, os, sys

    import vehicle_core.config as config

    loads = []
    def load_settings(*args, **kwargs):  # what a module reading settings at import would call
        loads.append(repr(args) + repr(kwargs))
        raise RuntimeError("settings read at import")
    config.load_settings = load_settings
    import vehicle_core
    vehicle_core.load_settings = load_settings

    import celery
    import celery._state
    from celery import signals

    built = []
    init = celery.Celery.__init__
    def counting_init(self, *args, **kwargs):
        built.append(args[:1])
        init(self, *args, **kwargs)
    celery.Celery.__init__ = counting_init

    PROJECT = ("vehicle_core", "workers", "producer", "training", "devstack")
    env_writes = []  # by project code: libraries (cv2, tensorflow, torchvision) set variables of their own
    def recording(method):
        def wrapper(self, key, *args):
            frame = sys._getframe(1)
            while frame is not None and frame.f_globals.get("__name__") in ("os", "_collections_abc"):
                frame = frame.f_back
            module = frame.f_globals.get("__name__", "") if frame is not None else ""
            if module.split(".")[0] in PROJECT:
                env_writes.append(f"{module}: {key}")
            return method(self, key, *args)
        return wrapper
    os._Environ.__setitem__ = recording(os._Environ.__setitem__)
    os._Environ.__delitem__ = recording(os._Environ.__delitem__)

    SIGNALS = ("worker_init", "worker_process_init", "worker_process_shutdown", "after_setup_logger",
               "after_setup_task_logger", "task_prerun", "task_postrun", "celeryd_init", "import_modules")
    root = logging.getLogger()
    before = {"handlers": list(root.handlers), "level": root.level}
    failed = {}
    for name in json.loads(sys.argv[1]):
        try:
            importlib.import_module(name)
        except BaseException as exc:  # noqa: BLE001
            failed[name] = f"{type(exc).__name__}: {exc}"
    print(json.dumps({
        "failed": failed,
        "apps": len(celery._state._apps) + len(built),
        "loads": loads,
        "signals": {s: len(getattr(signals, s).receivers or ()) for s in SIGNALS
                    if getattr(signals, s).receivers},
        "env": env_writes,
        "logging": root.handlers != before["handlers"] or root.level != before["level"],
    }))
""")


def test_importing_any_module_builds_no_app_and_reads_no_settings(tmp_path):
    """Every module of the project, in a fresh interpreter, with settings that cannot load (a missing
    ``VP_CONFIG`` file, an invalid ``VP_*`` variable): each import succeeds, and afterwards no Celery app
    exists, ``load_settings`` was never called, no Celery signal has a receiver, root logging and the
    environment are as they were, and the working directory is still empty."""
    sources = project_sources()
    names = [m for m, source in sources.items() if not _optional_missing(source)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "VP_CONFIG": str(tmp_path / "missing.yaml"),
           "VP_WORKER__MAX_RETRIES": "not-a-number"}
    work = tmp_path / "cwd"
    work.mkdir()
    out = subprocess.run([sys.executable, "-c", IMPORT_EVERYTHING, json.dumps(names)], capture_output=True,
                         text=True, cwd=work, timeout=600, env=env)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.splitlines()[-1])
    assert report == {"failed": {}, "apps": 0, "loads": [], "signals": {}, "env": [], "logging": False}
    assert sorted(p.name for p in work.iterdir()) == []


def test_the_side_effect_check_sees_an_app_a_settings_read_and_an_env_write(tmp_path):
    (tmp_path / "eager_app.py").write_text("from celery import Celery\napp = Celery('eager')\n")
    (tmp_path / "reads.py").write_text("from vehicle_core.config import load_settings\ns = load_settings()\n")
    (tmp_path / "devstack").mkdir()  # a stand-in for the project package of that name
    (tmp_path / "devstack" / "__init__.py").write_text("")
    (tmp_path / "devstack" / "env_at_import.py").write_text("import os\nos.environ.setdefault('VP_X', '1')\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    names = ["eager_app", "reads", "devstack.env_at_import"]
    out = subprocess.run([sys.executable, "-c", IMPORT_EVERYTHING, json.dumps(names)],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120, env=env)
    report = json.loads(out.stdout.splitlines()[-1])
    assert report["apps"] >= 1 and len(report["loads"]) == 1
    assert report["failed"] == {"reads": "RuntimeError: settings read at import"}
    assert report["env"] == ["devstack.env_at_import: VP_X"]
