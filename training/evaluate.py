"""Evaluate a classifier artifact on a labelled split and write a report; compare runs.

A report is a folder: ``report.md``, ``report.html``, ``metrics.json``, ``confusion.png`` and
``misclassified/*.png`` (a few wrong answers, each titled true -> predicted). :func:`upload_report`
copies the folder to S3.
"""

from __future__ import annotations

import html
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from training.dataset import DatasetIndex, Example, make_tf_dataset
from vehicle_core.config import StorageSettings
from vehicle_core.storage import ObjectStore

MAX_MISCLASSIFIED = 8


@dataclass
class Evaluation:
    """Scores of one model on one split."""

    model: dict[str, str]  # name, version
    split: str
    class_names: list[str]
    accuracy: float
    per_class: dict[str, dict[str, float]]  # label -> precision, recall, f1, support
    confusion: list[list[int]]  # rows: true label, columns: predicted
    n_images: int
    misclassified: list[dict[str, Any]] = field(default_factory=list)  # uri, true, predicted, confidence


def scores(y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str]) -> tuple[float, dict, np.ndarray]:
    """Accuracy, per-class precision/recall/F1/support and the confusion matrix."""
    k = len(class_names)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (y_true, y_pred), 1)
    per_class = {}
    for i, name in enumerate(class_names):
        tp = confusion[i, i]
        precision = tp / confusion[:, i].sum() if confusion[:, i].sum() else 0.0
        recall = tp / confusion[i].sum() if confusion[i].sum() else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {
            "precision": float(precision),
            "recall": float(recall),
            "f1": float(f1),
            "support": int(confusion[i].sum()),
        }
    accuracy = float(np.trace(confusion) / confusion.sum()) if confusion.sum() else 0.0
    return accuracy, per_class, confusion


def evaluate_artifact(
    artifact: str | Path,
    index: DatasetIndex,
    examples: list[Example],
    reader: ObjectStore,
    *,
    split: str = "test",
    batch_size: int = 32,
    keep_images: int = MAX_MISCLASSIFIED,
) -> tuple[Evaluation, list[np.ndarray]]:
    """Score an artifact on ``examples``; returns the evaluation and images of the first misclassified."""
    from vehicle_core.classifier import VehicleClassifier

    clf = VehicleClassifier.from_artifact(artifact, batch_size=batch_size, top_k=1)
    if clf.class_names != index.class_names:
        # Map the dataset's labels onto the model's; labels the model does not know cannot be scored.
        known = set(clf.class_names)
        examples = [e for e in examples if e.label in known]
    names = clf.class_names
    ds = make_tf_dataset(
        _relabelled(index, names), examples, reader, image_size=clf.input_size, batch_size=batch_size
    )
    y_true, y_pred, conf, images = [], [], [], []
    for x, y in ds:
        batch = x.numpy().astype(np.uint8)
        probs = clf.probabilities(list(batch))
        y_true += list(np.argmax(y.numpy(), axis=1))
        y_pred += list(np.argmax(probs, axis=1))
        conf += list(probs.max(axis=1))
        images += list(batch)
    skipped = set(index.unreadable)
    readable = [e for e in examples if e.uri not in skipped]
    accuracy, per_class, confusion = scores(np.array(y_true, int), np.array(y_pred, int), names)
    wrong = [i for i, (t, p) in enumerate(zip(y_true, y_pred, strict=True)) if t != p]
    evaluation = Evaluation(
        model=clf.info.to_dict(),
        split=split,
        class_names=names,
        accuracy=accuracy,
        per_class=per_class,
        confusion=confusion.tolist(),
        n_images=len(y_true),
        misclassified=[
            {
                "uri": readable[i].uri if len(readable) == len(y_true) else "",
                "true": names[y_true[i]],
                "predicted": names[y_pred[i]],
                "confidence": float(conf[i]),
            }
            for i in wrong
        ],
    )
    return evaluation, [images[i] for i in wrong[:keep_images]]


