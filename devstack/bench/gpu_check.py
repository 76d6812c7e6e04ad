"""The GPU check in one call: fine-tune the card's R101-FPN on synthetic scenes, then measure.

Run by ``devstack/bench/gpu_check.sh`` (which installs the carried wheels and builds Detectron2 first on a
GPU machine). Steps, each reported and timed; one that fails is reported and the others still run:

1. ``finetune``: detectron2's Mask R-CNN R101-FPN (``mask_rcnn_R_101_FPN_3x``; from ``--init-artifact``
   (an R101 detector artifact carried along) or random initialisation, nothing is downloaded) trained for ``--minutes`` on synthetic scenes, written
   as a pickle-free detector artifact;
2. ``detect detectron2`` / ``detect torchvision``: ``python -m devstack.bench`` at batch 1/4/8/16,
   the fine-tuned artifact and torchvision's ``maskrcnn_resnet101_fpn`` (untrained: speed does not
   depend on the weights);
3. ``classify``: crops/s of the ResNet50 classifier on Keras's torch backend;
4. ``e2e``: ``python -m devstack.bench pipeline`` through redis-server and the loopback S3 with the
   fine-tuned detector and a torch-backend classifier: end-to-end img/s and its efficiency.

Then one summary table against the targets (detect >= 140 img/s, classify >= 2,000 crops/s,
efficiency >= 0.9). ``--dry-run``: the same code paths on the CPU at tiny sizes (seconds per step),
no targets judged; CI runs it so the check cannot rot (tests/devstack/test_gpu_check.py).

    python -m devstack.bench.gpu_check --out /tmp/gpu-check            # on the GPU machine, via gpu_check.sh
    python -m devstack.bench.gpu_check --dry-run --out /tmp/gpu-dry    # anywhere, CPU, about a minute
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
R101_CONFIG = "COCO-InstanceSegmentation/mask_rcnn_R_101_FPN_3x.yaml"
TARGETS = {"detect": 140.0, "classify": 2000.0, "efficiency": 0.9}


@dataclass(frozen=True)
class Plan:
    """Sizes of one run: the GPU check's, or the dry run's tiny ones."""

    device: str
    minutes: float
    steps: int
    train_batch: int
    input_size: int  # detectron2 / torchvision short side, px
    scene: tuple[int, int]  # training scenes, width x height
    bench_image: int  # side of devstack.bench.models's synthetic scenes
    detect_batches: str
    repeats: int
    classify_input: int
    classify_batches: str
    e2e_images: int
    e2e_size: str
    e2e_env: dict[str, str] = field(default_factory=dict)
    e2e_inprocess: bool = True  # the in-process comparison run (the efficiency figure)

    @classmethod
    def for_run(cls, args: argparse.Namespace) -> Plan:
        if args.dry_run:
            return cls(device="cpu", minutes=0.5, steps=args.steps or 2, train_batch=1, input_size=128,
                       scene=(160, 128), bench_image=128, detect_batches="1,2", repeats=1, classify_input=32,
                       classify_batches="2", e2e_images=args.images or 2, e2e_size="320x240",
                       e2e_env={"VP_DETECTOR__SCORE_THRESHOLD": "0.0"}, e2e_inprocess=False)
        return cls(device="cuda", minutes=args.minutes, steps=args.steps or 100_000, train_batch=4, input_size=800,
                   scene=(1066, 800), bench_image=1024, detect_batches="1,4,8,16", repeats=5, classify_input=224,
                   classify_batches="32,128,256", e2e_images=args.images or 400, e2e_size="1280x960",
                   e2e_env={"VP_DETECTOR__BATCH_SIZE": "8", "VP_WORKER__BATCH_FLUSH_EVERY": "32"})


@dataclass
class Step:
    name: str
    ok: bool = False
    seconds: float = 0.0
    detail: str = ""
    figures: dict[str, Any] = field(default_factory=dict)


def run_step(steps: list[Step], name: str, fn) -> Step:
    """Run ``fn() -> (detail, figures)``; a failure is recorded, never raised."""
    step = Step(name)
    print(f"\n== {name}", flush=True)
    t0 = time.monotonic()
    try:
        step.detail, step.figures = fn()
        step.ok = True
    except Exception as exc:  # noqa: BLE001 - one failed step must not hide the others' figures
        step.detail = f"FAILED: {type(exc).__name__}: {exc}"
    step.seconds = time.monotonic() - t0
    print(f"   {step.detail} ({step.seconds:.0f} s)", flush=True)
    steps.append(step)
    return step


def finetune(plan: Plan, out: Path, init_artifact: str | None, seed: int = 0) -> tuple[str, dict]:
    """Train R101-FPN on synthetic scenes for ``plan.minutes`` (or ``plan.steps``); write its artifact."""
    import torch

    from training.detection.detectron2_train import train
    from vehicle_core.detection.detectron2_backend import build_cfg, export_artifact

    size = plan.input_size
    opts = ["MODEL.WEIGHTS", "", "MODEL.DEVICE", plan.device,
            "INPUT.MIN_SIZE_TRAIN", f"({size},)", "INPUT.MAX_SIZE_TRAIN", str(int(size * 1333 / 800)),
            "INPUT.MIN_SIZE_TEST", str(size), "INPUT.MAX_SIZE_TEST", str(int(size * 1333 / 800))]
    cfg = build_cfg(R101_CONFIG, is_zoo=True, opts=opts)
    torch.backends.cudnn.benchmark = plan.device == "cuda"
    scene = {"size": plan.scene, "n_vehicles": (1, 4), "scale": (0.1, 0.5)}
    t0 = time.monotonic()
    cfg, model, steps = train(seed, plan.steps, plan.minutes, batch=plan.train_batch, cfg=cfg, scene=scene,
                              init=Path(init_artifact) if init_artifact else None)
    seconds = time.monotonic() - t0
    artifact = export_artifact(model, cfg, out / "r101-artifact", "synthetic-d2-maskrcnn-r101",
                               f"gpu-check-seed{seed}-steps{steps}", metrics={"train_steps": steps})
    return (f"{steps} steps of batch {plan.train_batch} at {size} px in {seconds:.0f} s -> {artifact}",
            {"steps": steps, "artifact": str(artifact)})


def bench_rows(text: str) -> list[dict[str, Any]]:
    """The rows of ``python -m devstack.bench``'s table: model, device, batch, images/s."""
    rows = []
    for m in re.finditer(r"^\|\s*(.+?)\s*\|\s*(\S+)\s*\|\s*(\d+)\s*\|\s*([\d.]+)\s*\|\s*([\d.]+)\s*\|$", text, re.M):
        rows.append({"model": m.group(1), "device": m.group(2), "batch": int(m.group(3)),
                     "per_s": float(m.group(4)), "ms": float(m.group(5))})
    return rows


