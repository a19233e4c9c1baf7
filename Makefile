# Staged pipeline on one run folder: model -> prune -> quantize -> export -> bench -> report.
# Each stage reads earlier stages' artifacts under $(RUN) and writes a folder of its own
# (compress/pipeline/contract.py declares them). Overrides: MODEL= ARCH= SCALE= DATA= EVAL= RUN=.
SHELL := /bin/bash
PY_BOOT ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
MODEL ?=
ARCH ?= edsr
SCALE ?= $(if $(filter rrdb,$(ARCH)),4,2)
DATA ?=
EVAL ?=
RUN ?= artifacts/run-$(if $(filter rrdb,$(ARCH)),rrdb-,)x$(SCALE)
TRAIN_OUT ?= artifacts/train
DEVICE ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo cuda || echo cpu)
TORCH_INDEX ?=
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_WHEELS ?= /opt/wheels
PRUNE_RECIPES ?= $(if $(filter 1,$(QUICK)),pruning/recipes/quick.toml,pruning/recipes/channel$(if $(filter rrdb,$(ARCH)),_rrdb,).toml pruning/recipes/unstructured.toml)
QUANT_RECIPE ?= $(if $(filter 1,$(QUICK)),quantization/recipes/quick.toml,quantization/recipes/default.toml)
QUANT_PRUNED_RECIPE ?= $(if $(filter 1,$(QUICK)),$(QUANT_RECIPE),quantization/recipes/pruned.toml)
QUANT_SOURCES ?= auto
PYTEST_ARGS ?=
QUICK ?= 0
# NPROC=N runs the training stages (train, prune, quantize) under torchrun with N processes
# (DistributedDataParallel; Gloo on CPUs; NCCL on GPUs for train, the one stage with --device). Multi-node: call torchrun yourself with
# --nnodes / --rdzv-endpoint (README, "Training on several processes").
NPROC ?=
TRAIN_PY = $(if $(NPROC),$(VENV)/bin/torchrun --standalone --nproc-per-node $(NPROC) -m -- compress,$(PY) -m compress)

# Stages read what earlier stages wrote: `make -j` must not run them side by side.
.NOTPARALLEL:

STAMP := $(VENV)/.installed
EVAL_ARGS := $(foreach d,$(EVAL),--eval $(d))
MODEL_ARG := $(if $(MODEL),--model $(MODEL),)
# a SCALE the user did not give is only what the run is named for: the checkpoint's own scale must match it,
# and weights that do not record their scale (SRCNN's) are refused rather than read at the default
SCALE_ARG := $(if $(filter file,$(origin SCALE)),--expect-scale,--scale) $(SCALE)

.PHONY: venv model train train-data serve browser-deps prune quantize export bench bench-pytest report compare bars all test clean
venv: $(STAMP)
$(STAMP): pyproject.toml
	$(PY_BOOT) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: a CPU host gets the CPU build (a torch wheel in TORCH_WHEELS, TORCH_INDEX=..., or
	# PyTorch's CPU index: PyPI's torch wheel for Linux x86-64 is the multi-GB CUDA build)
	$(PY) -m pip install -q torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),$(if $(wildcard $(TORCH_WHEELS)/torch-2.13.0*.whl),--find-links $(TORCH_WHEELS),$(if $(filter cpu,$(DEVICE)),--index-url $(TORCH_CPU_INDEX),)))
	$(PY) -m pip install -q -e '.[tflite,test]'
	if [ "$(DEVICE)" = "cuda" ]; then $(PY) -m pip uninstall -q -y onnxruntime && $(PY) -m pip install -q onnxruntime-gpu==1.32.0; fi
	touch $(STAMP)

model: venv
	$(PY) -m compress model $(MODEL_ARG) --arch $(ARCH) $(SCALE_ARG) --run $(RUN) $(EVAL_ARGS)

# Trains the default models per compress/recipes/ (EDSR x3 and x4 start from the x2 weights, as EDSR
# does; the compact RRDB x4 trains from scratch). ARCH=rrdb runs the pipeline on the RRDB default (SCALE 4).
# Debian's wallpaper photographs (compress/core/default_data.py WALLPAPERS) join the training data.
WALLPAPER_PKGS := lomiri-wallpapers-16.04 lomiri-wallpapers-20.04 mate-backgrounds plasma-workspace-wallpapers lxqt-themes
train-data:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  dpkg -s $(WALLPAPER_PKGS) >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(WALLPAPER_PKGS); } \
	  || echo "warning: could not install $(WALLPAPER_PKGS); training uses the packaged photographs only"; \
	else echo "note: run as root (or apt-get install $(WALLPAPER_PKGS)) to add Debian's wallpaper photographs"; fi

