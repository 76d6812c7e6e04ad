"""The README's architecture diagram is drawn from the routing table, so it follows the configuration."""

from __future__ import annotations

from devstack.diagram import boxes, draw, queues_of
from vehicle_core.config import load_settings


def test_the_diagram_names_the_queues_the_tasks_are_routed_to(tmp_path):
    default = load_settings(env={})
    assert queues_of(default) == {"detect_crop": "detect", "classify": "classify", "crop_dataset_chunk": "detect",
                                  "train_trial": "train"}
    renamed = load_settings(env={"VP_BROKER__DETECT_QUEUE": "gpu-detect", "VP_BROKER__TRAIN_QUEUE": "sweeps"})
    found = boxes(renamed)
    assert "[gpu-detect]" in found["detect"].title
    assert "gpu-detect:\n  detect_crop\n  crop_dataset_chunk" in found["redis"].body and "sweeps:" in found["redis"].body
    png = draw(tmp_path / "arch.png", renamed)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
