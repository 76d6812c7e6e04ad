"""The Dockerfile and docker-compose.yml, proven (issue 20).

Two parts:

* **cheap** (every `make test`, CI): the compose files parse and merge; every service's command,
  healthcheck and module exists in what the Dockerfile copies and in the extras it installs; the
  Dockerfile's COPY sources exist; the models volume's path is made and owned by the image's user; no
  second CUDA stack and no pickle in the serve image; the AWS override drops the emulator, init and the
  test credentials.
* **image** (`make image-check`, VP_IMAGE_CHECK=1; root, buildah and debootstrap): builds the base from
  Debian's packages and the image's targets with buildah, then runs every compose service's command
  with its compose environment from the image via ``buildah run`` on loopback (redis-server from the
  host, the S3+SQS emulator from the image), uploads scenes and corrupt files, asserts their results,
  runs each healthcheck, and stops a classify worker holding a buffered batch (SIGTERM, as
  `docker compose stop` does) and asserts its messages are back in the queue at once and all classified
  by the next worker.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from tests.deploy import compose_check as cc

ROOT = cc.ROOT
DOCKERFILE = (ROOT / "Dockerfile").read_text()
APP_SERVICES = ("init", "producer", "detect-worker", "classify-worker", "train-worker", "flower")
SECRETS = {"REDIS_PASSWORD": "r3dis-check", "FLOWER_BASIC_AUTH": "ops:fl0wer-check",
           "GRAFANA_ADMIN_PASSWORD": "graf-check"}


def _pyproject() -> dict:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _stages() -> dict[str, str]:
    """Dockerfile stage name -> the text of that stage."""
    parts = re.split(r"^FROM\s+\S+\s+AS\s+(\S+)\s*$", DOCKERFILE, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def _copied_dirs(stage_text: str) -> set[str]:
    return {src for src in re.findall(r"^COPY\s+(?!--from)(\S+)\s+\S+\s*$", stage_text, flags=re.M)}


def _stage_chain(target: str) -> list[str]:
    """The stages ``target`` is built on, itself last."""
    parents = dict(re.findall(r"^FROM\s+(\S+)\s+AS\s+(\S+)", DOCKERFILE, flags=re.M))
    parents = {child: parent for parent, child in parents.items()}
    chain = [target]
    while parents.get(chain[-1]) in parents:
        chain.append(parents[chain[-1]])
    return chain[::-1]


def _extras_installed(target: str) -> set[str]:
    text = "".join(_stages()[s] for s in _stage_chain(target))
    extras = set()
    for group in re.findall(r'pip install -e "\.\[([^\]]+)\]"', text):
        extras |= set(group.split(","))
    return extras


def _requirements(target: str) -> str:
    """Every requirement string the target's pip installs name (extras resolved), lower-cased."""
    project = _pyproject()["project"]
    reqs = list(project["dependencies"])
    for extra in _extras_installed(target):
        reqs += project["optional-dependencies"][extra]
    text = "".join(_stages()[s] for s in _stage_chain(target))
    reqs += re.findall(r'pip install ([^\n\\&]+)', text)
    return " ".join(reqs).lower()


def _service_target(service: dict) -> str:
    return service["build"]["target"]


