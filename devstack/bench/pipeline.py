"""``python -m devstack.bench pipeline``: the end-to-end benchmark of the streaming system.

It starts redis-server and moto's S3+SQS server on loopback (or attaches: ``--broker-url`` for
Redis, ``AWS_ENDPOINT_URL`` with its credentials for S3+SQS), puts the devstack S3 proxy in front of
S3 (it counts requests; ``--s3-latency-ms`` adds latency), starts the producer and the workers with
the README's production command lines (``devstack.stack.worker_argv``; how many and their concurrency
are flags), uploads ``--images`` synthetic scene JPEGs and waits for every result. Then it stops the
stack and runs the same models in one process over the same objects fetched from the same endpoint
(``devstack.bench.inprocess``), and prints one table (devstack/bench/figures.py); ``--json`` writes
every figure. The last line is ``efficiency X.XX``: end-to-end images/s over in-process images/s.

Two warm-up images go through first (models load on a worker's first task); CPU time, S3 requests,
Redis commands and batch sizes count from after them until the last result is in (the steady window).
What each image costs beyond the models is in rows a script can read back
(``devstack.bench.figures.parse_table``): ``overhead ratio`` (worker CPU-s per image over the in-process run's),
``redis commands per image`` and ``redis CPU-µs per image`` (deltas of redis-server's ``INFO
commandstats`` and ``INFO cpu``), ``broker ceiling (images/s per Redis core)`` (1 s over that CPU
cost) and ``S3 requests per image`` (by HTTP method, counted by the proxy). ``--fake-models`` runs the
same stack with fixed-cost stand-in models (``fake://`` URIs, vehicle_core/fake_models.py): the
plumbing alone, at a higher rate than the real models allow.

    python -m devstack.bench pipeline --images 200                       # the baseline in docs/benchmarks.md
    python -m devstack.bench pipeline --images 400 --fake-models         # the plumbing's cost per image
    python -m devstack.bench pipeline --images 200 --s3-latency-ms 20    # S3 20 ms away
    python -m devstack.bench pipeline --detect-workers 2 --worker-env VP_WORKER__THREADS=1
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from devstack.bench import figures as figs
from devstack.processes import Process, start_process, stop_process, wait_until
from devstack.stack import worker_argv, worker_ready
from workers.messages import DETECT_TASK

log = logging.getLogger("devstack.bench.pipeline")
WARMUP = 2


@contextlib.contextmanager
def endpoints(args: argparse.Namespace) -> Iterator[tuple[str, dict[str, str], int | None]]:
    """(Redis URL, AWS variables, moto's pid or None): started here unless the flags/environment name them.
    The Redis is the broker, or with ``--broker sqs`` the crash ledger's (the messages then go through SQS)."""
    from devstack.servers import aws_env, moto_server, redis_server

    with contextlib.ExitStack() as stack:
        broker = args.broker_url or stack.enter_context(redis_server()).url
        endpoint = os.environ.get("AWS_ENDPOINT_URL")
        moto_pid = None
        if endpoint:
            aws = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
        else:
            moto = stack.enter_context(moto_server())
            aws = aws_env(moto.endpoint_url)
            moto_pid = figs.pid_of_server("moto.server", moto.port)
        yield broker, aws, moto_pid


def upload_scenes(s3, bucket: str, scenes: list[tuple[str, bytes]], watcher: ResultWatcher | None = None,
                  window: int | None = None) -> dict[str, float]:
    """PUT each (key, bytes); returns key -> time.time() when S3 had it. With ``window``, at most that
    many uploaded images wait for their result at any time (a steady stream instead of one burst)."""
    out: dict[str, float] = {}
    for key, data in scenes:
        if window and watcher:
            wait_until(lambda: watcher.waiting(len(out)) < window, timeout=watcher.timeout,
                       what=f"a result (window of {window})", interval=0.5)
        s3.put_object(Bucket=bucket, Key=key, Body=data, ContentType="image/jpeg")
        out[key] = time.time()
    return out


def make_scenes(n: int, size: tuple[int, int], seed: int, prefix: str,
                distinct: int | None = None) -> list[tuple[str, bytes]]:
    """(key, JPEG bytes) of ``n`` synthetic scenes of ``size`` (width, height). With ``distinct``, only
    that many different scenes are drawn and the keys cycle through them (a 1280×960 scene takes about
    0.13 s to draw and 0.5 MB to hold: 10,000 distinct ones would take 20 minutes and 5 GB)."""
    import numpy as np

    from training.synthetic.scenes import encode, make_scene

    rng = np.random.default_rng(seed)
    pool = [encode(make_scene(rng, size=size).image, ".jpg") for _ in range(min(n, distinct or n))]
    return [(f"{prefix}{i:05d}.jpg", pool[i % len(pool)]) for i in range(n)]


class ResultWatcher:
    """The result documents that have landed under ``results/``, read by listing the prefix.

    A LIST of a growing prefix costs the endpoint more each time (moto scans and sorts the whole
    bucket per page), so a round starts only after ``pace`` times the last round's duration has
    passed: the watcher takes a bounded share of the endpoint however many results there are."""

    def __init__(self, s3, bucket: str, processes: list[Process], timeout: float, pace: float = 4.0) -> None:
        self.s3, self.bucket, self.processes, self.timeout, self.pace = s3, bucket, processes, timeout, pace
        self.docs: dict[str, dict] = {}
        self._next_round = 0.0
        self.tracked: set[str] = set()
        self.tracked_done = 0  # results of the tracked keys so far
        self.on_progress: Callable[[int], None] | None = None  # called with tracked_done after each round

    def track(self, keys: Iterable[str], on_progress: Callable[[int], None] | None = None) -> None:
        """Count the results of ``keys`` as they land (``tracked_done``)."""
        self.tracked = set(keys)
        self.tracked_done = sum(1 for key in self.tracked if key in self.docs)
        self.on_progress = on_progress

    def waiting(self, uploaded: int) -> int:
        """How many of the first ``uploaded`` tracked keys have no result yet (polls when due)."""
        self.poll()
        return uploaded - self.tracked_done

    def count(self, keys: Iterable[str]) -> int:
        """How many of ``keys`` have a result (polls when due)."""
        self.poll()
        return sum(1 for key in keys if key in self.docs)

    def poll(self) -> None:
        now = time.monotonic()
        if now < self._next_round:
            return
        for proc in self.processes:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.log_tail()}")
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix="results/"):
            for obj in page.get("Contents", []):
                key = obj["Key"][len("results/") : -len(".json")]
                if key not in self.docs:
                    body = self.s3.get_object(Bucket=self.bucket, Key=obj["Key"])["Body"].read()
                    self.docs[key] = json.loads(body)
                    self.tracked_done += key in self.tracked
        self._next_round = time.monotonic() + self.pace * (time.monotonic() - now)
        if self.on_progress:
            self.on_progress(self.tracked_done)

    def wait_for(self, keys: Iterable[str]) -> dict[str, dict]:
        """Every one of ``keys``' result documents."""
        wanted = list(keys)
        wait_until(lambda: self.count(wanted) == len(wanted), timeout=self.timeout,
                   what=f"{len(wanted)} results", interval=0.5,
                   progress=lambda: f"{sum(1 for k in wanted if k in self.docs)}/{len(wanted)} results")
        return {key: self.docs[key] for key in wanted}


