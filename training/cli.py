"""``vehicle-train``: the classifier's research loop from the command line.

    vehicle-train make-synthetic s3://b/synth --per-class 200          # labelled synthetic crops
    vehicle-train make-synthetic s3://b/scenes --scenes 600            # cluttered scenes + boxes
    vehicle-train crop s3://b/scenes s3://b/scenes-crops [--ground-truth] [--via auto|celery|local]
    vehicle-train train s3://b/synth --run-dir runs/a [--version V]    # training.* settings apply
    vehicle-train evaluate runs/a/artifact s3://b/synth --out reports/a [--upload s3://b/reports/a]
    vehicle-train publish runs/a/artifact s3://b/models/classifier [--if-empty]
    vehicle-train models list|promote VERSION|rollback [--registry s3://b/models/classifier]
    vehicle-train seed-registry [--artifact DIR]                     # publish (the demo model) if empty
    vehicle-train compare reports/a reports/b
    vehicle-train sweep training/sweeps/card.yaml --out sweep-card   # grid/random search; rerun to resume
    vehicle-train sweep s3://b/spec.yaml --out s3://b/sweeps/s1 --via celery   # trials on the train workers
    vehicle-train quickstart --bucket b                               # all of it, end to end (make quickstart: on a loopback S3)

Settings come from ``--config``/``$VP_CONFIG`` and ``VP_TRAINING__*`` variables like every command.
Exit status 0 on success, 2 on a configuration, model, data or S3 problem (one line on stderr).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from botocore.exceptions import BotoCoreError, ClientError

from vehicle_core.cli.errors import add_version, explain
from vehicle_core.config import load_settings, mask_urls
from vehicle_core.errors import VehiclePipelineError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vehicle-train", description=__doc__.splitlines()[0])
    p.add_argument("--config", help="settings YAML (default: $VP_CONFIG, then the built-in defaults)")
    p.add_argument("--log-format", choices=("text", "json"), default="text", help="text (default) or json lines")
    add_version(p)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("make-synthetic", help="write a labelled synthetic dataset (crops, or --scenes N)")
    s.add_argument("root", help="s3://bucket/prefix or a local folder")
    s.add_argument("--per-class", type=int, default=200, help="crops per class")
    s.add_argument("--scenes", type=int, default=0, help="write N cluttered scenes instead of crops")
    s.add_argument("--scale", type=float, nargs=2, default=(0.12, 0.3), help="scene vehicle length / width")
    s.add_argument("--seed", type=int, default=0)

    s = sub.add_parser("crop", help="detector crops of a dataset, same layout")
    s.add_argument("src")
    s.add_argument("dst")
    s.add_argument("--ground-truth", action="store_true", help="boxes from annotations.jsonl, not the detector")
    s.add_argument("--via", choices=("auto", "celery", "local"), default="auto",
                   help="auto: on the Celery detect workers when they answer and both roots are s3://, else here")

    s = sub.add_parser("train", help="train a classifier; the artifact lands in RUN_DIR/artifact")
    s.add_argument("data", help="dataset root (split/label layout) or a .csv manifest")
    s.add_argument("--run-dir", required=True, help="logs, checkpoints, backup (rerun to resume)")
    s.add_argument("--version", help="artifact version (default: UTC time)")
    s.add_argument("--cache-dir", help="keep fetched images here for later epochs/runs")

    s = sub.add_parser("evaluate", help="report on a split: Markdown/HTML, confusion matrix, mistakes")
    s.add_argument("artifact")
    s.add_argument("data")
    s.add_argument("--split", default="test")
    s.add_argument("--out", required=True, help="local report folder")
    s.add_argument("--upload", help="also copy the report to this s3:// prefix")

    s = sub.add_parser("publish", help="upload an artifact to the registry and make it current")
    s.add_argument("artifact")
    s.add_argument("registry", nargs="?", help="s3://bucket/models/classifier (default: classifier.registry)")
    s.add_argument("--no-current", action="store_true", help="upload only; leave the pointer alone")
    s.add_argument("--if-empty", action="store_true", help="only when the registry has no current version yet")

    s = sub.add_parser("models", help="the registry's versions: list, promote one, roll back")
    s.add_argument("action", choices=("list", "promote", "rollback"))
    s.add_argument("version", nargs="?", help="the version to promote")
    s.add_argument("--registry", help="s3://bucket/models/classifier (default: classifier.registry)")

    s = sub.add_parser("seed-registry", help="publish a classifier when the registry is empty (compose's init)")
    s.add_argument("--artifact", help="artifact directory to publish (default: the demo classifier, trained once)")
    s.add_argument("--registry", help="s3://bucket/models/classifier (default: classifier.registry)")

    s = sub.add_parser("compare", help="a table of several reports (folders holding metrics.json)")
    s.add_argument("reports", nargs="+")

    s = sub.add_parser("sweep", help="grid or random search over training settings and datasets (resumable)")
    s.add_argument("spec", help="sweep spec YAML (local path or s3://), see training/sweep.py")
    s.add_argument("--out", required=True, help="where trials and results go: a local folder, or an s3:// prefix "
                   "with --via celery (a run directory per trial, results.md/.csv, sweep.png)")
    s.add_argument("--via", choices=("local", "celery"), default="local",
                   help="local: trials in this process (default); celery: each trial a task on the train queue "
                        "(workers: celery -A training.trial_worker worker -Q train)")

    s = sub.add_parser("quickstart", help="synthetic data -> train -> evaluate -> publish, on S3")
    s.add_argument("--bucket", required=True)
    s.add_argument("--out", default="quickstart-out", help="local folder for the run and the report")
    s.add_argument("--per-class", type=int, default=200)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from vehicle_core.logs import configure

    configure("WARNING", args.log_format)
    logging.getLogger("vehicle_core").setLevel(logging.INFO)  # our progress, not every S3 request
    try:
        settings = load_settings(args.config)
        # Keras prints its epoch lines to stdout; keep stdout for the command's JSON summary alone.
        with contextlib.redirect_stdout(sys.stderr):
            out = COMMANDS[args.command](args, settings)
    except (VehiclePipelineError, ValueError, OSError, BotoCoreError, ClientError) as exc:
        error = explain(exc) or exc  # botocore's errors read by storage_error, as every command's are
        print(f"vehicle-train {args.command}: {mask_urls(str(getattr(error, 'message', error)))}", file=sys.stderr)
        return 2
    if out is not None:
        print(out if isinstance(out, str) else json.dumps(out, indent=2, default=str))
    return 0


def _make_synthetic(args, settings):
    from training.synthetic.datasets import write_crop_dataset, write_scene_dataset
    from vehicle_core.storage import ObjectStore

    store = ObjectStore(settings.storage)
    if args.scenes:
        return write_scene_dataset(args.root, store, n=args.scenes, seed=args.seed, scale=tuple(args.scale))
    return write_crop_dataset(args.root, store, per_class=args.per_class, seed=args.seed, crop=settings.crop)


def _crop(args, settings):
    from training.crops import crop_dataset

    map_chunks = _detect_workers_map(args, settings)
    rows = crop_dataset(args.src, args.dst, settings, use_ground_truth=args.ground_truth, map_chunks=map_chunks)
    return {"written": sum("key" in r for r in rows), "skipped": sum("skipped" in r for r in rows)}


def _detect_workers_map(args, settings):
    """The Celery ``map_chunks`` when ``--via`` asks for it (or ``auto`` finds detect workers), else None."""
    on_s3 = args.src.startswith("s3://") and args.dst.startswith("s3://")
    if args.via == "local" or (args.via == "auto" and not on_s3):
        return None
    if not on_s3:
        raise ValueError("--via celery needs s3:// source and destination: the workers cannot see local folders")
    from training.remote_crops import CeleryChunks, find_detect_workers  # the one place training needs Celery

    found = find_detect_workers(settings)
    if found:
        print(f"cropping on the detect workers: {', '.join(found)}", file=sys.stderr)
        return CeleryChunks(settings, found)
    if args.via == "celery":
        from vehicle_core.config import mask_secret

        raise ValueError(f"--via celery: no worker consumes queue {settings.broker.detect_queue!r} "
                         f"at {mask_secret(settings.broker.url)}")
    print("no detect worker answered: cropping in this process", file=sys.stderr)
    return None


def _train(args, settings):
    from training.dataset import index_dataset
    from training.train import train_classifier
    from vehicle_core.storage import ObjectStore

    store = ObjectStore(settings.storage, cache_dir=args.cache_dir)
    index = index_dataset(args.data, store)
    print(index.summary(), file=sys.stderr)
    result = train_classifier(
        index, store, settings.training, run_dir=args.run_dir, version=args.version, storage=settings.storage
    )
    return {"artifact": str(result.artifact), "metrics": result.manifest["metrics"], "unreadable": index.unreadable}


def _evaluate(args, settings):
    from training.dataset import index_dataset
    from training.evaluate import evaluate_artifact, upload_report, write_report
    from vehicle_core.storage import ObjectStore

    store = ObjectStore(settings.storage)
    index = index_dataset(args.data, store)
    evaluation, images = evaluate_artifact(args.artifact, index, index.split(args.split), store, split=args.split)
    report = write_report(evaluation, images, args.out)
    uploaded = upload_report(report, args.upload, settings.storage) if args.upload else None
    return {"accuracy": evaluation.accuracy, "report": str(report / "report.md"), "uploaded": uploaded}


def _registry(args, settings) -> str:
    registry = args.registry or settings.classifier.registry
    if not registry:
        raise ValueError("give a registry URI or set classifier.registry (VP_CLASSIFIER__REGISTRY)")
    return registry


def _publish(args, settings):
    from training.publish import publish, seed_if_empty

    registry = _registry(args, settings)
    if args.if_empty:
        return {"published": seed_if_empty(args.artifact, registry, settings.storage)}
    return {"published": publish(args.artifact, registry, settings.storage, make_current=not args.no_current)}


def _models(args, settings):
    from training.publish import promote, registry_status, rollback

    registry = _registry(args, settings)
    if args.action == "promote":
        if not args.version:
            raise ValueError("models promote needs a VERSION (see: vehicle-train models list)")
        promote(registry, args.version, settings.storage)
    elif args.action == "rollback":
        rollback(registry, settings.storage)
    return registry_status(registry, settings.storage)


def _seed_registry(args, settings):
    from training.publish import registry_status, seed_if_empty
    from training.quickstart import ensure_demo_classifier

    registry = _registry(args, settings)
    if registry_status(registry, settings.storage)["current"] is not None:  # before training anything
        return {"published": None, **registry_status(registry, settings.storage)}
    artifact = args.artifact or ensure_demo_classifier(Path(settings.storage.cache_dir), settings)
    return {"published": seed_if_empty(artifact, registry, settings.storage),
            **registry_status(registry, settings.storage)}


def _compare(args, settings):
    from training.evaluate import compare, load_evaluation

    return compare([load_evaluation(Path(r) / "metrics.json") for r in args.reports])


def _sweep(args, settings):
    from training.sweep_run import sweep_command

    return sweep_command(args.spec, args.out, settings, via=args.via)


def _quickstart(args, settings):
    from training.quickstart import run_quickstart

    return run_quickstart(settings, args.bucket, out_dir=Path(args.out), per_class=args.per_class)


COMMANDS = {
    "make-synthetic": _make_synthetic,
    "crop": _crop,
    "train": _train,
    "evaluate": _evaluate,
    "publish": _publish,
    "models": _models,
    "seed-registry": _seed_registry,
    "compare": _compare,
    "sweep": _sweep,
    "quickstart": _quickstart,
}

if __name__ == "__main__":
    sys.exit(main())
