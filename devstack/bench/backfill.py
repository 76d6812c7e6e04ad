"""Backfill and reconcile at scale on loopback servers: ``python -m devstack.bench backfill --keys N``.

moto's S3 over HTTP and a redis-server; N tiny objects. Prints, for each run of the real
``vehicle-producer`` process: wall time, keys/s, its peak RSS and its S3 requests per 1,000 keys.
Runs: a backfill SIGKILLed about half way (held there by the queue limit) and resumed from its
checkpoint (keys sent twice counted); ``--skip-done`` after results exist for every key; reconcile
after 1% of the results were deleted at random (must find exactly those).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import redis

from devstack.processes import wait_until
from devstack.servers import aws_env, moto_server, redis_server
from devstack.stack import stack_env
from vehicle_core.results.contract import ResultStamp

ROOT = Path(__file__).resolve().parents[2]
QUEUE = "bench-detect"


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    with moto_server() as moto, redis_server() as rds, tempfile.TemporaryDirectory() as tmp:
        aws = aws_env(moto.endpoint_url)
        s3 = boto3.client("s3", endpoint_url=moto.endpoint_url, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
        s3.create_bucket(Bucket="bench")
        keys = [f"cams/{i % 50:02d}/img-{i:08d}.jpg" for i in range(args.keys)]
        _parallel(lambda k: s3.put_object(Bucket="bench", Key=k, Body=b"x"), keys)
        client = redis.Redis.from_url(rds.url)
        env = stack_env(broker_url=rds.url, aws=aws, extra={
            "VP_BROKER__DETECT_QUEUE": QUEUE, "VP_PRODUCER__CHECKPOINT_EVERY": str(args.checkpoint_every),
            "VP_PRODUCER__MAX_QUEUE_DEPTH": str(args.keys // 2), "VP_PRODUCER__PAUSE_POLL_S": "0.1"})
        backfill = [sys.executable, "-m", "producer.cli", "backfill", "s3://bench/cams/", "--no-progress"]
        ckpt = ["--checkpoint", str(Path(tmp) / "ckpt.json")]
        killed = _run(backfill + ckpt, env, kill_when=lambda: client.llen(QUEUE) > args.keys // 2)
        resumed = _run(backfill + ckpt, {**env, "VP_PRODUCER__MAX_QUEUE_DEPTH": str(10 * args.keys)})
        counts = _queued_keys(client)
        twice = sum(n - 1 for n in counts.values())
        print(f"kill + resume: {len(counts)} of {len(keys)} keys queued, {twice} twice "
              f"(checkpoint window {args.checkpoint_every})")
        client.delete(QUEUE)
        etags = {o["Key"]: o["ETag"].strip('"') for p in s3.get_paginator("list_objects_v2").paginate(Bucket="bench")
                 for o in p.get("Contents", [])}
        _parallel(lambda k: _write_result(s3, k, etags[k]), keys)
        env = {**env, "VP_PRODUCER__MAX_QUEUE_DEPTH": str(10 * args.keys)}
        skip = _run(backfill + ["--skip-done"], env)
        lost = sorted(random.Random(7).sample(keys, max(1, args.keys // 100)))
        _parallel(lambda k: s3.delete_object(Bucket="bench", Key=f"results/{k}.json"), lost)
        rec = _run([sys.executable, "-m", "producer.cli", "reconcile", "s3://bench/cams/"], env)
        found = sorted(line.split("\t")[1][len("s3://bench/"):] for line in rec["stdout"].splitlines() if "\t" in line)
        print(f"reconcile: {len(found)} found, {len(lost)} deleted, exactly those: {found == lost}")
        _table([("backfill, killed half way", killed), ("backfill, resumed", resumed),
                ("backfill --skip-done (all done)", skip), ("reconcile (1% missing)", rec)], args.keys)


def _write_result(s3, key: str, etag: str) -> None:
    stamp = ResultStamp(etag, "ok")
    s3.put_object(Bucket="bench", Key=f"results/{key}.json", Body=b"{}", Metadata=stamp.to_metadata())


def _parallel(fn, items) -> None:
    with ThreadPoolExecutor(16) as pool:
        for _ in pool.map(fn, items):
            pass


def _run(argv, env, kill_when=None) -> dict:
    """Run the producer; SIGKILL it once ``kill_when()``; its wall time, peak RSS and output."""
    import time

    t0 = time.monotonic()
    out = tempfile.TemporaryFile()
    proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    peak = None
    if kill_when is not None:
        wait_until(lambda: kill_when() or proc.poll() is not None, timeout=3600, what="half way", interval=0.05)
        peak = _vm_hwm_mib(proc.pid)
        proc.send_signal(signal.SIGKILL)
    _, status, _usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.monotonic() - t0
    out.seek(0)
    text = out.read().decode()
    requests = re.search(r"S3 requests (\d+)", text)
    listed = re.search(r"listed (\d+)|images (\d+)", text)
    # The producer prints its own VmHWM: wait4's maxrss would include this process's RSS at fork.
    printed = re.search(r"peak RSS ([\d.]+) MiB", text)
    return {"seconds": seconds, "rss_mib": peak if printed is None else float(printed.group(1)), "stdout": text,
            "rc": proc.returncode,
            "requests": int(requests.group(1)) if requests else None,
            "listed": int(next(g for g in listed.groups() if g)) if listed else None}


def _vm_hwm_mib(pid: int) -> float | None:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return None


def _queued_keys(client) -> Counter:
    counts: Counter = Counter()
    for raw in client.lrange(QUEUE, 0, -1):
        from workers.broker import envelope_body

        body = json.loads(envelope_body(json.loads(raw)))
        counts[body[0][0]["key"]] += 1
    return counts


def _table(rows, keys: int) -> None:
    print(f"\n{'run':<34} {'keys':>8} {'seconds':>8} {'keys/s':>8} {'peak RSS MiB':>13} {'S3 req/1,000 keys':>18} rc")
    for name, r in rows:
        n = r["listed"] or keys
        per = f"{1000 * r['requests'] / max(n, 1):.2f}" if r["requests"] is not None else "(killed)"
        rss = f"{r['rss_mib']:.1f}" if r["rss_mib"] is not None else "?"
        print(f"{name:<34} {n:>8} {r['seconds']:>8.1f} {n / r['seconds']:>8.0f} {rss:>13} {per:>18} {r['rc']}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m devstack.bench backfill", description=__doc__)
    parser.add_argument("--keys", type=int, default=20_000)
    parser.add_argument("--checkpoint-every", type=int, default=1000)
    return parser


if __name__ == "__main__":
    main()
