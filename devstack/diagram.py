"""The architecture diagram of the README, drawn from the project's own routing table.

    python -m devstack.diagram docs/img/architecture.png

Boxes are the processes and stores a deployment runs; arrows are the messages between them. The
queue names and which task goes to which queue come from ``workers.messages.task_routes``,
``training.train_queue.train_routes`` and the broker settings, so a renamed queue or a re-routed task shows here (``tests/devstack`` checks it).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from training.train_queue import TRAIN_TRIAL_TASK, train_routes
from vehicle_core.config import Settings, load_settings
from workers.messages import CLASSIFY_TASK, CROP_CHUNK_TASK, DETECT_TASK, task_routes

COLOURS = {"store": "#dbe9f6", "queue": "#fde8c8", "process": "#e3f1df", "tool": "#eeeeee"}


@dataclass(frozen=True)
class Box:
    x: float
    y: float
    w: float
    h: float
    title: str
    body: str
    kind: str

    def edge(self, side: str) -> tuple[float, float]:
        cx, cy = self.x + self.w / 2, self.y + self.h / 2
        return {"left": (self.x, cy), "right": (self.x + self.w, cy), "top": (cx, self.y + self.h),
                "bottom": (cx, self.y)}[side]


def queues_of(settings: Settings) -> dict[str, str]:
    """Task name (short) -> queue, as the producer and the workers route them."""
    routes = {**task_routes(settings.broker), **train_routes(settings.broker)}
    return {short: routes[name]["queue"] for short, name in (("detect_crop", DETECT_TASK), ("classify", CLASSIFY_TASK),
                                                           ("crop_dataset_chunk", CROP_CHUNK_TASK),
                                                           ("train_trial", TRAIN_TRIAL_TASK))}


def boxes(settings: Settings) -> dict[str, Box]:
    q = queues_of(settings)
    queue_lines = "\n".join(f"{queue}:\n  " + "\n  ".join(t for t, qq in q.items() if qq == queue)
                            for queue in dict.fromkeys(q.values()))
    return {
        "bucket": Box(0.2, 6.2, 2.7, 1.3, "S3 bucket", "images land under a prefix\n(any key, any size)", "store"),
        "sqs": Box(3.9, 6.2, 2.7, 1.3, "SQS queue + DLQ", "S3 event notifications\n(or EventBridge)", "queue"),
        "producer": Box(7.6, 6.2, 2.7, 1.3, "vehicle-producer", "listen: one task per new key\nbackfill / reconcile: "
                        "listings", "process"),
        "redis": Box(3.9, 3.6, 2.7, 1.9, "Redis (Celery broker)", queue_lines, "queue"),
        "detect": Box(0.2, 3.6, 2.7, 1.9, f"detect workers  [{q['detect_crop']}]",
                      "PyTorch, GPU or CPU, batched:\nfetch + decode (threads),\nMask/Faster R-CNN R101-FPN\n"
                      "(Detectron2 | torchvision),\ncrop box + mask", "process"),
        "classify": Box(7.6, 3.6, 2.7, 1.9, f"classify workers  [{q['classify']}]",
                        "Keras ResNet50\n(TensorFlow | torch backend),\nbatched crops; writes the\nresult "
                        "(stamped with the ETag)", "process"),
        "results": Box(7.6, 0.9, 2.7, 1.6, "S3 results/", "<key>.json per image:\nvehicles, labels, confidence,\n"
                       "boxes, errors, model versions", "store"),
        "readers": Box(3.9, 0.9, 2.7, 1.6, "vehicle-results", "summary, export (CSV/Parquet),\ngallery (HTML);\n"
                       "vehicle-classify --draw", "tool"),
        "note": Box(0.2, 0.9, 2.7, 1.6, "one image = one chain", "detect_crop(SourceRef)\n  -> classify(CropSet)\n"
                    "acks late, retries, crash\nledger: nothing is lost", "tool"),
        "registry": Box(11.3, 3.6, 2.7, 1.9, "model registry (S3)", "models/classifier/<version>/\n'current' pointer,"
                        " re-read\nby the workers (no restart)", "store"),
        "train": Box(11.3, 0.9, 2.7, 1.6, "vehicle-train", "crop, train, evaluate, sweep,\npublish / promote / "
                     "rollback;\ntrain workers run sweep trials", "tool"),
        "ops": Box(11.3, 6.2, 2.7, 1.3, "Flower, Prometheus, Grafana", "queues, workers, tasks;\n/metrics, alert "
                   "rules", "tool"),
    }


ARROWS = [  # (from, side, to, side, label, vertical offset of both ends)
    ("bucket", "right", "sqs", "left", "ObjectCreated", 0.0),
    ("sqs", "right", "producer", "left", "receive", 0.0),
    ("producer", "bottom", "redis", "top", "detect_crop tasks", 0.0),
    ("redis", "left", "detect", "right", "detect_crop", 0.35),
    ("detect", "right", "redis", "left", "classify(CropSet)", -0.45),
    ("redis", "right", "classify", "left", "classify", 0.0),
    ("detect", "top", "bucket", "bottom", "GET image", 0.0),
    ("classify", "bottom", "results", "top", "PUT result", 0.0),
    ("results", "left", "readers", "right", "read", 0.0),
    ("registry", "left", "classify", "right", "current model", 0.0),
    ("train", "top", "registry", "bottom", "publish", 0.0),
]


def draw(out: Path, settings: Settings | None = None) -> Path:
    """Write the diagram as a PNG at ``out``; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    found = boxes(settings or load_settings())
    fig, ax = plt.subplots(figsize=(14.2, 7.8))
    ax.set_xlim(0, 14.2)
    ax.set_ylim(0.6, 7.8)
    ax.axis("off")
    for box in found.values():
        ax.add_patch(FancyBboxPatch((box.x, box.y), box.w, box.h, boxstyle="round,pad=0.02,rounding_size=0.12",
                                    facecolor=COLOURS[box.kind], edgecolor="#555555", linewidth=1.2))
        ax.text(box.x + 0.12, box.y + box.h - 0.12, box.title, fontsize=10.5, fontweight="bold", va="top")
        ax.text(box.x + 0.12, box.y + box.h - 0.45, box.body, fontsize=8.6, va="top", linespacing=1.25,
                family="monospace" if box.kind == "queue" and "Redis" in box.title else None)
    for src, s_side, dst, d_side, label, dy in ARROWS:
        (x0, y0), (x1, y1) = found[src].edge(s_side), found[dst].edge(d_side)
        start, end = (x0, y0 + dy), (x1, y1 + dy)
        ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=14, linewidth=1.3,
                                     color="#333333", shrinkA=2, shrinkB=2))
        if label:
            ax.text((start[0] + end[0]) / 2, (start[1] + end[1]) / 2 + 0.06, label, fontsize=7.5, color="#333333",
                    ha="center", va="bottom", bbox={"facecolor": "white", "edgecolor": "none", "pad": 1})
    ax.set_title("vehicle-pipeline: images in S3 -> detect -> crop -> classify -> results in S3", fontsize=12,
                 loc="left")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.diagram", description="draw the architecture diagram")
    parser.add_argument("out", nargs="?", default="docs/img/architecture.png")
    args = parser.parse_args(argv)
    print(draw(Path(args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
