"""Reading docker-compose.yml (and compose.aws.yml on top) the way Docker Compose does, for the tests.

No Docker here: this module does the parts of `docker compose config` the tests rely on: YAML with
compose's merge tags (``!reset``, ``!override``), the merge of an override file into the base (maps
merged key by key, sequences appended, command/entrypoint/healthcheck.test replaced), ``${VAR}``,
``${VAR:-default}``, ``${VAR:?message}`` interpolation and ``$$`` escapes, and profiles.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]


class _Reset:
    def __repr__(self) -> str:
        return "!reset"


RESET = _Reset()


class _Override:
    def __init__(self, value: Any) -> None:
        self.value = value


class ComposeLoader(yaml.SafeLoader):
    """SafeLoader that also reads compose's ``!reset`` and ``!override`` tags."""


def _reset(loader, node):
    return RESET


def _override(loader, node):
    if isinstance(node, yaml.MappingNode):
        return _Override(loader.construct_mapping(node, deep=True))
    if isinstance(node, yaml.SequenceNode):
        return _Override(loader.construct_sequence(node, deep=True))
    return _Override(loader.construct_scalar(node))


ComposeLoader.add_constructor("!reset", _reset)
ComposeLoader.add_constructor("!override", _override)


def load(path: str | Path) -> dict:
    return yaml.load(Path(path).read_text(), Loader=ComposeLoader)  # noqa: S506 - SafeLoader subclass


_REPLACED = {"command", "entrypoint"}


def merge(base: Any, over: Any, key: str = "") -> Any:
    """``over`` merged into ``base`` by the compose merge rules (the parts our files use)."""
    if over is RESET:
        return None
    if isinstance(over, _Override):
        return _strip(over.value)
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            if v is RESET:
                out.pop(k, None)
            elif k in out:
                out[k] = merge(out[k], v, k)
            else:
                out[k] = _strip(v)
        return out
    if isinstance(base, list) and isinstance(over, list) and key not in _REPLACED and key != "test":
        return base + [v for v in over if v not in base]
    return _strip(over)


def _strip(value: Any) -> Any:
    if isinstance(value, _Override):
        return _strip(value.value)
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if v is not RESET}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def config(*files: str, profiles: tuple[str, ...] = ()) -> dict:
    """The merged model of ``files`` (relative to the repository) with only the active services."""
    model: dict = {}
    for name in files:
        model = merge(model, load(ROOT / name)) if model else _strip(load(ROOT / name))
    model["services"] = {
        name: service for name, service in model["services"].items()
        if not service.get("profiles") or set(service["profiles"]) & set(profiles)
    }
    return model


_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


class MissingVariable(KeyError):
    pass


def interpolate(value: Any, variables: dict[str, str]) -> Any:
    """Compose's interpolation of every string in ``value``; ``${VAR:?msg}`` unset raises MissingVariable."""
    if isinstance(value, dict):
        return {k: interpolate(v, variables) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, variables) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group(1), match.group(2), match.group(3)
        current = variables.get(name)
        if op in (":-", "-"):
            return current if current not in (None, "") or (op == "-" and current is not None) else arg
        if op in (":?", "?"):
            if current in (None, "") and (op == ":?" or current is None):
                raise MissingVariable(f"{name}: {arg}")
            return current
        return current or ""

    return _VAR.sub(one, value)


def programs(command: list[str] | str) -> list[list[str]]:
    """The command lines a service's command runs: itself, or each line of an ``sh -ec SCRIPT``."""
    if isinstance(command, str):
        command = shlex.split(command)
    if command[:1] == ["sh"] and len(command) >= 3 and command[1].startswith("-") and "c" in command[1]:
        lines = [line.strip() for line in command[-1].splitlines() if line.strip() and not line.strip().startswith("#")]
        return [shlex.split(line) for line in lines]
    return [list(command)]


def healthcheck_argv(test: list[str]) -> list[str]:
    """A healthcheck's ``test`` as the argv Docker runs (CMD as is, CMD-SHELL through sh -c)."""
    kind, *rest = test
    if kind == "CMD":
        return rest
    if kind == "CMD-SHELL":
        return ["sh", "-c", rest[0]]
    raise ValueError(f"unknown healthcheck form {kind!r}")
