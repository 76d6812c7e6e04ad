"""The torchvision detector backend: Mask/Faster R-CNN arches, artifact loading, batched ``detect``.

``detector.model`` may name

* ``zoo://NAME``, a local directory, or ``s3://...``: a detector artifact, a directory holding
  ``manifest.json`` {name, version, backend: "torchvision", arch, categories, min_size, max_size,
  weights: "model.pt", metrics} and the weights (a state dict);
* ``torchvision://<builder>/<WeightsEnum member>``, e.g. ``torchvision://maskrcnn_resnet50_fpn_v2/COCO_V1``:
  torchvision's pretrained COCO weights (downloaded by torchvision, so it needs internet).

Arches are built by name from ``ARCHES`` (in the manner of timm / detectron2 registries).
"""

# ruff: noqa: E402  (torch is imported after the triton guard below)
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from vehicle_core.config import DetectorSettings, StorageSettings
from vehicle_core.detection.base import DETECTOR_REGISTRY, BatchedDetector, keep_triton_away_from_tensorflow
from vehicle_core.errors import ConfigError, ModelLoadError
from vehicle_core.results.contract import Detection, ModelInfo

keep_triton_away_from_tensorflow()  # before torch/torchvision: see its docstring

import torch
from torch import nn
from torchvision.models import detection as tvd
from torchvision.models import get_model_weights
from torchvision.models._meta import _COCO_CATEGORIES
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import AnchorGenerator
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign

from vehicle_core.detection.torchvision_filter import BoxMasks, restrict_to_vehicles
from vehicle_core.detection.torchvision_resize import HostResizeTransform

COCO_CATEGORIES: list[str] = list(_COCO_CATEGORIES)  # index -> name, torchvision's 91-entry COCO order

ARCHES: dict[str, Callable[..., nn.Module]] = {}


