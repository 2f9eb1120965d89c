# Two entry points (README): `make demo` and `make test`. Each creates .venv on first use.
# No GPU -> the CPU build of torch 2.13.0 is installed first (a plain `torch` would pull a multi-GB CUDA build).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
HAS_CUDA := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)
TORCH_SPEC := $(if $(HAS_CUDA),torch,torch==2.13.0)
PYTEST_ARGS ?=

.PHONY: demo test test-quick test-vllm test-hf-newest bench-overhead docs check-wheel notebook clean

$(VENV)/.base: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -c requirements-dev.lock -e ".[hf]"
	touch $@

$(VENV)/.dev: $(VENV)/.base requirements-dev.lock
	$(PIP) install -q -c requirements-dev.lock -e ".[hf,dev,triton]"
	touch $@

demo: $(VENV)/.base
	$(PY) examples/quickstart.py

test: $(VENV)/.dev
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench-overhead: $(VENV)/.base
	$(PY) benchmarks/dispatch_overhead.py

test-vllm:
	bash scripts/test_vllm.sh

# The Transformers integration's tests on the newest Transformers 5.x, in .venv-hf-newest.
test-hf-newest:
	bash scripts/test_hf_newest.sh

# API reference from the docstrings (pdoc) into build/docs; fails on any pdoc warning.
docs: $(VENV)/.dev
	$(PY) scripts/build_docs.py -o build/docs

# Build sdist + wheel, check metadata, install the wheel in a fresh venv outside the repo, run the quickstart.
check-wheel: $(VENV)/.dev
	bash scripts/check_wheel.sh $(PY)

# Re-execute examples/compare_kernels.ipynb and commit it with its outputs.
notebook: $(VENV)/.dev
	$(PY) scripts/regenerate_notebook.py

clean:
	rm -rf $(VENV) build dist *.egg-info