def _relabelled(index: DatasetIndex, names: list[str]) -> DatasetIndex:
    if index.class_names == names:
        return index
    return DatasetIndex(root=index.root, examples=index.examples, class_names=names, unreadable=index.unreadable)


def write_report(evaluation: Evaluation, images: list[np.ndarray], out_dir: str | Path) -> Path:
    """Write the report folder (Markdown, HTML, JSON, confusion PNG, misclassified PNGs); returns it."""
    out = Path(out_dir)
    (out / "misclassified").mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(asdict(evaluation), indent=2))
    _confusion_png(evaluation, out / "confusion.png")
    shots = []
    for i, (image, wrong) in enumerate(zip(images, evaluation.misclassified, strict=False)):
        name = f"misclassified/{i:02d}-{wrong['true']}-as-{wrong['predicted']}.png"
        _image_png(image, f"{wrong['true']} -> {wrong['predicted']} ({wrong['confidence']:.2f})", out / name)
        shots.append(name)
    md = _markdown(evaluation, shots)
    (out / "report.md").write_text(md)
    body = f"<pre>{html.escape(md)}</pre>"
    imgs = "".join(f'<img src="{s}" width="160">' for s in ["confusion.png", *shots])
    (out / "report.html").write_text(f"<html><body><h1>Evaluation</h1>{imgs}{body}</body></html>")
    return out


def _markdown(ev: Evaluation, shots: list[str]) -> str:
    lines = [
        f"# {ev.model['name']} {ev.model['version']} on {ev.split}",
        "",
        f"accuracy **{ev.accuracy:.3f}** on {ev.n_images} images",
        "",
        "| class | precision | recall | F1 | support |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, m in ev.per_class.items():
        lines.append(f"| {name} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | {m['support']} |")
    lines += ["", "![confusion matrix](confusion.png)", ""]
    lines += [f"![{s}]({s})" for s in shots]
    return "\n".join(lines) + "\n"


def _confusion_png(ev: Evaluation, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    cm = np.array(ev.confusion)
    fig, ax = plt.subplots(figsize=(1 + 0.8 * len(ev.class_names), 1 + 0.8 * len(ev.class_names)))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(ev.class_names)), ev.class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(ev.class_names)), ev.class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (r, c), v in np.ndenumerate(cm):
        ax.text(c, r, str(v), ha="center", va="center", color="white" if v > cm.max() / 2 else "black")
    ax.set_title(f"accuracy {ev.accuracy:.3f}")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _image_png(image: np.ndarray, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2.2, 2.4))
    ax.imshow(image)
    ax.set_title(title, fontsize=7)
    ax.axis("off")
    fig.savefig(path, dpi=80)
    plt.close(fig)


def upload_report(report_dir: str | Path, uri: str, storage: StorageSettings) -> str:
    """Copy a report folder to ``uri`` (an ``s3://bucket/prefix``); returns the report.md URI."""
    ObjectStore(storage).upload_tree(report_dir, uri)
    return uri.rstrip("/") + "/report.md"


def compare(reports: list[Evaluation]) -> str:
    """A Markdown table comparing runs: accuracy and per-class F1, one row per model/split."""
    names = sorted({n for r in reports for n in r.class_names})
    head = "| model | split | images | accuracy | " + " | ".join(f"F1 {n}" for n in names) + " |"
    lines = [head, "|" + " --- |" * (4 + len(names))]
    for r in sorted(reports, key=lambda r: -r.accuracy):
        f1 = [f"{r.per_class[n]['f1']:.3f}" if n in r.per_class else "-" for n in names]
        lines.append(
            f"| {r.model['name']} {r.model['version']} | {r.split} | {r.n_images} | {r.accuracy:.3f} | "
            + " | ".join(f1)
            + " |"
        )
    return "\n".join(lines) + "\n"


def load_evaluation(path: str | Path) -> Evaluation:
    """Read a report's ``metrics.json`` back (for :func:`compare`)."""
    data = json.loads(Path(path).read_text())
    return Evaluation(**data)