def start_workers(args: argparse.Namespace, env: dict[str, str], queue_url: str, log_dir: Path) -> list[Process]:
    """Producers and workers with the README's command lines; returns them once every worker answers a ping."""
    from devstack.stack import producer_argv
    from vehicle_core.config import load_settings
    from workers.messages import sender_app

    root = Path(__file__).resolve().parents[2]
    specs = [(f"detect-worker-{i}", worker_argv("detect", f"detect{i}@bench", concurrency=args.detect_concurrency,
                                                env=env))
             for i in range(args.detect_workers)]
    specs += [(f"classify-worker-{i}", worker_argv("classify", f"classify{i}@bench",
                                                   concurrency=args.classify_concurrency, env=env))
              for i in range(args.classify_workers)]
    specs += [(f"producer-{i}", producer_argv(queue_url)) for i in range(args.producers)]
    procs = [start_process(name, argv, env, log_dir, cwd=root) for name, argv in specs]
    app = sender_app(load_settings(env={k: v for k, v in env.items() if k.startswith("VP_BROKER__")}).broker)
    names = [f"detect{i}@bench" for i in range(args.detect_workers)] + \
            [f"classify{i}@bench" for i in range(args.classify_workers)]
    for name, proc in zip(names, procs, strict=False):  # the workers come first in procs, in this order
        wait_until(lambda n=name, p=proc: _check(procs) or worker_ready(app, n, p), timeout=args.timeout,
                   what=f"worker {name}")
    return procs


