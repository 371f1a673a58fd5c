# Two commands on a fresh machine: `make demo` and `make test`. Both build .venv first (pip only).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# the lock: every version any install takes (tools/lock.py writes it; `make lock` below)
LOCK   := constraints.txt
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml $(LOCK) | cksum | cut -d' ' -f1)
DEMO   ?= out/demo
# installed without their pins (tools/lock.py keeps the same list)
NO_DEPS := procgen-mirror gym3 gym imageio

.PHONY: setup demo test test-all browser ffmpeg-libs bench clean lock

$(STAMP): pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c $(LOCK) --upgrade pip
	# torch at the lock's exact version: these wheels are on local disk; a looser pin downloads GBs
	$(PY) -m pip install -q -c $(LOCK) torch torchvision
	# compat mode puts the checkout on sys.path, so the yt-dlp CLI finds our search plugin too
	$(PY) -m pip install -q -c $(LOCK) -e '.[dev]' --config-settings editable_mode=compat
	# CoinRun (procgen) for the sample corpus: no 3.11 wheel of procgen itself; this rebuild
	# works beside numpy 2 when installed without its pins. Optional: the corpus skips it.
	$(PY) -m pip install -q -c $(LOCK) --no-deps $(NO_DEPS) || echo "procgen not installed: corpus without CoinRun"
	# yt-dlp wants a binary named ffmpeg on PATH; imageio-ffmpeg ships one (no root needed)
	ln -sf "$$($(PY) -c 'import imageio_ffmpeg; print(imageio_ffmpeg.get_ffmpeg_exe())')" $(VENV)/bin/ffmpeg
	rm -f $(VENV)/.installed-*
	touch $@

setup: $(STAMP)

# Debian chromium for the labelling page's browser test (needs root; CI runs as root)
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } || echo "chromium missing: the browser test will fail (apt-get install chromium)"

# FFmpeg's shared libraries for torchcodec, the optional training decoder (needs root; without
# them torchcodec does not load, its tests skip and the loader uses PyAV)
ffmpeg-libs:
	@ldconfig -p | grep -q 'libavcodec\.so' || { [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq ffmpeg >/dev/null; } || echo "FFmpeg libraries missing: torchcodec unusable, its tests skip (apt-get install ffmpeg)"

demo: setup
	PATH="$(abspath $(VENV))/bin:$$PATH" HF_HUB_OFFLINE=1 $(PY) -m genie_pipeline.demo --out $(DEMO)

test: setup browser ffmpeg-libs
	PATH="$(abspath $(VENV))/bin:$$PATH" HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m "not slow" --durations=25

# everything, the slow tests too
test-all: setup browser ffmpeg-libs
	PATH="$(abspath $(VENV))/bin:$$PATH" HF_HUB_OFFLINE=1 $(PY) -m pytest -q

bench: setup
	PATH="$(abspath $(VENV))/bin:$$PATH" HF_HUB_OFFLINE=1 $(PY) benchmarks/ingest.py

clean:
	rm -rf out .pytest_cache

# Re-resolve the lock from pyproject.toml at today's newest releases (BEAM=X.Y.Z: on that
# Beam release), and move dataflow/Dockerfile's base image with it; then `make test`.
lock:
	$(PYTHON) tools/lock.py $(if $(BEAM),--beam $(BEAM))

# The Dataflow image: SDK container for the workers and launcher of the flex template
# (dataflow/Dockerfile; README "Run on Dataflow"), built on Beam's SDK image for the lock's
# Beam and Python. Its tag carries both (…:0.1.0-beam2.78.0-py3.11): the launcher reads them
# from the tag and refuses to submit to an image of another Beam or Python. Name it in your
# Artifact Registry, e.g.
#   make dataflow-image DATAFLOW_REPO=us-central1-docker.pkg.dev/PROJECT/REPO/genie-pipeline
LOCK_BEAM   = $(shell sed -n 's/^apache-beam==//p' $(LOCK))
LOCK_PYTHON = $(shell sed -n 's/^# python: //p' $(LOCK))
VERSION     = $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
DATAFLOW_REPO      ?= genie-pipeline-dataflow
DATAFLOW_IMAGE     ?= $(DATAFLOW_REPO):$(VERSION)-beam$(LOCK_BEAM)-py$(LOCK_PYTHON)
DATAFLOW_IMAGE_GPU ?= $(DATAFLOW_REPO):$(VERSION)-beam$(LOCK_BEAM)-py$(LOCK_PYTHON)-gpu
DOCKER_READY = command -v docker >/dev/null || { echo "docker not found: build the Dataflow image on a machine with docker (the image cannot be built here; tests/test_container.py checks its install steps in a venv)" >&2; exit 1; }; \
	docker info >/dev/null 2>&1 || { echo "docker cannot reach its daemon (is dockerd running, may this user use it?)" >&2; exit 1; }
# an image named by hand must still say which Beam and Python it holds
TAGGED = case "$(1)" in *beam$(LOCK_BEAM)-py$(LOCK_PYTHON)*) ;; *) echo "$(1): the tag must carry the lock's beam$(LOCK_BEAM)-py$(LOCK_PYTHON) (the launcher checks it); set DATAFLOW_REPO instead" >&2; exit 2;; esac
DOCKER_ARGS = --build-arg BEAM_VERSION=$(LOCK_BEAM) --build-arg PYTHON_VERSION=$(LOCK_PYTHON)

.PHONY: dataflow-image dataflow-image-gpu
dataflow-image:
	@$(call TAGGED,$(DATAFLOW_IMAGE))
	@$(DOCKER_READY)
	docker build -f dataflow/Dockerfile $(DOCKER_ARGS) --build-arg TORCH_VARIANT=cpu --build-arg IMAGE=$(DATAFLOW_IMAGE) -t $(DATAFLOW_IMAGE) .

# a newer yt-dlp without rebuilding the image: one thin layer on the built image, tagged
# $(DATAFLOW_IMAGE)-ytdlpVERSION; jobs launched with that --sdk_container_image use it
#   make dataflow-ytdlp YTDLP=2026.12.20 [DATAFLOW_REPO=...]
.PHONY: dataflow-ytdlp
dataflow-ytdlp:
	@test -n "$(YTDLP)" || { echo "give YTDLP=VERSION (a yt-dlp release)" >&2; exit 2; }
	@$(DOCKER_READY)
	docker build -f dataflow/Dockerfile.ytdlp --build-arg BASE=$(DATAFLOW_IMAGE) --build-arg YTDLP_VERSION=$(YTDLP) -t $(DATAFLOW_IMAGE)-ytdlp$(YTDLP) dataflow

# CUDA 13 torch for the quality classifier on GPU workers (worker_accelerator)
dataflow-image-gpu:
	@$(call TAGGED,$(DATAFLOW_IMAGE_GPU))
	@$(DOCKER_READY)
	docker build -f dataflow/Dockerfile $(DOCKER_ARGS) --build-arg TORCH_VARIANT=cu130 --build-arg IMAGE=$(DATAFLOW_IMAGE_GPU) -t $(DATAFLOW_IMAGE_GPU) .
