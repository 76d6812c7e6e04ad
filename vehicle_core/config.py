"""One typed settings object, read from ``defaults.yaml``, ``$VP_CONFIG`` and ``VP_*`` variables.

The defaults and the comment on every key live in ``vehicle_core/defaults.yaml``; the dataclasses
below only give each key its type. Build settings with :func:`load_settings`; build a component from
them with its ``from_settings`` classmethod.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vehicle_core.errors import ConfigError

DEFAULTS_PATH = Path(__file__).with_name("defaults.yaml")
ENV_PREFIX = "VP_"


@dataclass(frozen=True)
class StorageSettings:
    endpoint_url: str | None
    region: str
    max_attempts: int
    connect_timeout_s: float
    read_timeout_s: float
    cache_dir: str
    max_pool_connections: int = 16


@dataclass(frozen=True)
class ImageSettings:
    max_pixels: int
    max_bytes: int
    max_decode_bytes: int = 256 << 20
    max_aspect_ratio: float = 20.0
    max_side: int = 2048


@dataclass(frozen=True)
class DetectorSettings:
    backend: str
    model: str
    device: str
    score_threshold: float
    min_box_size: float
    max_vehicles: int
    same_vehicle_iou: float
    vehicle_classes: list[str]
    batch_size: int
    in_model_filter: bool = True
    allow_pickle: bool = False  # see defaults.yaml; defaulted so older DetectorSettings(...) calls still build


@dataclass(frozen=True)
class CropSettings:
    margin: float
    square: bool
    mask_background: bool
    fill_value: int
    size: int
    jpeg_quality: int


@dataclass(frozen=True)
class ClassifierSettings:
    model: str | None
    registry: str | None
    batch_size: int
    top_k: int
    device: str
    backend: str = "tensorflow"
    poll_interval_s: float = 30.0


@dataclass(frozen=True)
class ResultSettings:
    bucket: str | None
    prefix: str


@dataclass(frozen=True)
class BrokerSettings:
    url: str
    result_backend: str | None
    visibility_timeout_s: int
    restore_interval_s: int
    detect_queue: str
    classify_queue: str
    train_queue: str = "train"
    train_visibility_timeout_s: int = 43200


@dataclass(frozen=True)
class WorkerSettings:
    prefetch_multiplier: int
    batch_flush_every: int
    batch_flush_interval_s: float
    max_retries: int
    retry_backoff_max_s: int
    metrics_port: int
    max_deliveries: int = 3
    task_time_limit_s: float = 300.0
    max_memory_per_child_mb: int = 4096
    threads: int = 0
    interop_threads: int = 1
    host_workers: int = 2
    model_retry_max_s: float = 300.0
    task_events: bool = False


@dataclass(frozen=True)
class ProducerSettings:
    queue_url: str | None
    wait_time_s: int
    image_suffixes: list[str]
    max_queue_depth: int
    pause_poll_s: float
    input_prefixes: list[str]
    enqueue_batch: int
    checkpoint_every: int
    list_concurrency: int
    metrics_port: int = 0
    outage_visibility_s: int = 300
    outage_backoff_max_s: float = 30.0


@dataclass(frozen=True)
class TrainingSettings:
    image_size: int
    batch_size: int
    head_epochs: int
    finetune_epochs: int
    head_learning_rate: float
    finetune_learning_rate: float
    lr_schedule: str
    finetune_layers: int
    dropout: float
    weight_decay: float
    label_smoothing: float
    augment: bool
    class_weights: bool
    early_stopping_patience: int
    imagenet_weights: str | None
    mixed_precision: str
    seed: int
    deterministic: bool


@dataclass(frozen=True)
class FlowerSettings:
    port: int
    address: str
    basic_auth: str | None
    basic_auth_file: str | None


@dataclass(frozen=True)
class LogSettings:
    format: str = "text"


@dataclass(frozen=True)
class Settings:
    storage: StorageSettings
    images: ImageSettings
    detector: DetectorSettings
    crop: CropSettings
    classifier: ClassifierSettings
    results: ResultSettings
    broker: BrokerSettings
    worker: WorkerSettings
    producer: ProducerSettings
    training: TrainingSettings
    flower: FlowerSettings
    logs: LogSettings = field(default_factory=LogSettings)
    #: Where each setting came from, for start-up logs (``"detector.model": "env"``); not a setting.
    sources: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def replace(self, **sections: dict[str, Any]) -> Settings:
        """A copy with some keys changed: ``settings.replace(detector={"score_threshold": 0.3})``."""
        raw = self.to_dict()
        for section, values in sections.items():
            _merge(raw, {section: values}, origin="code", sources={})
        return _build(raw, dict(self.sources))

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Settings:
        """Settings from a full ``to_dict()`` (a copy sent in a message): checked like a file."""
        return _build(copy.deepcopy(raw), {})

    def to_dict(self, *, masked: bool = False) -> dict[str, Any]:
        """Every setting as plain data; ``masked`` hides secrets (passwords in URLs, Flower's
        credentials) for logs and ``--settings`` output."""
        raw = dataclasses.asdict(self)
        raw.pop("sources")
        if masked:
            for section, key in SECRETS:
                value = raw[section][key]
                if isinstance(value, str):
                    raw[section][key] = mask_secret(value)
        return raw


#: Settings that may hold a secret: shown masked (``Settings.to_dict(masked=True)``, ``mask_secret``).
SECRETS = (("broker", "url"), ("broker", "result_backend"), ("flower", "basic_auth"))


def mask_secret(value: str) -> str:
    """``redis://:s3cret@host/0`` -> ``redis://:***@host/0``; ``user:password`` -> ``user:***``."""
    if "://" in value:
        scheme, _, rest = value.partition("://")
        netloc, slash, path = rest.partition("/")
        if "@" in netloc:
            userinfo, _, host = netloc.rpartition("@")
            user = userinfo.split(":", 1)[0]
            netloc = f"{user}:***@{host}"
        return f"{scheme}://{netloc}{slash}{path}"
    if ":" in value:
        return value.split(":", 1)[0] + ":***"
    return value