def _module_file(module: str) -> Path | None:
    base = ROOT / Path(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _check_program(argv: list[str], target: str, where: str) -> None:
    """One command line a service runs exists in the image ``target``'s files and installs."""
    scripts = _pyproject()["project"]["scripts"]
    copied = _copied_dirs("".join(_stages()[s] for s in _stage_chain(target)))
    program = argv[0]
    if program in ("sh", "python") and argv[1:2] == ["-c"]:
        if program == "python":
            compile(argv[2], where, "exec")
        return
    if program == "python" and argv[1:2] == ["-m"]:
        module = argv[2]
        assert module.split(".")[0] in copied, f"{where}: {module} is not copied into {target}"
        assert _module_file(module), f"{where}: no module {module}"
        assert "__main__" in _module_file(module).read_text(), f"{where}: {module} is not runnable"
        return
    if program == "celery":
        assert "celery" in _requirements(target), f"{where}: celery is not installed in {target}"
        module = argv[argv.index("-A") + 1]
        assert module.split(".")[0] in copied and _module_file(module), f"{where}: no {module} in {target}"
        return
    if program == "moto_server":
        assert "moto[server]" in _requirements(target), f"{where}: moto's server is not installed in {target}"
        return
    assert program in scripts, f"{where}: {program} is not one of the project's commands"
    module = scripts[program].split(":")[0]
    assert module.split(".")[0] in copied, f"{where}: {program} ({module}) is not copied into {target}"
    assert _module_file(module), f"{where}: no module {module}"


# ------------------------------------------------------------------------------------------ cheap part


def test_every_compose_command_and_healthcheck_exists_in_its_image_target():
    services = cc.config("docker-compose.yml", profiles=("train",))["services"]
    stages = _stages()
    checked = 0
    for name, service in services.items():
        if "build" not in service:
            continue  # redis, prometheus, alertmanager, grafana: public images
        target = _service_target(service)
        assert target in stages, f"{name}: no stage {target} in the Dockerfile"
        assert service["build"]["dockerfile"] == "Dockerfile" and service["build"]["context"] == "."
        for argv in cc.programs(service["command"]):
            _check_program(argv, target, f"{name} command")
            checked += 1
        if "healthcheck" in service:
            argv = cc.healthcheck_argv(service["healthcheck"]["test"])
            if argv[0] == "sh":
                argv = argv[2].split()
            _check_program(argv, target, f"{name} healthcheck")
            checked += 1
    assert checked >= 12
    assert set(APP_SERVICES) | {"s3"} <= {n for n, s in services.items() if "build" in s}


def test_the_check_catches_a_module_the_image_does_not_copy():
    # the breakage issue 20 found: training/ was not copied, so `vehicle-train seed-registry` could not start
    assert "training" in _copied_dirs(_stages()["serve"])
    with pytest.raises(AssertionError, match="not copied"):
        _check_program(["vehicle-train", "seed-registry"], "s3-emulator", "init")
    with pytest.raises(AssertionError, match="not one of the project's commands"):
        _check_program(["vehicle-trian"], "serve", "typo")


def test_the_dockerfile_copies_every_package_the_project_declares_and_its_sources_exist():
    serve = _stages()["serve"]
    for src in _copied_dirs(serve):
        assert (ROOT / src).exists(), src
    packages = {p.rstrip("*") for p in _pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert packages <= _copied_dirs(serve)
    assert {".venv", ".git"} <= set((ROOT / ".dockerignore").read_text().split())


def test_every_app_service_has_a_healthcheck_and_workers_a_grace_period_for_their_batch():
    from vehicle_core.config import load_settings

    services = cc.config("docker-compose.yml", profiles=("train",))["services"]
    for name in ("s3", "producer", "detect-worker", "classify-worker", "train-worker", "flower", "redis"):
        assert services[name]["healthcheck"]["test"], name
    for name, queue in (("detect-worker", "detect"), ("classify-worker", "classify")):
        health = services[name]["healthcheck"]["test"][-1]
        node = services[name]["command"][services[name]["command"].index("-n") + 1]
        assert node == f"{queue}@%h" and f"-d {queue}@$$HOSTNAME" in health, name
        grace = int(services[name]["stop_grace_period"].rstrip("s"))
        assert grace >= load_settings(env={}).worker.task_time_limit_s, name
    assert services["init"]["restart"] == "no"
    for name in APP_SERVICES:
        if name != "init":
            assert services[name]["depends_on"]["init"]["condition"] == "service_completed_successfully"


def test_one_cuda_stack_torchs_and_no_tensorflow_or_pickle_in_the_serve_image():
    stages = _stages()
    serve_chain = "".join(stages[s] for s in _stage_chain("serve"))
    code = "\n".join(line for line in serve_chain.splitlines() if not line.lstrip().startswith("#"))
    assert "tensorflow" not in code.lower()
    assert "tf" not in _extras_installed("serve") and "keras" in _extras_installed("serve")
    assert "KERAS_BACKEND=torch" in serve_chain and "VP_CLASSIFIER__BACKEND=torch" in serve_chain
    assert "tensorflow-cpu==" in stages["train"]
    assert not re.search(r"^\s*VP_DETECTOR__ALLOW_PICKLE", DOCKERFILE, flags=re.M)  # not in any ENV
    # CUDA comes from PyPI (no CUDA base image), nvcc's major is torch's, and the architectures are ones
    # torch 2.14.1+cu130 is built for (CUDA 13 dropped 7.0)
    assert "nvidia/cuda" not in DOCKERFILE and re.search(r"^ARG BASE=debian:bookworm-slim$", DOCKERFILE, flags=re.M)
    cuda = re.search(r"^ARG CUDA_VERSION=(\d+)\.(\d+)$", DOCKERFILE, flags=re.M)
    assert cuda and "torch==2.14.1" in _pyproject()["project"]["optional-dependencies"]["torch"]
    assert cuda.group(1) == "13"  # torch 2.14.1's PyPI wheel: torch.version.cuda == "13.0"
    arch = re.search(r'^ARG TORCH_CUDA_ARCH_LIST="([^"]+)"', DOCKERFILE, flags=re.M).group(1)
    assert all(float(a.replace("+PTX", "")) >= 7.5 for a in arch.split(";"))
    services = cc.config("docker-compose.yml")["services"]
    pickled = [n for n, s in services.items() if "VP_DETECTOR__ALLOW_PICKLE" in (s.get("environment") or {})]
    assert pickled == ["detect-worker"]


def test_the_models_volume_path_is_made_and_owned_by_the_images_user():
    services = cc.config("docker-compose.yml")["services"]
    mounts = {v.split(":")[1] for n in ("init", "producer", "detect-worker") for v in services[n]["volumes"]}
    assert mounts == {"/home/vehicle/.cache/vehicle-pipeline"}
    os_stage = _stages()["os"]
    made = re.search(r"install -d -o 1001 -g 1001 ([^\n]*)", os_stage).group(1).split()
    assert {"/home/vehicle/.cache", "/home/vehicle/.cache/vehicle-pipeline"} <= set(made)  # parent too
    assert "useradd --create-home --uid 1001" in os_stage and "USER 1001" in _stages()["serve"]


def test_the_aws_override_drops_the_emulator_init_and_test_credentials():
    base = cc.config("docker-compose.yml")
    aws = cc.config("docker-compose.yml", "compose.aws.yml", profiles=("train",))
    assert {"s3", "init"} <= set(base["services"]) and not {"s3", "init"} & set(aws["services"])
    for name in ("producer", "detect-worker", "classify-worker", "train-worker", "flower"):
        service = aws["services"][name]
        env = service["environment"]
        assert not {"AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} & set(env), name
        assert set(service["depends_on"]) == {"redis"}, name
        assert env["VP_PRODUCER__QUEUE_URL"].startswith("${VP_PRODUCER__QUEUE_URL:?"), name
        assert env["VP_BROKER__URL"] == base["services"][name if name != "train-worker" else "producer"][
            "environment"]["VP_BROKER__URL"]
        with pytest.raises(cc.MissingVariable):
            cc.interpolate(env, dict(SECRETS))
    # the base file keeps them (a single host with the emulator)
    assert base["services"]["producer"]["environment"]["AWS_ACCESS_KEY_ID"] == "test"


def test_prometheus_sends_alerts_to_the_alertmanager_service():
    services = cc.config("docker-compose.yml")["services"]
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    (target,) = config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    host, port = target.split(":")
    assert host in services and f"127.0.0.1:{port}:{port}" in services[host]["ports"]
    mounted = dict(v.split(":")[:2] for v in services[host]["volumes"])
    assert mounted["./deploy/alertmanager/alertmanager.yml"] in " ".join(services[host]["command"])
    manager = yaml.safe_load((ROOT / "deploy/alertmanager/alertmanager.yml").read_text())
    assert manager["route"]["receiver"] in {r["name"] for r in manager["receivers"]}


def test_compose_interpolation_follows_compose():
    assert cc.interpolate("a${X:-d}b$${Y}", {}) == "adb${Y}"
    assert cc.interpolate("${X:-d}", {"X": "v"}) == "v"
    with pytest.raises(cc.MissingVariable):
        cc.interpolate("${X:?set X}", {"X": ""})


# ------------------------------------------------------------------------------------------ image part

IMAGE_CHECK = os.environ.get("VP_IMAGE_CHECK") == "1"
BASE = os.environ.get("VP_IMAGE_BASE", "localhost/debian:bookworm")
TAG = "localhost/vehicle-pipeline"
VENDOR = ROOT.parent / "shared" / "vendor"
D2_TARBALL = "detectron2-02b5c4e2.tar.gz"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
MODELS = "/home/vehicle/.cache/vehicle-pipeline"
BUCKET = "vehicle-images"

skip_unless_asked = pytest.mark.skipif(not IMAGE_CHECK, reason="builds and runs the image: `make image-check` (VP_IMAGE_CHECK=1)")


def _log(message: str) -> None:
    print(f"image-check: {message}", file=sys.stderr, flush=True)


def _run(argv: list[str], *, timeout: float = 120, check: bool = True, **kw) -> subprocess.CompletedProcess:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(argv[:6])}... exited {out.returncode}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out


def _wait(condition, *, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)  # polling interval of a condition with a deadline, not synchronisation


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_image(target: str, log_dir: Path) -> float:
    """buildah bud of one target (layers cached between runs); seconds it took."""
    argv = ["nice", "-n", "10", "buildah", "bud", "--isolation", "chroot", "--network", "host", "--layers",
            "--target", target, "--build-arg", f"BASE={BASE}", "--build-arg", "VARIANT=cpu",
            "-t", f"{TAG}:{target}", "-f", "Dockerfile"]
    if (VENDOR / D2_TARBALL).is_file():  # offline: the vendored source of the same commit, mounted for RUN
        argv += ["-v", f"{VENDOR}:/vendor:ro", "--build-arg", f"DETECTRON2_SOURCE=/vendor/{D2_TARBALL}"]
    if HOST_CA.is_file():  # where a proxy re-signs PyPI's certificate
        argv += ["-v", f"{HOST_CA}:/run/host-ca.crt:ro", "--build-arg", "PIP_CERT=/run/host-ca.crt"]
    start = time.monotonic()
    with open(log_dir / f"build-{target}.log", "w") as log:
        proc = subprocess.run([*argv, str(ROOT)], stdout=log, stderr=subprocess.STDOUT, timeout=3600)
    seconds = time.monotonic() - start
    assert proc.returncode == 0, f"building {target} failed: {(log_dir / f'build-{target}.log').read_text()[-4000:]}"
    return seconds


def image_size(target: str) -> str:
    """The image's size as `buildah images` reports it."""
    return _run(["buildah", "images", "--format", "{{.Size}}", f"{TAG}:{target}"]).stdout.strip()


class Container:
    """A working container of an image and the one command ``buildah run`` runs in it."""

    def __init__(self, name: str, image_ref: str, log_dir: Path) -> None:
        self.name = name
        self.ctr = _run(["buildah", "from", "--pull=never", "--name", f"vpcheck-{name}-{uuid.uuid4().hex[:6]}",
                         image_ref]).stdout.strip()
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen | None = None
        self.env: dict[str, str] = {}
        self.volumes: list[str] = []

    def _argv(self, command: list[str], env: dict[str, str], volumes: list[str]) -> list[str]:
        argv = ["buildah", "run", "--isolation", "chroot", "--network", "host"]
        for key, value in env.items():
            argv += ["--env", f"{key}={value}"]
        for volume in volumes:
            argv += ["-v", volume]
        return [*argv, self.ctr, "--", *command]

    def start(self, command: list[str], env: dict[str, str], volumes: list[str] = ()) -> Container:
        self.env, self.volumes = env, list(volumes)
        self._log = open(self.log_path, "a")  # noqa: SIM115 - closed in remove()
        self.proc = subprocess.Popen(self._argv(command, env, self.volumes), stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def exec(self, command: list[str], *, timeout: float = 120, check: bool = False) -> subprocess.CompletedProcess:
        """Another command in the same container, with the service's environment (a healthcheck)."""
        return _run(self._argv(command, self.env, self.volumes), timeout=timeout, check=check)

    def main_pid(self) -> int | None:
        """The service's own process: the child of ``buildah-chroot-exec`` (buildah run forwards no
        signal, and SIGTERM to it kills the command: signal the command itself, as Docker does)."""
        import psutil

        if self.proc is None:
            return None
        try:
            for child in psutil.Process(self.proc.pid).children(recursive=True):
                if child.cmdline()[:1] == ["buildah-chroot-exec"]:
                    commands = child.children()
                    return commands[0].pid if commands else None
        except psutil.NoSuchProcess:
            return None
        return None

    def terminate(self, timeout: float) -> float:
        """SIGTERM to the service's process, as `docker compose stop` sends; seconds until it exited."""
        pid = self.main_pid()
        assert pid, f"{self.name}: no process to stop"
        start = time.monotonic()
        os.kill(pid, 15)
        self.proc.wait(timeout=timeout)
        return time.monotonic() - start

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self, tail: int = 6000) -> str:
        return self.log_path.read_text(errors="replace")[-tail:] if self.log_path.exists() else ""

    def remove(self) -> None:
        import psutil

        if self.proc is not None:
            try:
                tree = psutil.Process(self.proc.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                tree = []
            for p in [*tree[::-1]]:
                try:
                    p.kill()
                except psutil.NoSuchProcess:
                    pass
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(timeout=30)
            self._log.close()
        subprocess.run(["buildah", "rm", self.ctr], capture_output=True, timeout=60)


def reserved(broker, queue: str) -> int:
    """Messages of ``queue`` a worker holds unacked (kombu's Redis transport: hash ``unacked``; each value
    ``[message, exchange, routing_key]`` or, from the workers' take step, the message alone)."""
    from workers.broker import unacked_record

    return sum(1 for value in broker.hvals("unacked") if queue in unacked_record(value)[1:])


def _localise(env: dict[str, str], ports: dict[str, int]) -> dict[str, str]:
    """Compose's service names -> this host's loopback ports (buildah run shares the host's network)."""
    out = {}
    for key, value in env.items():
        value = value.replace("@redis:6379", f"@127.0.0.1:{ports['redis']}")
        value = value.replace("http://s3:4566", f"http://127.0.0.1:{ports['s3']}")
        out[key] = value
    return out


def _service_env(services: dict, name: str, ports: dict[str, int], extra: dict[str, str]) -> dict[str, str]:
    env = {k: str(v) for k, v in (services[name].get("environment") or {}).items()}
    env = _localise(env, ports)
    env.update(extra)
    return env


@pytest.mark.image
@skip_unless_asked
def test_the_image_builds_and_the_compose_services_classify_uploads_from_it(tmp_path_factory, classifier_artifact):
    import boto3
    import redis as redis_lib

    from devstack.demo import collect_results, demo_images
    from devstack.servers import redis_server

    for tool in ("buildah", "debootstrap"):
        assert shutil.which(tool), f"{tool} is not installed (make image-check installs it)"
    log_dir = Path(os.environ.get("VP_IMAGE_CHECK_LOGS") or tmp_path_factory.mktemp("image-check"))
    log_dir.mkdir(parents=True, exist_ok=True)
    _log(f"logs in {log_dir}")

    # 1. the base from Debian's packages, then each target
    start = time.monotonic()
    _run(["nice", "-n", "10", str(ROOT / "deploy/image/make-base.sh"), BASE], timeout=1200)
    _log(f"base {BASE} ready in {time.monotonic() - start:.0f} s")
    times = {target: build_image(target, log_dir) for target in ("s3-emulator", "serve", "train")}
    sizes = {target: image_size(target) for target in times}
    _log("build seconds " + json.dumps({k: round(v) for k, v in times.items()}) + "; sizes " + json.dumps(sizes))

    services = cc.interpolate(cc.config("docker-compose.yml", profiles=("train",))["services"],
                              {**SECRETS, "SEED_ARTIFACT": f"{MODELS}/seed"})
    models = tmp_path_factory.mktemp("models-volume")
    shutil.copytree(classifier_artifact, models / "seed")
    for path in [models, *models.rglob("*")]:
        os.chown(path, 1001, 1001)
    volume = [f"{models}:{MODELS}"]
    containers: list[Container] = []

    def container(name: str, target: str) -> Container:
        c = Container(name, f"{TAG}:{target}", log_dir)
        containers.append(c)
        return c

    ports = {"s3": _free_port()}
    with redis_server(password=SECRETS["REDIS_PASSWORD"]) as redis_srv:
        ports["redis"] = redis_srv.port
        broker = redis_lib.Redis(host="127.0.0.1", port=redis_srv.port, password=SECRETS["REDIS_PASSWORD"])
        try:
            # 2. the image's user owns the models path (what a new Docker volume copies), and every command
            #    answers --version
            serve_probe = container("probe", "serve")
            owner = serve_probe.exec(["stat", "-c", "%u %U", MODELS], check=True).stdout.split()
            assert owner == ["1001", "vehicle"], owner
            assert serve_probe.exec(["id", "-u"], check=True).stdout.strip() == "1001"
            for script in _pyproject()["project"]["scripts"]:
                out = serve_probe.exec([script, "--version"], timeout=180)
                assert out.returncode == 0 and "0.1.0" in out.stdout + out.stderr, (script, out.stdout, out.stderr)
            assert serve_probe.exec(["python", "-c", "import tensorflow"]).returncode != 0  # serve has none

            # 3. the S3+SQS emulator from the image, on loopback
            s3_cmd = [("127.0.0.1" if a == "0.0.0.0" else str(ports["s3"]) if a == "4566" else a)
                      for a in services["s3"]["command"]]
            s3_ctr = container("s3", "s3-emulator").start(s3_cmd, {})
            s3_health = [a.replace("4566", str(ports["s3"])) for a in cc.healthcheck_argv(services["s3"]["healthcheck"]["test"])]
            _wait(lambda: s3_ctr.exec(s3_health, timeout=30).returncode == 0, timeout=120, what="the S3 emulator")

            # 4. init: bucket, setup-bucket, seed the registry from the models volume
            init = container("init", "train")
            start = time.monotonic()
            init.start(services["init"]["command"], _service_env(services, "init", ports, {}), volume)
            init.proc.wait(timeout=900)
            assert init.proc.returncode == 0, init.log()
            _log(f"init done in {time.monotonic() - start:.0f} s")
            aws = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{ports['s3']}", "AWS_ACCESS_KEY_ID": "test",
                   "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
            s3 = boto3.client("s3", endpoint_url=aws["AWS_ENDPOINT_URL"], aws_access_key_id="test",
                              aws_secret_access_key="test", region_name="us-east-1")
            from vehicle_core.registry import pointer_uri

            pointer_key = pointer_uri("s3://vehicle-images/models/classifier").split(f"s3://{BUCKET}/", 1)[1]
            pointer = json.loads(s3.get_object(Bucket=BUCKET, Key=pointer_key)["Body"].read())
            assert pointer["version"] == "test-0", pointer  # the seed artifact (tests/fixtures_models.py)
            assert "Permission denied" not in init.log(10**6)  # uid 1001 writes its cache and the volume

            # 5. producer, workers, Flower, each with its compose command and environment
            test_env = {  # the image's R101 zoo checkpoint needs the internet: the packaged Detectron2 model
                "VP_DETECTOR__MODEL": "zoo://synthetic-d2-maskrcnn-small", "VP_DETECTOR__ALLOW_PICKLE": "false",
                "VP_DETECTOR__DEVICE": "cpu", "VP_CLASSIFIER__DEVICE": "cpu", "VP_WORKER__THREADS": "1",
            }
            metrics = {name: _free_port() for name in ("producer", "detect-worker", "classify-worker", "flower")}
            started = {}

            def start_service(name: str, extra: dict[str, str] | None = None) -> Container:
                env = _service_env(services, name, ports, dict(test_env))
                env.update({k: str(metrics[name]) for k in ("VP_WORKER__METRICS_PORT", "VP_PRODUCER__METRICS_PORT")
                            if k in env})
                if name == "flower":
                    env.update(VP_FLOWER__ADDRESS="127.0.0.1", VP_FLOWER__PORT=str(metrics["flower"]))
                vols = list(volume)
                if "PROMETHEUS_MULTIPROC_DIR" in env:  # compose's tmpfs
                    scratch = tmp_path_factory.mktemp(f"metrics-{name}")
                    os.chown(scratch, 1001, 1001)
                    vols.append(f"{scratch}:{env['PROMETHEUS_MULTIPROC_DIR']}")
                env.update(extra or {})
                c = container(name, _service_target(services[name]))
                # Docker sets HOSTNAME to the container's host name, which Celery's %h and the healthcheck use
                env["HOSTNAME"] = c.exec(["python", "-c", "import socket; print(socket.gethostname())"],
                                         check=True).stdout.strip()
                c.start(services[name]["command"], env, vols)
                started[name] = c
                return c

            def healthy(name: str) -> bool:
                c = started[name]
                assert c.alive(), f"{name} exited:\n{c.log()}"
                test = [a.replace("9103", str(metrics["producer"])).replace("5555", str(metrics["flower"]))
                        for a in cc.healthcheck_argv(services[name]["healthcheck"]["test"])]
                return c.exec(test, timeout=60).returncode == 0

            for name in ("producer", "detect-worker", "classify-worker", "flower"):
                start_service(name)
            for name in ("producer", "detect-worker", "classify-worker", "flower"):
                _wait(lambda name=name: healthy(name), timeout=600, what=f"{name}'s healthcheck", interval=3)
                _log(f"{name} healthy")

            # 6. uploads -> results
            uploads = demo_images(4, seed=20)
            start = time.monotonic()
            for key, data, _ in uploads:
                s3.put_object(Bucket=BUCKET, Key=key, Body=data)
            keys = [key for key, _, _ in uploads]
            results = _wait(lambda: (r := collect_results(s3, BUCKET, keys)) and len(r) == len(keys) and r,
                            timeout=600, what="a result for every upload", interval=2)
            _log(f"{len(keys)} uploads answered in {time.monotonic() - start:.0f} s")
            for key, _, label in uploads:
                doc = results[key]
                if label is None:
                    assert doc["status"] == "error" and doc["error"]["code"], (key, doc)
                else:
                    assert doc["status"] in ("ok", "no_vehicle"), (key, doc)
            ok = [results[k] for k, _, label in uploads if label and results[k]["status"] == "ok"]
            assert ok and all(d["models"]["classifier"]["version"] == "test-0" for d in ok), results
            # the same bytes again: detect finds the result and skips it (a line about one image in its log)
            s3.put_object(Bucket=BUCKET, Key=keys[0], Body=uploads[0][1])
            _wait(lambda: "result exists" in started["detect-worker"].log(10**7), timeout=300,
                  what="the detect worker to skip an answered upload", interval=1)

            # 7. JSON logs: every line about one image names task_id, bucket and key
            for name in ("detect-worker", "classify-worker"):
                lines = [json.loads(line) for line in started[name].log(10**7).splitlines() if line.startswith("{")]
                assert lines, f"{name} wrote no JSON log line"
                about_images = [d for d in lines if "incoming/" in d.get("message", "")]
                assert about_images, name
                for doc in about_images:
                    assert doc.get("task_id") and doc.get("bucket") == BUCKET and doc.get("key"), doc

            # 8. stop a classify worker holding a buffered batch: nothing lost
            elapsed = started["classify-worker"].terminate(timeout=120)
            _log(f"classify worker stopped (warm shutdown) in {elapsed:.1f} s")
            holder = start_service("classify-worker", {"VP_WORKER__BATCH_FLUSH_INTERVAL_S": "600"})
            _wait(lambda: healthy("classify-worker"), timeout=600, what="the buffering classify worker", interval=3)
            more = [(f"incoming/held-{i}.jpg", data, label) for i, (_, data, label) in enumerate(uploads[:3])]
            for key, data, _ in more:
                s3.put_object(Bucket=BUCKET, Key=key, Body=data)
            held = [k for k, _, _ in more]
            _wait(lambda: reserved(broker, "classify") >= len(held) and broker.llen("classify") == 0, timeout=300,
                  what="the classify worker to buffer the held images", interval=1)
            assert collect_results(s3, BUCKET, held) == {}  # buffered, not classified
            start = time.monotonic()
            elapsed = holder.terminate(timeout=120)
            _wait(lambda: broker.llen("classify") >= len(held), timeout=30,
                  what="the stopped worker's buffered messages back in the queue")
            back = time.monotonic() - start
            _log(f"buffering worker stopped in {elapsed:.1f} s; its {len(held)} messages were back in {back:.1f} s")
            assert reserved(broker, "classify") == 0
            start_service("classify-worker")
            done = _wait(lambda: (r := collect_results(s3, BUCKET, held)) and len(r) == len(held) and r,
                         timeout=600, what="the held images' results from the next worker", interval=2)
            assert all(d["status"] in ("ok", "no_vehicle") for d in done.values()), done
            _log("nothing lost: every held image classified by the next worker")
        except BaseException:
            for c in containers:
                _log(f"--- {c.name} log tail ---\n{c.log(3000)}")
            raise
        finally:
            for c in containers:
                c.remove()