def _check(procs: list[Process]) -> bool:
    for proc in procs:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.log_tail()}")
    return False


class Meter:
    """CPU seconds of the stack's processes, S3 requests and log offsets, between two snapshots."""

    def __init__(self, procs: list[Process], broker_url: str, moto_pid: int | None, proxy, sqs_proxy=None, *,
                 events_queue: str = "") -> None:
        self.procs, self.broker_url, self.moto_pid, self.proxy = procs, broker_url, moto_pid, proxy
        self.sqs_proxy, self.events_queue = sqs_proxy, events_queue
        self.start: dict[str, Any] = {}

    def idle_rate(self, seconds: float) -> dict[str, Any] | None:
        """What redis-server does per second with the stack connected and no image in flight (BRPOP
        timeouts, heartbeats, restore sweeps, cron): measured over ``seconds`` (a measurement window,
        not a wait for anything), so that the per-image figures can leave it out."""
        if seconds <= 0:
            return None
        first, t0 = figs.redis_stats(self.broker_url), time.monotonic()
        time.sleep(seconds)
        last = figs.redis_stats(self.broker_url)
        return figs.redis_rate(first, last, time.monotonic() - t0)

    def snapshot(self) -> dict[str, Any]:
        redis_stats = figs.redis_stats(self.broker_url)
        cpu: dict[str, float | None] = {p.name: figs.cpu_seconds(p.pid) for p in self.procs}
        cpu["redis-server"] = redis_stats and redis_stats["cpu_s"]
        cpu["moto (S3+SQS)"] = figs.cpu_seconds(self.moto_pid) if self.moto_pid else None
        # Its own threads only: the stack's processes are its children and have rows of their own.
        cpu["bench process (uploads, polling, S3 proxy)"] = time.process_time()
        return {"cpu": cpu, "s3": dict(self.proxy.counts) if self.proxy else None, "redis": redis_stats,
                "sqs": dict(self.sqs_proxy.sqs_actions) if self.sqs_proxy else None,
                "at": time.monotonic(),
                "logs": {p.name: p.log_path.stat().st_size if p.log_path.exists() else 0 for p in self.procs}}

    def since(self, start: dict[str, Any], end: dict[str, Any], n: int,
              idle: dict[str, Any] | None = None) -> dict[str, Any]:
        deltas = [(name, None if end["cpu"][name] is None or start["cpu"].get(name) is None
                   else end["cpu"][name] - start["cpu"][name]) for name in end["cpu"]]
        s3 = None
        if end["s3"] is not None:
            s3 = {m: (c - start["s3"].get(m, 0)) / n for m, c in end["s3"].items() if c - start["s3"].get(m, 0)}
        sqs = None
        if end.get("sqs") is not None:
            sqs = {"broker": {}, "events": {}}
            for (action, queue), count in end["sqs"].items():
                delta = count - start["sqs"].get((action, queue), 0)
                if delta:
                    side = sqs["events" if queue == self.events_queue else "broker"]
                    side[action] = side.get(action, 0) + delta / n
        logs = {p.name: _read_from(p.log_path, start["logs"][p.name]) for p in self.procs}
        detect_log = "".join(t for name, t in logs.items() if name.startswith("detect"))
        classify_log = "".join(t for name, t in logs.items() if name.startswith("classify"))
        detect = figs.batch_histogram(detect_log, r"detect batch: (\d+) images")
        if not detect:  # the detect task takes one image per task (until it batches): count its tasks
            tasks = len(re.findall(rf"Task {re.escape(DETECT_TASK)}\[[^\]]+\] succeeded", detect_log))
            detect = {1: tasks} if tasks else {}
        return {"cpu_s_per_image": figs.per_image(deltas, n), "s3_requests_per_image": s3, "sqs_requests_per_image": sqs,
                "redis_per_image": figs.redis_per_image(start.get("redis"), end.get("redis"), n, idle=idle,
                                                        seconds=end["at"] - start["at"]),
                "detect_batches": dict(detect),
                "classify_batches": dict(figs.batch_histogram(classify_log, r"classify batch: (\d+) images"))}