_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:/@\s]*):[^@/\s]*@")


def mask_urls(text: str) -> str:
    """Every ``scheme://user:password@`` inside free ``text`` (an exception's message, a log line)
    with the password replaced by ``***``: for text that may quote a broker URL."""
    return _URL_USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)


# Range checks beyond types: key -> (predicate, what it must be).
_CHECKS: dict[str, tuple[typing.Callable[[Any], bool], str]] = {
    "detector.backend": (lambda v: v in ("torchvision", "detectron2"), "torchvision or detectron2"),
    "detector.score_threshold": (lambda v: 0.0 <= v <= 1.0, "between 0 and 1"),
    "detector.max_vehicles": (lambda v: v >= 1, "at least 1"),
    "detector.same_vehicle_iou": (lambda v: 0.0 < v <= 1.0, "above 0 and at most 1"),
    "detector.batch_size": (lambda v: v >= 1, "at least 1"),
    "classifier.batch_size": (lambda v: v >= 1, "at least 1"),
    "classifier.top_k": (lambda v: v >= 1, "at least 1"),
    "classifier.backend": (lambda v: v in ("tensorflow", "torch"), "tensorflow or torch"),
    "worker.threads": (lambda v: v >= 0, "0 (auto) or more"),
    "worker.interop_threads": (lambda v: v >= 1, "at least 1"),
    "worker.host_workers": (lambda v: v >= 1, "at least 1"),
    "crop.margin": (lambda v: 0.0 <= v <= 1.0, "between 0 and 1"),
    "crop.fill_value": (lambda v: 0 <= v <= 255, "between 0 and 255"),
    "crop.jpeg_quality": (lambda v: 1 <= v <= 100, "between 1 and 100"),
    "crop.size": (lambda v: v >= 16, "at least 16"),
    "images.max_pixels": (lambda v: v > 0, "positive"),
    "images.max_bytes": (lambda v: v > 0, "positive"),
    "images.max_decode_bytes": (lambda v: v > 0, "positive"),
    "images.max_aspect_ratio": (lambda v: v >= 1, "at least 1"),
    "images.max_side": (lambda v: v >= 64, "at least 64"),
    "producer.wait_time_s": (lambda v: 0 <= v <= 20, "between 0 and 20 (SQS limit)"),
    "producer.enqueue_batch": (lambda v: v >= 1, "at least 1"),
    "producer.checkpoint_every": (lambda v: v >= 1, "at least 1"),
    "producer.list_concurrency": (lambda v: 1 <= v <= 64, "between 1 and 64"),
    "producer.outage_visibility_s": (lambda v: 30 <= v <= 43200, "between 30 and 43200 (SQS limit)"),
    "producer.outage_backoff_max_s": (lambda v: 1 <= v <= 300, "between 1 and 300"),
    "training.mixed_precision": (lambda v: v in ("auto", "on", "off"), "auto, on or off"),
    "training.dropout": (lambda v: 0.0 <= v < 1.0, "between 0 and 1"),
    "worker.max_deliveries": (lambda v: v >= 1, "at least 1"),
    "worker.task_time_limit_s": (lambda v: v > 0, "positive"),
    "worker.max_memory_per_child_mb": (lambda v: v >= 0, "0 (no limit) or more"),
    "logs.format": (lambda v: v in ("text", "json"), "text or json"),
    "classifier.poll_interval_s": (lambda v: v >= 0, "0 (never) or more"),
    "results.prefix": (lambda v: bool(v), "a non-empty prefix (results must never overwrite inputs)"),
}


