"""The detectron2 detector backend: Mask/Faster R-CNN (the card's R101-FPN, or any zoo config), batched.

``detector.model`` may name

* ``detectron2://<model-zoo config>``, e.g. ``detectron2://COCO-InstanceSegmentation/mask_rcnn_R_101_FPN_3x.yaml``
  (the default of the GPU image) or ``detectron2://COCO-Detection/faster_rcnn_R_101_FPN_3x.yaml``: the
  zoo's config and its trained COCO checkpoint, which detectron2 downloads once (needs internet). Those
  checkpoints are pickles, so this needs ``detector.allow_pickle: true``;
* ``zoo://NAME``, a local directory, ``.tar.gz`` or ``s3://`` URI of a detector artifact: ``manifest.json``
  {name, version, backend: "detectron2", config, weights, categories (optional)} where ``config`` is a
  YAML file inside the artifact (or a zoo config name) and ``weights`` the checkpoint inside it: a
  ``.pth`` state dict, loaded with ``torch.load(weights_only=True)`` (no pickle), or a zoo ``.pkl``
  (only with ``detector.allow_pickle: true``). Write one with :func:`export_artifact` or

      python -m vehicle_core.detection.detectron2_backend export --config CONFIG --weights CKPT \\
          --out DIR --name NAME --version V [--allow-pickle] [KEY VALUE ...]

  which also turns a zoo ``.pkl`` into a pickle-free artifact (download it where there is internet).

detectron2 is imported only when this backend is built. It is not on PyPI: ``make install`` builds it
from the vendored source when present, ``Dockerfile`` with CUDA. Unlike ``DefaultPredictor`` (one
image per call), :meth:`Detectron2Detector.detect` runs ``detector.batch_size`` images per forward pass.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vehicle_core.config import DetectorSettings, StorageSettings
from vehicle_core.detection.base import DETECTOR_REGISTRY, BatchedDetector, keep_triton_away_from_tensorflow
from vehicle_core.errors import ModelLoadError
from vehicle_core.results.contract import Detection, ModelInfo

ZOO_SCHEME = "detectron2://"
DEFAULT_ZOO_CONFIG = "COCO-InstanceSegmentation/mask_rcnn_R_101_FPN_3x.yaml"
DETECTRON2_COMMIT = "02b5c4e295e990042a714712c21dc79b731e8833"
INSTALL_HINT = (
    "detectron2 is not installed; it is not on PyPI: `make install` builds it when the vendored source "
    "../shared/vendor/detectron2-02b5c4e2.tar.gz is present, elsewhere build it from source as "
    "Dockerfile does: pip install 'setuptools<81' && pip install --no-build-isolation "
    f"'git+https://github.com/facebookresearch/detectron2.git@{DETECTRON2_COMMIT}' "
    "(torch must be installed first); or use detector.backend=torchvision"
)


@dataclass(frozen=True)
class ModelSpec:
    """What to build: a config (zoo name or YAML path), the weights (URL or path), the class names."""

    config: str
    config_is_zoo: bool
    weights: str | None  # None: the zoo's trained checkpoint URL for ``config``
    categories: list[str] | None  # None: COCO's 80 thing classes (detectron2's contiguous ids)
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


def coco_thing_classes() -> list[str]:
    """COCO's 80 thing classes in detectron2's contiguous-id order (index = ``pred_classes`` value)."""
    return list(_import_detectron2()["MetadataCatalog"].get("coco_2017_val").thing_classes)


def build_cfg(config: str, *, is_zoo: bool, settings: DetectorSettings | None = None, opts: Sequence[str] = ()):
    """A detectron2 ``CfgNode`` from a zoo config name or a YAML file, ``opts`` (KEY VALUE ...) merged,
    test-time limits taken from ``settings`` when given; ``MODEL.WEIGHTS`` is left as the config says."""
    import yaml

    d2 = _import_detectron2()
    cfg = d2["get_cfg"]()
    try:
        # detectron2 falls back to yaml.unsafe_load (which runs code) by default; an artifact's config
        # may come from S3, so only plain YAML is accepted, as only pickle-free weights are.
        cfg.merge_from_file(d2["model_zoo"].get_config_file(config) if is_zoo else config, allow_unsafe=False)
        cfg.merge_from_list(list(opts))
    except (RuntimeError, OSError, KeyError, ValueError, AssertionError, yaml.YAMLError) as exc:
        raise ModelLoadError(f"detectron2 config {config!r}: {exc}") from exc
    if settings is not None:
        import torch

        device = settings.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        cfg.MODEL.DEVICE = device
        # Our own filter applies the threshold; let the model's test-time filter be no stricter.
        cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = min(float(settings.score_threshold), 0.05)
        cfg.MODEL.RETINANET.SCORE_THRESH_TEST = cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST
        cfg.TEST.DETECTIONS_PER_IMAGE = max(100, settings.max_vehicles)
    return cfg


def build_model(cfg):
    """The model ``cfg`` describes, randomly initialised (nothing downloaded), in eval mode."""
    return _import_detectron2()["build_model"](cfg).eval()


def refuse_pickle_unless_allowed(weights: str, allow_pickle: bool) -> None:
    """ModelLoadError naming ``detector.allow_pickle`` for a ``.pkl`` checkpoint while it is false."""
    if weights.endswith(".pkl") and not allow_pickle:
        raise ModelLoadError(
            f"{weights}: a pickle checkpoint, refused because detector.allow_pickle is false (unpickling can "
            "run code). Convert it once into a pickle-free artifact with `python -m vehicle_core.detection."
            "detectron2_backend export --allow-pickle ...`, or, if you trust the file, set "
            "detector.allow_pickle: true (VP_DETECTOR__ALLOW_PICKLE=true)"
        )


def load_weights(model, weights: str, *, allow_pickle: bool) -> None:
    """Load a checkpoint into ``model``: ``.pkl`` (zoo format, file or URL) only with ``allow_pickle``
    since unpickling runs code; anything else as a state dict with ``torch.load(weights_only=True)``."""
    if weights.endswith(".pkl"):
        refuse_pickle_unless_allowed(weights, allow_pickle)
        try:
            _import_detectron2()["DetectionCheckpointer"](model).load(weights)
        except Exception as exc:  # noqa: BLE001 - download, unpickling and shape errors mean the same here
            raise ModelLoadError(
                f"detectron2 weights {weights!r} cannot be loaded ({exc}); without internet, download the "
                "checkpoint elsewhere, export it as a detector artifact (see vehicle_core/detection/"
                "detectron2_backend.py) and set detector.model to its path or s3:// URI"
            ) from exc
        return
    import torch

    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and isinstance(state.get("model"), dict):
            state = state["model"]  # a DetectionCheckpointer .pth: {"model": ..., "iteration": ...}
        model.load_state_dict(state)
    except Exception as exc:  # noqa: BLE001 - missing file, refused pickle globals, shape mismatch
        raise ModelLoadError(f"{weights}: cannot load detectron2 weights ({exc}); an artifact's .pth must be "
                             "the state dict of the model its config builds") from exc


class Detectron2Detector(BatchedDetector):
    """A detectron2 GeneralizedRCNN behind the ``Detector`` protocol."""

    def __init__(self, model, cfg, categories: Sequence[str], info: ModelInfo, settings: DetectorSettings) -> None:
        d2 = _import_detectron2()
        self.settings = settings
        self.info = info
        self.cfg = cfg
        self.model = model.eval()
        self.categories = list(categories)
        self.resize = d2["T"].ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
        self.input_format = cfg.INPUT.FORMAT

    @classmethod
    def from_spec(cls, spec: ModelSpec, settings: DetectorSettings) -> Detectron2Detector:
        """Build the spec's model, load its weights (pickle only if ``settings.allow_pickle``)."""
        d2 = _import_detectron2()
        cfg = build_cfg(spec.config, is_zoo=spec.config_is_zoo, settings=settings)
        weights = spec.weights or d2["model_zoo"].get_checkpoint_url(spec.config)
        refuse_pickle_unless_allowed(weights, settings.allow_pickle)  # before building anything heavy
        cfg.MODEL.WEIGHTS = weights
        cfg.freeze()
        model = build_model(cfg)
        load_weights(model, weights, allow_pickle=settings.allow_pickle)
        return cls(model, cfg, spec.categories or coco_thing_classes(), spec.info, settings)

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
    return Detectron2Detector.from_spec(spec, settings)


