# GPU image of the workers (and, with a different command, the producer and Flower).
#
#   docker build -f Dockerfile.gpu -t vehicle-pipeline:gpu .
#   docker run --gpus all vehicle-pipeline:gpu celery -A workers.app worker -Q detect -c 1
#
# The -devel base carries nvcc, which Detectron2's build from source needs for its CUDA ops.
FROM nvidia/cuda:12.8.1-cudnn-devel-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    # Build Detectron2's CUDA kernels for common data-centre and desktop GPUs even though no GPU is
    # visible during `docker build`.
    FORCE_CUDA=1 \
    TORCH_CUDA_ARCH_LIST="7.0;7.5;8.0;8.6;8.9;9.0+PTX" \
    # The card's detector: Mask R-CNN R101-FPN from the Detectron2 model zoo (checkpoint downloaded on
    # first start; offline, point VP_DETECTOR__MODEL at an artifact path or s3:// URI instead).
    VP_DETECTOR__BACKEND=detectron2 \
    VP_DETECTOR__MODEL=detectron2://COCO-InstanceSegmentation/mask_rcnn_R_101_FPN_3x.yaml \
    # The zoo's checkpoints are pickles; trusted here. For a pickle-free image, export the checkpoint
    # (python -m vehicle_core.detection.detectron2_backend export) and point VP_DETECTOR__MODEL at it.
    VP_DETECTOR__ALLOW_PICKLE=true \
    VP_DETECTOR__DEVICE=cuda \
    VP_CLASSIFIER__DEVICE=gpu

# Ubuntu's own python3 (3.12) and the libraries OpenCV's headless wheel and Detectron2's build expect.
# Versions are not pinned: the CUDA base image pins the distribution release, apt pins within it.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev git build-essential \
    ninja-build libglib2.0-0 libgl1 \
 && rm -rf /var/lib/apt/lists/*

RUN python3 -m venv "$VIRTUAL_ENV" \
 && pip install "pip==24.3.1" "setuptools==75.6.0" "wheel==0.45.1"

WORKDIR /app

# 1. PyTorch first: Detectron2's setup.py imports torch, hence --no-build-isolation below
#    (the way Detectron2's install docs say). PyPI's Linux torch wheels are the CUDA builds.
RUN pip install "torch==2.14.1" "torchvision==0.29.1"

# 2. Detectron2 from source (it is not on PyPI): its README's command, pinned to the commit the CPU
#    build (`make install`, from shared/vendor/) and the tests use. setuptools stays below 81 because
#    detectron2.model_zoo imports pkg_resources. Separate layers on purpose: a change to a later step
#    keeps the slow CUDA build cached.
ARG DETECTRON2_COMMIT=02b5c4e295e990042a714712c21dc79b731e8833
# hadolint ignore=DL3059
RUN pip install --no-build-isolation \
    "git+https://github.com/facebookresearch/detectron2.git@${DETECTRON2_COMMIT}"

# 3. TensorFlow with its CUDA libraries for the Keras classifier (instead of tensorflow-cpu), and
#    TensorBoard for the training logs (the `tf` extra carries it, but that extra is skipped below).
# hadolint ignore=DL3059
RUN pip install "tensorflow[and-cuda]==2.21.0" "tensorboard==2.21.0"

# 4. The project, the same editable install CI runs (`pip install -e .[dev]`), minus the test tools
#    and minus the `tf` extra, whose tensorflow-cpu would shadow the CUDA build installed above.
COPY pyproject.toml README.md ./
COPY vehicle_core ./vehicle_core
COPY workers ./workers
COPY producer ./producer
COPY devstack ./devstack
# hadolint ignore=DL3059
RUN pip install -e ".[torch,workers]" "matplotlib>=3.8"

# Run as a plain user (uid 1000 is the base image's "ubuntu").
# hadolint ignore=DL3059
RUN useradd --create-home --uid 1001 vehicle
USER 1001
ENV HOME=/home/vehicle

# The detect worker by default; docker-compose.yml overrides the command per service.
CMD ["celery", "-A", "workers.app", "worker", "-Q", "detect", "-c", "1", "-n", "detect@%h", "--loglevel=INFO"]