def run_python(argv: list[str], env: dict[str, str], log: Path, timeout: float) -> str:
    """``python ARGV`` in the repository root; its output (also written to ``log``); raises if it failed."""
    done = subprocess.run([sys.executable, *argv], cwd=ROOT, env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=timeout, check=False)
    log.write_text(done.stdout + "\n--- stderr ---\n" + done.stderr)
    if done.returncode != 0:
        raise RuntimeError(f"exit {done.returncode}; see {log}: {done.stderr.strip().splitlines()[-1:] or ''}")
    return done.stdout


def bench_detect(plan: Plan, out: Path, backend: str, artifact: str | None) -> tuple[str, dict]:
    argv = ["-m", "devstack.bench.models", "--skip-classifier", "--detector-batches", plan.detect_batches,
            "--image-size", str(plan.bench_image), "--repeats", str(plan.repeats)]
    env = {"VP_DETECTOR__DEVICE": plan.device}
    if backend == "detectron2":
        argv += ["--detector-model", str(artifact)]
        env["VP_DETECTOR__BACKEND"] = "detectron2"
    else:
        argv += ["--detector-arch", "maskrcnn_resnet101_fpn", "--detector-min-size", str(plan.input_size)]
    rows = bench_rows(run_python(argv, env, out / f"detect-{backend}.log", timeout=600))
    if not rows:
        raise RuntimeError(f"no table rows in {out / f'detect-{backend}.log'}")
    text = ", ".join(f"batch {r['batch']} {r['per_s']:.1f} img/s" for r in rows)
    return f"{rows[0]['device']}: {text}", {"rows": rows, "best": max(r["per_s"] for r in rows)}


