# The image of every vehicle-pipeline service (docker-compose.yml runs each from it), one CUDA stack: torch's.
#
#   docker build -t vehicle-pipeline:serve --target serve .    # producer, workers, Flower (no TensorFlow)
#   docker build -t vehicle-pipeline:train --target train .    # + TensorFlow: init (seed-registry), train-worker
#
# Build arguments (all optional):
#   BASE        a Debian bookworm image with apt (default debian:bookworm-slim, public). Where no registry
#               can be reached: deploy/image/make-base.sh makes localhost/debian:bookworm from Debian's archive.
#   VARIANT     cuda (default): Detectron2's CUDA ops compiled with nvcc from PyPI for TORCH_CUDA_ARCH_LIST;
#               cpu: its CPU ops only (no nvcc; the image then detects on the CPU even on a GPU host).
#   DETECTRON2_SOURCE  what pip builds Detectron2 from (default: its git repository at DETECTRON2_COMMIT;
#               an offline build mounts a tarball of that commit and names its path).
#   PIP_CERT    a CA bundle for pip, where a proxy re-signs PyPI's certificate (the build mounts it; unset: certifi's).
#
# CUDA comes from PyPI alone: torch's wheel (torch.version.cuda 13.0) carries the CUDA runtime, cuDNN and
# NCCL, so the base needs no CUDA; the host needs an NVIDIA driver that supports CUDA 13.0 (R580 or newer)
# and the NVIDIA container toolkit. nvidia-cuda-nvcc/-crt/-cccl (13.0, torch's) compile Detectron2's ops
# without a GPU, in the build stage only.
ARG BASE=debian:bookworm-slim

