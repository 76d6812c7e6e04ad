"""One typed settings object: every setting declared once, below; overridden by ``$VP_CONFIG`` and ``VP_*``.

Each setting is one field of a frozen section dataclass, written with :func:`setting`: its type (the
annotation), its default, what it does (``doc``, the operators' reference) and the values it accepts
(``choices``, ``minimum``, ``maximum`` ...). From that one declaration come the defaults, the checks,
``vehicle-classify --settings`` (:func:`settings_lines`) and the table in docs/settings.md
(``python -m vehicle_core.cli.settings_doc markdown``; ``... yaml`` prints every default as commented YAML,
a starting point for a ``$VP_CONFIG`` file).

How settings are read (:func:`load_settings`):
  1. the declared defaults;
  2. the YAML file named by ``path`` or ``$VP_CONFIG``, if set (only the keys it names change);
  3. environment variables ``VP_<SECTION>__<KEY>``, e.g. ``VP_DETECTOR__SCORE_THRESHOLD=0.6`` or
     ``VP_PRODUCER__IMAGE_SUFFIXES='[.jpg, .png]'``, parsed as the setting's type: YAML for numbers,
     booleans and lists, the text itself for a string setting (``VP_TRAINING__MIXED_PRECISION=off``
     is ``"off"``); an empty value is null.
An unknown key or a value of the wrong type or out of range stops start-up with a message naming the
key and where its value came from. Build a component from the settings with its ``from_settings``.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from vehicle_core.errors import ConfigError

ENV_PREFIX = "VP_"


def setting(
    default: Any,
    doc: str,
    *,
    choices: tuple[str, ...] | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    above: float | None = None,
    below: float | None = None,
    note: str | None = None,
    check: typing.Callable[[Any], bool] | None = None,
    must: str | None = None,
    secret: bool = False,
) -> Any:
    """One setting: a dataclass field with its default, and in its metadata what it does (``doc``) and
    what it accepts. ``choices``: the only values allowed; ``minimum``/``maximum``: inclusive bounds,
    ``above``/``below``: exclusive ones; ``note``: why, shown after the bounds (``SQS limit``);
    ``check`` with ``must``: a rule bounds cannot say, and how to say it; ``secret``: shown masked."""
    if not doc or not doc.strip():
        raise TypeError("every setting needs a doc")
    if check is not None and not must:
        raise TypeError("a check needs its must= text")
    metadata = {"doc": doc, "choices": choices, "minimum": minimum, "maximum": maximum, "above": above,
                "below": below, "note": note, "check": check, "must": must, "secret": secret}
    if isinstance(default, list):
        frozen = tuple(default)
        return field(default_factory=lambda: list(frozen), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class StorageSettings:
    endpoint_url: str | None = setting(
        None, "S3 endpoint; null = boto3's own choice (AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, AWS)")
    region: str = setting("us-east-1", "region used when the credential chain names none")
    max_attempts: int = setting(
        8, "botocore attempts per call, adaptive retry mode (throttling, 5xx, timeouts)", minimum=1)
    connect_timeout_s: float = setting(5.0, "seconds to open a connection to S3", above=0)
    read_timeout_s: float = setting(30.0, "seconds to wait for S3 to answer", above=0)
    cache_dir: str = setting("~/.cache/vehicle-pipeline", "local copies of s3:// model artifacts and weights")
    max_pool_connections: int = setting(
        16, "HTTP connections one client keeps open (concurrent fetches of a batch share them)", minimum=1)
    lean_requests: bool = setting(
        True, "the GET of an image and the PUT of a result as one request signed with botocore's signer, once "
        "a boto3 call has shown the bucket's endpoint (about half the CPU of a boto3 call); any answer but "
        "success goes through boto3, as does every other call; off behind an HTTP(S) proxy")


@dataclass(frozen=True)
class ImageSettings:
    max_pixels: int = setting(
        40_000_000, "refuse images with width*height above this, read from the header before decoding", above=0)
    max_bytes: int = setting(52_428_800, "refuse objects larger than this many bytes (50 MiB)", above=0)
    max_decode_bytes: int = setting(
        256 << 20,
        "refuse images whose decoding takes more memory than this (estimated per decoder path: OpenCV's raw "
        "array + 8-bit copies, or PIL's storage + the reduced image; 256 MiB); also the budget that decodes "
        "running at once in one process share", above=0)
    max_aspect_ratio: float = setting(
        20.0, "refuse images whose longer side is more than this many times the shorter", minimum=1)
    max_side: int = setting(
        2048, "the detect stage downscales images whose longer side exceeds this (boxes are reported in "
        "original pixels)", minimum=64)


@dataclass(frozen=True)
class DetectorSettings:
    backend: str = setting("torchvision", "detection framework", choices=("torchvision", "detectron2"))
    model: str = setting(
        "zoo://synthetic-maskrcnn-tiny",
        "detector artifact: zoo://NAME, a local directory/file, or s3://bucket/key; "
        "fake://detector?cpu_ms=10&vehicles=3 = a fixed-cost stand-in for benchmarks (vehicle_core/fake_models.py)")
    device: str = setting("auto", "auto (cuda when present, else cpu) | cpu | cuda | cuda:N")
    score_threshold: float = setting(0.5, "drop detections scoring below this", minimum=0, maximum=1)
    min_box_size: float = setting(12.0, "drop boxes whose shorter side is below this many pixels")
    max_vehicles: int = setting(20, "keep at most this many vehicles per image, highest score first", minimum=1)
    same_vehicle_iou: float = setting(
        0.6, "a box overlapping a higher-scoring vehicle above this IoU is that vehicle again (another class); "
        "1 = keep all", above=0, maximum=1)
    vehicle_classes: list[str] = setting(
        ["car", "motorcycle", "bus", "truck"], "detector (COCO) classes that count as vehicles")
    batch_size: int = setting(4, "images per forward pass", minimum=1)
    in_model_filter: bool = setting(
        True, "torchvision: drop non-vehicles and low scores before NMS and the mask head, masks at box size; "
        "false = the model as built")
    allow_pickle: bool = setting(
        False, "detectron2: load .pkl checkpoints (pickle runs code; the model zoo's are .pkl); .pth never needs it")


@dataclass(frozen=True)
class CropSettings:
    margin: float = setting(
        0.08, "fraction of the box's width/height added on each side before cropping", minimum=0, maximum=1)
    square: bool = setting(True, "pad the crop to the classifier's aspect (square) instead of stretching it")
    mask_background: bool = setting(True, "with a mask, paint everything outside the vehicle with fill_value")
    fill_value: int = setting(0, "grey level used for padding and blanked background", minimum=0, maximum=255)
    size: int = setting(
        160, "crops travel between workers resized so their longer side is at most this", minimum=16)
    jpeg_quality: int = setting(92, "quality of crops encoded for the classify queue", minimum=1, maximum=100)


@dataclass(frozen=True)
class ClassifierSettings:
    model: str | None = setting(
        None, "classifier artifact: local directory/.tar.gz or s3://...; null = registry pointer, then demo "
        "cache; fake://classifier?cpu_ms=1 = a fixed-cost stand-in for benchmarks")
    registry: str | None = setting(
        None, "s3://bucket/prefix of the model registry; the 'current' pointer there names the version served")
    batch_size: int = setting(32, "crops per forward pass", minimum=1)
    top_k: int = setting(3, "alternatives reported per vehicle", minimum=1)
    device: str = setting("auto", "where the classifier runs", choices=("auto", "cpu", "gpu"))
    backend: str = setting(
        "tensorflow", "Keras backend serving the model (torch: no TensorFlow in the process; same artifact)",
        choices=("tensorflow", "torch"))
    poll_interval_s: float = setting(
        30.0, "with a registry, re-read its 'current' pointer at most this often and swap the classifier "
        "between batches; 0 = only at start", minimum=0)


@dataclass(frozen=True)
class ResultSettings:
    bucket: str | None = setting(None, "bucket for result documents; null = the source object's bucket")
    prefix: str = setting(
        "results/", "result key = prefix + source key + \".json\" (prefix + source bucket + \"/\" + key + "
        "\".json\" in a results bucket of its own; `results/_long/<sha256>.json` when too long for S3)",
        check=bool, must="a non-empty prefix (results must never overwrite inputs)")
    conditional_writes: bool = setting(
        True, "write results with S3 conditional requests (PUT If-None-Match / If-Match: 2 S3 requests per "
        "image); false = HEAD the source before each PUT (4 requests), for S3-compatible stores that "
        "ignore those headers")


@dataclass(frozen=True)
class BrokerSettings:
    url: str = setting(
        "redis://127.0.0.1:6379/0", "Celery broker: redis://host:port/db (one Redis), or sqs:// (Amazon SQS; "
        "credentials from the AWS chain, endpoint from AWS_ENDPOINT_URL_SQS / AWS_ENDPOINT_URL; needs state_url)",
        secret=True, check=lambda url: broker_kind(url) is not None, must="a redis://, rediss:// or sqs:// URL")
    state_url: str | None = setting(
        None, "Redis keeping the crash ledger and the dead-letter list; null = url (then a Redis). Required with "
        "an sqs:// broker", secret=True, check=lambda url: url is None or broker_kind(url) == "redis",
        must="null or a redis:// (rediss://) URL")
    region: str = setting("us-east-1", "region of an sqs:// broker's queues")
    result_backend: str | None = setting(
        None, "null = no result backend; results go to S3, not Redis", secret=True)
    visibility_timeout_s: int = setting(
        3600, "an unacked task is redelivered after this many seconds (Redis: the workers' restore sweep; SQS: "
        "the VisibilityTimeout of the queues kombu creates, at most 43200)", minimum=1)
    restore_interval_s: int = setting(
        10, "how often a worker looks for unacked tasks older than visibility_timeout_s, seconds", minimum=1)
    detect_queue: str = setting("detect", "queue of the detect-and-crop tasks (PyTorch workers)")
    classify_queue: str = setting("classify", "queue of the classify tasks (TensorFlow workers)")
    train_queue: str = setting(
        "train", "queue of sweep trials (`vehicle-train sweep --via celery`, training.trial_worker)")
    train_visibility_timeout_s: int = setting(
        43200, "a trial unacked this long is redelivered (its own unacked set: detect/classify timeouts never "
        "touch it)", minimum=1)

    @property
    def kind(self) -> str:
        """``redis`` or ``sqs``: which transport carries the task messages."""
        return broker_kind(self.url) or "redis"

    @property
    def state_redis_url(self) -> str:
        """The Redis of the crash ledger and the dead list: ``state_url``, else the broker itself."""
        if self.state_url:
            return self.state_url
        if self.kind != "redis":
            raise ConfigError("broker.url is an SQS broker: set broker.state_url (VP_BROKER__STATE_URL) to a "
                              "redis:// URL for the crash ledger and the dead-letter list")
        return self.url


def broker_kind(url: str | None) -> str | None:
    """``redis`` (redis://, rediss://), ``sqs`` (sqs://), or None for any other URL."""
    scheme = url.split("://", 1)[0].lower() if url and "://" in url else ""
    return {"redis": "redis", "rediss": "redis", "sqs": "sqs"}.get(scheme)


@dataclass(frozen=True)
class WorkerSettings:
    prefetch_multiplier: int = setting(1, "messages reserved per process beyond the one running", minimum=0)
    batch_flush_every: int = setting(
        16, "a batching worker runs its model once this many requests are buffered", minimum=1)
    batch_flush_interval_s: float = setting(
        0.2, "... or once this many seconds passed since the first buffered request", above=0)
    max_retries: int = setting(
        8, "retries of a transient error before giving up (then an error result)", minimum=0)
    retry_backoff_max_s: int = setting(
        120, "cap of the exponential backoff between retries, seconds", minimum=0)
    metrics_port: int = setting(
        0, "Prometheus /metrics port of a worker process; 0 = not served", minimum=0, maximum=65535)
    max_deliveries: int = setting(
        3, "a message whose worker process died this many times while working on it gets a worker_crashed "
        "result", minimum=1)
    task_time_limit_s: float = setting(
        300.0, "one task (or classify batch) may run this long; then a timeout result (soft), and 30 s later "
        "the process is replaced", above=0)
    max_memory_per_child_mb: int = setting(
        4096, "a pool process whose memory grew past this is replaced after its task (0 = never)", minimum=0)
    threads: int = setting(
        0, "intra-op threads of each process's frameworks (torch, TensorFlow, OpenCV); 0 = usable cores // "
        "(host_workers x pool processes)", minimum=0)
    interop_threads: int = setting(
        1, "inter-op threads (torch, TensorFlow); inference graphs here run one op at a time, more only "
        "contend", minimum=1)
    host_workers: int = setting(
        2, "worker commands sharing this host's cores (a detect and a classify worker, as the README starts "
        "them); 1 on a host that runs one worker", minimum=1)
    model_retry_max_s: float = setting(
        300.0, "a worker whose model cannot load stops consuming its queue and tries again after 5 s, 10 s, "
        "... up to this many seconds", above=0)
    task_events: bool = setting(
        False, "send Celery task events (Flower's task list; about 5 Redis PUBLISHes per image, 11% of the "
        "broker's commands). false: Flower still lists workers (heartbeats) and queue lengths (broker), not "
        "tasks; vehicle-flower then stops Flower from switching them on. The demo sets true")


@dataclass(frozen=True)
class ProducerSettings:
    queue_url: str | None = setting(None, "SQS queue receiving the bucket's S3 event notifications")
    wait_time_s: int = setting(20, "SQS long-poll wait, seconds", minimum=0, maximum=20, note="SQS limit")
    image_suffixes: list[str] = setting(
        [".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"], "keys with other suffixes are ignored")
    max_queue_depth: int = setting(
        5000, "backfill and the listener pause while the detect queue holds more messages than this", minimum=1)
    pause_poll_s: float = setting(2.0, "how often a paused backfill looks at the queue depth again", above=0)
    input_prefixes: list[str] = setting(
        [], "only keys under one of these prefixes are inputs; [] = every key (results prefix always excluded)")
    enqueue_batch: int = setting(
        500, "messages published per Redis round trip (backfill, reconcile --enqueue)", minimum=1)
    checkpoint_every: int = setting(
        10000, "backfill --checkpoint records its position every this many listed keys (a resumed run re-sends "
        "at most this many)", minimum=1)
    list_concurrency: int = setting(
        1, "backfill lists this many sub-prefixes (one delimiter level down) in parallel; 1 = one listing "
        "stream", minimum=1, maximum=64)
    metrics_port: int = setting(
        0, "Prometheus /metrics port of `vehicle-producer listen`; 0 = not served", minimum=0, maximum=65535)
    outage_visibility_s: int = setting(
        300, "broker unreachable: the listener stops receiving and keeps the SQS messages in hand invisible "
        "this long, extended again every third of it", minimum=30, maximum=43200, note="SQS limit")
    outage_backoff_max_s: float = setting(
        30.0, "... and probes the broker after 1, 2, 4 ... seconds, at most this long apart", minimum=1,
        maximum=300)


@dataclass(frozen=True)
class TrainingSettings:
    image_size: int = setting(128, "classifier input side, pixels", minimum=16)
    batch_size: int = setting(32, "images per training step", minimum=1)
    head_epochs: int = setting(3, "stage 1: train the new head, backbone frozen", minimum=0)
    finetune_epochs: int = setting(2, "stage 2: fine-tune the top of the backbone", minimum=0)
    head_learning_rate: float = setting(0.001, "Adam learning rate of stage 1", above=0)
    finetune_learning_rate: float = setting(0.0001, "Adam learning rate of stage 2", above=0)
    lr_schedule: str = setting(
        "cosine", "learning-rate schedule; cosine: each stage's rate decays to 0 by its last epoch",
        choices=("constant", "cosine"))
    finetune_layers: int = setting(
        30, "backbone layers (from the top) unfrozen in stage 2; -1 = all", minimum=-1)
    dropout: float = setting(0.3, "dropout before the classification layer", minimum=0, below=1)
    weight_decay: float = setting(0.0001, "AdamW weight decay", minimum=0)
    label_smoothing: float = setting(0.1, "cross-entropy label smoothing", minimum=0, below=1)
    augment: bool = setting(True, "random flip, zoom/crop and colour jitter on training images")
    class_weights: bool = setting(True, "weight the loss by inverse class frequency")
    early_stopping_patience: int = setting(
        2, "epochs without val_loss improvement before stopping a stage", minimum=0)
    imagenet_weights: str | None = setting(
        "imagenet", "imagenet (download), a local .h5/.keras path, s3:// URI, or none")
    mixed_precision: str = setting("auto", "auto = on GPU only", choices=("auto", "on", "off"))
    seed: int = setting(1234, "seed of shuffling, augmentation and initialisation")
    deterministic: bool = setting(True, "TensorFlow op determinism: same seed, same machine -> same metrics")


@dataclass(frozen=True)
class FlowerSettings:
    port: int = setting(5555, "Flower's HTTP port", minimum=1, maximum=65535)
    address: str = setting(
        "127.0.0.1", "interface Flower listens on; 0.0.0.0 only behind a firewall or proxy you trust")
    basic_auth: str | None = setting(
        None, "user:password Flower demands (prefer basic_auth_file); the demo's admin:change-me is refused "
        "elsewhere", secret=True)
    basic_auth_file: str | None = setting(
        None, "a file holding user:password (a mounted secret); wins over basic_auth")


@dataclass(frozen=True)
class LogSettings:
    format: str = setting(
        "text", "log lines; json: one object a line, with task id, bucket and key when known; --log-format "
        "overrides", choices=("text", "json"))


@dataclass(frozen=True)
class Settings:
    storage: StorageSettings = field(default_factory=StorageSettings)
    images: ImageSettings = field(default_factory=ImageSettings)
    detector: DetectorSettings = field(default_factory=DetectorSettings)
    crop: CropSettings = field(default_factory=CropSettings)
    classifier: ClassifierSettings = field(default_factory=ClassifierSettings)
    results: ResultSettings = field(default_factory=ResultSettings)
    broker: BrokerSettings = field(default_factory=BrokerSettings)
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    producer: ProducerSettings = field(default_factory=ProducerSettings)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    flower: FlowerSettings = field(default_factory=FlowerSettings)
    logs: LogSettings = field(default_factory=LogSettings)
    #: Where each setting came from, for start-up logs (``"detector.model": "env"``); not a setting.
    sources: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def replace(self, **sections: dict[str, Any]) -> Settings:
        """A copy with some keys changed: ``settings.replace(detector={"score_threshold": 0.3})``."""
        raw = self.to_dict()
        sources = dict(self.sources)
        for section, values in sections.items():
            _merge(raw, {section: values}, origin="code", sources=sources)
        return _build(raw, sources)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Settings:
        """Settings from a full ``to_dict()`` (a copy sent in a message): checked like a file."""
        return _build(copy.deepcopy(raw), {}, origin="a settings dict")

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


class Declared(NamedTuple):
    """One declared setting, as the docs, the checks and ``--settings`` read it."""

    section: str
    key: str
    type: Any  # the resolved annotation: str, int, float, bool, list[str], str | None
    default: Any
    doc: str
    choices: tuple[str, ...] | None
    requirement: str | None  # "between 0 and 1", "torchvision or detectron2"; None = any value of the type
    secret: bool
    check: typing.Callable[[Any], bool] | None  # None = any value of the type

    @property
    def name(self) -> str:
        return f"{self.section}.{self.key}"

    @property
    def env_var(self) -> str:
        return f"{ENV_PREFIX}{self.section.upper()}__{self.key.upper()}"


@functools.cache
def declared_settings() -> tuple[Declared, ...]:
    """Every setting in declaration order (the order of ``to_dict()`` and ``--settings``)."""
    out = []
    for section_field in dataclasses.fields(Settings):
        if section_field.name == "sources":
            continue
        cls = typing.get_type_hints(Settings)[section_field.name]
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            meta = f.metadata
            if "doc" not in meta:
                raise TypeError(f"{cls.__name__}.{f.name} is not declared with setting()")  # a bug here
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default
            out.append(Declared(section_field.name, f.name, hints[f.name], default, meta["doc"], meta["choices"],
                                _requirement(meta), meta["secret"], _predicate(meta)))
    return tuple(out)


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _either(options: typing.Sequence[str]) -> str:
    return options[0] if len(options) == 1 else ", ".join(options[:-1]) + " or " + options[-1]


def _requirement(meta: typing.Mapping[str, Any]) -> str | None:
    """What a value must be, in words, from a setting's bounds and choices."""
    if meta["must"]:
        return meta["must"]
    if meta["choices"]:
        return _either(meta["choices"])
    low = meta["minimum"] if meta["minimum"] is not None else meta["above"]
    high = meta["maximum"] if meta["maximum"] is not None else meta["below"]
    if meta["minimum"] is not None and meta["maximum"] is not None:
        text = f"between {_number(low)} and {_number(high)}"
    elif meta["above"] == 0 and high is None:
        text = "positive"
    else:
        parts = []
        if low is not None:
            parts.append(f"at least {_number(low)}" if meta["minimum"] is not None else f"above {_number(low)}")
        if high is not None:
            parts.append(f"at most {_number(high)}" if meta["maximum"] is not None else f"below {_number(high)}")
        if not parts:
            return None
        text = " and ".join(parts)
    return f"{text} ({meta['note']})" if meta["note"] else text


def _predicate(meta: typing.Mapping[str, Any]) -> typing.Callable[[Any], bool] | None:
    tests: list[typing.Callable[[Any], bool]] = []
    if meta["check"] is not None:
        tests.append(meta["check"])
    if meta["choices"]:
        tests.append(lambda v, choices=meta["choices"]: v in choices)
    if meta["minimum"] is not None:
        tests.append(lambda v, m=meta["minimum"]: v >= m)
    if meta["above"] is not None:
        tests.append(lambda v, m=meta["above"]: v > m)
    if meta["maximum"] is not None:
        tests.append(lambda v, m=meta["maximum"]: v <= m)
    if meta["below"] is not None:
        tests.append(lambda v, m=meta["below"]: v < m)
    if not tests:
        return None
    return lambda v: v is None or all(t(v) for t in tests)


@functools.cache
def _by_name() -> dict[str, Declared]:
    return {d.name: d for d in declared_settings()}


#: Settings that may hold a secret: shown masked (``Settings.to_dict(masked=True)``, ``mask_secret``).
SECRETS = tuple((d.section, d.key) for d in declared_settings() if d.secret)


def settings_lines(settings: Settings) -> list[str]:
    """``vehicle-classify --settings``: one ``key = value  (source)`` line per setting, secrets masked."""
    raw = settings.to_dict(masked=True)
    return [f"{d.name} = {raw[d.section][d.key]!r}  ({settings.sources.get(d.name, 'default')})"
            for d in declared_settings()]


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


def load_settings(path: str | os.PathLike | None = None, env: typing.Mapping[str, str] | None = None) -> Settings:
    """Read the declared defaults, then ``path`` (or ``$VP_CONFIG``), then ``VP_SECTION__KEY`` variables."""
    env = os.environ if env is None else env
    raw = Settings().to_dict()
    sources = {d.name: "default" for d in declared_settings()}
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
    declared = _by_name().get(f"{section}.{key}")  # an unknown key is refused by _merge, naming it
    hint = declared.type if declared else None
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


def _build(raw: dict[str, Any], sources: dict[str, str], *, origin: str = "default") -> Settings:
    """Typed, checked settings from plain data; an error names the key and where its value came from
    (``sources``, else ``origin``)."""
    sections: dict[str, dict[str, Any]] = {}
    for d in declared_settings():
        values = raw.get(d.section, {})
        where = sources.get(d.name, origin)
        where = f"env {d.env_var}" if where == "env" else where
        if d.key not in values:
            raise ConfigError(f"setting {d.name} is missing (from {where})")
        value = _coerce(f"{d.name} (from {where})", values[d.key], d.type)
        if d.check is not None and not d.check(value):
            raise ConfigError(f"setting {d.name}={value!r} (from {where}) must be {d.requirement}")
        sections.setdefault(d.section, {})[d.key] = value
    hints = typing.get_type_hints(Settings)
    return Settings(**{section: hints[section](**values) for section, values in sections.items()}, sources=sources)


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