def torch_keras_env(plan: Plan) -> dict[str, str]:
    env = {"KERAS_BACKEND": "torch", "VP_CLASSIFIER__BACKEND": "torch"}
    if plan.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # a CPU-only torch classifier (classifier.device cpu refuses cuda weights)
    return env


def bench_classify(plan: Plan, out: Path) -> tuple[str, dict]:
    argv = ["-m", "devstack.bench.models", "--skip-detector", "--classifier-input", str(plan.classify_input),
            "--classifier-batches", plan.classify_batches, "--repeats", str(plan.repeats),
            "--image-size", str(max(plan.bench_image, 256))]
    rows = bench_rows(run_python(argv, torch_keras_env(plan), out / "classify.log", timeout=600))
    if not rows:
        raise RuntimeError(f"no table rows in {out / 'classify.log'}")
    text = ", ".join(f"batch {r['batch']} {r['per_s']:.0f} crops/s" for r in rows)
    return f"Keras torch backend, {rows[0]['device']}: {text}", {"rows": rows, "best": max(r["per_s"] for r in rows)}


def make_classifier(out: Path, input_size: int) -> Path:
    """An untrained ResNet50 classifier artifact (speed does not depend on the weights)."""
    from training.synthetic.scenes import CLASSES
    from vehicle_core.classifier import build_classifier, make_manifest, save_artifact

    names = list(CLASSES)
    model = build_classifier(names, input_size=input_size, weights=None, dropout=0.0)
    manifest = make_manifest(name=f"resnet50-{input_size}px-untrained", version="gpu-check", class_names=names,
                             input_size=input_size)
    return save_artifact(model, manifest, out)


def e2e(plan: Plan, out: Path, artifact: str) -> tuple[str, dict]:
    env = {**torch_keras_env(plan), "VP_DETECTOR__BACKEND": "detectron2", "VP_DETECTOR__MODEL": artifact,
           "VP_DETECTOR__DEVICE": "auto" if plan.device == "cuda" else "cpu", **plan.e2e_env}
    classifier = out / "classifier-artifact"
    run_python(["-m", "devstack.bench.gpu_check", "make-classifier", "--out", str(classifier), "--input", "128"],
               env, out / "make-classifier.log", timeout=600)
    argv = ["-m", "devstack.bench.pipeline", "pipeline", "--images", str(plan.e2e_images), "--size", plan.e2e_size,
            "--classifier", str(classifier), "--json", str(out / "e2e.json"), "--log-dir", str(out / "e2e-logs"),
            "--timeout", "600", *([] if plan.e2e_inprocess else ["--skip-inprocess", "--redis-idle-s", "0"])]
    run_python(argv, env, out / "e2e.log", timeout=900)
    fig = json.loads((out / "e2e.json").read_text())
    inproc = "no in-process run" if fig["efficiency"] is None else \
        f"in-process {fig['inprocess_images_per_s']:.1f}, efficiency {fig['efficiency']:.2f}"
    detail = f"{fig['e2e_images_per_s']:.1f} img/s end to end, {inproc}; {fig['results']} results {fig['status']}"
    over = fig.get("overhead") or {}
    return detail, {"e2e_images_per_s": fig["e2e_images_per_s"], "efficiency": fig["efficiency"],
                    "overhead_ratio": over.get("ratio"), "status": fig["status"]}