train: venv train-data
	$(TRAIN_PY) train --recipe compress/recipes/train_edsr_x2.toml --out $(TRAIN_OUT)/edsr_baseline_x2.safetensors --device $(DEVICE) $(if $(DATA),--data $(DATA),)
	$(TRAIN_PY) train --recipe compress/recipes/train_edsr_x3.toml --out $(TRAIN_OUT)/edsr_baseline_x3.safetensors --init-from $(TRAIN_OUT)/edsr_baseline_x2.safetensors --device $(DEVICE) $(if $(DATA),--data $(DATA),)
	$(TRAIN_PY) train --recipe compress/recipes/train_edsr_x4.toml --out $(TRAIN_OUT)/edsr_baseline_x4.safetensors --init-from $(TRAIN_OUT)/edsr_baseline_x2.safetensors --device $(DEVICE) $(if $(DATA),--data $(DATA),)
	$(TRAIN_PY) train --recipe compress/recipes/train_rrdb_x4.toml --out $(TRAIN_OUT)/rrdb_compact_x4.safetensors --device $(DEVICE) $(if $(DATA),--data $(DATA),)

TFLITE ?= 1
export: venv
	$(PY) -m compress export --run $(RUN) $(if $(filter 0,$(TFLITE)),--no-tflite,) $(EVAL_ARGS)

prune: venv
	$(TRAIN_PY) prune --run $(RUN) $(foreach r,$(PRUNE_RECIPES),--recipe $(r)) $(if $(DATA),--data $(DATA),) $(EVAL_ARGS)

quantize: venv
	$(TRAIN_PY) quantize --run $(RUN) --recipe $(QUANT_RECIPE) --pruned-recipe $(QUANT_PRUNED_RECIPE) $(foreach s,$(QUANT_SOURCES),--source $(s)) $(if $(DATA),--data $(DATA),) $(EVAL_ARGS)

BENCH_SIZES ?= $(if $(filter 1,$(QUICK)),128x128 256x256,128x128 256x256 1080p)
BENCH_RUNS ?= $(if $(filter 1,$(QUICK)),3,5)
BENCH_LARGE ?= pareto
# targets (ms) whose largest admitted output is measured by a ladder of sizes; add 10000 for the print tier
BENCH_LADDER ?= $(if $(filter 1,$(QUICK)),300,300 1000)
THREADS ?= 2
bench: venv
	$(PY) -m compress bench --run $(RUN) --sizes $(BENCH_SIZES) --threads $(THREADS) --runs $(BENCH_RUNS) --large $(BENCH_LARGE) --ladder $(BENCH_LADDER) $(EVAL_ARGS)

report: venv
	$(PY) -m compress report --run $(RUN)

compare: venv
	$(PY) -m compress.pipeline.compare $(A) $(B)

# Re-measures every compression bar of a shipped model (README's "Compression bars"), each bar
# in a run folder of its own under $(BARS_OUT); rerun to resume, BARS_ONLY="qat ptq" for some, BARS_DRY=1 to list.
BARS_PLAN ?= $(ARCH)-x$(SCALE)
BARS_OUT ?= artifacts/bars-$(BARS_PLAN)
BARS_ONLY ?=
bars: venv
	$(PY) -m compress bars --plan $(BARS_PLAN) --out $(BARS_OUT) $(MODEL_ARG) $(EVAL_ARGS) $(if $(DATA),--data $(DATA),) $(foreach b,$(BARS_ONLY),--only $(b)) $(if $(filter 1,$(BARS_DRY)),--dry-run,)

# pytest-benchmark suite (pedantic, fixed rounds) on the run's key artifacts; JSON in $(RUN)/40-bench/
bench-pytest: venv
	RUN=$(RUN) $(PY) -m pytest benchmarks -p no:cacheprovider --benchmark-enable -o addopts="" --benchmark-json=$(RUN)/40-bench/pytest-benchmark.json

all: model prune quantize export bench report

# The service and web page (python -m compress serve): SERVE_ARGS="--run artifacts/run-x2" or
# "--artifact FILE"; with neither, the shipped defaults for every scale. http://127.0.0.1:$(PORT)/
PORT ?= 8000
SERVE_ARGS ?=
serve: venv
	$(PY) -m compress serve --port $(PORT) $(SERVE_ARGS)

# Debian's chromium and chromedriver for the browser test of the web page (tests skip it without them)
browser-deps:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium chromium-driver \
	  || echo "warning: chromium / chromium-driver not installed; the browser test will be skipped"; \
	else echo "note: apt-get install chromium chromium-driver (as root) to run the browser test"; fi

test: venv
	$(PY) -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf artifacts/run-* artifacts/bars-* $(TRAIN_OUT) .pytest_cache .benchmarks
