"""The Keras ResNet50 vehicle classifier: build it, save/load it as an artifact, run it on crops.

An artifact is a directory (or a ``.tar.gz`` of one) holding ``model.keras`` and ``manifest.json``.
The manifest carries what a caller needs to feed the model (like torchvision's ``Weights.meta`` or
timm's ``PretrainedCfg``): class names, input size, preprocessing, plus how the model was made.

    clf = load_classifier(settings.classifier, settings.storage)   # once per process
    answers = clf.classify([crop_rgb_uint8, ...])                    # many times
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import shutil
import socket
import tarfile
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from vehicle_core.config import ClassifierSettings, StorageSettings
from vehicle_core.errors import ConfigError, InvalidInputError, ModelLoadError
from vehicle_core.results.contract import Classification, ModelInfo
from vehicle_core.storage.safe_tar import extract_data

log = logging.getLogger(__name__)

MODEL_FILE = "model.keras"
MANIFEST_FILE = "manifest.json"
PREPROCESSING = "resnet50_caffe"  # keras.applications.resnet50.preprocess_input (BGR, ImageNet mean)
REQUIRED_KEYS = ("name", "version", "class_names", "input_size", "preprocessing", "keras_version", "created_at")
#: Where a demo artifact made by ``training.quickstart`` lives under storage.cache_dir.
DEMO_CACHE_NAME = "demo-classifier"
# Seconds a socket may stay silent while Keras downloads ImageNet weights: without it a network that
# swallows packets (rather than refusing them) would hang start-up for minutes.
_DOWNLOAD_TIMEOUT_S = 30.0


def letterbox(image: np.ndarray, size: int, fill: int = 0) -> np.ndarray:
    """Resize ``image`` (HxWx3 uint8) to ``size``x``size`` keeping its aspect, padding with ``fill``.

    Training and inference both call this, so the classifier sees crops shaped the same way.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] == 0 or image.shape[1] == 0:
        raise InvalidInputError(f"expected an HxWx3 RGB image, got shape {image.shape}")
    h, w = image.shape[:2]
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    # INTER_AREA averages when shrinking (no aliasing); it degrades to nearest-like when enlarging.
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(np.ascontiguousarray(image, dtype=np.uint8), (nw, nh), interpolation=interp)
    out = np.full((size, size, 3), fill, dtype=np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top : top + nh, left : left + nw] = resized
    return out


def preprocess(batch: Any, preprocessing: str = PREPROCESSING) -> Any:
    """Apply the manifest's preprocessing to a float batch of RGB 0-255 images (NumPy or tensor)."""
    if preprocessing != PREPROCESSING:
        raise ModelLoadError(f"unknown preprocessing {preprocessing!r}; this version knows {PREPROCESSING!r}")
    import keras

    return keras.applications.resnet50.preprocess_input(batch)


def build_classifier(
    class_names: Sequence[str],
    *,
    input_size: int,
    weights: str | os.PathLike | None = "imagenet",
    dropout: float = 0.3,
    weight_decay: float | None = None,
    storage: StorageSettings | None = None,
):
    """ResNet50 backbone (global average pooled) + Dropout + a new Dense softmax head.

    ``weights``: ``"imagenet"`` (Keras downloads them; needs internet), a local ``.h5``/``.keras``
    file of backbone weights, an ``s3://`` URI of one (needs ``storage``), or ``None``/``"none"``.
    ``weight_decay`` adds an L2 penalty to the head's kernel (AdamW decays the rest in training).
    The model takes RGB images already passed through :func:`preprocess`.
    """
    import keras

    if len(class_names) < 2 or len(set(class_names)) != len(class_names):
        raise ModelLoadError(f"need at least two distinct class names, got {list(class_names)}")
    backbone = keras.applications.ResNet50(
        include_top=False, pooling="avg", weights=_backbone_weights(weights, storage), input_shape=(input_size, input_size, 3)
    )
    inputs = keras.Input((input_size, input_size, 3), name="image")
    x = backbone(inputs)
    x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    reg = keras.regularizers.L2(weight_decay) if weight_decay else None
    # float32 output even under mixed precision: softmax in float16 loses small probabilities.
    outputs = keras.layers.Dense(
        len(class_names), activation="softmax", kernel_regularizer=reg, dtype="float32", name="head"
    )(x)
    return keras.Model(inputs, outputs, name="vehicle_resnet50")


