"""Train a small detectron2 Mask R-CNN on synthetic scenes and write a detectron2 detector artifact.

    python -m training.detection.detectron2_train --out vehicle_core/zoo/synthetic-d2-maskrcnn-small \\
        --seed 0 --minutes 12

The model is detectron2's own Mask R-CNN R-50-FPN config (``BASE_CONFIG``) narrowed by ``SMALL_OPTS``
(ResNet-50 at 1/8 width with BatchNorm, 64-channel FPN, slim heads, anchors for wide side views, 256 px
input), so the artifact is plain detectron2 config + weights and needs no code of ours to build. It
trains from random initialisation on scenes drawn on the fly from ``training.synthetic.scenes`` (seeded),
with the torchvision tiny model's scene distribution and held-out scoring (``training/detection/common.py``):
recall at IoU 0.5 with the right class and precision at the default score threshold, in the manifest.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from training.detection.common import SCENE, SIZE, parser, score_held_out, speed_metrics
from training.synthetic.scenes import make_scene
from vehicle_core.detection.detectron2_backend import (
    build_cfg,
    build_model,
    coco_thing_classes,
    export_artifact,
    load_weights,
)

NAME = "synthetic-d2-maskrcnn-small"
BASE_CONFIG = "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml"
SMALL_OPTS = [
    "MODEL.WEIGHTS", "",  # random initialisation: nothing is downloaded
    "MODEL.DEVICE", "cpu",
    # Trained from scratch, so every stage trains and BatchNorm (not the zoo's frozen BN) normalises.
    "MODEL.BACKBONE.FREEZE_AT", "0",
    "MODEL.RESNETS.NORM", "BN",
    "MODEL.RESNETS.STEM_OUT_CHANNELS", "16",
    "MODEL.RESNETS.RES2_OUT_CHANNELS", "32",
    "MODEL.RESNETS.WIDTH_PER_GROUP", "8",
    "MODEL.FPN.OUT_CHANNELS", "64",
    # No stride-4 level (P2): the smallest vehicles are ~40 px long, and it is most of the CPU cost.
    "MODEL.RESNETS.OUT_FEATURES", "['res3', 'res4', 'res5']",
    "MODEL.FPN.IN_FEATURES", "['res3', 'res4', 'res5']",
    "MODEL.RPN.IN_FEATURES", "['p3', 'p4', 'p5', 'p6']",
    "MODEL.ROI_HEADS.IN_FEATURES", "['p3', 'p4', 'p5']",
    "MODEL.PIXEL_STD", "[57.375, 57.12, 58.395]",
    # Vehicles of 40-150 px drawn side on: smaller anchors than COCO's, wide ones (ratio = height / width).
    "MODEL.ANCHOR_GENERATOR.SIZES", "[[24], [48], [96], [192]]",
    "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS", "[[0.35, 0.6, 1.0]]",
    "MODEL.RPN.BATCH_SIZE_PER_IMAGE", "128",
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN", "600",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", "300",
    "MODEL.RPN.PRE_NMS_TOPK_TEST", "300",
    "MODEL.RPN.POST_NMS_TOPK_TEST", "100",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "64",
    # A fixed 2x2 samples per RoIAlign bin, not the adaptive count (large boxes made it the hot spot).
    "MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO", "2",
    "MODEL.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO", "2",
    "MODEL.ROI_BOX_HEAD.FC_DIM", "128",
    "MODEL.ROI_MASK_HEAD.CONV_DIM", "32",
    "MODEL.ROI_MASK_HEAD.NUM_CONV", "2",
    "INPUT.MIN_SIZE_TRAIN", f"({SIZE},)",
    "INPUT.MAX_SIZE_TRAIN", str(SIZE),
    "INPUT.MIN_SIZE_TEST", str(SIZE),
    "INPUT.MAX_SIZE_TEST", str(SIZE),
    "TEST.DETECTIONS_PER_IMAGE", "50",
]


def small_cfg():
    """The small Mask R-CNN's config (mutable ``CfgNode``)."""
    return build_cfg(BASE_CONFIG, is_zoo=True, opts=SMALL_OPTS)