class RssProbe:
    """Resident memory of each worker (its main process and pool children, MiB) when the results
    first reach ``at`` and at the end: a worker that leaks grows between the two."""

    def __init__(self, procs: list[Process], at: int | None) -> None:
        self.workers = [p for p in procs if "worker" in p.name]
        self.at = at
        self.samples: dict[str, dict[str, float]] = {}

    def __call__(self, results: int) -> None:
        if self.at and results >= self.at and "first" not in self.samples:
            self.samples["first"] = self.rss()

    def rss(self) -> dict[str, float]:
        import psutil

        out = {}
        for proc in self.workers:
            with contextlib.suppress(psutil.NoSuchProcess):
                tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
                out[proc.name] = sum(p.memory_info().rss for p in tree if p.is_running()) / 2**20
        return out

    def figures(self, total: int) -> dict[str, Any] | None:
        if not self.at or "first" not in self.samples:
            return None
        last = self.rss()
        return {"after_images": [self.at, total], "mib": {name: [round(self.samples["first"][name], 1),
                                                                 round(last[name], 1)]
                                                          for name in last if name in self.samples["first"]}}


def _read_from(path: Path, offset: int) -> str:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


def run_inprocess(env: dict[str, str], bucket: str, keys: list[str], warmup: list[str], log_dir: Path) -> dict:
    """The same models in one fresh process over the same objects (devstack/bench/inprocess.py)."""
    out = log_dir / "inprocess.json"
    argv = [sys.executable, "-m", "devstack.bench.inprocess", "--bucket", bucket, "--out", str(out),
            "--keys", ",".join(keys), "--warmup", ",".join(warmup)]
    with open(log_dir / "inprocess.log", "wb") as log_file:
        done = subprocess.run(argv, env=env, stdout=log_file, stderr=subprocess.STDOUT, check=False,
                              cwd=Path(__file__).resolve().parents[2])
    if done.returncode != 0:
        raise RuntimeError(f"the in-process run failed ({done.returncode}); see {log_dir / 'inprocess.log'}")
    return json.loads(out.read_text())