def _backbone_weights(weights: str | os.PathLike | None, storage: StorageSettings | None) -> str | None:
    """Turn the ``weights`` argument into what ``keras.applications.ResNet50`` accepts, or fail clearly."""
    if weights is None or str(weights).lower() in ("none", "null", ""):
        return None
    text = str(weights)
    if text == "imagenet":
        return _imagenet_or_fail()
    if text.startswith("s3://"):
        if storage is None:
            raise ModelLoadError(f"backbone weights {text} are on S3 but no storage settings were given")
        from vehicle_core.storage import resolve_local

        text = str(resolve_local(text, storage))
    if not Path(text).is_file():
        raise ModelLoadError(f"backbone weights file {text} does not exist (expected a local .h5/.keras file)")
    return text


def _imagenet_or_fail() -> str:
    """Fetch Keras's ImageNet ResNet50 weights (cached in ~/.keras/models) or raise ModelLoadError."""
    import keras

    url = (
        "https://storage.googleapis.com/tensorflow/keras-applications/resnet/"
        "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
    )
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(_DOWNLOAD_TIMEOUT_S)
    try:
        # Same file name, hash and cache as keras.applications.ResNet50(weights="imagenet").
        return keras.utils.get_file(
            "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
            url,
            cache_subdir="models",
            file_hash="4d473c1dd8becc155b73f8504c6f6626",
        )
    except Exception as exc:  # Keras raises a bare Exception for URL failures; all mean "not available"
        raise ModelLoadError(
            f"ImageNet weights for ResNet50 could not be downloaded ({exc}). Without internet, pass a local "
            "weights file (.h5/.keras) or an s3:// URI of one (training.imagenet_weights), or 'none' to "
            "start from random weights."
        ) from exc
    finally:
        socket.setdefaulttimeout(previous)


# ---------------------------------------------------------------- artifacts


def make_manifest(
    *, name: str, version: str, class_names: Sequence[str], input_size: int, **extra: Any
) -> dict[str, Any]:
    """A manifest with the required keys filled in; ``extra`` (metrics, settings, ...) is kept as is."""
    import keras

    return {
        "name": name,
        "version": version,
        "class_names": list(class_names),
        "input_size": int(input_size),
        "preprocessing": PREPROCESSING,
        "keras_version": keras.__version__,
        "created_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        **extra,
    }