def _input(scene, classes: list[str] | None = None) -> dict:
    """detectron2's input dict: BGR float CHW image, and with ``classes`` the ground-truth instances."""
    from detectron2.structures import BitMasks, Boxes, Instances

    image = torch.from_numpy(np.ascontiguousarray(scene.image[:, :, ::-1])).permute(2, 0, 1).float()
    out = {"image": image, "height": scene.image.shape[0], "width": scene.image.shape[1]}
    if classes is not None:
        gt = Instances(scene.image.shape[:2])
        gt.gt_boxes = Boxes(torch.tensor([o.box for o in scene.objects], dtype=torch.float32))
        gt.gt_classes = torch.tensor([classes.index(o.detector_class) for o in scene.objects], dtype=torch.int64)
        gt.gt_masks = BitMasks(torch.from_numpy(np.stack([o.mask for o in scene.objects])))
        out["instances"] = gt
    return out


def _lr(max_lr: float, progress: float, warmup: float) -> float:
    """Linear warm-up, then cosine decay to zero at ``progress`` 1."""
    if progress < warmup:
        return max_lr * max(progress / warmup, 0.02)
    return max_lr * 0.5 * (1 + np.cos(np.pi * min(1.0, (progress - warmup) / (1 - warmup))))


def train(seed: int, steps: int, minutes: float, batch: int = 4, init: Path | None = None, max_lr: float = 2e-3,
          cfg=None, scene: dict | None = None):
    """(cfg, trained model in eval mode, steps run). ``init``: an artifact to continue from. ``cfg``:
    another detectron2 config than :func:`small_cfg` (e.g. the card's R101-FPN, devstack/bench/gpu_check.py);
    ``scene``: ``make_scene`` arguments other than ``SCENE``.

    The learning rate follows whichever budget, steps or minutes, is nearer its end, so that a run cut
    short by the clock (a busy shared CPU) still ends annealed."""
    from detectron2.utils.events import EventStorage

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    cfg = cfg if cfg is not None else small_cfg()
    scene = scene or SCENE
    classes = coco_thing_classes()
    model = build_model(cfg)
    if init is not None:
        load_weights(model, str(init / "model.pth"), allow_pickle=False)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=max_lr, weight_decay=1e-4)
    start = time.monotonic()
    step = 0
    with EventStorage(0) as storage:  # the ROI heads log training statistics into one
        while (progress := max(step / steps, (time.monotonic() - start) / (minutes * 60))) < 1:
            for group in opt.param_groups:
                group["lr"] = _lr(max_lr, progress, warmup=0.0 if init else 0.05)
            losses = model([_input(make_scene(rng, **scene), classes) for _ in range(batch)])
            loss = sum(losses.values())
            opt.zero_grad()
            loss.backward()
            # Random initialisation: an early outlier batch must not blow the weights up.
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            opt.step()
            step += 1
            storage.iter = step
            if step % 50 == 0:
                print(f"step {step} loss {loss.item():.3f} " +
                      " ".join(f"{k}={v.item():.3f}" for k, v in sorted(losses.items())), flush=True)
    return cfg, model.eval(), step


@torch.inference_mode()
def evaluate(model, seed: int, n: int = 100, threshold: float = 0.5) -> dict[str, float]:
    """Recall (IoU >= 0.5, right COCO class) and precision at ``threshold`` on ``n`` fresh scenes,
    scored as the torchvision model is (``training.detection.common.score_held_out``)."""
    classes = coco_thing_classes()
    # Boxes under the threshold are not scored; not producing them spares pasting their masks.
    predictor = model.roi_heads.box_predictor
    saved, predictor.test_score_thresh = predictor.test_score_thresh, threshold

    def predict(scene):
        inst = model([_input(scene)])[0]["instances"]
        keep = inst.scores >= threshold
        return [(b, classes[int(c)]) for b, c in
                zip(inst.pred_boxes.tensor[keep].tolist(), inst.pred_classes[keep], strict=True)]

    try:
        return score_held_out(predict, seed, n)
    finally:
        predictor.test_score_thresh = saved


def main(argv: list[str] | None = None) -> None:
    """Train, evaluate, time and write ``--out`` (config.yaml + model.pth + manifest.json)."""
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--init", type=Path, help="artifact directory to continue training from")
    p.add_argument("--lr", type=float, default=2e-3)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg, model, steps = train(args.seed, args.steps, args.minutes, init=args.init, max_lr=args.lr)
    metrics = evaluate(model, seed=args.seed + 10_000)
    metrics.update(speed_metrics(model, _input, steps, args.threads))
    version = f"seed{args.seed}-steps{steps}"
    if args.init is not None:
        version = json.loads((args.init / "manifest.json").read_text())["version"] + "+" + version
    export_artifact(model, cfg, args.out, NAME, version, metrics=metrics)
    print(json.dumps(metrics))


if __name__ == "__main__":
    main()
