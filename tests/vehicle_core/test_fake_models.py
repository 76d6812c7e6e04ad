"""The fixed-cost stand-in models behind ``fake://`` URIs (vehicle_core/fake_models.py)."""

import time

import numpy as np
import pytest

from vehicle_core.config import load_settings
from vehicle_core.errors import ConfigError
from vehicle_core.fake_models import FakeClassifier, FakeDetector, burn_cpu, parse_fake_uri


def _settings(detector="fake://detector?cpu_ms=0&vehicles=3", classifier="fake://classifier?cpu_ms=0"):
    return load_settings(env={"VP_DETECTOR__MODEL": detector, "VP_CLASSIFIER__MODEL": classifier})


def test_the_loaders_build_the_stand_ins_for_fake_uris_without_importing_a_framework():
    import subprocess
    import sys

    code = ("import sys\nfrom vehicle_core.config import load_settings\n"
            "from vehicle_core.pipeline import VehiclePipeline\n"
            "s = load_settings(env={'VP_DETECTOR__MODEL': 'fake://detector?cpu_ms=0',"
            " 'VP_CLASSIFIER__MODEL': 'fake://classifier?cpu_ms=0'})\n"
            "p = VehiclePipeline.from_settings(s)\n"
            "print(type(p.detect_stage.detector).__name__, type(p.classify_stage.classifier).__name__,"
            " sorted(m for m in ('torch', 'tensorflow', 'keras') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["FakeDetector", "FakeClassifier", "[]"]


def test_the_fake_detector_finds_the_same_boxes_every_time_through_the_vehicle_filter():
    detector = FakeDetector(_settings().detector)
    image = np.zeros((480, 640, 3), np.uint8)
    first, again = detector.detect([image]), detector.detect([image.copy() + 7])
    assert first == again and len(first[0]) == 3
    for det in first[0]:
        x1, y1, x2, y2 = det.box
        assert 0 <= x1 < x2 <= 640 and 0 <= y1 < y2 <= 480 and det.label in ("car", "motorcycle", "bus", "truck")
    assert [d.score for d in first[0]] == sorted((d.score for d in first[0]), reverse=True)
    # The settings' filter applies: a score threshold above every box leaves none.
    strict = _settings().replace(detector={"score_threshold": 0.99}).detector
    assert FakeDetector(strict).detect([image]) == [[]]


def test_the_fake_classifier_labels_a_crop_by_its_grey_level():
    clf = FakeClassifier(_settings().classifier)
    crops = [np.full((20, 30, 3), v, np.uint8) for v in (0, 1, 6, 7)]
    answers = clf.classify(crops)
    assert [a.label for a in answers] == ["sedan", "suv", "sedan", "suv"]
    assert all(a.top_k[0] == (a.label, a.confidence) and len(a.top_k) == 3 for a in answers)


def test_the_stand_ins_spend_their_cpu_cost_per_image_and_per_crop():
    detector = FakeDetector(_settings(detector="fake://detector?cpu_ms=20").detector)
    t0 = time.thread_time()
    detector.detect([np.zeros((64, 64, 3), np.uint8)] * 5)
    assert 0.1 <= time.thread_time() - t0 < 0.2  # 5 images x 20 ms
    clf = FakeClassifier(_settings(classifier="fake://classifier?cpu_ms=10").classifier)
    t0 = time.thread_time()
    clf.classify([np.zeros((8, 8, 3), np.uint8)] * 4)
    assert 0.04 <= time.thread_time() - t0 < 0.1
    t0 = time.thread_time()
    burn_cpu(0)
    assert time.thread_time() - t0 < 0.005


@pytest.mark.parametrize("uri, message", [("fake://detector?speed=1", "unknown option 'speed'"),
                                          ("fake://detector?cpu_ms=fast", "must be a number"),
                                          ("fake://detector?cpu_ms=-1", "0 or more"),
                                          ("zoo://x", "not a fake:// model URI")])
def test_a_bad_fake_uri_names_what_is_wrong(uri, message):
    with pytest.raises(ConfigError, match=message):
        parse_fake_uri(uri, {"cpu_ms": 1.0})