def save_artifact(model, manifest: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``model.keras`` + ``manifest.json`` into directory ``path``; a ``.tar.gz`` path gets an archive."""
    path = Path(path)
    _check_manifest(manifest, model, source=str(path))
    if path.name.endswith(".tar.gz"):
        with tempfile.TemporaryDirectory() as tmp:
            save_artifact(model, manifest, tmp)
            path.parent.mkdir(parents=True, exist_ok=True)
            with tarfile.open(path, "w:gz") as tar:
                for name in (MODEL_FILE, MANIFEST_FILE):
                    tar.add(Path(tmp) / name, arcname=name)
        return path
    path.mkdir(parents=True, exist_ok=True)
    model.save(path / MODEL_FILE)
    (path / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
    return path


def load_artifact(path: str | os.PathLike):
    """Load an artifact directory or ``.tar.gz``; returns ``(model, manifest)`` or raises ModelLoadError."""
    import keras

    from vehicle_core import threads

    threads.apply_loaded()  # the framework Keras just imported gets its threads before it starts

    directory = _artifact_dir(Path(path))
    try:
        manifest = json.loads((directory / MANIFEST_FILE).read_text())
    except FileNotFoundError as exc:
        raise ModelLoadError(f"{path}: no {MANIFEST_FILE}; not a classifier artifact") from exc
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{path}: {MANIFEST_FILE} is not valid JSON: {exc}") from exc
    if not (directory / MODEL_FILE).is_file():
        raise ModelLoadError(f"{path}: no {MODEL_FILE}; not a classifier artifact")
    try:
        model = keras.saving.load_model(directory / MODEL_FILE, compile=False)
    except Exception as exc:  # Keras raises ValueError/OSError/zipfile errors alike for a bad file
        raise ModelLoadError(f"{path}: cannot load {MODEL_FILE}: {exc}") from exc
    _check_manifest(manifest, model, source=str(path))
    return model, manifest


def _artifact_dir(path: Path) -> Path:
    if path.is_dir():
        return path
    if path.is_file() and tarfile.is_tarfile(path):
        # Unpack next to a stable name so repeated loads of one archive reuse the same directory.
        target = path.with_name(path.name.removesuffix(".tar.gz").removesuffix(".tgz") + ".unpacked")
        if not (target / MANIFEST_FILE).is_file():
            tmp = Path(tempfile.mkdtemp(dir=path.parent))
            try:
                with tarfile.open(path) as tar:
                    extract_data(tar, tmp)  # refuses absolute paths and links out of tmp (vehicle_core/storage/safe_tar.py)
            except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:  # truncated or corrupt
                shutil.rmtree(tmp, ignore_errors=True)
                raise ModelLoadError(f"classifier artifact {path} is truncated or corrupt ({exc!r}); publish "
                                     "it again") from exc
            shutil.rmtree(target, ignore_errors=True)
            tmp.rename(target)
        return target
    raise ModelLoadError(f"classifier artifact {path} does not exist or is neither a directory nor a .tar.gz")


def _check_manifest(manifest: Any, model, *, source: str) -> None:
    if not isinstance(manifest, dict):
        raise ModelLoadError(f"{source}: manifest must be a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise ModelLoadError(f"{source}: manifest lacks {missing}")
    names = manifest["class_names"]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        raise ModelLoadError(f"{source}: manifest class_names must be a list of distinct strings")
    outputs = model.output_shape[-1]
    if len(names) != outputs:
        raise ModelLoadError(f"{source}: manifest names {len(names)} classes but the model outputs {outputs}")
    size = manifest["input_size"]
    if list(model.input_shape[1:3]) != [size, size]:
        raise ModelLoadError(f"{source}: manifest input_size {size} but the model takes {model.input_shape[1:3]}")
    if manifest["preprocessing"] != PREPROCESSING:
        raise ModelLoadError(f"{source}: unknown preprocessing {manifest['preprocessing']!r}")


# ---------------------------------------------------------------- inference


class VehicleClassifier:
    """A loaded classifier: build once, then :meth:`classify` batches of crops many times.

    Runs on the Keras backend of this process (``keras.backend.backend()``): ``tensorflow`` (one
    traced ``tf.function``) or ``torch`` (eager, under ``torch.inference_mode``). The same artifact
    serves on both; see :func:`use_backend`.
    """

    def __init__(self, model, manifest: dict[str, Any], *, batch_size: int = 32, top_k: int = 3, device: str = "auto"):
        import keras

        self.model = model
        self.manifest = manifest
        self.class_names: list[str] = list(manifest["class_names"])
        self.input_size: int = int(manifest["input_size"])
        self.info = ModelInfo(name=str(manifest["name"]), version=str(manifest["version"]))
        self.batch_size = batch_size
        self.top_k = min(top_k, len(self.class_names))
        self.backend = keras.backend.backend()
        if self.backend == "tensorflow":
            self._predict = _tf_predictor(model, manifest, self.input_size, device)
        elif self.backend == "torch":
            self._predict = _torch_predictor(model, manifest, device)
        else:
            raise ModelLoadError(f"Keras backend {self.backend!r} is not served; use tensorflow or torch")

    @classmethod
    def from_artifact(cls, path: str | os.PathLike, **kwargs: Any) -> VehicleClassifier:
        """Load an artifact directory or ``.tar.gz`` (see :func:`load_artifact`)."""
        model, manifest = load_artifact(path)
        return cls(model, manifest, **kwargs)

    def probabilities(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """Softmax probabilities, one row per crop (RGB uint8 of any size), in ``class_names`` order."""
        if not crops:
            return np.zeros((0, len(self.class_names)), dtype=np.float32)
        rows = []
        for start in range(0, len(crops), self.batch_size):
            chunk = crops[start : start + self.batch_size]
            batch = np.stack([letterbox(np.asarray(c), self.input_size) for c in chunk]).astype(np.float32)
            rows.append(self._predict(batch))
        return np.concatenate(rows).astype(np.float32)

    def classify(self, crops: Sequence[np.ndarray]) -> list[Classification]:
        """One :class:`Classification` per crop: best label, its probability and the top-k, best first."""
        out = []
        for row in self.probabilities(crops):
            order = np.argsort(-row, kind="stable")[: self.top_k]
            top = tuple((self.class_names[i], float(row[i])) for i in order)
            out.append(Classification(label=top[0][0], confidence=top[0][1], top_k=top))
        return out


def _tf_predictor(model, manifest: dict[str, Any], size: int, device: str):
    """float32 NHWC batch (NumPy) -> probabilities (NumPy), through one traced graph."""
    import tensorflow as tf

    tf_device = _tf_device(device)
    # One traced graph for every batch (batch dimension left open): no per-call Keras predict overhead.
    fn = tf.function(
        lambda x: model(preprocess(x, manifest["preprocessing"]), training=False),
        input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)],
    )

    def predict(batch: np.ndarray) -> np.ndarray:
        with tf.device(tf_device):
            return fn(tf.constant(batch)).numpy()

    return predict


def _tf_device(device: str) -> str | None:
    import tensorflow as tf

    if device == "cpu":
        return "/CPU:0"
    gpus = tf.config.list_logical_devices("GPU")
    if device == "gpu" and not gpus:
        raise ModelLoadError("classifier.device is 'gpu' but TensorFlow sees no GPU")
    return gpus[0].name if gpus else "/CPU:0"


def _torch_predictor(model, manifest: dict[str, Any], device: str):
    """float32 NHWC batch (NumPy) -> probabilities (NumPy), eager PyTorch without autograd."""
    import torch

    if device == "gpu" and not torch.cuda.is_available():
        raise ModelLoadError("classifier.device is 'gpu' but PyTorch sees no GPU")
    # Keras's torch backend keeps the weights on its own device (cuda when present): inputs follow them.
    weights = model.weights[0].value if model.weights else None
    target = weights.device if weights is not None else torch.device("cpu")
    if device == "cpu" and target.type != "cpu":
        raise ModelLoadError("classifier.device is 'cpu' but Keras put the model on "
                             f"{target}; set CUDA_VISIBLE_DEVICES= for a CPU-only torch classifier")
    preprocessing = manifest["preprocessing"]

    def predict(batch: np.ndarray) -> np.ndarray:
        # Preprocess on the host (NumPy, the same arithmetic as the TensorFlow graph's): one copy to the device.
        x = torch.from_numpy(np.ascontiguousarray(preprocess(batch, preprocessing))).to(target)
        with torch.inference_mode():
            return model(x, training=False).detach().cpu().numpy()

    return predict


def use_backend(backend: str) -> None:
    """Make this process's Keras run on ``backend`` (``classifier.backend``): tensorflow | torch.

    Keras reads ``KERAS_BACKEND`` once, at its first import. Before that, this sets the variable;
    after it (or when the variable already names another backend) a mismatch is a ConfigError, so
    a worker never silently serves on the framework it was not meant to load.
    """
    import sys

    declared = os.environ.get("KERAS_BACKEND")
    if declared and declared != backend:
        raise ConfigError(f"classifier.backend is {backend!r} but KERAS_BACKEND={declared!r}; "
                          "set both to the same backend")
    if "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = backend
        return
    import keras

    if keras.backend.backend() != backend:
        raise ConfigError(f"classifier.backend is {backend!r} but Keras was already imported on "
                          f"{keras.backend.backend()!r} in this process; start the process with "
                          f"KERAS_BACKEND={backend}")


def load_classifier(settings: ClassifierSettings, storage: StorageSettings, *,
                    sha256: str | None = None) -> VehicleClassifier:
    """The classifier named by the settings: ``model``, else the registry's ``current`` version, else
    a demo artifact cached by ``vehicle-train quickstart``; ModelLoadError when none is there, or when
    the artifact's SHA-256 differs from ``sha256`` (or from the one the registry pointer names).
    A ``fake://`` model is the fixed-cost stand-in of vehicle_core/fake_models.py (no Keras import)."""
    from vehicle_core.fake_models import FakeClassifier, is_fake

    if is_fake(settings.model):
        return FakeClassifier(settings)  # type: ignore[return-value]
    use_backend(settings.backend)
    path = _resolve_model(settings, storage, sha256)
    log.info("loading classifier from %s (Keras backend %s)", path, settings.backend)
    return VehicleClassifier.from_artifact(
        path, batch_size=settings.batch_size, top_k=settings.top_k, device=settings.device
    )


def _resolve_model(settings: ClassifierSettings, storage: StorageSettings, sha256: str | None) -> Path:
    if settings.model:
        return _local(settings.model, sha256, storage=storage)
    if settings.registry:
        from vehicle_core.registry_pointer import current_artifact

        return _local(*current_artifact(settings.registry, storage), storage=storage)
    demo = Path(storage.cache_dir).expanduser() / DEMO_CACHE_NAME
    if (demo / MANIFEST_FILE).is_file():
        return demo
    raise ModelLoadError(
        "no classifier configured: set classifier.model (a local artifact directory/.tar.gz or s3:// URI) "
        "or classifier.registry (s3://bucket/models/classifier), or run `vehicle-train quickstart`"
    )


def _local(uri: str, sha256: str | None = None, *, storage: StorageSettings) -> Path:
    from vehicle_core.storage import verify_sha256

    if uri.startswith("s3://"):
        from vehicle_core.storage import resolve_local

        return Path(resolve_local(uri, storage, sha256=sha256))
    path = Path(uri).expanduser()
    if sha256 is not None:
        verify_sha256(path, sha256, uri)
    return path
