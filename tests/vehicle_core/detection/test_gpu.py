"""On a CUDA device the detector answers as it does on the CPU (run with ``pytest -m gpu`` on a GPU host;
skipped where torch sees no GPU, as in CI)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible to torch")]


def test_zoo_detector_on_cuda_finds_the_boxes_the_cpu_finds():
    from training.synthetic.scenes import make_scene
    from vehicle_core.config import load_settings
    from vehicle_core.detection import build_detector

    settings = load_settings(env={})
    scenes = [make_scene(np.random.default_rng(seed), size=(320, 240)).image for seed in range(4)]
    on_cpu = build_detector(dataclasses.replace(settings.detector, device="cpu"), settings.storage).detect(scenes)
    on_gpu = build_detector(dataclasses.replace(settings.detector, device="cuda"), settings.storage).detect(scenes)
    for cpu, gpu in zip(on_cpu, on_gpu, strict=True):
        assert [d.label for d in cpu] == [d.label for d in gpu]
        for a, b in zip(cpu, gpu, strict=True):
            assert np.allclose(a.box, b.box, atol=2.0) and abs(a.score - b.score) < 0.02