def load_settings(path: str | os.PathLike | None = None, env: typing.Mapping[str, str] | None = None) -> Settings:
    """Read the defaults, then ``path`` (or ``$VP_CONFIG``), then ``VP_SECTION__KEY`` variables."""
    env = os.environ if env is None else env
    sources: dict[str, str] = {}
    raw = _read_yaml(DEFAULTS_PATH)
    for key in _flatten(raw):
        sources[key] = "default"
    path = path or env.get("VP_CONFIG")
    if path:
        _merge(raw, _read_yaml(Path(path)), origin=str(path), sources=sources)
    _merge(raw, _env_overrides(env), origin="env", sources=sources)
    return _build(raw, sources)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as exc:
        raise ConfigError(f"settings file {path} does not exist") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"settings file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"settings file {path} must hold a mapping of sections")
    return data


def _env_overrides(env: typing.Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, text in env.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name or name == "VP_CONFIG":
            continue
        section, _, key = name[len(ENV_PREFIX) :].lower().partition("__")
        out.setdefault(section, {})[key] = _env_value(name, section, key, text)
    return out


def _env_value(name: str, section: str, key: str, text: str) -> Any:
    """A ``VP_*`` value parsed as its setting's type: YAML for lists, numbers and booleans, but the text
    itself for a string setting, so YAML 1.1's booleans (``off``, ``on``, ``yes``, ``no``) and numbers
    stay the string they were written as (``VP_TRAINING__MIXED_PRECISION=off`` is ``"off"``)."""
    if text == "":
        return None
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{name}: cannot parse {text!r}: {exc}") from exc
    section_cls = typing.get_type_hints(Settings).get(section)
    hint = typing.get_type_hints(section_cls).get(key) if dataclasses.is_dataclass(section_cls) else None
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if str in options and value is not None and not isinstance(value, str):
        return text.strip()
    return value


def _merge(base: dict[str, Any], update: dict[str, Any], *, origin: str, sources: dict[str, str]) -> None:
    for section, values in update.items():
        if section not in base:
            raise ConfigError(f"unknown settings section {section!r} (from {origin}); known: {sorted(base)}")
        if not isinstance(values, dict):
            raise ConfigError(f"settings section {section!r} (from {origin}) must be a mapping")
        for key, value in values.items():
            if key not in base[section]:
                raise ConfigError(
                    f"unknown setting {section}.{key} (from {origin}); known in {section}: {sorted(base[section])}"
                )
            base[section][key] = value
            sources[f"{section}.{key}"] = origin


def _flatten(raw: dict[str, Any]) -> list[str]:
    return [f"{section}.{key}" for section, values in raw.items() for key in values]


def _build(raw: dict[str, Any], sources: dict[str, str]) -> Settings:
    sections = {}
    hints = typing.get_type_hints(Settings)
    for section_field in dataclasses.fields(Settings):
        if section_field.name == "sources":
            continue
        cls = hints[section_field.name]
        values = raw.get(section_field.name, {})
        sections[section_field.name] = _build_section(section_field.name, cls, values)
    return Settings(**sections, sources=sources)


def _build_section(section: str, cls: type, values: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        name = f"{section}.{f.name}"
        if f.name not in values:
            raise ConfigError(f"setting {name} is missing")
        value = _coerce(name, values[f.name], hints[f.name])
        check = _CHECKS.get(name)
        if check and not check[0](value):
            raise ConfigError(f"setting {name}={value!r} must be {check[1]}")
        kwargs[f.name] = value
    return cls(**kwargs)


def _coerce(name: str, value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        inner = [o for o in options if o is not type(None)]
        return _coerce(name, value, inner[0])
    if origin is list:
        (item,) = typing.get_args(hint)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"setting {name} must be a list, got {value!r}")
        return [_coerce(name, v, item) for v in value]
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"setting {name} must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"setting {name} must be an integer, got {value!r}")
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"setting {name} must be a number, got {value!r}")
    if hint is str:
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"setting {name} must be a string, got {value!r}")
    raise ConfigError(f"setting {name} has an unsupported type {hint!r}")  # a bug in this module
