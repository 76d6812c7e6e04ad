"""``python -m devstack.bench s3``: what the hot path's two S3 requests cost their caller in CPU.

The object store's GET of an image (``max_bytes`` as the detect worker passes it) and PUT of a result
(JSON with the result stamp's metadata, ``If-None-Match: *``, a new key each time, as the classify
worker writes it), through the lean path (vehicle_core/storage/lean.py) and through boto3
(``storage.lean_requests: false``), against moto's S3 on loopback behind the devstack S3 proxy (which
keeps connections alive, as S3 does; moto itself closes every one), each server a process of its own.

Rounds alternate between the two modes (lean, boto3, boto3, lean, …) in one process, so both see the
machine in the same state; CPU is the calling thread's (``time.thread_time``), so the servers' share
of the two cores does not count. Prints, per mode, the median and range over rounds of CPU-ms per
call, and the requests the proxy saw per call (1.00: no request was repeated).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import statistics
import time
from dataclasses import replace

import boto3

from devstack.s3_proxy import s3_proxy
from devstack.servers import aws_env, environment, moto_server
from vehicle_core.config import load_settings
from vehicle_core.storage import ObjectStore

BUCKET = "bench-s3"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    image = os.urandom(args.image_bytes)
    document = {"source": {"bucket": BUCKET, "key": "cam/0001.jpg", "etag": "0" * 32},
                "detections": [{"label": "car", "score": 0.97, "box": [10.5, 20.25, 300.0, 200.75],
                                "detector_score": 0.91, "top": [["car", 0.97], ["truck", 0.02]]}] * 3,
                "models": {"detector": "x" * 120, "classifier": "y" * 120}, "timings_ms": {"detect": 12.5}}
    metadata = {"vp-etag": "0" * 32, "vp-status": "ok", "vp-error": "", "vp-schema": "1"}
    with moto_server() as moto, contextlib.closing(_Proxy(moto.endpoint_url)) as proxy, \
            environment(aws_env(proxy.endpoint_url)):
        setup = boto3.client("s3", endpoint_url=moto.endpoint_url, region_name="us-east-1")
        setup.create_bucket(Bucket=BUCKET)
        setup.put_object(Bucket=BUCKET, Key="image.jpg", Body=image)
        storage = load_settings().storage
        stores = {"lean": ObjectStore(storage), "boto3": ObjectStore(replace(storage, lean_requests=False))}
        for store in stores.values():  # clients built, the lean one's bucket learnt: not timed
            store.get(f"s3://{BUCKET}/image.jpg")
            store.put_json(f"s3://{BUCKET}/warm/{id(store)}.json", document, metadata=metadata, if_none_match=True)
        samples: dict[tuple[str, str], list[float]] = {}
        requests: dict[tuple[str, str], float] = {}
        order = ["lean", "boto3", "boto3", "lean"] * ((args.rounds + 1) // 2)
        for n, mode in enumerate(order[: 2 * args.rounds]):
            store = stores[mode]
            for verb in ("PUT", "GET"):
                seen = proxy.requests()
                started = time.thread_time()
                for i in range(args.calls):
                    if verb == "PUT":
                        store.put_json(f"s3://{BUCKET}/results/{mode}/{n}/{i}.json", document, metadata=metadata,
                                       if_none_match=True)
                    else:
                        store.get(f"s3://{BUCKET}/image.jpg", max_bytes=args.image_bytes)
                samples.setdefault((mode, verb), []).append((time.thread_time() - started) / args.calls * 1000)
                requests[(mode, verb)] = requests.get((mode, verb), 0) + proxy.requests() - seen
    rounds = len(samples[("lean", "PUT")])
    print(f"\nS3 calls through ObjectStore, caller's CPU-ms per call ({rounds} rounds of {args.calls} per mode; "
          f"GET of {args.image_bytes:,} bytes, PUT of {len(json.dumps(document)):,} bytes of JSON)\n")
    print("| call | mode | CPU-ms per call, median | range over rounds | proxy requests per call |")
    print("| --- | --- | ---: | ---: | ---: |")
    for verb in ("GET", "PUT"):
        for mode in ("boto3", "lean"):
            values = samples[(mode, verb)]
            print(f"| {verb} | {mode} | {statistics.median(values):.3f} | {min(values):.3f}–{max(values):.3f} | "
                  f"{requests[(mode, verb)] / (rounds * args.calls):.2f} |")
    for verb in ("GET", "PUT"):
        ratio = statistics.median(samples[("lean", verb)]) / statistics.median(samples[("boto3", verb)])
        print(f"\n{verb}: lean / boto3 CPU per call = {ratio:.2f}", end="")
    print()
    return 0


class _Proxy:
    """The devstack S3 proxy in a process of its own (in this one, its threads would share the GIL
    with the calls being timed)."""

    def __init__(self, upstream: str) -> None:
        self._conn, child = multiprocessing.Pipe()
        self._process = multiprocessing.get_context("fork").Process(target=_serve, args=(upstream, child),
                                                                    daemon=True)
        self._process.start()
        self.endpoint_url = self._conn.recv()

    def requests(self) -> int:
        """Requests the proxy has answered so far."""
        self._conn.send("count")
        return self._conn.recv()

    def close(self) -> None:
        self._conn.send("stop")
        self._process.join(30)


def _serve(upstream: str, conn) -> None:
    with s3_proxy(upstream) as proxy:
        conn.send(proxy.endpoint_url)
        while conn.recv() == "count":
            conn.send(sum(proxy.counts.values()))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m devstack.bench s3", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=300, help="calls per verb per round (default 300)")
    parser.add_argument("--rounds", type=int, default=4, help="rounds per mode, alternating (default 4)")
    parser.add_argument("--image-bytes", type=int, default=60_000,
                        help="size of the object each GET reads (default 60,000)")
    return parser


if __name__ == "__main__":
    raise SystemExit(main())