def export_artifact(model, cfg, out_dir: Path | str, name: str, version: str,
                    categories: Sequence[str] | None = None, metrics: dict[str, Any] | None = None) -> Path:
    """Write a pickle-free detector artifact: ``config.yaml`` (the full config), ``model.pth`` (state dict),
    ``manifest.json``. Loads with ``detector.backend: detectron2`` from the directory, a .tar.gz or S3."""
    import torch

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.WEIGHTS = ""  # the manifest names the weights; a path here would point outside the artifact
    cfg.MODEL.DEVICE = "cpu"
    (out / "config.yaml").write_text(cfg.dump())
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, out / "model.pth")
    manifest = {"name": name, "version": version, "backend": "detectron2", "config": "config.yaml",
                "weights": "model.pth", "categories": list(categories or coco_thing_classes()),
                "detectron2_commit": DETECTRON2_COMMIT, "metrics": metrics or {}}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> None:
    """``export``: build a config, load a checkpoint (.pth, or .pkl with --allow-pickle), write an artifact."""
    p = argparse.ArgumentParser(prog="python -m vehicle_core.detection.detectron2_backend",
                                description="Write a pickle-free detectron2 detector artifact.")
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export", help=export_artifact.__doc__.splitlines()[0])
    e.add_argument("--config", required=True, help="zoo config name (e.g. " + DEFAULT_ZOO_CONFIG + ") or YAML path")
    e.add_argument("--weights", required=True, help="checkpoint: .pth, or .pkl / zoo URL with --allow-pickle")
    e.add_argument("--allow-pickle", action="store_true", help="the checkpoint is a trusted pickle (.pkl)")
    e.add_argument("--out", required=True, type=Path)
    e.add_argument("--name", required=True)
    e.add_argument("--version", required=True)
    e.add_argument("opts", nargs="*", help="config overrides, KEY VALUE ...")
    args = p.parse_args(argv)
    is_zoo = not Path(args.config).is_file()
    cfg = build_cfg(args.config, is_zoo=is_zoo, opts=args.opts)
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)
    load_weights(model, args.weights, allow_pickle=args.allow_pickle)
    print(export_artifact(model, cfg, args.out, args.name, args.version))


if __name__ == "__main__":
    main()
