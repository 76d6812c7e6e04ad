"""``vehicle-demo`` (``make demo``): the whole streaming system on loopback, no cloud account, no Docker.

    S3 (moto server) --event--> SQS --> vehicle-producer listen --> Redis --> detect worker
                                                                           --> classify worker --> results/ in S3

It starts redis-server and moto's server on free loopback ports, wires the bucket's notifications to
an SQS queue (with a dead-letter queue), starts Flower (basic auth), the producer and one worker per
queue (concurrency 1 each), uploads synthetic images plus a few corrupt files through boto3, waits for
every result, prints them with the accuracy and writes a gallery page of them. ``--stay-up`` keeps
everything running until Ctrl-C and prints the S3 endpoint and credentials for uploads of your own.

The stack itself (command lines, environment, start and stop) is devstack/stack.py and the process
helpers devstack/processes.py, shared with the benchmarks and the integration tests.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devstack.processes import DeadlineExceeded, wait_until
from devstack.stack import Stack, start_stack, stop_stack
from vehicle_core.config import mask_secret
from workers.flower import DEMO_CREDENTIALS

log = logging.getLogger("vehicle-demo")
@dataclass
class Row:
    key: str
    expected: str | None
    result: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def demo_images(count: int, seed: int) -> list[tuple[str, bytes, str | None]]:
    """(key, bytes, expected label) of synthetic scenes, plus two corrupt files (expected None)."""
    import numpy as np

    from training.synthetic.scenes import encode, make_scene

    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        scene = make_scene(rng)
        data = encode(scene.image, ".jpg")
        out.append((f"incoming/scene-{i:02d}-{scene.label}.jpg", data, scene.label))
    out.append(("incoming/corrupt-truncated.jpg", out[0][1][: len(out[0][1]) // 3], None))
    out.append(("incoming/not-really-an-image.png", b"this is text, not a PNG\n", None))
    return out


def collect_results(s3, bucket: str, keys: list[str], prefix: str = "results/") -> dict[str, dict]:
    """The result documents of ``keys`` that exist so far."""
    from vehicle_core.storage import ObjectStore

    store = ObjectStore(client=s3)
    found = {}
    for key in keys:
        document = store.get_json(f"s3://{bucket}/{prefix}{key}.json")
        if document is not None:
            found[key] = document
    return found


def print_table(rows: list[tuple[str, str | None]], results: dict[str, dict]) -> float | None:
    """Print image, expected, label, confidence, status; return the accuracy over labelled images."""
    print(f"\n{'image':<42} {'expected':<11} {'label':<11} {'conf':>5}  status")
    print("-" * 84)
    correct = labelled = 0
    for key, expected in rows:
        doc = results.get(key, {})
        status = doc.get("status", "missing")
        if doc.get("error"):
            status += f" ({doc['error'].get('code')})"
        conf = doc.get("confidence")
        print(f"{key:<42} {expected or '-':<11} {doc.get('label') or '-':<11} "
              f"{f'{conf:.2f}' if conf is not None else '-':>5}  {status}")
        if expected:
            labelled += 1
            correct += doc.get("label") == expected
    accuracy = correct / labelled if labelled else None
    if accuracy is not None:
        print(f"\naccuracy: {correct}/{labelled} = {accuracy:.1%}")
    return accuracy


def write_demo_gallery(uploads: list[tuple[str, bytes, str | None]], results: dict[str, dict], out: Path,
                       origin: str) -> Path:
    """The results gallery (HTML, annotated thumbnails inline) of the demo's uploads; returns its path.

    The uploaded files land next to it (``incoming/``), to try ``vehicle-classify --draw`` on."""
    from vehicle_core.reports.gallery import gallery_item, write_gallery

    for key, data, _ in uploads:
        path = out.parent / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    items = [gallery_item(results[key], data) for key, data, _ in uploads if key in results]
    return write_gallery(items, out, title="vehicle-demo results", origin=origin).resolve()


def print_upload_help(stack: Stack, aws: dict[str, str]) -> None:
    """What a user needs to send the running demo an image of their own, and to read its result."""
    endpoint = aws["AWS_ENDPOINT_URL"]
    print(f"""
