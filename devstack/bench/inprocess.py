"""The in-process half of ``python -m devstack.bench pipeline``: the same models, one process, same objects.

Run by devstack/bench/pipeline.py in a fresh process with the stack's environment (same settings, same S3
endpoint and proxy), so it loads exactly what the workers load. It fetches each object through
``ObjectStore`` and runs ``VehiclePipeline.process_many`` on chunks of ``worker.batch_flush_every``
images (the classify batch the workers aim for); models load and warm up on ``--warmup`` keys first,
untimed. Writes ``{"images", "seconds", "images_per_s", "fetch_s", "process_s", "cpu_s_per_image"}``
to ``--out`` (CPU: the process's own threads over the timed part).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--bucket", required=True)
    p.add_argument("--keys", required=True, help="comma-separated object keys to time")
    p.add_argument("--warmup", default="", help="comma-separated keys run first, untimed")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)

    from vehicle_core import threads
    from vehicle_core.config import load_settings
    from vehicle_core.pipeline import VehiclePipeline
    from vehicle_core.results.contract import SourceRef
    from vehicle_core.storage import ObjectStore

    settings = load_settings()
    threads.configure(settings.worker, processes=1, host_workers=1)  # alone on the host: every core, unless set
    store = ObjectStore(settings.storage)
    pipeline = VehiclePipeline.from_settings(settings)
    keys = [k for k in args.keys.split(",") if k]
    warm = [k for k in args.warmup.split(",") if k]

    def fetch(key: str) -> tuple[bytes, SourceRef]:
        return store.get(f"s3://{args.bucket}/{key}", max_bytes=settings.images.max_bytes)[0], \
            SourceRef(args.bucket, key)

    if warm:
        pipeline.process_many([fetch(k) for k in warm])
    chunk = max(1, settings.worker.batch_flush_every)
    fetch_s = process_s = 0.0
    cpu0 = time.process_time()
    for start in range(0, len(keys), chunk):
        t0 = time.perf_counter()
        items = [fetch(k) for k in keys[start : start + chunk]]
        t1 = time.perf_counter()
        pipeline.process_many(items)
        fetch_s += t1 - t0
        process_s += time.perf_counter() - t1
    cpu_s = time.process_time() - cpu0
    seconds = fetch_s + process_s
    Path(args.out).write_text(json.dumps({"images": len(keys), "seconds": seconds, "fetch_s": fetch_s,
                                          "process_s": process_s, "images_per_s": len(keys) / seconds,
                                          "cpu_s_per_image": cpu_s / max(1, len(keys))}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