def run_pipeline(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark; returns every figure (what ``--json`` writes)."""
    import boto3

    from devstack.s3_proxy import s3_proxy
    from devstack.servers import wire_bucket_notifications
    from devstack.stack import stack_env

    log_dir = Path(args.log_dir).resolve()
    classifier = _classifier(args)
    width, height = args.size
    log.info("making %d synthetic scenes of %dx%d", args.images, width, height)
    scenes = make_scenes(args.images, (width, height), args.seed, "bench/", distinct=args.distinct_scenes)
    warm = make_scenes(WARMUP, (width, height), args.seed + 1, "warmup/")
    with endpoints(args) as (broker, aws, moto_pid), contextlib.ExitStack() as stack:
        endpoint = aws["AWS_ENDPOINT_URL"]
        proxy = None if args.no_proxy else stack.enter_context(s3_proxy(endpoint, latency_ms=args.s3_latency_ms))
        session = boto3.Session(region_name=aws.get("AWS_DEFAULT_REGION", "us-east-1"),
                                aws_access_key_id=aws.get("AWS_ACCESS_KEY_ID"),
                                aws_secret_access_key=aws.get("AWS_SECRET_ACCESS_KEY"))
        s3 = session.client("s3", endpoint_url=endpoint)  # the bench's own calls bypass the proxy's counters
        s3.create_bucket(Bucket=args.bucket)
        queue_url = wire_bucket_notifications(s3, session.client("sqs", endpoint_url=endpoint), args.bucket,
                                              f"{args.bucket}-events")
        # S3 calls of the stack go through the proxy (counted, delayed); SQS goes straight to the endpoint,
        # unless SQS is the broker: then through a second proxy, which counts its requests by action.
        extra = {**model_env(args, classifier), "VP_PRODUCER__WAIT_TIME_S": "1",
                 **({"AWS_ENDPOINT_URL_S3": proxy.endpoint_url} if proxy else {}), **dict(args.worker_env)}
        broker_url, sqs_proxy = broker, None
        if args.broker == "sqs":
            sqs_proxy = stack.enter_context(s3_proxy(endpoint))
            broker_url = "sqs://"
            extra.update({"AWS_ENDPOINT_URL_SQS": sqs_proxy.endpoint_url, "VP_BROKER__STATE_URL": broker,
                          "VP_BROKER__REGION": aws.get("AWS_DEFAULT_REGION", "us-east-1")})
        env = stack_env(broker_url=broker_url, aws=aws, extra=extra)
        procs = start_workers(args, env, queue_url, log_dir)
        try:
            meter = Meter(procs, broker, moto_pid, proxy, sqs_proxy, events_queue=queue_url.rsplit("/", 1)[-1])
            watcher = ResultWatcher(s3, args.bucket, procs, args.timeout)
            watcher.wait_for(upload_scenes(s3, args.bucket, warm))
            idle = meter.idle_rate(args.redis_idle_s)
            start = meter.snapshot()
            rss = RssProbe(procs, args.rss_after)
            watcher.track((k for k, _ in scenes), on_progress=rss)
            log.info("uploading %d images to s3://%s/bench/%s", args.images, args.bucket,
                     f" (at most {args.upload_window} waiting)" if args.upload_window else "")
            uploaded = upload_scenes(s3, args.bucket, scenes, watcher, args.upload_window)
            docs = watcher.wait_for(uploaded)
            measured = meter.since(start, meter.snapshot(), args.images, idle)
            measured["worker_rss"] = rss.figures(args.images)
        finally:
            for proc in procs:
                stop_process(proc)
        inproc = None
        if not args.skip_inprocess:
            log.info("all results in; the same models in one process over the same objects")
            inproc = run_inprocess(env, args.bucket, [k for k, _ in scenes], [k for k, _ in warm], log_dir)
    fig = figs.result_figures(docs, uploaded)
    fig.update(measured)
    fig.update(images=args.images, image_size=f"{width}x{height}", stack=_stack_text(args),
               inprocess_images_per_s=inproc and inproc["images_per_s"], inprocess=inproc,
               efficiency=inproc and fig["e2e_images_per_s"] / inproc["images_per_s"], machine=_machine(),
               overhead=figs.overhead_ratio(fig["cpu_s_per_image"], inproc and inproc["cpu_s_per_image"]))
    return fig


def model_env(args: argparse.Namespace, classifier: Path | None) -> dict[str, str]:
    """The models every stack process (and the in-process run) loads: the configured detector and
    ``classifier``, or with ``--fake-models`` the fixed-cost stand-ins (vehicle_core/fake_models.py)."""
    if args.fake_models:
        detect_ms, crop_ms, vehicles = args.fake_cost
        return {"VP_DETECTOR__MODEL": f"fake://detector?cpu_ms={detect_ms:g}&vehicles={vehicles}",
                "VP_CLASSIFIER__MODEL": f"fake://classifier?cpu_ms={crop_ms:g}"}
    return {"VP_CLASSIFIER__MODEL": str(classifier)}


def _classifier(args: argparse.Namespace) -> Path | None:
    if args.fake_models:
        return None
    if args.classifier:
        return Path(args.classifier)
    from training.quickstart import ensure_demo_classifier
    from vehicle_core.config import load_settings

    settings = load_settings()
    return ensure_demo_classifier(Path(settings.storage.cache_dir).expanduser(), settings)


def _stack_text(args: argparse.Namespace) -> str:
    text = (f"{args.detect_workers} detect worker(s) -c {args.detect_concurrency}, {args.classify_workers} classify "
            f"worker(s) -c {args.classify_concurrency}, {args.producers} producer(s)")
    if args.fake_models:
        detect_ms, crop_ms, vehicles = args.fake_cost
        text += (f", fake models ({detect_ms:g} CPU-ms per image detect, {crop_ms:g} per crop classify, "
                 f"{vehicles} vehicles per image)")
    if args.s3_latency_ms:
        text += f", S3 latency +{args.s3_latency_ms:g} ms"
    if args.broker == "sqs":
        text += ", SQS broker (crash ledger in Redis)"
    if args.worker_env:
        text += ", " + " ".join(f"{k}={v}" for k, v in args.worker_env)
    return text


def _machine() -> str:
    import platform

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{os.cpu_count()} CPUs ({cpu}), load average {load:.1f} at the end, Python {platform.python_version()}"


def print_report(fig: dict[str, Any]) -> None:
    print(f"\nmachine: {fig['machine']}\n")
    print("\n".join(figs.table_lines(fig)))
    print("\nefficiency n/a (--skip-inprocess)" if fig["efficiency"] is None else f"\nefficiency {fig['efficiency']:.2f}")


def _size(text: str) -> tuple[int, int]:
    w, sep, h = text.lower().partition("x")
    if not sep or not w.isdigit() or not h.isdigit() or int(w) < 64 or int(h) < 64:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT (each at least 64), got {text!r}")
    return int(w), int(h)


def _env_pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def _fake_cost(text: str) -> tuple[float, float, int]:
    parts = text.split(",")
    try:
        detect_ms, crop_ms, vehicles = float(parts[0]), float(parts[1]), int(parts[2])
    except (IndexError, ValueError):
        raise argparse.ArgumentTypeError(f"expected DETECT_MS,CROP_MS,VEHICLES, e.g. 10,1,3; got {text!r}") from None
    if len(parts) != 3 or detect_ms < 0 or crop_ms < 0 or vehicles < 0:
        raise argparse.ArgumentTypeError(f"expected three numbers of 0 or more, e.g. 10,1,3; got {text!r}")
    return detect_ms, crop_ms, vehicles


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of 1 or more, got {text!r}")
    return int(text)


def parser() -> argparse.ArgumentParser:
    from vehicle_core.cli.errors import OneLineParser

    p = OneLineParser(prog="python -m devstack.bench.pipeline", description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("pipeline", help="end-to-end images/s of the whole stack vs the same models in one process")
    b.add_argument("--images", type=_positive, default=200, help="synthetic scenes to upload (default 200)")
    b.add_argument("--size", type=_size, default=(1280, 960), help="scene size WIDTHxHEIGHT (default 1280x960)")
    b.add_argument("--seed", type=int, default=11)
    b.add_argument("--distinct-scenes", type=_positive, default=1000, metavar="N",
                   help="draw at most N different scenes; more images cycle through them under their own "
                        "keys (default 1000)")
    b.add_argument("--detect-workers", type=_positive, default=1, help="detect worker commands (default 1)")
    b.add_argument("--detect-concurrency", type=_positive, default=1, help="-c of each detect worker (default 1)")
    b.add_argument("--classify-workers", type=_positive, default=1, help="classify worker commands (default 1)")
    b.add_argument("--classify-concurrency", type=_positive, default=1, help="-c of each classify worker (default 1)")
    b.add_argument("--producers", type=_positive, default=1, help="`vehicle-producer listen` processes (default 1)")
    b.add_argument("--worker-env", type=_env_pair, action="append", default=[], metavar="NAME=VALUE",
                   help="extra environment of every stack process, e.g. VP_WORKER__THREADS=1 (repeatable)")
    b.add_argument("--broker-url", help="attach to this Redis instead of starting redis-server")
    b.add_argument("--broker", choices=("redis", "sqs"), default="redis",
                   help="redis (default), or sqs: task messages through SQS (the loopback server's, behind a proxy that "
                        "counts requests by action); Redis then keeps only the crash ledger (its rows are the ledger's)")
    b.add_argument("--bucket", default="vehicle-bench", help="bucket to create and upload to (default vehicle-bench)")
    b.add_argument("--redis-idle-s", type=float, default=3.0, metavar="S",
                   help="seconds of the idle stack measured before the upload: Redis's idle commands and CPU "
                        "per second are left out of the per-image figures (default 3; 0 = not measured)")
    b.add_argument("--s3-latency-ms", type=float, default=0.0, help="latency the S3 proxy adds to every S3 request")
    b.add_argument("--no-proxy", action="store_true", help="no S3 proxy (no request counts); e.g. for an https endpoint")
    b.add_argument("--classifier", help="classifier artifact (default: the demo classifier, trained once and cached)")
    b.add_argument("--fake-models", action="store_true",
                   help="the same stack with fixed-cost stand-in models (fake:// URIs, vehicle_core/fake_models.py): "
                        "the plumbing's cost alone, at a higher rate than the real models allow")
    b.add_argument("--fake-cost", type=_fake_cost, default=(10.0, 1.0, 3), metavar="DETECT_MS,CROP_MS,VEHICLES",
                   help="with --fake-models: CPU-ms the detector spends per image, the classifier per crop, and "
                        "the vehicles found per image (default 10,1,3)")
    b.add_argument("--timeout", type=float, default=1800, help="seconds to wait for the workers, and for the results")
    b.add_argument("--json", help="write every figure to this JSON file")
    b.add_argument("--rss-after", type=_positive, metavar="N",
                   help="also report each worker's RSS once N results are in and at the end (a soak: "
                        "--images 10000 --rss-after 1000)")
    b.add_argument("--upload-window", type=_positive, metavar="N",
                   help="keep at most N uploaded images waiting for their result (a steady stream; default: "
                        "upload all at once). A soak uses it so the endpoint's queue and bucket stay shallow")
    b.add_argument("--skip-inprocess", action="store_true",
                   help="no in-process comparison run (no efficiency figure): for long soaks")
    b.add_argument("--log-dir", default=str(Path(tempfile.gettempdir()) / "vehicle-bench-logs"),
                   help="where each process writes its log")
    return p


def main(argv: list[str] | None = None) -> int:
    from vehicle_core.cli.errors import configure_logging

    args = parser().parse_args(argv)
    configure_logging("INFO")
    fig = run_pipeline(args)
    if args.json:
        Path(args.json).write_text(json.dumps(fig, indent=2, sort_keys=True, default=str))
    print_report(fig)
    return 0


if __name__ == "__main__":
    sys.exit(main())