S3 endpoint: {endpoint}   bucket: {stack.bucket}   region: {aws.get("AWS_DEFAULT_REGION", "us-east-1")}
credentials: AWS_ACCESS_KEY_ID={aws["AWS_ACCESS_KEY_ID"]} AWS_SECRET_ACCESS_KEY={aws["AWS_SECRET_ACCESS_KEY"]}
Upload an image of your own (in another terminal), then read its result a few seconds later:
  export AWS_ENDPOINT_URL={endpoint} AWS_ACCESS_KEY_ID={aws["AWS_ACCESS_KEY_ID"]} \\
         AWS_SECRET_ACCESS_KEY={aws["AWS_SECRET_ACCESS_KEY"]} AWS_DEFAULT_REGION={aws.get("AWS_DEFAULT_REGION", "us-east-1")}
  aws s3 cp photo.jpg s3://{stack.bucket}/incoming/photo.jpg
  aws s3 cp s3://{stack.bucket}/results/incoming/photo.jpg.json -
  vehicle-results gallery s3://{stack.bucket}/results/ --out my-gallery.html""")


def run_demo(args: argparse.Namespace) -> int:
    from devstack.servers import aws_env, moto_server, redis_server
    from training.quickstart import ensure_demo_classifier
    from vehicle_core.config import load_settings

    started = time.monotonic()
    settings = load_settings()
    if args.classifier:
        classifier = Path(args.classifier)
    else:
        log.info("getting the demo classifier (trained once, then cached under %s)", settings.storage.cache_dir)
        classifier = ensure_demo_classifier(Path(settings.storage.cache_dir).expanduser(), settings)
    log_dir = Path(args.log_dir).resolve()
    with redis_server() as redis, moto_server() as moto:
        aws = aws_env(_endpoint(moto))
        stack = start_stack((_url(redis), aws), log_dir=log_dir, classifier=classifier,
                            flower_port=args.flower_port or settings.flower.port,
                            basic_auth=settings.flower.basic_auth or DEMO_CREDENTIALS)
        try:
            # The demo's own credentials are public (docs); an operator's are shown masked.
            shown = mask_secret(settings.flower.basic_auth) if settings.flower.basic_auth else DEMO_CREDENTIALS
            print(f"Flower: {stack.flower_url}  (user:password {shown})")
            uploads = demo_images(args.images, args.seed)
            for key, data, _ in uploads:
                stack.s3.put_object(Bucket=stack.bucket, Key=key, Body=data)
            auth = settings.flower.basic_auth or DEMO_CREDENTIALS
            if args.flower_screenshots:  # the queues while the uploads flow through them
                queued = queue_counter(stack, settings)
                flower_screenshot(stack, auth, "broker", Path(args.flower_screenshots) / "flower-queues.png",
                                  when=lambda: queued() > 0)
            keys = [key for key, _, _ in uploads]
            log.info("uploaded %d objects to s3://%s/incoming/; waiting for their results", len(keys), stack.bucket)
            done: dict[str, dict] = {}

            def all_done() -> bool:
                stack.check_alive()
                done.update(collect_results(stack.s3, stack.bucket, [k for k in keys if k not in done]))
                return len(done) == len(keys)

            wait_until(all_done, timeout=args.timeout, what="every result", interval=0.5,
                       progress=lambda: f"{len(done)}/{len(keys)} results")
            print_table([(k, expected) for k, _, expected in uploads], done)
            gallery = write_demo_gallery(uploads, done, Path(args.gallery), origin=f"s3://{stack.bucket}/results/")
            if args.flower_screenshots:
                flower_screenshot(stack, auth, "", Path(args.flower_screenshots) / "flower-workers.png",
                                  when=lambda: True)
            print(f"\nFlower: {stack.flower_url}   logs: {log_dir}   took {time.monotonic() - started:.0f}s")
            if args.stay_up:
                print_upload_help(stack, aws)
            print(f"gallery: {gallery}")
            if args.stay_up:
                _stay_up()
        finally:
            stop_stack(stack)
    return 0


def queue_counter(stack: Stack, settings) -> Callable[[], int]:
    """A function giving the messages waiting in the detect and classify queues (Redis lists) now."""
    import redis

    client = redis.Redis.from_url(stack.broker_url)
    queues = (settings.broker.detect_queue, settings.broker.classify_queue)
    return lambda: sum(client.llen(q) for q in queues)


