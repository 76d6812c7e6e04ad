# The two commands a newcomer needs:  `make demo`  and  `make test`.
# Each creates .venv (Python 3.11+) and installs the project into it on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench bench-enqueue install quickstart detectron2 image-check settings-doc

# Detectron2 is not on PyPI. Where the vendored source (shared/ beside the clone, as in CI) is present,
# the install builds it once into a wheel cached per commit, torch and Python version, and installs that
# wheel; elsewhere it says how to get Detectron2 and everything runs on the torchvision backend.
D2_COMMIT := 02b5c4e295e990042a714712c21dc79b731e8833
D2_TARBALL ?= ../shared/vendor/detectron2-$(shell echo $(D2_COMMIT) | cut -c1-8).tar.gz
WHEEL_CACHE ?= $(HOME)/.cache/vehicle-pipeline/wheels

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	$(MAKE) --no-print-directory detectron2
	touch $@

install: $(BIN)/.installed

## Build (once, cached) and install Detectron2 from $(D2_TARBALL); without it, print how to install it.
detectron2:
	@if [ ! -f "$(D2_TARBALL)" ]; then \
	  echo "Detectron2 source $(D2_TARBALL) not found: the detectron2 backend stays unavailable," \
	       "the torchvision backend (the default) works. To add Detectron2 (builds from source, minutes):"; \
	  echo "  $(BIN)/pip install 'setuptools<81' && $(BIN)/pip install --no-build-isolation" \
	       "'git+https://github.com/facebookresearch/detectron2.git@$(D2_COMMIT)'"; \
	  exit 0; \
	fi; \
	set -e; \
	key=$$($(BIN)/python -c 'import sys; from importlib.metadata import version; print("detectron2-$(D2_COMMIT)-torch" + version("torch") + "-py%d%d" % sys.version_info[:2])'); \
	dir="$(WHEEL_CACHE)/$$key"; \
	if [ -f "$(VENV)/.$$key" ]; then echo "Detectron2 $$key already installed"; exit 0; fi; \
	$(BIN)/pip install --quiet 'setuptools<81' wheel; \
	if ! ls "$$dir"/detectron2-*.whl >/dev/null 2>&1; then \
	  echo "Building Detectron2 $(D2_COMMIT) from $(D2_TARBALL) (a few minutes, once; cached in $$dir)"; \
	  mkdir -p "$(WHEEL_CACHE)"; tmp=$$(mktemp -d "$(WHEEL_CACHE)/.build-XXXXXX"); chmod 755 "$$tmp"; \
	  start=$$(date +%s); \
	  $(BIN)/pip wheel --quiet --no-build-isolation --no-deps -w "$$tmp" "$(D2_TARBALL)"; \
	  echo "Detectron2 wheel built in $$(( $$(date +%s) - start )) s"; \
	  rm -rf "$$dir"; mv "$$tmp" "$$dir"; \
	fi; \
	$(BIN)/pip install --quiet "$$dir"/detectron2-*.whl; \
	touch "$(VENV)/.$$key"

## Start Redis, an S3+SQS server, Flower, the producer and both workers on loopback; upload synthetic
## images; print their results and the path of their gallery (demo-out/gallery.html). Pass flags
## with ARGS, e.g. `make demo ARGS=--stay-up` (which also prints the S3 endpoint and credentials).
demo: $(BIN)/.installed
	$(BIN)/vehicle-demo $(ARGS)

## The whole test suite, the slow and integration tests included (they start their own servers).
test: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(ARGS)

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/hadolint Dockerfile
	$(BIN)/check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml

## Regenerate docs/settings.md from the settings' declarations (vehicle_core/config.py); a test fails
## while the two disagree.
settings-doc: $(BIN)/.installed
	$(BIN)/python -m vehicle_core.cli.settings_doc markdown --write docs/settings.md

## The training loop end to end on a loopback S3 (moto): synthetic data -> train -> evaluate -> publish.
## The report lands in quickstart-out/report/ (report.md, confusion.png, misclassified/).
quickstart: $(BIN)/.installed
	$(BIN)/python -m devstack.quickstart --bucket quickstart --out quickstart-out $(ARGS)

## Build the image's targets with buildah (base from Debian's packages, VARIANT=cpu) and run every compose
## service from them on loopback: uploads classified, a stopped worker's buffered batch not lost
## (tests/deploy/test_image.py; root; installs buildah and debootstrap when missing; layers stay cached).
image-check: $(BIN)/.installed
	@command -v buildah >/dev/null && command -v debootstrap >/dev/null || \
	  { apt-get update -qq && apt-get install -y -qq --no-install-recommends buildah debootstrap >/dev/null; }
	VP_IMAGE_CHECK=1 $(BIN)/python -m pytest tests/deploy -m image -v -s -p no:cacheprovider $(ARGS)

bench: $(BIN)/.installed
	$(BIN)/python -m devstack.bench $(ARGS)

## Enqueue throughput into a throwaway redis-server: one message per round trip vs batched (ARGS=--keys N).
bench-enqueue: $(BIN)/.installed
	$(BIN)/python -m devstack.bench enqueue $(ARGS)
