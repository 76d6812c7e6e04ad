"""docker-compose.yml as written can classify and be watched: the registry every service follows,
an init that wires the bucket and seeds the registry, Redis locked and persistent, Prometheus
scraping what the code serves, a dashboard whose every query names a metric the code defines."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
APP_SERVICES = ("init", "producer", "detect-worker", "classify-worker", "flower")
REGISTRY = "${VP_CLASSIFIER__REGISTRY:-s3://vehicle-images/models/classifier}"


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _defined_metrics() -> set[str]:
    """Every sample name our code can expose (workers, producer, the queue-depth collector)."""
    from prometheus_client import REGISTRY as DEFAULT

    from producer.metrics import COUNTERS
    from workers import metrics  # noqa: F401 - registers the worker metrics

    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    names = {"vp_queue_depth"} | {name + "_total" for name, _ in COUNTERS.values()}
    for family in DEFAULT.collect():
        names |= {family.name + suffix for suffix in suffixes.get(family.type, ("",))}
    return names


def _metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\bvp_[a-z_]+\b", expr))


def test_every_app_service_follows_the_registry_and_nothing_names_current_tar_gz():
    services = _compose()["services"]
    for name in APP_SERVICES:
        env = services[name]["environment"]
        assert env["VP_CLASSIFIER__REGISTRY"] == REGISTRY, name
        assert "VP_CLASSIFIER__MODEL" not in env, name
    assert "current.tar.gz" not in (ROOT / "docker-compose.yml").read_text()


def test_init_wires_the_bucket_with_setup_bucket_and_seeds_an_empty_registry():
    script = _compose()["services"]["init"]["command"][-1]
    assert "vehicle-producer setup-bucket s3://vehicle-images --queue vehicle-images" in script
    assert "vehicle-train seed-registry" in script
    queue_url = _compose()["services"]["producer"]["environment"]["VP_PRODUCER__QUEUE_URL"]
    assert queue_url.endswith("/vehicle-images")


def test_train_worker_grows_gpu_memory_and_workers_export_one_endpoint_per_node():
    services = _compose()["services"]
    # the classify worker serves on Keras's torch backend (the image's serve target has no TensorFlow);
    # the train worker, on TensorFlow, still grows its GPU memory
    assert "TF_FORCE_GPU_ALLOW_GROWTH" not in services["classify-worker"]["environment"]
    assert services["train-worker"]["environment"]["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"
    for name in ("detect-worker", "classify-worker"):
        assert services[name]["environment"]["PROMETHEUS_MULTIPROC_DIR"] in services[name]["tmpfs"]


def test_redis_demands_a_password_and_keeps_an_append_only_file():
    services = _compose()["services"]
    command = services["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--requirepass") + 1] == "${REDIS_PASSWORD:?set REDIS_PASSWORD}"
    for name in APP_SERVICES:
        assert services[name]["environment"]["VP_BROKER__URL"].startswith("redis://:${REDIS_PASSWORD"), name


def test_prometheus_scrapes_the_services_on_their_metrics_ports_which_the_host_cannot_reach():
    services = _compose()["services"]
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    targets = [t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    assert len(targets) == 3
    for target in targets:
        host, port = target.split(":")
        env = services[host]["environment"]
        assert port in (env.get("VP_WORKER__METRICS_PORT"), env.get("VP_PRODUCER__METRICS_PORT")), target
        assert port in services[host]["expose"]
        assert not any(port in str(p) for p in services[host].get("ports", [])), f"{target} is published"
    mounts = " ".join(services["prometheus"]["volumes"])
    assert "./deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml" in mounts
    assert "./deploy/prometheus/alerts.yml:" + config["rule_files"][0] in mounts


def test_dashboard_panels_query_only_metrics_the_code_defines_and_cover_what_to_watch():
    defined = _defined_metrics()
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/vehicle-pipeline.json").read_text())
    used = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            names = _metric_names(target["expr"])
            assert names and names <= defined, (panel["title"], names - defined)
            used |= names
    assert {"vp_queue_depth", "vp_images_total", "vp_upload_to_result_seconds_bucket", "vp_results_total"} <= used
    assert any("error_code" in t["expr"] for p in dashboard["panels"] for t in p["targets"])
    grafana = _compose()["services"]["grafana"]
    assert "./deploy/grafana/dashboards:/var/lib/grafana/dashboards:ro" in grafana["volumes"]
    provider = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/vehicle-pipeline.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


def test_alert_rules_name_only_defined_metrics():
    defined = _defined_metrics() | {"up"}
    rules = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())["groups"][0]["rules"]
    for rule in rules:
        assert _metric_names(rule["expr"]) <= defined, rule["alert"]
