"""Train the tiny Mask R-CNN on synthetic scenes and write a detector artifact.

    python -m training.detection.torchvision_train --out vehicle_core/zoo/synthetic-maskrcnn-tiny \
        --seed 0 --minutes 12

Scenes are drawn on the fly from ``training.synthetic.scenes`` (seeded), so the run needs no data. It stops
after ``--steps`` steps or ``--minutes``, whichever first (the step count reached is in the manifest),
then scores the model on held-out scenes (recall at IoU 0.5 with the right class, precision at the
default score threshold) and times CPU inference; the numbers go into the manifest's ``metrics``.
"""

from __future__ import annotations

import json
import time

import numpy as np
import torch

from training.detection.common import SCENE, SIZE, Predictions, parser, score_held_out, speed_metrics
from training.synthetic.scenes import make_scene
from vehicle_core.detection.torchvision_backend import COCO_CATEGORIES, build_arch

ARCH = "maskrcnn_tiny"


def _target(scene) -> dict[str, torch.Tensor]:
    return {
        "boxes": torch.tensor([o.box for o in scene.objects], dtype=torch.float32),
        "labels": torch.tensor([COCO_CATEGORIES.index(o.detector_class) for o in scene.objects]),
        "masks": torch.from_numpy(np.stack([o.mask for o in scene.objects]).astype(np.uint8)),
    }


def _tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1).float() / 255


def train(seed: int, steps: int, minutes: float, batch: int = 4) -> tuple[torch.nn.Module, int]:
    """The trained model (eval mode) and the steps run."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = build_arch(ARCH, len(COCO_CATEGORIES), SIZE, SIZE).train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.05)
    deadline = time.monotonic() + minutes * 60
    step = 0
    while step < steps and time.monotonic() < deadline:
        scenes = [make_scene(rng, **SCENE) for _ in range(batch)]
        losses = model([_tensor(s.image) for s in scenes], [_target(s) for s in scenes])
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        step += 1
        if step % 50 == 0:
            print(f"step {step} loss {loss.item():.3f}", flush=True)
    return model.eval(), step




@torch.inference_mode()
def evaluate(model: torch.nn.Module, seed: int, n: int = 100, threshold: float = 0.5) -> dict[str, float]:
    """:func:`score_held_out` of the torchvision model at ``threshold``."""

    def predict(scene) -> Predictions:
        r = model([_tensor(scene.image)])[0]
        keep = r["scores"] >= threshold
        return [(b, COCO_CATEGORIES[int(c)]) for b, c in zip(r["boxes"][keep].tolist(), r["labels"][keep], strict=True)]

    return score_held_out(predict, seed, n)




def main(argv: list[str] | None = None) -> None:
    """Train, evaluate, time and write ``--out`` (manifest.json + model.pt)."""
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    torch.set_num_threads(args.threads)
    model, steps = train(args.seed, args.steps, args.minutes)
    metrics = evaluate(model, seed=args.seed + 10_000)
    metrics.update(speed_metrics(model, lambda scene: _tensor(scene.image), steps, args.threads))
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), args.out / "model.pt")
    manifest = {"name": "synthetic-maskrcnn-tiny", "version": f"seed{args.seed}-steps{steps}", "backend": "torchvision",
                "arch": ARCH, "categories": COCO_CATEGORIES, "min_size": SIZE, "max_size": SIZE,
                "weights": "model.pt", "metrics": metrics}
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(json.dumps(metrics))


if __name__ == "__main__":
    main()