def summary(steps: list[Step], dry_run: bool) -> list[str]:
    by = {s.name: s for s in steps}
    lines = ["| check | figure | target | verdict |", "| --- | --- | --- | --- |"]

    def judge(value: float | None, target: float) -> str:
        if value is None:
            return "n/a"
        return "dry run (not judged)" if dry_run else ("met" if value >= target else "NOT met")

    for backend in ("detectron2", "torchvision"):
        step = by.get(f"detect {backend}")
        best = step.figures.get("best") if step and step.ok else None
        lines.append(f"| detect img/s, {backend} (best batch) | {'n/a' if best is None else f'{best:.1f}'} | "
                     f">= {TARGETS['detect']:.0f} | {judge(best, TARGETS['detect'])} |")
    step = by.get("classify")
    best = step.figures.get("best") if step and step.ok else None
    lines.append(f"| classify crops/s, Keras torch backend | {'n/a' if best is None else f'{best:.0f}'} | "
                 f">= {TARGETS['classify']:.0f} | {judge(best, TARGETS['classify'])} |")
    step = by.get("e2e")
    eff = step.figures.get("efficiency") if step and step.ok else None
    ips = step.figures.get("e2e_images_per_s") if step and step.ok else None
    shown = "n/a" if ips is None else f"{ips:.1f} ({'no in-process run' if eff is None else f'{eff:.2f}'})"
    lines.append(f"| end-to-end img/s (efficiency) | {shown} | efficiency >= {TARGETS['efficiency']} | "
                 f"{judge(ips if dry_run else eff, TARGETS['efficiency'])} |")
    for s in steps:
        lines.append(f"| step {s.name} | {'ok' if s.ok else 'FAILED'} in {s.seconds:.0f} s | | |")
    return lines


def machine() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    try:
        import detectron2

        d2 = detectron2.__version__
    except ImportError:
        d2 = "absent"
    return f"{os.cpu_count()} CPUs, {gpu}; torch {torch.__version__}, detectron2 {d2}, Python {sys.version.split()[0]}"


def check(args: argparse.Namespace) -> int:
    import torch

    plan = Plan.for_run(args)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine()}\nmode: {'dry run (CPU, tiny sizes)' if args.dry_run else 'GPU check'}", flush=True)
    if not args.dry_run and not torch.cuda.is_available():
        print("no CUDA device visible to torch: run with --dry-run on a machine without a GPU", file=sys.stderr)
        return 2
    steps: list[Step] = []
    try:
        import detectron2  # noqa: F401
        have_d2 = True
    except ImportError:
        have_d2 = False
        print("detectron2 is not installed: its steps are skipped (gpu_check.sh builds it on a GPU machine)")
    artifact = None
    if have_d2:
        tuned = run_step(steps, "finetune", lambda: finetune(plan, out, args.init_artifact))
        artifact = tuned.figures.get("artifact")
        if artifact:
            run_step(steps, "detect detectron2", lambda: bench_detect(plan, out, "detectron2", artifact))
    run_step(steps, "detect torchvision", lambda: bench_detect(plan, out, "torchvision", None))
    run_step(steps, "classify", lambda: bench_classify(plan, out))
    if artifact and not args.skip_e2e:
        run_step(steps, "e2e", lambda: e2e(plan, out, artifact))
    lines = summary(steps, args.dry_run)
    print("\n" + "\n".join(lines))
    (out / "summary.json").write_text(json.dumps([s.__dict__ for s in steps], indent=2, default=str))
    return 0 if all(s.ok for s in steps) and (have_d2 or args.dry_run) else 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["make-classifier"]:  # a helper step, run in a process with the torch Keras backend
        p = argparse.ArgumentParser(prog="python -m devstack.bench.gpu_check make-classifier")
        p.add_argument("--out", required=True, type=Path)
        p.add_argument("--input", type=int, default=128)
        a = p.parse_args(argv[1:])
        print(make_classifier(a.out, a.input))
        return 0
    p = argparse.ArgumentParser(prog="python -m devstack.bench.gpu_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: every code path, no targets judged")
    p.add_argument("--out", default="gpu-check-out", help="artifacts, logs and summary.json (default gpu-check-out)")
    p.add_argument("--minutes", type=float, default=2.0, help="fine-tuning time on the GPU (default 2)")
    p.add_argument("--steps", type=int, default=0, help="fine-tuning steps at most (default: the time decides)")
    p.add_argument("--init-artifact", help="an R101-FPN detector artifact (model.pth) to fine-tune from "
                                           "(default: random initialisation)")
    p.add_argument("--images", type=int, default=0, help="end-to-end images (default 400; dry run 3)")
    p.add_argument("--skip-e2e", action="store_true", help="no end-to-end run")
    return check(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