def register_arch(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: make an arch builder ``(num_classes, min_size, max_size) -> nn.Module`` known by name."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        ARCHES[name] = fn
        return fn

    return deco


def _torchvision_builder(builder: str) -> Callable[..., nn.Module]:
    def build(num_classes: int, min_size: int, max_size: int) -> nn.Module:
        fn = getattr(tvd, builder)
        # No weights of any kind here: artifacts bring their own state dict.
        return fn(weights=None, weights_backbone=None, num_classes=num_classes, min_size=min_size, max_size=max_size)

    return build


for _name in (
    "maskrcnn_resnet50_fpn",
    "maskrcnn_resnet50_fpn_v2",
    "fasterrcnn_resnet50_fpn",
    "fasterrcnn_resnet50_fpn_v2",
    "fasterrcnn_mobilenet_v3_large_fpn",
):
    register_arch(_name)(_torchvision_builder(_name))


@register_arch("maskrcnn_resnet101_fpn")
def maskrcnn_resnet101_fpn(num_classes: int, min_size: int, max_size: int) -> nn.Module:
    """The card's R101-FPN Mask R-CNN (weights come from an artifact, not from torchvision)."""
    backbone = resnet_fpn_backbone(backbone_name="resnet101", weights=None, trainable_layers=5)
    return tvd.MaskRCNN(backbone, num_classes=num_classes, min_size=min_size, max_size=max_size)


@register_arch("fasterrcnn_resnet101_fpn")
def fasterrcnn_resnet101_fpn(num_classes: int, min_size: int, max_size: int) -> nn.Module:
    """R101-FPN Faster R-CNN (boxes only)."""
    backbone = resnet_fpn_backbone(backbone_name="resnet101", weights=None, trainable_layers=5)
    return tvd.FasterRCNN(backbone, num_classes=num_classes, min_size=min_size, max_size=max_size)


class _TinyBackbone(nn.Sequential):
    """Four stride-2 conv stages (stride 16 overall); enough for drawn vehicles, ~0.2 M parameters."""

    def __init__(self, width: int = 48) -> None:
        layers: list[nn.Module] = []
        c_in = 3
        for c_out in (16, 32, width, width):
            layers += [
                nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
                nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]
            c_in = c_out
        super().__init__(*layers)
        self.out_channels = width


@register_arch("maskrcnn_tiny")
def maskrcnn_tiny(num_classes: int, min_size: int, max_size: int) -> nn.Module:
    """A small Mask R-CNN for synthetic scenes: tiny CNN backbone, slim box and mask heads."""
    backbone = _TinyBackbone()
    c = backbone.out_channels
    # Side-view vehicles are wide: anchors with height/width below 1.
    anchors = AnchorGenerator(sizes=((16, 32, 64, 128, 256),), aspect_ratios=((0.35, 0.55, 0.8),))
    return tvd.MaskRCNN(
        backbone,
        num_classes=None,
        min_size=min_size,
        max_size=max_size,
        rpn_anchor_generator=anchors,
        box_roi_pool=MultiScaleRoIAlign(["0"], output_size=7, sampling_ratio=2),
        box_head=TwoMLPHead(c * 7 * 7, 128),
        box_predictor=FastRCNNPredictor(128, num_classes),
        mask_roi_pool=MultiScaleRoIAlign(["0"], output_size=14, sampling_ratio=2),
        mask_head=MaskRCNNHeads(c, (32, 32), 1),
        mask_predictor=MaskRCNNPredictor(32, 32, num_classes),
        rpn_pre_nms_top_n_test=300,
        rpn_post_nms_top_n_test=100,
        box_detections_per_img=50,
    )


def build_arch(arch: str, num_classes: int, min_size: int, max_size: int) -> nn.Module:
    """A registered arch, untrained, in eval mode; unknown names raise ConfigError."""
    if arch not in ARCHES:
        raise ConfigError(f"unknown torchvision detector arch {arch!r}; known: {sorted(ARCHES)}")
    return ARCHES[arch](num_classes=num_classes, min_size=min_size, max_size=max_size).eval()


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_artifact(path: Path) -> tuple[nn.Module, list[str], ModelInfo]:
    """(model in eval mode, categories, info) from an artifact directory (or its manifest.json)."""
    directory = path.parent if path.is_file() else path
    manifest_path = directory / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{directory}: no readable manifest.json ({exc}); not a detector artifact") from exc
    if manifest.get("backend", "torchvision") != "torchvision":
        raise ModelLoadError(f"{directory}: artifact is for backend {manifest.get('backend')!r}, not torchvision")
    categories = list(manifest["categories"])
    model = build_arch(manifest["arch"], len(categories), int(manifest["min_size"]), int(manifest["max_size"]))
    weights = directory / manifest.get("weights", "model.pt")
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except (OSError, RuntimeError, ValueError) as exc:
        raise ModelLoadError(f"{weights}: cannot load detector weights ({exc})") from exc
    return model, categories, ModelInfo(str(manifest["name"]), str(manifest["version"]))


def load_pretrained(uri: str) -> tuple[nn.Module, list[str], ModelInfo]:
    """``torchvision://builder/MEMBER``: torchvision's own pretrained weights (needs internet)."""
    builder, _, member = uri[len("torchvision://") :].partition("/")
    fn = getattr(tvd, builder, None)
    if fn is None or not member:
        raise ConfigError(f"{uri}: expected torchvision://<detection builder>/<weights member>, e.g. "
                          "torchvision://maskrcnn_resnet50_fpn_v2/COCO_V1")
    try:
        weights = get_model_weights(fn)[member]
    except (KeyError, ValueError) as exc:
        raise ConfigError(f"{uri}: {builder} has no weights {member!r}") from exc
    try:
        model = fn(weights=weights).eval()
    except Exception as exc:  # noqa: BLE001 - any download failure means the same to the operator
        raise ModelLoadError(
            f"{uri}: cannot download torchvision weights ({exc}); download {weights.url} where there is "
            "internet, save it as a detector artifact and point detector.model at its path or s3:// URI"
        ) from exc
    return model, list(weights.meta["categories"]), ModelInfo(f"torchvision-{builder}", member)


class TorchvisionDetector(BatchedDetector):
    """A torchvision detection model behind the ``Detector`` protocol.

    With ``in_model_filter`` (the default) the vehicle filter starts inside the model (see
    :func:`restrict_to_vehicles`): non-vehicle classes and scores under the threshold never reach the
    box NMS or the mask head, and masks are pasted at box resolution for kept vehicles only.
    ``in_model_filter=False`` runs the model as built (every class, full-image masks): the reference
    the tests compare against.
    """

    def __init__(self, model: nn.Module, categories: Sequence[str], info: ModelInfo, settings: DetectorSettings,
                 *, in_model_filter: bool = True):
        self.settings = settings
        self.device = _device(settings.device)
        self.model = model.to(self.device).eval()
        self.categories = list(categories)
        self.info = info
        # On a CPU the input transform resizes uint8 images before converting them to float (a large
        # image is never normalized at full size); a GPU converts and resizes on the device.
        self.host_resize = self.device.type == "cpu" and isinstance(getattr(self.model, "transform", None),
                                                                    GeneralizedRCNNTransform)
        if self.host_resize:
            self.model.transform = HostResizeTransform.like(self.model.transform)
        self.in_model_filter = in_model_filter and hasattr(self.model, "roi_heads")
        if self.in_model_filter:  # after the transform swap: it patches the transform's postprocess
            restrict_to_vehicles(self.model, self.categories, settings)

    @torch.inference_mode()
    def _detect_batch(self, images: Sequence[np.ndarray]) -> list[list[Detection]]:
        if self.host_resize:  # uint8 views; the transform resizes, then converts (torchvision_resize.py)
            tensors = [torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1) for im in images]
        else:
            tensors = [torch.from_numpy(np.ascontiguousarray(im)).to(self.device).permute(2, 0, 1).float() / 255
                       for im in images]
        results = self.model(tensors) if tensors else []
        found = []
        for image, r in zip(images, results, strict=True):
            masks = r.get("masks")
            if masks is not None and self.in_model_filter:
                masks = BoxMasks(masks, r["boxes"], image.shape[:2])  # pasted on demand, kept vehicles only
            elif masks is not None:
                masks = (masks[:, 0] > 0.5).cpu().numpy()  # soft masks -> full-image bool
            labels = [self.categories[i] if i < len(self.categories) else "?" for i in r["labels"].tolist()]
            found.append(self._vehicles(r["boxes"].cpu().numpy(), r["scores"].cpu().numpy(), labels, masks, image.shape[:2]))
        return found


def _resolve(uri: str, storage: StorageSettings) -> Path:
    from vehicle_core.storage import resolve_local

    return resolve_local(uri, storage)


@DETECTOR_REGISTRY.register("torchvision")
def build_torchvision_detector(settings: DetectorSettings, storage: StorageSettings) -> TorchvisionDetector:
    """The ``torchvision`` backend: weights from ``settings.model`` (see the module docstring)."""
    if settings.model.startswith("torchvision://"):
        model, categories, info = load_pretrained(settings.model)
    else:
        model, categories, info = load_artifact(_resolve(settings.model, storage))
    return TorchvisionDetector(model, categories, info, settings, in_model_filter=settings.in_model_filter)