def flower_screenshot(stack: Stack, auth: str, page: str, out: Path, *, when: Callable[[], bool],
                      timeout_s: float = 30) -> Path | None:
    """A screenshot of one of Flower's pages once ``when()`` holds (or after ``timeout_s`` anyway);
    None, with a warning, where chromium is missing."""
    from devstack.browser import chromium_binary, screenshot

    if chromium_binary() is None:
        log.warning("no chromium: no screenshot of Flower (apt-get install chromium)")
        return None
    try:
        wait_until(when, timeout=timeout_s, what=f"the moment for {out.name}", interval=0.2)
    except DeadlineExceeded:
        log.info("taking %s anyway", out.name)
    host = stack.flower_url.removeprefix("http://")
    path = screenshot(f"http://{auth}@{host}/{page}", out, size=(1200, 520), palette=True)
    print(f"Flower screenshot: {path}")
    return path


def _stay_up() -> None:
    import threading

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print("staying up; Ctrl-C to stop")
    while not stop.wait(1.0):  # a timed wait so the signal handler gets to run
        pass


def _url(server: Any) -> str:
    return server if isinstance(server, str) else server.url


def _endpoint(server: Any) -> str:
    return server if isinstance(server, str) else server.endpoint_url


def main(argv: list[str] | None = None) -> int:
    from vehicle_core.cli.errors import configure_logging, report

    args = _parser().parse_args(argv)
    configure_logging(args.log_level)
    try:
        return run_demo(args)
    except (DeadlineExceeded, RuntimeError) as exc:  # a server that would not start, a process that died
        print(f"vehicle-demo: {_one_line(str(exc), args.log_dir)}", file=sys.stderr)
        return 1
    except Exception as exc:  # known failures become one line; report() re-raises the rest (bugs)
        return report("vehicle-demo", exc)


def _one_line(message: str, log_dir: str) -> str:
    """A dead process's message is its name plus its log's tail: keep the line that says why."""
    first, *tail = message.splitlines()
    if not tail:
        return message
    errors = [line.strip() for line in tail if "rror" in line] or [line.strip() for line in tail if line.strip()]
    why = errors[-1] if errors else "no output"
    hint = "; another program holds the port: pass --flower-port" if "Address already in use" in why else ""
    return f"{first.rstrip(':')}: {why}{hint} (logs: {log_dir})"


DESCRIPTION = """\
Run the whole streaming system on loopback (no cloud account, no Docker), push synthetic images
through it, print their results and write a gallery page of them:

  S3 (moto) --event--> SQS --> vehicle-producer listen --> Redis --> detect worker --> classify worker
                                                                   --> results/ in S3 --> gallery.html

It starts redis-server and moto's S3+SQS server on free loopback ports, Flower (basic auth), the
producer and one worker per queue; uploads synthetic scenes plus two corrupt files; waits for every
result. With --stay-up everything keeps running until Ctrl-C, and the S3 endpoint and credentials
are printed so that you can upload images of your own."""


def _parser() -> argparse.ArgumentParser:
    from vehicle_core.cli.errors import OneLineParser, log_level

    parser = OneLineParser(prog="vehicle-demo", description=DESCRIPTION,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=_count, default=24, help="synthetic images to upload (plus 2 corrupt files)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--flower-port", type=int, help="Flower's port (default: flower.port, 5555)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for every result")
    parser.add_argument("--log-dir", default=str(Path(tempfile.gettempdir()) / "vehicle-demo-logs"),
                        help="where each process writes its log")
    parser.add_argument("--gallery", default="demo-out/gallery.html",
                        help="where to write the results gallery (default: demo-out/gallery.html)")
    parser.add_argument("--classifier", type=_existing, help="classifier artifact to serve instead of the cached demo one")
    parser.add_argument("--stay-up", action="store_true", help="keep everything running until Ctrl-C")
    parser.add_argument("--flower-screenshots", metavar="DIR",
                        help="save Flower's queue page (while the images flow) and workers page (at the end) "
                             "as DIR/flower-queues.png and DIR/flower-workers.png (needs chromium)")
    parser.add_argument("--log-level", type=log_level, default="INFO", help="debug, info (default), warning, error")
    return parser


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number of 0 or more, got {text!r}")
    return int(text)


def _existing(text: str) -> str:
    if not Path(text).exists():
        raise argparse.ArgumentTypeError(f"{text}: no such file or directory; pass a classifier artifact "
                                         "(a directory with manifest.json, or a .tar.gz)")
    return text


if __name__ == "__main__":
    sys.exit(main())
