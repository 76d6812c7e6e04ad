"""The detectron2 detector backend: the card's Mask/Faster R-CNN R101-FPN, batched.

``detector.model`` may name

* ``detectron2://<model-zoo config>``, e.g. ``detectron2://COCO-InstanceSegmentation/mask_rcnn_R_101_FPN_3x.yaml``
  (the default of the GPU image) or ``detectron2://COCO-Detection/faster_rcnn_R_101_FPN_3x.yaml``: the
  zoo's config and its trained COCO checkpoint, which detectron2 downloads once (needs internet) into
  its cache;
* a local directory, ``.tar.gz`` or ``s3://`` URI of a detector artifact: ``manifest.json``
  {name, version, backend: "detectron2", config, weights, categories (optional)} where ``config`` is
  a zoo config name or a YAML file inside the artifact and ``weights`` the checkpoint file inside it
  (``model_final_*.pkl`` as downloaded from the zoo, or your own ``.pth``). This is how offline
  machines run it: download the checkpoint where there is internet, put it next to a manifest, upload.

detectron2 is imported only when this backend is built; it is installed in ``Dockerfile.gpu`` (it is
not on PyPI). Unlike ``DefaultPredictor`` (one image per call), :meth:`Detectron2Detector.detect` runs
the model on ``detector.batch_size`` images per forward pass.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vehicle_core.config import DetectorSettings, StorageSettings
from vehicle_core.detection.base import DETECTOR_REGISTRY, BatchedDetector, keep_triton_away_from_tensorflow
from vehicle_core.errors import ModelLoadError
from vehicle_core.results import Detection, ModelInfo

ZOO_SCHEME = "detectron2://"
DEFAULT_ZOO_CONFIG = "COCO-InstanceSegmentation/mask_rcnn_R_101_FPN_3x.yaml"
INSTALL_HINT = (
    "detectron2 is not installed; it is not on PyPI: build it from source as Dockerfile.gpu does "
    "(pip install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git'), "
    "or use detector.backend=torchvision"
)


@dataclass(frozen=True)
class ModelSpec:
    """What to build: a config (zoo name or YAML path), the weights (URL or path), the class names."""

    config: str
    config_is_zoo: bool
    weights: str | None  # None: the zoo's trained checkpoint URL for ``config``
    categories: list[str] | None  # None: COCO's 80 thing classes
    info: ModelInfo


def parse_model_spec(model: str, resolve: Any) -> ModelSpec:
    """A :class:`ModelSpec` from ``detector.model``; ``resolve(uri) -> Path`` fetches artifacts."""
    if model.startswith(ZOO_SCHEME):
        config = model[len(ZOO_SCHEME) :] or DEFAULT_ZOO_CONFIG
        return ModelSpec(config, True, None, None, ModelInfo(f"detectron2-{Path(config).stem}", "model-zoo"))
    path = Path(resolve(model))
    directory = path.parent if path.is_file() else path
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{model}: no readable manifest.json in {directory} ({exc}); a detectron2 artifact "
                             "is a directory with manifest.json and the checkpoint") from exc
    if manifest.get("backend") != "detectron2":
        raise ModelLoadError(f"{model}: artifact is for backend {manifest.get('backend')!r}, not detectron2")
    for key in ("config", "weights", "name", "version"):
        if key not in manifest:
            raise ModelLoadError(f"{model}: manifest.json lacks {key!r}")
    config = str(manifest["config"])
    local_config = directory / config
    weights = directory / str(manifest["weights"])
    if not weights.is_file():
        raise ModelLoadError(f"{model}: weights file {weights} is missing")
    return ModelSpec(
        config=str(local_config) if local_config.is_file() else config,
        config_is_zoo=not local_config.is_file(),
        weights=str(weights),
        categories=list(manifest["categories"]) if manifest.get("categories") else None,
        info=ModelInfo(str(manifest["name"]), str(manifest["version"])),
    )


def _import_detectron2() -> dict[str, Any]:
    keep_triton_away_from_tensorflow()
    try:
        import detectron2.data.transforms as T
        from detectron2 import model_zoo
        from detectron2.checkpoint import DetectionCheckpointer
        from detectron2.config import get_cfg
        from detectron2.data import MetadataCatalog
        from detectron2.modeling import build_model
    except ImportError as exc:
        raise ModelLoadError(f"{INSTALL_HINT} ({exc})") from exc
    return dict(T=T, model_zoo=model_zoo, DetectionCheckpointer=DetectionCheckpointer, get_cfg=get_cfg,
                MetadataCatalog=MetadataCatalog, build_model=build_model)


class Detectron2Detector(BatchedDetector):
    """A detectron2 GeneralizedRCNN behind the ``Detector`` protocol."""

    def __init__(self, spec: ModelSpec, settings: DetectorSettings) -> None:
        d2 = _import_detectron2()
        import torch

        self.settings = settings
        self.info = spec.info
        cfg = d2["get_cfg"]()
        try:
            cfg.merge_from_file(d2["model_zoo"].get_config_file(spec.config) if spec.config_is_zoo else spec.config)
        except (RuntimeError, OSError, KeyError, ValueError) as exc:
            raise ModelLoadError(f"detectron2 config {spec.config!r}: {exc}") from exc
        device = settings.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        cfg.MODEL.DEVICE = device
        # Our own filter applies the threshold; let the model's test-time filter be no stricter.
        cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = min(float(settings.score_threshold), 0.05)
        cfg.MODEL.RETINANET.SCORE_THRESH_TEST = cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST
        cfg.TEST.DETECTIONS_PER_IMAGE = max(100, settings.max_vehicles)
        weights = spec.weights or d2["model_zoo"].get_checkpoint_url(spec.config)
        cfg.MODEL.WEIGHTS = weights
        cfg.freeze()
        self.cfg = cfg
        self.model = d2["build_model"](cfg).eval()
        try:
            d2["DetectionCheckpointer"](self.model).load(weights)
        except Exception as exc:  # noqa: BLE001 - download, unpickling and shape errors mean the same here
            raise ModelLoadError(
                f"detectron2 weights {weights!r} cannot be loaded ({exc}); without internet, download the "
                "checkpoint elsewhere, put it in a detector artifact (see vehicle_core/detection/"
                "detectron2_backend.py) and set detector.model to its path or s3:// URI"
            ) from exc
        self.categories = spec.categories or list(d2["MetadataCatalog"].get("coco_2017_val").thing_classes)
        self.resize = d2["T"].ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
        self.input_format = cfg.INPUT.FORMAT

    def _detect_batch(self, images: Sequence[np.ndarray]) -> list[list[Detection]]:
        import torch

        inputs = []
        for image in images:
            pixels = image[:, :, ::-1] if self.input_format == "BGR" else image
            resized = self.resize.get_transform(pixels).apply_image(pixels)
            tensor = torch.as_tensor(np.ascontiguousarray(resized).astype("float32").transpose(2, 0, 1))
            # height/width: the model scales boxes and masks back to the original image.
            inputs.append({"image": tensor, "height": image.shape[0], "width": image.shape[1]})
        with torch.inference_mode():
            outputs = self.model(inputs) if inputs else []
        return [self._to_detections(o["instances"].to("cpu"), im.shape[:2]) for o, im in zip(outputs, images, strict=True)]

    def _to_detections(self, instances: Any, image_size: tuple[int, int]) -> list[Detection]:
        classes = instances.pred_classes.numpy()
        labels = [self.categories[c] if c < len(self.categories) else "?" for c in classes.tolist()]
        masks = instances.pred_masks.numpy() if instances.has("pred_masks") else None
        return self._vehicles(instances.pred_boxes.tensor.numpy(), instances.scores.numpy(), labels, masks, image_size)


@DETECTOR_REGISTRY.register("detectron2")
def build_detectron2_detector(settings: DetectorSettings, storage: StorageSettings) -> Detectron2Detector:
    """The ``detectron2`` backend: weights from ``settings.model`` (see the module docstring)."""
    from vehicle_core.storage import resolve_local

    spec = parse_model_spec(settings.model, lambda uri: resolve_local(uri, storage))
    return Detectron2Detector(spec, settings)
