"""Result documents and their source images in a moto bucket, as the workers would have left them."""

from __future__ import annotations

import json

import numpy as np

from vehicle_core.reports.visualize import encode_image

MODELS = {"detector": {"name": "synthetic-maskrcnn-tiny", "version": "1"},
          "classifier": {"name": "demo-resnet50", "version": "v7"}}


def vehicle(box, label, confidence):
    return {"box": list(box), "detector_class": "car", "detector_score": 0.9, "label": label,
            "confidence": confidence, "top_k": [{"label": label, "confidence": confidence}]}


def documents(bucket: str) -> dict[str, dict]:
    """Source key -> result document: two ok (one with two vehicles), one no_vehicle, two errors."""
    def doc(key, status, vehicles=(), error=None):
        primary = max(vehicles, key=lambda v: (v["box"][2] - v["box"][0]) * (v["box"][3] - v["box"][1]),
                      default=None)
        return {"schema_version": "1.0", "source": {"bucket": bucket, "key": key, "etag": "abc", "version_id": None,
                                                    "size": 10},
                "status": status, "label": primary and primary["label"],
                "confidence": primary and primary["confidence"], "image": {"width": 160, "height": 120},
                "vehicles": list(vehicles), "error": error, "models": MODELS, "timings_ms": {},
                "processed_at": "2026-11-26T00:00:00.000Z"}

    return {
        "incoming/a.jpg": doc("incoming/a.jpg", "ok", [vehicle((10, 20, 90, 80), "sedan", 0.93)]),
        "incoming/b.jpg": doc("incoming/b.jpg", "ok", [vehicle((5, 5, 60, 50), "bus", 0.55),
                                                      vehicle((70, 40, 150, 110), "sedan", 0.81)]),
        "incoming/c.jpg": doc("incoming/c.jpg", "no_vehicle"),
        "incoming/d.jpg": doc("incoming/d.jpg", "error", error={"code": "undecodable", "message": "truncated"}),
        "incoming/e.png": doc("incoming/e.png", "error", error={"code": "unsupported_format", "message": "text"}),
    }


def upload(s3, bucket: str, *, with_sources: bool = True) -> dict[str, dict]:
    """Put every document under results/ (and its source image under incoming/); return them."""
    docs = documents(bucket)
    image = encode_image(np.full((120, 160, 3), 90, np.uint8), ".jpg")
    for key, document in docs.items():
        s3.put_object(Bucket=bucket, Key=f"results/{key}.json", Body=json.dumps(document).encode())
        if with_sources and document["status"] != "error":
            s3.put_object(Bucket=bucket, Key=key, Body=image)
    s3.put_object(Bucket=bucket, Key="results/README.txt", Body=b"not a result")
    return docs
