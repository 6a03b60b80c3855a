# convnext-pl: `make help` lists the targets. `make demo` and `make test` set themselves up.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.install-stamp
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install demo demo-seg demo-det demo-fcmae demo-streaming test test-fast lint format summary roadmap ladder figures bench gpu-suite clean

help: ## Show this help.
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]' 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
	@touch $(STAMP)

install: $(STAMP) ## Create .venv and install the package editable with dev extras (no-op when up to date).

demo: install ## Train ConvNeXt on the offline digits data set and print the validation metrics.
	$(PY) main.py fit --config configs/experiment/digits.yaml

demo-seg: install ## Train UperNet + ConvNeXt-atto on the offline synthetic scenes and print the mIoU.
	$(PY) main.py fit --config configs/experiment/segmentation_synthetic.yaml

demo-det: install ## Train Mask R-CNN + ConvNeXt-atto on the offline synthetic shapes (COCO format) and print box and mask AP.
	$(PY) main.py fit --config configs/experiment/coco_shapes_mask_rcnn.yaml

# The latest pre-training run's last checkpoint is what the fine-tuning starts from.
FCMAE_CKPT = $$(ls -d runs/digits_fcmae/version_* | sort -V | tail -n 1)/checkpoints/last.ckpt

demo-fcmae: install ## FCMAE pre-training on digits (loss, reconstruction pictures), then fine-tuning from it and from scratch.
	$(PY) main.py fit --config configs/experiment/digits_fcmae.yaml
	@echo "== Fine-tuning the pre-trained encoder: $(FCMAE_CKPT)"
	$(PY) main.py fit --config configs/experiment/digits_fcmae_downstream.yaml --run_name digits_fcmae_finetuned --model.init_args.pretrained=$(FCMAE_CKPT)
	@echo "== The same network and recipe from scratch, for comparison"
	$(PY) main.py fit --config configs/experiment/digits_fcmae_downstream.yaml --run_name digits_fcmae_scratch

# The demo's ImageFolder source and its shards are written once; --resume keeps shards already complete.
demo-streaming: install ## Convert the digits into shards (python -m convnext_pl.data.streaming write) and train from them.
	@test -d data/digits_images || $(PY) -m convnext_pl.data.streaming digits-folder --out data/digits_images
	$(PY) -m convnext_pl.data.streaming write --src data/digits_images --out data/digits_shards --shard-size-mb 0.25 --resume
	$(PY) main.py fit --config configs/experiment/digits_streaming.yaml

# pytest-xdist workers (one per core of the 2-core reference machine); TEST_JOBS=0 runs in one process.
# --dist loadgroup keeps the tests that share a run (a session or module fixture: tests/xdist_groups.py)
# on one worker, so that run is trained once; other tests go to whichever worker is free.
TEST_JOBS ?= 2
XDIST = $(if $(filter 0,$(TEST_JOBS)),,-n $(TEST_JOBS) --dist loadgroup)

test: install ## Run the whole CPU suite on TEST_JOBS workers (GPU tests skip themselves without CUDA).
	$(PY) -m pytest $(XDIST) $(PYTEST_ARGS)

test-fast: install ## Run the suite without the slow (multi-process, notebook) tests.
	$(PY) -m pytest -m "not slow" $(XDIST) $(PYTEST_ARGS)

lint: install ## Ruff lint and format check.
	$(PY) -m ruff check convnext_pl tests benchmarks main.py
	$(PY) -m ruff format --check convnext_pl tests benchmarks main.py

format: install ## Apply ruff's formatter and safe fixes.
	$(PY) -m ruff check --fix convnext_pl tests benchmarks main.py
	$(PY) -m ruff format convnext_pl tests benchmarks main.py

summary: install ## Params, GFLOPs and feature maps of MODEL (default convnext_tiny).
	$(PY) -m convnext_pl.models.summary --model $(or $(MODEL),convnext_tiny)

roadmap: install ## Print the ResNet-50 -> ConvNeXt-T roadmap table (params, GFLOPs vs the paper).
	$(PY) -m convnext_pl.roadmap.cli

ladder: install ## Train every roadmap step on digits (quarter-width nets, 5 epochs: ~14 min on 2 cores) into runs/ladder.
	$(PY) -m convnext_pl.roadmap.cli train --config configs/experiment/digits.yaml --epochs $(or $(EPOCHS),5) \
		--width-multiplier 0.25 --threads 1 --out runs/ladder

figures: install ## Regenerate docs/figures: the roadmap chart and the demo's training curves (runs the demo).
	@mkdir -p docs/figures
	$(PY) -m convnext_pl.roadmap.cli --plot docs/figures/roadmap.png
	$(PY) main.py fit --config configs/experiment/digits.yaml --trainer.default_root_dir runs/figures --run_name demo \
		--trainer.enable_progress_bar false
	$(PY) -m convnext_pl.analysis curves "$$(ls -d runs/figures/demo/version_* | sort -V | tail -n 1)/metrics.csv" \
		--out docs/figures/digits_curves.png

bench: install ## CPU training-throughput benchmarks (issue targets) into runs/bench/*.json.
	@mkdir -p runs/bench
	$(PY) benchmarks/train_throughput.py --device cpu --model convnext_atto --image-size 32 --batch-size 64 \
		--steps 20 --json runs/bench/atto_32.json
	$(PY) benchmarks/train_throughput.py --device cpu --model convnext_tiny --image-size 224 --batch-size 8 \
		--steps 10 --json runs/bench/tiny_224.json
	$(PY) benchmarks/data_throughput.py --workers 0 1 2 --json runs/bench/data.json
	$(PY) benchmarks/streaming_throughput.py --images 1280 --batches 30 --json runs/bench/streaming.json

gpu-suite: install ## One-GPU measurement (~6 min): gpu tests, train img/s eager+compiled, input pipeline, one table.
	@mkdir -p runs/bench
	$(PY) benchmarks/gpu_suite.py $(if $(DRY_RUN),--dry-run) --json runs/bench/gpu_suite.json

clean: ## Remove run outputs and caches (keeps .venv).
	rm -rf runs .pytest_cache .ruff_cache