# ---- os: Debian's Python 3.11, a virtualenv, the user that runs everything ----
FROM ${BASE} AS os
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
# libglib2.0-0 and libgomp1: what OpenCV's headless wheel and torch load. Versions come with the release
# (bookworm); apt pins within it.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates libglib2.0-0 libgomp1 \
 && rm -rf /var/lib/apt/lists/*
ARG PIP_CERT
RUN python3 -m venv "$VIRTUAL_ENV" \
 && pip install "pip==24.3.1" "setuptools==80.10.2" "wheel==0.45.1"
# uid 1001 owns its home and the cache the models volume mounts on (a volume mounted on a path the image
# has takes that path's owner; on a missing one Docker makes it root's).
RUN useradd --create-home --uid 1001 --user-group vehicle \
 && install -d -o 1001 -g 1001 /home/vehicle/.cache /home/vehicle/.cache/vehicle-pipeline /app

# ---- s3-emulator: moto's S3+SQS server, for single-host compose and the image check (not for AWS) ----
FROM os AS s3-emulator
ARG PIP_CERT
# hadolint ignore=DL3059
RUN pip install "moto[server]==5.2.5"
USER 1001
EXPOSE 4566
CMD ["moto_server", "-H", "0.0.0.0", "-p", "4566"]

# ---- torch: PyPI's wheels (CUDA 13.0 builds; they run on the CPU too) ----
FROM os AS torch
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
ARG PIP_CERT
# hadolint ignore=DL3059
RUN pip install "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"

# ---- detectron2: a wheel built once (only this stage has compilers and nvcc) ----
FROM torch AS detectron2
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential python3-dev git ninja-build \
 && rm -rf /var/lib/apt/lists/*
ARG VARIANT=cuda
ARG PIP_CERT
# The architectures torch 2.14.1+cu130 itself is built for (torch._C._cuda_getArchFlags()); CUDA 13 has no 7.0.
ARG TORCH_CUDA_ARCH_LIST="7.5;8.0;8.6;9.0;10.0;12.0+PTX"
ARG CUDA_VERSION=13.0
ARG DETECTRON2_COMMIT=02b5c4e295e990042a714712c21dc79b731e8833
ARG DETECTRON2_SOURCE="git+https://github.com/facebookresearch/detectron2.git@${DETECTRON2_COMMIT}"
# setuptools stays below 81 (os stage: detectron2.model_zoo imports pkg_resources; torch wants >=77.0.3); --no-build-isolation because
# Detectron2's setup.py imports torch (its install docs' way).
RUN set -eu; \
    case "$VARIANT" in \
      cuda) pip install "nvidia-cuda-nvcc==${CUDA_VERSION}.*" "nvidia-cuda-crt==${CUDA_VERSION}.*" \
                        "nvidia-cuda-cccl==${CUDA_VERSION}.*" "nvidia-nvvm==${CUDA_VERSION}.*"; \
            CUDA_HOME="$(python -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13"))')"; \
            # the toolkit's layout that nvcc.profile and torch expect: lib64/, targets/x86_64-linux/, libcudart.so
            ln -sfn lib "$CUDA_HOME/lib64"; ln -sf libcudart.so.13 "$CUDA_HOME/lib/libcudart.so"; \
            mkdir -p "$CUDA_HOME/targets"; ln -sfn .. "$CUDA_HOME/targets/x86_64-linux"; \
            MAX_JOBS=$(nproc); export CUDA_HOME FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST MAX_JOBS; \
            "$CUDA_HOME/bin/nvcc" --version ;; \
      cpu)  export FORCE_CUDA=0 ;; \
      *)    echo "VARIANT must be cuda or cpu, not $VARIANT" >&2; exit 2 ;; \
    esac; \
    start=$(date +%s); \
    pip wheel --no-build-isolation --no-deps -w /wheels "$DETECTRON2_SOURCE"; \
    echo "detectron2 ($VARIANT) built in $(( $(date +%s) - start )) s"

# ---- serve: producer, detect and classify workers, Flower. Keras on torch's backend, no TensorFlow ----
FROM torch AS serve
COPY --from=detectron2 /wheels /tmp/wheels
ARG PIP_CERT
# hadolint ignore=DL3059
RUN pip install /tmp/wheels/detectron2-*.whl && rm -rf /tmp/wheels
WORKDIR /app
COPY pyproject.toml README.md ./
COPY vehicle_core ./vehicle_core
COPY workers ./workers
COPY producer ./producer
COPY training ./training
COPY devstack ./devstack
# The same editable install CI runs, with the extras a server needs (no test tools, no TensorFlow).
# hadolint ignore=DL3059
RUN pip install -e ".[torch,workers,keras]"
ENV HOME=/home/vehicle \
    KERAS_BACKEND=torch \
    VP_CLASSIFIER__BACKEND=torch \
    # The card's detector: Mask R-CNN R101-FPN from Detectron2's model zoo, downloaded on first start. Its
    # checkpoint is a pickle, which stays refused (detector.allow_pickle: false) unless the deployment sets
    # VP_DETECTOR__ALLOW_PICKLE=true (docker-compose.yml does, for the detect worker alone); or export it
    # once (python -m vehicle_core.detection.detectron2_backend export) and point VP_DETECTOR__MODEL there.
    VP_DETECTOR__BACKEND=detectron2 \
    VP_DETECTOR__MODEL=detectron2://COCO-InstanceSegmentation/mask_rcnn_R_101_FPN_3x.yaml
USER 1001
# The detect worker by default; docker-compose.yml gives each service its command.
CMD ["celery", "-A", "workers.app", "worker", "-Q", "detect", "-c", "1", "-n", "detect@%h", "--loglevel=INFO"]

# ---- train: serve + TensorFlow (training's tf.data pipeline): init's seed-registry, the train worker ----
FROM serve AS train
USER 0
# tensorflow-cpu: a second CUDA stack (TensorFlow's CUDA 12 wheels) stays out of the image. For training on
# the GPU build with --build-arg TF_PACKAGE="tensorflow[and-cuda]==2.21.0" (then it carries both stacks).
ARG TF_PACKAGE=tensorflow-cpu==2.21.0
ARG PIP_CERT
# hadolint ignore=DL3013,DL3059
RUN pip install "${TF_PACKAGE}" "tensorboard==2.21.0" "matplotlib>=3.8"
ENV KERAS_BACKEND=tensorflow \
    VP_CLASSIFIER__BACKEND=tensorflow
USER 1001
CMD ["celery", "-A", "training.trial_worker", "worker", "-Q", "train", "-c", "1", "-n", "train@%h", "--loglevel=INFO"]
